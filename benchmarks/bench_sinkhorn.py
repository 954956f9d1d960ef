"""One SwAV Sinkhorn call at B=4096, K=3000 (float32): dcx.algorithms.sinkhorn.swav_codes vs the reference.

The reference is SwAV's ``distributed_sinkhorn`` (main_swav.py) on one process, written plainly.
Both run in this process on the same cosine scores, interleaved, and the medians are compared:
absolute times on a shared 2-core machine are noisy, their ratio much less so.

    python benchmarks/bench_sinkhorn.py [--batch 4096] [--k 3000] [--repeats 15]

Writes benchmarks/results/sinkhorn.json and the "## Sinkhorn" section of docs/benchmarks.md
(benchmarks/_report.py, shared with the other benchmarks).

    python benchmarks/bench_sinkhorn.py --busy [--sizes 256x100 4096x3000] [--repeats 15]

Under load (issue 37): SwAV's codes and the online clusterers' other per-step ops that dcx writes
differently from the reference (SwAV's prototype normalisation, DeepCluster-v2's bank write), each
timed alternating with its reference in this process, first quiet, then with a competing process
spinning a one-thread matmul loop (a loader worker, a second job). Writes
benchmarks/results/sinkhorn-busy.json and the "## Sinkhorn and per-step ops under load" section.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time

import torch

from _report import environment, write_results, write_section
from dcx.algorithms.bank import MemoryBank
from dcx.algorithms.sinkhorn import swav_codes, swav_codes_reference
from dcx.algorithms.threads import SMALL_OP_NUMEL, one_thread_if_small
from dcx.clusterers.swav import SwAVHead

log = logging.getLogger("bench_sinkhorn")


def cosine_scores(b: int, k: int, dim: int = 128, seed: int = 0) -> torch.Tensor:
    """Scores as SwAV sees them: unit embeddings against unit prototypes."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, dim, generator=g), dim=1)
    w = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=1)
    return (z @ w.t()).contiguous()


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def measure(scores: torch.Tensor, eps: float, iters: int, repeats: int) -> dict:
    """Interleaved timings of both implementations at the current thread count (ms)."""
    ours, ref = [], []
    for i in range(repeats + 2):  # 2 warm-up rounds
        t_ref, _ = timed(swav_codes_reference, scores, eps, iters)
        t_ours, _ = timed(swav_codes, scores, eps, iters)
        if i >= 2:
            ref.append(t_ref)
            ours.append(t_ours)
    return {
        "threads": torch.get_num_threads(),
        "dcx_ms_median": 1e3 * statistics.median(ours),
        "reference_ms_median": 1e3 * statistics.median(ref),
        "dcx_ms_min": 1e3 * min(ours),
        "reference_ms_min": 1e3 * min(ref),
        "speedup": statistics.median(ref) / statistics.median(ours),
    }


# ----------------------------------------------------------------------------- under load (--busy)

#: The competing process: a one-thread BLAS loop that keeps one core busy, as a loader worker would.
_SPIN = "import numpy as np\na = np.random.rand(300, 300)\nwhile True:\n    a @ a\n"


def start_busy() -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SPIN], env=env)
    time.sleep(2.0)  # let it start spinning
    return proc


def reference_normalize(weight: torch.Tensor) -> None:
    """SwAV's prototype normalisation (main_swav.py): clone, normalise, copy back."""
    with torch.no_grad():
        w = weight.data.clone()
        w = torch.nn.functional.normalize(w, dim=1, p=2)
        weight.copy_(w)


def per_step_ops(b: int, k: int, eps: float, iters: int, dim: int = 128) -> dict:
    """{op: (reference callable, dcx callable)} at batch b and k prototypes."""
    scores = cosine_scores(b, k, dim)
    head = SwAVHead(dim, dim, dim, k)
    ref_head = SwAVHead(dim, dim, dim, k)
    n_bank = 65_536
    bank = MemoryBank(torch.zeros(1, n_bank, dim))
    bank.start_epoch(torch.device("cpu"))
    ref_bank, ref_index = torch.zeros(n_bank, dim), torch.zeros(n_bank, dtype=torch.long)
    z = torch.nn.functional.normalize(torch.randn(b, dim), dim=1)
    idx = torch.randperm(n_bank)[:b]

    def reference_write():  # main_deepclusterv2.py: the batch's indices and embeddings at the next position
        ref_index[:b] = idx
        ref_bank[:b] = z
    return {
        "swav codes": (lambda: swav_codes_reference(scores, eps, iters), lambda: swav_codes(scores, eps, iters)),
        "swav prototype normalisation": (lambda: reference_normalize(ref_head.prototypes.weight),
                                         head.normalize_prototypes),
        # both copy the batch to the next position of a buffer; dcx scatters its buffer by index every
        # PENDING_ROWS rows (amortised: in the mean, rarely in the median)
        "dcv2 bank write": (reference_write, lambda: bank.write(0, idx, z)),
    }


