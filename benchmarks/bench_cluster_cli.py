"""`dcx cluster` through the CLI at every k: peak resident memory from the OS (issue 37, part 5).

A 400,000 x 1,024 float32 file (1.6 GB) -> PCA-256 + whitening + L2 -> k-means, with k = 100, 500
and 10,000, each `dcx cluster` in its own process as a user runs it. Target: peak RSS under
1 GiB plus the centroids (k x 256 float32) at every k, with the clusterer's defaults and with
``--opt kmeans.heads=1 --opt kmeans.merged_heads=0`` spelled out.

Peak RSS is read twice from the kernel: GNU time's ``%M`` (``ru_maxrss`` of a child forked from
time's own small process: this process's pages are not counted) and the child's ``VmHWM`` in
/proc, polled every 0.1 s. CPU seconds are the child's user + sys. ``--code DIR`` runs another
checkout's dcx (e.g. the main branch before the change) with ``--label``.

    python benchmarks/bench_cluster_cli.py [--ks 100,500,10000] [--reuse] [--keep] [--code DIR --label before]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _report import ROOT, environment, write_results, write_section

OUT = ROOT / "benchmarks" / "out"
FILE = OUT / "features_400k_1024_f32.npy"
N, D, PCA = 400_000, 1024, 256
GIB = 1024**3
CONFIGS = {"defaults": [], "heads=1 merged_heads=0": ["--opt", "kmeans.heads=1", "--opt", "kmeans.merged_heads=0"]}


def _hwm(pid: int) -> int:
    """VmHWM of ``pid`` in bytes (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child_of(pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def run_cli(k: int, extra: list[str], code: Path) -> dict:
    """One `dcx cluster` run under GNU time, its VmHWM polled: seconds, CPU seconds, peak RSS."""
    labels, stats_file = OUT / "bench_cluster_cli.labels.npy", OUT / "bench_cluster_cli.time"
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(stats_file), sys.executable, "-m", "dcx", "cluster",
           str(FILE), "--k", str(k), "--out", str(labels), "--json", "--quiet", *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=code)  # -m: cwd first
    child, hwm = None, 0
    while proc.poll() is None:
        child = child or _child_of(proc.pid)
        if child:
            hwm = max(hwm, _hwm(child))
        time.sleep(0.1)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"dcx cluster failed: {err.strip()}")
    kb, user, system = stats_file.read_text().split()[-3:]
    stats_file.unlink()
    labels.unlink(missing_ok=True)
    stats = json.loads(out)
    peak = max(int(kb) * 1024, hwm)
    centroids = k * PCA * 4
    return {"k": k, "seconds": seconds, "cpu_seconds": float(user) + float(system),
            "peak_rss_gib": int(kb) * 1024 / GIB, "vmhwm_gib": hwm / GIB, "centroids_gib": centroids / GIB,
            "under_bound": peak < GIB + centroids, "nonempty": stats["nonempty"],
            "iterations": stats.get("iterations"), "backend": stats.get("backend")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="100,500,10000", help="comma list of k")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma list of: " + ", ".join(CONFIGS))
    ap.add_argument("--reuse", action="store_true", help="use the feature file left by --keep (or bench_scale --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the feature file")
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose dcx runs (PYTHONPATH of the child)")
    ap.add_argument("--label", default="after", help="name of this code's rows (e.g. before)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not (args.reuse and FILE.exists()):
        # Written by a child process, so this one stays small.
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; "
                        f"from bench_scale import write_mixture; write_mixture(Path({str(FILE)!r}), {N}, {D}, 'float32')"],
                       cwd=ROOT, check=True)
    env = environment()
    previous = ROOT / "benchmarks" / "results" / "cluster_cli.json"
    kept = json.loads(previous.read_text())["runs"] if previous.exists() else []
    runs = []
    for k in (int(v) for v in args.ks.split(",")):
        for name in args.configs.split(","):
            row = {"code": args.label, "options": name, **run_cli(k, CONFIGS[name], args.code),
                   "load_after": os.getloadavg()[0]}
            print(row, flush=True)
            runs.append(row)
    if not args.keep:
        FILE.unlink()
    done = {(r["code"], r["options"], r["k"]) for r in runs}
    runs += [r for r in kept if (r["code"], r["options"], r["k"]) not in done]
    runs.sort(key=lambda r: (r["code"] != "before", r["options"], r["k"]))
    result = {**env, "rows": N, "d": D, "pca_dim": PCA, "file_gb": N * D * 4 / 1e9, "runs": runs}
    write_results("cluster_cli", result)

    lines = [
        "`dcx cluster` as a user runs it, one process per run, on a 400,000 x 1,024 float32 file (1.6 GB):",
        "PCA-256 + whitening + L2, then k-means (faiss, 20 iterations, all rows). Peak RSS from the kernel",
        "(GNU time's `ru_maxrss` of the child; its `VmHWM` polled agrees); target: under 1 GiB plus the",
        "centroids at every k (`python benchmarks/bench_cluster_cli.py`, raw numbers in",
        "`benchmarks/results/cluster_cli.json`). `before` is the main branch ahead of issue 37: the",
        "kmeans plugin's module imported torch (~0.5 GB resident before any data) and the CLI kept the",
        "plugin's merged head, a kNN graph of all 400,000 rows, for a labelling it never writes.",
        "",
        "| code | options | k | wall s | CPU s | peak RSS GiB | bound GiB | under |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(f"| {r['code']} | {r['options']} | {r['k']:,} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
                     f"{r['peak_rss_gib']:.2f} | {1 + r['centroids_gib']:.2f} | {'yes' if r['under_bound'] else 'no'} |")
    loads = ", ".join(f"{r['load_after']:.1f}" for r in runs)
    lines += ["", f"{env['when']}, {env['machine']}; load average after each run: {loads}."]
    write_section("Bounded memory: dcx cluster at every k", "\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
