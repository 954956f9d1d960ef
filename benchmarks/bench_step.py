"""The training step with what the hardware offers (issue 37): channels_last memory format, bf16
autocast and ``torch.compile`` of the backbone against the default fp32 step, on pre-made batches.

The network and batch are a default run's on the 20,000-image 28x28 folder (AlexNet at the
folder's width and image size, batch 256) and on the embedded digits; every variant runs the same
number of steps, alternating, median of ``--reps``. ``compile``'s one-off compilation is timed
apart (its first steps).

    nice python benchmarks/bench_step.py [--reps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn

from _report import environment, write_results, write_section

from dcx.backbones.alexnet import AlexNet
from dcx.training.network import build_network

STEPS = 10


def make_step(device: torch.device, size: int, width: float, channels: int, batch: int, variant: str):
    torch.manual_seed(0)
    net = build_network(AlexNet(), channels, size, width, sobel=True).to(device)
    head = nn.Linear(net.feature_dim, 100).to(device)
    opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, size, size, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    if "channels_last" in variant:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(net) if variant == "compile" else net
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if "bf16" in variant else \
        contextlib.nullcontext

    def step() -> None:
        with autocast():
            loss = nn.functional.cross_entropy(head(forward(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: torch.device, size: int, width: float, channels: int, batch: int, reps: int) -> dict:
    variants = ["fp32", "channels_last", "bf16", "bf16+channels_last", "compile"]
    steps, first = {}, {}
    for v in variants:
        steps[v] = make_step(device, size, width, channels, batch, v)
        t = time.perf_counter()
        steps[v]()  # warm-up (compile: the compilation)
        sync(device)
        first[v] = time.perf_counter() - t
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(reps):
        for v in variants:
            t = time.perf_counter()
            for _ in range(STEPS):
                steps[v]()
            sync(device)
            times[v].append((time.perf_counter() - t) / STEPS)
    base = statistics.median(times["fp32"])
    return {"size": size, "width": width, "batch": batch,
            "images_per_s": {v: batch / statistics.median(ts) for v, ts in times.items()},
            "speed_vs_fp32": {v: base / statistics.median(ts) for v, ts in times.items()},
            "first_step_s": first}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {**environment(), "device": args.device,
              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    result["folder"] = measure(device, 28, 0.25, 1, 256, args.reps)
    result["digits"] = measure(device, 32, 0.25, 1, 256, args.reps)
    write_results(f"step-{args.device}", result)
    rows = "\n".join(
        f"| {name} ({r['size']} px, width {r['width']}, batch {r['batch']}) | "
        + " | ".join(f"{r['images_per_s'][v]:.0f} ({r['speed_vs_fp32'][v]:.2f}x)" for v in r["images_per_s"])
        + f" | {r['first_step_s']['compile']:.0f} s |"
        for name, r in (("folder", result["folder"]), ("digits", result["digits"])))
    write_section(f"Training step variants ({args.device})", f"""
`python benchmarks/bench_step.py --device {args.device}` ({result['when']}; {result['machine']}; torch CPU
kernels {result['cpu_capability']}; `benchmarks/results/step-{args.device}.json`). Images/s of the bare
step (forward + backward + SGD) of AlexNet at a default run's size, {STEPS} steps, median of {args.reps},
alternating; in brackets the speed over fp32.

| network | fp32 | channels_last | bf16 autocast | bf16 + channels_last | `--compile` | compile time |
|---|---|---|---|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
