"""PCA-256 + whitening + L2: dcx's PCAWhitening vs faiss.PCAMatrix (issue 2 target: >= 3x faster,
outputs equal to 1e-4 up to the sign of each component).

d=4096, N=50k (DeepCluster's fc7 size). The data have a decaying, well-separated spectrum so the
top-256 eigenvectors are defined (with near-equal eigenvalues any rotation is a valid PCA and no
two implementations agree to 1e-4).

    python benchmarks/bench_pca.py [--n 50000] [--d 4096]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from _report import environment, write_results, write_section
from dcx.algorithms.pca import PCAWhitening


def data(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.concatenate([np.linspace(10.0, 2.0, 256), np.full(d - 256, 0.3)]).astype(np.float32)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)).astype(np.float32))
    return (rng.normal(size=(n, d)).astype(np.float32) * scales) @ q.T.astype(np.float32) + 1.0


def faiss_pca(x: np.ndarray, dim: int) -> np.ndarray:
    pca = faiss.PCAMatrix(x.shape[1], dim, -0.5)
    pca.train(x)
    y = pca.apply_py(x)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args()
    x = data(args.n, args.d)
    t = time.perf_counter()
    ours = PCAWhitening(dim=args.dim).fit_transform(x)
    t_ours = time.perf_counter() - t
    print(f"dcx {t_ours:.1f} s", flush=True)
    t = time.perf_counter()
    ref = faiss_pca(x, args.dim)
    t_faiss = time.perf_counter() - t
    print(f"faiss {t_faiss:.1f} s", flush=True)
    signs = np.sign((ours * ref).sum(0))
    err = float(np.abs(ours * signs - ref).max())
    speedup = t_faiss / t_ours
    result = {"n": args.n, "d": args.d, "dim": args.dim, "seconds": {"dcx": t_ours, "faiss.PCAMatrix": t_faiss},
              "speedup": speedup, "max_abs_diff_up_to_sign": err, **environment()}
    write_results("pca", result)
    write_section("PCA-whitening + L2", f"""
N={args.n:,} rows, d={args.d} -> {args.dim} dims, whitening (eigenvalue^-1/2) and L2, one run each in one
process (`python benchmarks/bench_pca.py`, raw numbers in `benchmarks/results/pca.json`).

| implementation | time |
|---|---|
| `faiss.PCAMatrix(d, 256, -0.5)` + L2 (DeepCluster reference) | {t_faiss:.1f} s |
| `dcx.algorithms.pca.PCAWhitening` (covariance by BLAS, float64 eigh) | {t_ours:.1f} s |

**Speed-up {speedup:.1f}x** (target >= 3x); largest difference of the outputs, up to the sign of each
component: {err:.1e} (target 1e-4). {result['when']}, {result['machine']}.
""")
    print(f"speed-up {speedup:.2f}x, max diff {err:.2e}")


if __name__ == "__main__":
    main()
