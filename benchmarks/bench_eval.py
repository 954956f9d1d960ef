"""`dcx eval --protocol cluster` against the run's own training, in CPU time (issue 37, part 6).

On a folder of 20,000 rendered 28x28 characters (``python -m dcx.datasets.characters``, 2,000 per
class), a default run (`dcx run --dataset imagefolder --data-root DIR`), then `dcx eval RUN
--protocol cluster` with this checkout's dcx and, with ``--base DIR``, another checkout's (the
code before the change; repeatable) on copies of the same run directory; settings a base does not
know are dropped from its copy's config.toml (the base runs its own behaviour for them). Each command runs in its own
process under GNU time: CPU time is its user + sys. The run's training is reported twice: the
whole `dcx run` (training, clustering, probes) and its training phase (the sum of
``time_train`` in metrics.jsonl) times the torch threads. The two evals' NMI per block are
compared (the change must stay within the seeds' noise).

    python benchmarks/bench_eval.py [--folder DIR] [--run RUN] [--base DIR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _report import ROOT, environment, write_results, write_section

OUT = ROOT / "benchmarks" / "out"


def timed(cmd: list[str], code: Path, log: Path) -> dict:
    """Run ``cmd`` with ``code``'s dcx under GNU time: wall, user + sys CPU seconds, peak RSS."""
    stats = log.with_suffix(".time")
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", str(stats), *cmd], stdout=fh,
                              stderr=subprocess.STDOUT, cwd=code, env={**os.environ, "PYTHONPATH": str(code)})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed, see {log}")
    user, system, kb = stats.read_text().split()[-3:]
    return {"wall_s": wall, "cpu_s": float(user) + float(system), "peak_rss_gib": int(kb) / 1024**2}