def alternate(ops: dict, repeats: int) -> dict:
    """Median ms of each op's reference and dcx callables, alternating, after 3 warm-up rounds."""
    times = {name: ([], []) for name in ops}
    for i in range(repeats + 3):
        for name, (ref, ours) in ops.items():
            t_ref, _ = timed(ref)
            t_ours, _ = timed(ours)
            if i >= 3:
                times[name][0].append(t_ref)
                times[name][1].append(t_ours)
    out = {}
    for name, (ref, ours) in times.items():
        r, o = statistics.median(ref), statistics.median(ours)
        out[name] = {"reference_ms_median": 1e3 * r, "dcx_ms_median": 1e3 * o, "ratio_dcx_over_reference": o / r,
                     "reference_ms_min": 1e3 * min(ref), "dcx_ms_min": 1e3 * min(ours),
                     "reference_ms_mean": 1e3 * statistics.fmean(ref), "dcx_ms_mean": 1e3 * statistics.fmean(ours)}
    return out


def switch_cost(repeats: int = 2000) -> float:
    """Microseconds of one switch to one thread and back (``one_thread_if_small`` with nothing inside)."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        with one_thread_if_small(1):
            pass
    return 1e6 * (time.perf_counter() - t0) / repeats


def main_busy(args) -> None:
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    phases = {}
    loads = {}
    for phase in ("quiet", "busy"):
        proc = start_busy() if phase == "busy" else None
        try:
            loads[phase] = [os.getloadavg()[0]]
            rows = []
            for b, k in sizes:
                reps = args.repeats if b * k <= 4_000_000 else max(5, args.repeats // 2)
                res = alternate(per_step_ops(b, k, args.eps, args.iters), reps)
                rows.append({"batch": b, "k": k, "repeats": reps, "ops": res})
                log.info("%s B=%d K=%d: %s", phase, b, k,
                         ", ".join(f"{n} {v['ratio_dcx_over_reference']:.2f}x" for n, v in res.items()))
            switch = switch_cost()
            loads[phase].append(os.getloadavg()[0])
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
        phases[phase] = {"sizes": rows, "thread_switch_us": switch}
    result = {
        "benchmark": "per-step ops of the online clusterers vs their references, quiet and with a busy process",
        "busy_process": "a one-thread numpy 300x300 matmul loop (OMP/OPENBLAS/MKL_NUM_THREADS=1)",
        "eps": args.eps, "sinkhorn_iters": args.iters, "small_op_numel": SMALL_OP_NUMEL,
        "phases": phases, "load_average_1min": loads, **environment(),
    }
    write_results("sinkhorn-busy", result)
    log.info(json.dumps(result, indent=2))

    lines = []
    for phase in ("quiet", "busy"):
        for row in phases[phase]["sizes"]:
            for name, v in row["ops"].items():
                lines.append(f"| {phase} | {name} | {row['batch']} | {row['k']} | {v['reference_ms_median']:.3f} ms "
                             f"| {v['dcx_ms_median']:.3f} ms | **{v['ratio_dcx_over_reference']:.2f}x** |")
    table = "\n".join(lines)
    section = f"""
