"""Images above ``--image-memory-gb``: streamed (decoded again every epoch) vs ``--image-cache``
(decoded once into a memory map in the run directory), beside the default in-memory decode.

`dcx run` through the CLI on the folder of 20,000 rendered 28x28 characters (``python -m
dcx.datasets.characters``), each run in its own process, the contenders alternating; streaming is
forced with ``--image-memory-gb 0.001`` (the folder needs 16 MB decoded). Reported: wall time of
the whole run and, per epoch (median over epochs and repetitions), the training's data time, the
training and the extraction.

    python benchmarks/bench_image_cache.py [--folder DIR] [--epochs 3] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import ROOT, environment, write_results, write_section

OUT = ROOT / "benchmarks" / "out"
CONTENDERS = {
    "in memory (default)": [],
    "streamed": ["--image-memory-gb", "0.001"],
    "streamed, --image-cache": ["--image-memory-gb", "0.001", "--image-cache"],
}


def one_run(folder: Path, epochs: int, extra: list[str], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "dcx", "run", "--dataset", "imagefolder", "--data-root", str(folder), "--epochs",
           str(epochs), "--out", str(out), "--quiet", "--no-report", "--no-probe", *extra]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs_rows = [r for r in rows if "time_train" in r]
    leftovers = sorted(p.name for p in out.glob("images-rank*"))
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": wall, "leftovers": leftovers,
            **{k: [r[k] for r in epochs_rows] for k in ("time_data", "time_train", "time_extract")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", type=Path, default=OUT / "characters20k")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    if not args.folder.exists():
        subprocess.run([sys.executable, "-m", "dcx.datasets.characters", str(args.folder), "--per-class", "2000"],
                       cwd=ROOT, check=True)
    result: dict = {**environment(), "folder": str(args.folder), "epochs": args.epochs, "runs": {}}
    for rep in range(args.reps):
        for name, extra in CONTENDERS.items():
            r = one_run(args.folder, args.epochs, extra, OUT / "image-cache-run")
            result["runs"].setdefault(name, []).append(r)
            print(rep, name, {k: v for k, v in r.items()}, flush=True)
    write_results("image-cache", result)

    def med(name: str, key: str) -> float:
        return statistics.median(v for r in result["runs"][name] for v in r[key])

    lines = [
        f"`python benchmarks/bench_image_cache.py` ({result['when']}; {result['machine']}; results in",
        "`benchmarks/results/image-cache.json`): `dcx run` on 20,000 28x28 characters, "
        f"{args.epochs} epochs, no probe, the contenders alternating ({args.reps} runs each). Streaming is forced",
        "with `--image-memory-gb 0.001`; per-epoch figures are medians over epochs and runs.",
        "",
        "| images | whole run, wall s | training data s / epoch | training s / epoch | extraction s / epoch |",
        "|---|---|---|---|---|",
    ]
    for name in CONTENDERS:
        walls = [r["wall_s"] for r in result["runs"][name]]
        lines.append(f"| {name} | {statistics.median(walls):.1f} | {med(name, 'time_data'):.2f} | "
                     f"{med(name, 'time_train'):.2f} | {med(name, 'time_extract'):.2f} |")
    left = sorted({f for runs in result["runs"].values() for r in runs for f in r["leftovers"]})
    lines += ["", f"Memory maps left in the run directory after the runs: {', '.join(left) or 'none'}."]
    write_section("Images above the memory budget: streamed or cached (dcx run --image-cache)", "\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