def known_settings(code: Path) -> set[str]:
    """The RunConfig fields of the dcx in ``code``."""
    out = subprocess.run([sys.executable, "-c", "from dcx.core.config import RunConfig; print(*RunConfig.model_fields)"],
                         cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def drop_unknown_settings(config: Path, known: set[str]) -> list[str]:
    """Remove the top-level keys of ``config`` (a run's config.toml) that ``known`` lacks."""
    import tomllib

    top = tomllib.loads(config.read_text())
    unknown = [k for k, v in top.items() if not isinstance(v, dict) and k not in known]
    lines = [line for line in config.read_text().splitlines() if line.split("=")[0].strip() not in unknown
             or line.startswith("[")]
    config.write_text("\n".join(lines) + "\n")
    return unknown


def git_label(code: Path) -> str:
    out = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or code.name


def training_cpu(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = sum(r.get("time_train", 0.0) for r in rows)
    return {"time_train_s": train, "epochs": sum(1 for r in rows if "time_train" in r)}


def cluster_nmi(eval_json: Path, key: str = "nmi") -> dict:
    res = json.loads(eval_json.read_text())
    return {net: {layer: {v: s[key] for v, s in scores.items()} for layer, scores in res[net]["cluster"].items()}
            for net in ("learned", "random")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", type=Path, default=OUT / "characters20k")
    ap.add_argument("--run", type=Path, default=OUT / "eval-run", help="a default run on --folder (trained if absent)")
    ap.add_argument("--base", type=Path, action="append", default=[], help="checkout with the code before the change")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the run (default: this machine's)")
    ap.add_argument("--from-results", action="store_true", help="rewrite the docs section from results/eval.json")
    args = ap.parse_args()
    if args.from_results:
        stored = json.loads((ROOT / "benchmarks" / "results" / "eval.json").read_text())
        if "run" not in stored and (args.run / "bench_run.json").exists():
            stored["run"] = json.loads((args.run / "bench_run.json").read_text())
            write_results("eval", stored)
        write_section("Evaluation at the pace of training (dcx eval --protocol cluster)", section(stored))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    result: dict = {**environment(), "folder": str(args.folder)}
    if not args.folder.exists():
        subprocess.run([py, "-m", "dcx.datasets.characters", str(args.folder), "--per-class", "2000"], cwd=ROOT, check=True)
    run_cost = args.run / "bench_run.json"  # the run's own cost, measured when this benchmark trained it
    if not (args.run / "checkpoint.pt").exists():
        result["run"] = timed([py, "-m", "dcx", "run", "--dataset", "imagefolder", "--data-root", str(args.folder),
                               "--out", str(args.run), "--quiet", "--no-report"], ROOT, OUT / "bench_eval_run.log")
        run_cost.write_text(json.dumps(result["run"]))
    elif run_cost.exists():
        result["run"] = json.loads(run_cost.read_text())
    import torch

    threads = args.threads or torch.get_num_threads()
    result["training"] = {**training_cpu(args.run), "threads": threads}
    result["training"]["cpu_s_estimate"] = result["training"]["time_train_s"] * threads
    evals = {}
    for label, code in [*((f"before ({git_label(b)})", b) for b in args.base), ("after", ROOT)]:
        copy = OUT / f"eval-run-{len(evals)}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(args.run, copy, ignore=shutil.ignore_patterns("eval.json", "*.lock"))
        if code != ROOT:
            drop_unknown_settings(copy / "config.toml", known_settings(code))
        evals[label] = timed([py, "-m", "dcx", "eval", str(copy), "--protocol", "cluster", "--no-report", "--quiet"],
                             code, OUT / f"bench_eval_{label}.log")
        evals[label]["nmi"] = cluster_nmi(copy / "eval.json")
        evals[label]["nmi_std"] = cluster_nmi(copy / "eval.json", "nmi_std")
        print(label, {k: v for k, v in evals[label].items() if not k.startswith("nmi")}, flush=True)
    result["eval"] = evals
    result["load_after"] = os.getloadavg()[0]
    write_results("eval", result)

    write_section("Evaluation at the pace of training (dcx eval --protocol cluster)", section(result))


def section(result: dict) -> str:
    """docs/benchmarks.md's section from a result (``--from-results``: the stored one)."""
    evals = result["eval"]
    tr = result["training"]
    lines = [
        "`dcx eval RUN --protocol cluster` (2 networks x 6 blocks, PCA-256 and L2, 5 k-means seeds each) on a",
        "default run over 20,000 rendered 28x28 characters, beside the run's training, in CPU seconds (user +",
        "sys of each command's process; `python benchmarks/bench_eval.py`, raw numbers in",
        "`benchmarks/results/eval.json`).",
        "",
        "Where the time went (a timer around each step, in process): the PCA's covariance and",
        "eigendecomposition of each wide block, 5 separate k-means passes per block and preprocessing over",
        "up to 5,400 dims, and a second forward pass for the `features` layer. Now: k-means(#classes) on a",
        "stratified sample of at most 10,000 images (`--cluster-images`, only those decoded and extracted when",
        "the cluster protocol runs alone), the 5 seeds advanced together in one pass over the rows per Lloyd",
        "step with sums updated by the rows that moved (`algorithms.kmeans.kmeans_restarts`), the 256",
        "leading eigenpairs by randomized SVD of the covariance, blocks and `features` from one forward",
        "pass in channels_last (docs/decisions.md D60).",
        "",
        "| what | CPU s | wall s |",
        "|---|---|---|",
    ]
    if "run" in result:
        wall = result["run"].get("wall_s")
        lines.append(f"| `dcx run` (training + clustering + probes) | {result['run']['cpu_s']:.0f} | "
                     f"{'-' if wall is None else f'{wall:.0f}'} |")
    lines.append(f"| its training phase (sum of time_train x {tr['threads']} threads) | {tr['cpu_s_estimate']:.0f} | "
                 f"{tr['time_train_s']:.0f} |")
    for label, e in evals.items():
        lines.append(f"| `dcx eval --protocol cluster`, {label} | {e['cpu_s']:.0f} | {e['wall_s']:.0f} |")
    after = evals["after"]["nmi"]
    for label in (lab for lab in evals if lab != "after"):
        diffs = [after[n][layer][v] - evals[label]["nmi"][n][layer][v]
                 for n in after for layer in after[n] for v in after[n][layer]]
        lines += ["", f"NMI per block and preprocessing (2 networks x 6 blocks x 2), after minus {label}: mean "
                      f"{sum(diffs) / len(diffs):+.4f}, largest difference {max(map(abs, diffs)):.4f}."]
    stds = [s for n in after for layer in after[n] for s in evals["after"]["nmi_std"][n][layer].values()]
    seed_sd = sum(stds) / len(stds)
    lines += [f"For scale: the sd of one block's NMI over its k-means seeds, mean over the blocks: {seed_sd:.4f}, so "
              f"two 5-seed means of a block differ by ~{seed_sd * (2 / 5) ** 0.5:.4f} (1 sd) from the seeds alone."]
    lines += ["", f"{result['when']}, {result['machine']} (load average after: {result['load_after']:.1f})."]
    return "\n".join(lines)



if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
