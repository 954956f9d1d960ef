"""`dcx eval --protocol cluster` against the run's own training, in CPU time (issue 37, part 6).

On a folder of 20,000 rendered 28x28 characters (``python -m dcx.datasets.characters``, 2,000 per
class), a default run (`dcx run --dataset imagefolder --data-root DIR`), then `dcx eval RUN
--protocol cluster` with this checkout's dcx and, with ``--base DIR``, another checkout's (the
code before the change) on copies of the same run directory. Each command runs in its own
process under GNU time: CPU time is its user + sys. The run's training is reported twice: the
whole `dcx run` (training, clustering, probes) and its training phase (the sum of
``time_train`` in metrics.jsonl) times the torch threads. The two evals' NMI per block are
compared (the change must stay within the seeds' noise).

    python benchmarks/bench_eval.py [--folder DIR] [--run RUN] [--base DIR]
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


def training_cpu(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = sum(r.get("time_train", 0.0) for r in rows)
    return {"time_train_s": train, "epochs": sum(1 for r in rows if "time_train" in r)}


def cluster_nmi(eval_json: Path) -> dict:
    res = json.loads(eval_json.read_text())
    return {net: {layer: {v: s["nmi"] for v, s in scores.items()} for layer, scores in res[net]["cluster"].items()}
            for net in ("learned", "random")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", type=Path, default=OUT / "characters20k")
    ap.add_argument("--run", type=Path, default=OUT / "eval-run", help="a default run on --folder (trained if absent)")
    ap.add_argument("--base", type=Path, default=None, help="checkout with the code before the change")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the run (default: this machine's)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    result: dict = {**environment(), "folder": str(args.folder)}
    if not args.folder.exists():
        subprocess.run([py, "-m", "dcx.datasets.characters", str(args.folder), "--per-class", "2000"], cwd=ROOT, check=True)
    if not (args.run / "checkpoint.pt").exists():
        result["run"] = timed([py, "-m", "dcx", "run", "--dataset", "imagefolder", "--data-root", str(args.folder),
                               "--out", str(args.run), "--quiet", "--no-report"], ROOT, OUT / "bench_eval_run.log")
    import torch

    threads = args.threads or torch.get_num_threads()
    result["training"] = {**training_cpu(args.run), "threads": threads}
    result["training"]["cpu_s_estimate"] = result["training"]["time_train_s"] * threads
    evals = {}
    for label, code in (("before", args.base), ("after", ROOT)):
        if code is None:
            continue
        copy = OUT / f"eval-run-{label}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(args.run, copy, ignore=shutil.ignore_patterns("eval.json", "*.lock"))
        evals[label] = timed([py, "-m", "dcx", "eval", str(copy), "--protocol", "cluster", "--no-report", "--quiet"],
                             code, OUT / f"bench_eval_{label}.log")
        evals[label]["nmi"] = cluster_nmi(copy / "eval.json")
        print(label, {k: v for k, v in evals[label].items() if k != "nmi"}, flush=True)
    result["eval"] = evals
    result["load_after"] = os.getloadavg()[0]
    write_results("eval", result)

    tr = result["training"]
    lines = [
        "`dcx eval RUN --protocol cluster` (2 networks x 6 blocks, PCA-256 and L2, 5 k-means seeds each) on a",
        "default run over 20,000 rendered 28x28 characters, beside the run's training, in CPU seconds (user +",
        "sys of each command's process; `python benchmarks/bench_eval.py`, raw numbers in",
        "`benchmarks/results/eval.json`).",
        "",
        "| what | CPU s | wall s |",
        "|---|---|---|",
    ]
    if "run" in result:
        lines.append(f"| `dcx run` (training + clustering + probes) | {result['run']['cpu_s']:.0f} | {result['run']['wall_s']:.0f} |")
    lines.append(f"| its training phase (sum of time_train x {tr['threads']} threads) | {tr['cpu_s_estimate']:.0f} | "
                 f"{tr['time_train_s']:.0f} |")
    for label, e in evals.items():
        lines.append(f"| `dcx eval --protocol cluster`, {label} | {e['cpu_s']:.0f} | {e['wall_s']:.0f} |")
    if "before" in evals and "after" in evals:
        diffs = [abs(evals["after"]["nmi"][n][layer][v] - evals["before"]["nmi"][n][layer][v])
                 for n in evals["after"]["nmi"] for layer in evals["after"]["nmi"][n] for v in evals["after"]["nmi"][n][layer]]
        lines += ["", f"NMI per block and preprocessing, after minus before: largest difference {max(diffs):.4f}."]
    lines += ["", f"{result['when']}, {result['machine']} (load average after: {result['load_after']:.1f})."]
    write_section("Evaluation at the pace of training (dcx eval --protocol cluster)", "\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
