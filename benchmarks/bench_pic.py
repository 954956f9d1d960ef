"""PIC benchmark: exact (reference) vs approximate kNN graph at 50k, and 1M rows end to end.

(a) N=50k, d=256, 1000-class Gaussian mixture (unit-norm centres + noise of norm 0.5, rows
    L2-normalised: median squared distance to the 5th neighbour ~0.36, where the reference's
    sigma=0.2 still works). PIC with the reference settings on the exact graph (the reference
    pipeline) against PIC on the approximate graph: end-to-end time ratio, NMI to the true
    labels of each, NMI between the partitions. Also the defaults (data-derived sigma, auto graph).
(b) --large: N=1M, d=256, 20k classes, same generator: PIC with default options end to end,
    wall time and peak resident memory (targets: < 10 min, < 8 GB).

Writes benchmarks/results/pic.json (sections merged with a previous run), prints a markdown
table and replaces the "## PIC" section of docs/benchmarks.md (benchmarks/_report.py).

    python benchmarks/bench_pic.py            # (a), ~1-2 min on 2 cores
    python benchmarks/bench_pic.py --large    # (a) and (b), several minutes more
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import textwrap
import time

import numpy as np

from _report import ROOT, environment, write_results, write_section
from dcx.core.contracts import FitContext
from dcx.core.metrics import nmi
from dcx.plugins.pic import PIC

RESULTS = ROOT / "benchmarks" / "results" / "pic.json"
log = logging.getLogger("bench_pic")


def mixture(n: int, d: int, classes: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm centres + isotropic noise of norm ~``noise``, rows L2-normalised (float32, chunked)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, classes, n)
    x = np.empty((n, d), dtype=np.float32)
    step = 65_536  # chunks keep the generator's peak memory at ~1x the data
    for s in range(0, n, step):
        chunk = rng.standard_normal((min(step, n - s), d), dtype=np.float32)
        chunk *= np.float32(noise / np.sqrt(d))
        chunk += centres[y[s : s + step]]
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        x[s : s + step] = chunk
    return x, y


def rss_now_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run(name: str, x: np.ndarray, y: np.ndarray, seed: int, **options) -> tuple[dict, np.ndarray]:
    pic = PIC(**options)
    t0 = time.perf_counter()
    part = pic.fit(x, FitContext(seed=seed))
    seconds = time.perf_counter() - t0
    st = part.stats
    row = {
        "name": name,
        "options": {k: v for k, v in pic.params.items() if k in options},
        "seconds": round(seconds, 3),
        "time_graph_s": round(st["time_graph_s"], 3),
        "time_pic_s": round(st["time_pic_s"], 3),
        "graph_backend": st["graph_backend"],
        "graph_recall": st["graph_recall"],
        "graph_params": st["graph_params"],
        "sigma": round(st["sigma"], 4),
        "n_clusters": part.n_clusters,
        "singletons": st["singletons"],
        "nmi_labels": round(nmi(y, part.labels), 4),
    }
    log.info("%s: %s", name, row)
    return row, part.labels


def bench_small(args) -> dict:
    x, y = mixture(args.n, args.d, args.classes, args.noise, args.seed)
    ref, ref_labels = run("reference (sigma=0.2, exact graph)", x, y, args.seed, sigma=0.2, graph="exact")
    ivf, ivf_labels = run("sigma=0.2, approximate graph (ivf)", x, y, args.seed, sigma=0.2, graph="ivf")
    dft, dft_labels = run("defaults (sigma from data, graph auto)", x, y, args.seed)
    ivf["nmi_to_reference"] = round(nmi(ref_labels, ivf_labels), 4)
    dft["nmi_to_reference"] = round(nmi(ref_labels, dft_labels), 4)
    return {
        "data": {"n": args.n, "d": args.d, "classes": args.classes, "noise": args.noise, "seed": args.seed},
        "runs": [ref, ivf, dft],
        "speedup_ivf_vs_exact": round(ref["seconds"] / ivf["seconds"], 2),
        "nmi_diff_ivf_vs_exact": round(ivf["nmi_labels"] - ref["nmi_labels"], 4),
    }


def bench_large(args) -> dict:
    t0 = time.perf_counter()
    x, y = mixture(args.large_n, args.d, args.large_n // 50, args.noise, args.seed)
    gen_s = time.perf_counter() - t0
    data_gb = rss_now_gb()
    exact_peak = reset_peak_rss()
    row, _ = run("defaults, 1M rows", x, y, args.seed)
    return {
        "data": {"n": args.large_n, "d": args.d, "classes": args.large_n // 50, "noise": args.noise, "seed": args.seed},
        "generate_s": round(gen_s, 1),
        "rss_before_fit_gb": round(data_gb, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "peak_rss_measured": "VmHWM reset before fit" if exact_peak else "process peak (includes data generation)",
        "run": row,
    }


def machine() -> dict:
    import faiss

    return {**environment(), "faiss": faiss.__version__, "numpy": np.__version__}


def table(res: dict) -> str:
    lines = []
    if "small" in res:
        s = res["small"]
        d = s["data"]
        lines += [
            f"(a) N={d['n']:,}, d={d['d']}, {d['classes']} classes, noise {d['noise']}: the approximate graph is "
            f"**{s['speedup_ivf_vs_exact']}x** faster end to end, NMI to the labels "
            f"{s['nmi_diff_ivf_vs_exact']:+.4f}.",
            "",
            "| run | total s | graph s | PIC s | graph (recall) | sigma | clusters | NMI labels | NMI to reference |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in s["runs"]:
            rec = "" if r["graph_recall"] is None else f" ({r['graph_recall']:.4f})"
            lines.append(
                f"| {r['name']} | {r['seconds']:.1f} | {r['time_graph_s']:.1f} | {r['time_pic_s']:.2f} | "
                f"{r['graph_backend']}{rec} | {r['sigma']} | {r['n_clusters']} | {r['nmi_labels']:.4f} | "
                f"{r.get('nmi_to_reference', 1.0):.4f} |"
            )
    if "large" in res:
        g = res["large"]
        r = g["run"]
        d = g["data"]
        rec = "" if r["graph_recall"] is None else f" ({r['graph_recall']:.4f})"
        how = (
            "the peak over the fit (kernel counter reset before it)"
            if g["peak_rss_measured"].startswith("VmHWM")
            else "the process peak, data generation included"
        )
        lines += [
            "",
            f"(b) N={d['n']:,}, d={d['d']}, {d['classes']:,} classes, PIC defaults end to end (targets: "
            f"< 10 min, < 8 GB). Peak RSS is {how}; the data alone take {g['rss_before_fit_gb']} GB.",
            "",
            "| rows | total s | graph s | PIC s | graph (recall) | peak RSS GB | clusters | NMI labels |",
            "|---|---|---|---|---|---|---|---|",
            f"| {d['n']:,} | {r['seconds']:.0f} | {r['time_graph_s']:.0f} | {r['time_pic_s']:.1f} | "
            f"{r['graph_backend']}{rec} | {g['peak_rss_gb']} | {r['n_clusters']:,} | {r['nmi_labels']:.4f} |",
        ]
    return "\n".join(lines)


def write_doc(res: dict) -> None:
    m = res.get("machine", {})
    head = (
        "`python benchmarks/bench_pic.py --large` (raw numbers: `benchmarks/results/pic.json`); "
        f"{m.get('when', '')}, {m.get('machine', '')}, faiss {m.get('faiss', '?')}. Other jobs shared "
        "the cores, so absolute times are noisy: compare within a run."
    )
    tail = (
        "The exact graph is O(N^2 d) and nearly all of the reference pipeline's time. The IVF graph "
        "(dcx.core.knn: nlist ~ 4 sqrt(N) lists over k-means centroids, rows searched as BLAS blocks, "
        "nprobe raised until recall >= 0.99 on 500 sampled rows, recall reported on 1000 other rows) "
        "grows about as N^1.5. PIC's own steps (weights, power iteration, pointers, singletons) are "
        "vectorised: a fraction of a second at 50k rows, about a second at 1M. The defaults row uses "
        "the data-derived sigma, max(0.2, half the median distance to the 5th neighbour), which is 0.30 "
        "on this data, not 0.2: hence a slightly different partition."
    )
    write_section("PIC", f"{textwrap.fill(head, 100)}\n\n{table(res)}\n\n{textwrap.fill(tail, 100)}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--large", action="store_true", help="also run (b): 1M rows end to end (minutes)")
    ap.add_argument("--large-n", type=int, default=1_000_000)
    ap.add_argument("--skip-small", action="store_true", help="run only (b)")
    ap.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    ap.add_argument("--doc-only", action="store_true", help="rewrite the doc section from pic.json, run nothing")
    args = ap.parse_args()
    if args.doc_only:
        res = json.loads(RESULTS.read_text())
        print(table(res))
        write_doc(res)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    res = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.skip_small:
        res["small"] = bench_small(args)
    if args.large:
        res["large"] = bench_large(args)
    res["machine"] = machine()
    write_results("pic", res)
    print(table(res))
    if not args.no_doc:
        write_doc(res)


if __name__ == "__main__":
    main()