Per-step ops of SwAV and DeepCluster-v2 that dcx writes differently from the reference, each
alternating with its reference in one process (median of {args.repeats} rounds, fewer above 4M
elements; `python benchmarks/bench_sinkhorn.py --busy`, raw numbers in
`benchmarks/results/sinkhorn-busy.json`): first as the machine is ("quiet"), then with a competing
process spinning a one-thread numpy matmul loop ("busy"). Prototype normalisation is on K x 128, the bank write
B rows of 128 into a 65,536-row bank (dcx's scatter of its arrival-order buffer every 16,384 rows is
in the JSON's means). Target (issue 37): dcx / reference <= 1.2 under load at B = 256, K = 100 and
<= 1.0 at B = 4,096, K = 3,000.

| phase | op | B | K | reference | dcx | dcx / reference |
|---|---|---|---|---|---|---|
{table}

Why: torch runs `exp` on more than 2,048 elements, and most ops on more than 32,768, in its OpenMP
pool, and with a core taken the pool's barrier waits for the descheduled thread (the reference's
codes stall as long). dcx runs these ops on one thread up to {SMALL_OP_NUMEL:,} elements
(`dcx.algorithms.threads.one_thread_if_small`; a switch to one thread and back costs
{phases['quiet']['thread_switch_us']:.1f} µs); larger calls keep the pool. Load average (1 min) quiet
{loads['quiet'][0]:.1f}–{loads['quiet'][1]:.1f}, busy {loads['busy'][0]:.1f}–{loads['busy'][1]:.1f}
(other jobs shared the machine: "quiet" was not idle). {result['when'][:1].upper() + result['when'][1:]}, {result['machine']}.
"""
    write_section("Sinkhorn and per-step ops under load", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=3000)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="*", help="thread counts to time (default: torch's, then 1)")
    parser.add_argument("--busy", action="store_true", help="the per-step ops, quiet and beside a busy process")
    parser.add_argument("--sizes", nargs="*", default=["256x100", "1024x1000", "4096x3000"],
                        help="--busy: BxK sizes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.busy:
        main_busy(args)
        return

    scores = cosine_scores(args.batch, args.k)
    default_threads = torch.get_num_threads()
    thread_counts = args.threads or sorted({default_threads, 1}, reverse=True)
    load_before = os.getloadavg()[0]
    runs = []
    for n in thread_counts:
        torch.set_num_threads(n)
        runs.append(measure(scores, args.eps, args.iters, args.repeats))
    torch.set_num_threads(default_threads)
    load_after = os.getloadavg()[0]

    q_ours = swav_codes(scores, args.eps, args.iters)
    q_ref = swav_codes_reference(scores, args.eps, args.iters)
    ref64 = swav_codes_reference(scores.double(), args.eps, args.iters)
    result = {
        "benchmark": "swav_codes vs SwAV distributed_sinkhorn (one process)",
        "batch": args.batch,
        "k": args.k,
        "eps": args.eps,
        "sinkhorn_iters": args.iters,
        "dtype": "float32",
        "repeats": args.repeats,
        **runs[0],
        "runs": runs,
        "max_abs_diff_vs_reference": float((q_ours - q_ref).abs().max()),
        "max_abs_diff_vs_float64_reference": {
            "dcx": float((q_ours.double() - ref64).abs().max()),
            "reference": float((q_ref.double() - ref64).abs().max()),
        },
        "max_code_row_sum_error": float((q_ours.sum(dim=1) - 1).abs().max()),
        "load_average_1min": [load_before, load_after],
        **environment(),
    }
    write_results("sinkhorn", result)
    log.info(json.dumps(result, indent=2))

    r = result
    rows = "\n".join(
        f"| {x['threads']} | {x['reference_ms_median']:.1f} ms (min {x['reference_ms_min']:.1f}) "
        f"| {x['dcx_ms_median']:.1f} ms (min {x['dcx_ms_min']:.1f}) | {x['speedup']:.2f}x |"
        for x in runs
    )
    section = f"""
One SwAV Sinkhorn-Knopp call, B={r['batch']}, K={r['k']}, eps={r['eps']}, {r['sinkhorn_iters']} iterations,
float32 cosine scores; median of {r['repeats']} interleaved runs in one process
(`python benchmarks/bench_sinkhorn.py`, raw numbers in `benchmarks/results/sinkhorn.json`).

| threads | reference (SwAV `distributed_sinkhorn`, one process) | `dcx.algorithms.sinkhorn.swav_codes` | speed-up |
|---|---|---|---|
{rows}

Codes equal to the reference's within {r['max_abs_diff_vs_reference']:.1e} (against a float64 reference: dcx
{r['max_abs_diff_vs_float64_reference']['dcx']:.1e}, reference {r['max_abs_diff_vs_float64_reference']['reference']:.1e}).
Why faster: the matrix is exponentiated once and never rescaled in place; each iteration is two
matrix-vector products with the scaling vectors (~11 passes over the B x K matrix instead of ~23).
{r['when'][:1].upper() + r['when'][1:]}, {r['machine']} ({r['load_average_1min'][0]:.1f} before).
On a loaded machine absolute times are several times docs/performance.md's ~76 ms (idle,
2 threads): compare the ratio.
"""
    write_section("Sinkhorn", section)
    log.info("wrote benchmarks/results/sinkhorn.json and the Sinkhorn section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
