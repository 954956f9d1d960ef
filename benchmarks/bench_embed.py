"""Bounded memory: `dcx embed` over a folder of 100,000 small images (issue 36).

A tiny k-means + AlexNet run on digits gives the network; 100,000 16x16 grayscale PNGs in 10
class folders are written to a temporary folder; `dcx embed RUN --data-root FOLDER` runs in a child
process and its peak RSS is the kernel's ru_maxrss of that child (target: < 1 GB).

    nice python benchmarks/bench_embed.py [--images 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _report import environment, write_results, write_section

RUN = ["--clusterer", "kmeans", "--backbone", "alexnet", "--dataset", "digits", "--opt", "digits.limit=300",
       "--opt", "alexnet.fc_dim=64", "--k", "10", "--epochs", "1", "--passes", "1", "--image-size", "32",
       "--width", "0.125", "--no-probe", "--no-report", "-q"]


def write_folder(root: Path, n: int, seed: int = 0) -> float:
    """``n`` 16x16 gray PNGs (noise around one of 10 class templates) under root/<class>/; seconds taken."""
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 16, 16))
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
    for i in range(n):
        c = i % 10
        pixels = np.clip(templates[c] + rng.normal(0, 40, (16, 16)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(root / str(c) / f"{i:06d}.png")
    return time.perf_counter() - t


def child(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; (seconds, its peak RSS in MB from the kernel)."""
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    dcx = [sys.executable, "-m", "dcx"]
    with tempfile.TemporaryDirectory(prefix="dcx-bench-embed-") as tmp:
        tmp = Path(tmp)
        subprocess.run([*dcx, "run", *RUN, "--out", str(tmp / "run")], check=True)
        write_s = write_folder(tmp / "images", args.images)
        # RUSAGE_CHILDREN is the largest of all waited-for children: the run above is a child too,
        # so measure the embed in a fresh Python whose only child is dcx embed.
        probe = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
                 "subprocess.run(sys.argv[1:], check=True); "
                 "print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
        out = subprocess.run([sys.executable, "-c", probe, *dcx, "embed", str(tmp / "run"), "--data-root",
                              str(tmp / "images"), "--out", str(tmp / "emb"), "-q"],
                             check=True, capture_output=True, text=True).stdout
        seconds, rss_kb = json.loads(out.strip().splitlines()[-1])
        small = tmp / "small"
        for c in range(10):  # the first 1,000 images (100 per class)
            (small / str(c)).mkdir(parents=True)
            for p in sorted((tmp / "images" / str(c)).iterdir())[:100]:
                (small / str(c) / p.name).symlink_to(p)
        out_small = subprocess.run([sys.executable, "-c", probe, *dcx, "embed", str(tmp / "run"), "--data-root",
                                    str(small), "--out", str(tmp / "emb_small"), "-q"],
                                   check=True, capture_output=True, text=True).stdout
        seconds_small, rss_small = json.loads(out_small.strip().splitlines()[-1])
        floor = subprocess.run([sys.executable, "-c", probe, sys.executable, "-c", "import torch, torchvision"],
                               check=True, capture_output=True, text=True).stdout
        floor_kb = json.loads(floor.strip().splitlines()[-1])[1]
        feats = np.load(tmp / "emb" / "features.npy", mmap_mode="r")
        rows = sum(1 for _ in open(tmp / "emb" / "files.csv")) - 1
        meta = json.loads((tmp / "emb" / "embed.json").read_text())
    result = {**environment(), "images": args.images, "image_side": 16, "shape": list(feats.shape), "files_rows": rows,
              "layer": meta["layer"], "seconds_embed": round(seconds, 1), "seconds_write_folder": round(write_s, 1),
              "peak_rss_mb": round(rss_kb / 1024, 1), "target_mb": 1024,
              "seconds_embed_1000": round(seconds_small, 1), "peak_rss_mb_1000": round(rss_small / 1024, 1),
              "import_floor_mb": round(floor_kb / 1024, 1)}
    write_results("embed", result)
    write_section("Bounded memory: dcx embed over 100,000 images", f"""
`benchmarks/bench_embed.py` ({result['when']}, {result['machine']}): a k-means + AlexNet run
(width 0.125, 32 px, fc 64) embeds {args.images:,} 16x16 grayscale PNGs in 10 class folders
(`dcx embed RUN --data-root FOLDER`, one child process, loader workers 0). Rows stream to disk
batch by batch (raw rows, then the `.npy` header and a chunked copy); what grows with N is the list
of file names. Most of the peak is the imports: a Python that only imports torch and torchvision
(this machine's CUDA 13 build; torchvision pulls in torch._dynamo and sympy) peaks at
{result['import_floor_mb']:.0f} MB; a CPU-only torch wheel lowers that floor. The peak moves by a few
tens of MB from one measurement to the next (page cache, allocator).

| images | features.npy | files.csv rows | time | peak RSS (kernel `ru_maxrss`) | target |
|---:|---|---:|---:|---:|---:|
| {args.images:,} | {feats.shape[0]:,} x {feats.shape[1]} float32 | {rows:,} | {seconds:.0f} s | {rss_kb / 1024:.0f} MB | < 1,024 MB |
| 1,000 | 1,000 x {feats.shape[1]} float32 | 1,000 | {result['seconds_embed_1000']:.0f} s | {result['peak_rss_mb_1000']:.0f} MB | |
| (import torch + torchvision only) | | | | {result['import_floor_mb']:.0f} MB | |
""")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
