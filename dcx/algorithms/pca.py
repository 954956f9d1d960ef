"""The offline preprocessing: PCA-whitening + L2 (DeepCluster §3.2)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from dcx.algorithms.arrays import check_finite, row_chunks
from dcx.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)


@dataclass
class PCAWhitening:
    """PCA to ``dim`` components, optional whitening (eigenvalue^-1/2), then L2 rows.

    Same maps as ``faiss.PCAMatrix(d, dim, -0.5)`` + L2 (the DeepCluster reference) but through
    an eigendecomposition of the covariance: 9.4x faster at N=50k, d=4096 (benchmarks/bench_pca.py,
    docs/benchmarks.md), because faiss's PCA runs a single-threaded d x d solver.

    ``fit`` takes an in-memory array, a memory map or ``arrays.NpyRows``. In memory with N > d
    it centres all rows at once; with N <= d it goes through the N x N Gram matrix (no d x d
    covariance: d = 100k would need 40 GB); otherwise (larger than ``in_memory_bytes``, or a
    block of a multi-process run) it accumulates the covariance over row chunks in two passes,
    summing the statistics of every rank with ``all_reduce``.
    """

    dim: int = 256
    whiten: bool = True
    l2: bool = True
    eps: float = 1e-8
    in_memory_bytes: int = 2 * 1024**3
    #: "full": every eigenpair of the covariance in float64 (the training step's map); "top": only the
    #: ``dim`` leading ones by randomized SVD (``top_eigh``), for d >> dim (dcx eval's blocks of up to
    #: 9,216 dims).
    solver: str = "full"

    mean_: np.ndarray | None = None
    components_: np.ndarray | None = None  # (d, dim), scaled by eigenvalue^-1/2 when whitening
    eigenvalues_: np.ndarray | None = None

    def fit(self, x, rows: slice | None = None,
            all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> "PCAWhitening":
        """Fit on ``x`` ((N, d)); in a multi-process run on this rank's ``rows``, statistics summed
        over ranks by ``all_reduce``."""
        if x.ndim != 2 or len(x) < 2:
            raise InputError(f"PCA needs an (N, d) matrix with N >= 2, got shape {x.shape}")
        n, d = x.shape
        whole = rows is None and all_reduce is None
        if whole and isinstance(x, np.ndarray) and not isinstance(x, np.memmap) and x.nbytes <= self.in_memory_bytes:
            check_finite(x)
            if n <= d:
                return self._fit_gram(x)
            x32 = np.ascontiguousarray(x, dtype=np.float32)
            mean = x32.mean(0, dtype=np.float64)
            centred = x32 - mean.astype(np.float32)
            # Covariance in float32 (the O(N d^2) part: numpy's syrk for a.T @ a, multithreaded BLAS),
            # eigh in float64 (the top solver stays in float32).
            cov = centred.T @ centred
            cov = (cov if self.solver == "top" else cov.astype(np.float64)) / len(x32)
            return self._finish(mean, cov, d)
        if whole and n <= d:
            return self._fit_gram(np.asarray(x[0:n]))
        return self._fit_chunked(x, rows, all_reduce)

    def _fit_chunked(self, x, rows: slice | None, all_reduce) -> "PCAWhitening":
        """Two passes over row chunks (numpy BLAS): the mean, then the centred covariance; with
        ``all_reduce``, both statistics are summed over ranks."""
        n, d = x.shape
        total = np.zeros(d, dtype=np.float64)
        count = 0.0
        for r in row_chunks(n, d, rows):
            chunk = np.asarray(x[r], dtype=np.float32)
            check_finite(chunk)
            total += chunk.sum(0, dtype=np.float64)
            count += len(chunk)
        if all_reduce is not None:
            total, count = _reduce(all_reduce, total), float(_reduce(all_reduce, np.array([count]))[0])
        mean = total / count
        mean32 = mean.astype(np.float32)
        cov = np.zeros((d, d), dtype=np.float64)
        for r in row_chunks(n, d, rows):
            centred = np.asarray(x[r], dtype=np.float32) - mean32
            cov += centred.T @ centred
        if all_reduce is not None:
            cov = _reduce(all_reduce, cov)
        return self._finish(mean, cov / count, d)

    def _fit_gram(self, x: np.ndarray) -> "PCAWhitening":
        """N <= d: eigenvectors of the covariance from those of the N x N Gram matrix of centred rows."""
        x = np.asarray(x, dtype=np.float32)
        n = len(x)
        mean = x.mean(0, dtype=np.float64)
        centred = x - mean.astype(np.float32)
        evals, evecs = np.linalg.eigh((centred @ centred.T).astype(np.float64))
        keep = min(self.dim, x.shape[1], n)
        evals, evecs = np.clip(evals[::-1][:keep], 0, None), evecs[:, ::-1][:, :keep]
        floor = 1e-10 * max(float(evals[0]), 1e-30)
        live = evals > floor  # centring leaves at most N - 1 directions with variance
        comps = np.zeros((x.shape[1], keep), dtype=np.float64)
        comps[:, live] = (centred.T.astype(np.float64) @ evecs[:, live]) / np.sqrt(evals[live])
        return self._store(mean, comps, evals / n)

    def _finish(self, mean: np.ndarray, cov: np.ndarray, d: int) -> "PCAWhitening":
        keep = min(self.dim, d)
        if self.solver == "top":
            evals, evecs = top_eigh(cov, keep)
            return self._store(mean, evecs, np.clip(evals, 0, None))
        if self.solver != "full":
            raise ValueError(f"unknown PCA solver {self.solver!r}: use full or top")
        evals, evecs = np.linalg.eigh(cov)
        evals = np.clip(evals[::-1][:keep], 0, None)
        return self._store(mean, evecs[:, ::-1][:, :keep], evals)

    def _store(self, mean: np.ndarray, components: np.ndarray, variances: np.ndarray) -> "PCAWhitening":
        """Keep the fit: components (d, keep) and the variance along each, whitened if asked."""
        if self.whiten:
            # Guard tiny/zero eigenvalues (constant or duplicated features) against division by 0.
            components = components / np.sqrt(variances + self.eps * max(float(variances[0]), 1e-30))
        self.mean_ = mean.astype(np.float32)
        self.components_ = components.astype(np.float32)
        self.eigenvalues_ = variances.astype(np.float32)
        return self

    def transform(self, x, rows: slice | None = None) -> np.ndarray:
        """Project ``x`` (or its ``rows``) in chunks: an (n, dim) float32 array."""
        if self.components_ is None:
            raise RuntimeError("PCAWhitening.transform called before fit")
        n, d = x.shape
        start, stop, _ = (rows or slice(0, n)).indices(n)
        out = np.empty((stop - start, self.components_.shape[1]), dtype=np.float32)
        for r in row_chunks(n, d, slice(start, stop)):
            chunk = np.asarray(x[r], dtype=np.float32)
            check_finite(chunk)
            y = (chunk - self.mean_) @ self.components_
            if self.l2:
                y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
            out[r.start - start : r.stop - start] = y
        return out

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).transform(x)


def top_eigh(a: np.ndarray, keep: int, oversample: int = 64, iters: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` largest eigenvalues (descending) and their eigenvectors (d, keep) of the symmetric
    positive semi-definite ``a`` (a covariance), by randomized SVD (scikit-learn's ``randomized_svd``:
    ``iters`` power iterations on ``keep + oversample`` random directions, Halko et al. 2011).

    O(d^2 keep) matrix products instead of the O(d^3) tridiagonal reduction of an eigensolver, which
    at d = 5,400 is most of a block's PCA; eigenvalues within 1e-3 of the exact ones, relative
    (docs/decisions.md D60). ``iters`` > 2 keeps scikit-learn's LU normalisation between power
    iterations, without which float32 loses the smaller of the kept eigenpairs.
    """
    from sklearn.utils.extmath import randomized_svd

    d = len(a)
    keep = min(keep, d)
    if keep + oversample >= d // 2:  # no cheaper than the whole eigendecomposition
        w, v = np.linalg.eigh(np.asarray(a, dtype=np.float64))
        return w[::-1][:keep].copy(), v[:, ::-1][:, :keep].copy()
    u, s, _ = randomized_svd(np.asarray(a, dtype=np.float32), keep, n_oversamples=oversample, n_iter=iters,
                             random_state=0)
    return s.astype(np.float64), u.astype(np.float64)


def _reduce(all_reduce, a: np.ndarray) -> np.ndarray:
    """Sum a numpy array over ranks with a torch all_reduce."""
    import torch

    return all_reduce(torch.from_numpy(np.ascontiguousarray(a))).numpy()


def preprocess(x: np.ndarray, dim: int = 256, whiten: bool = True, l2: bool = True) -> np.ndarray:
    """DeepCluster's preprocessing (paper §3, reference ``preprocess_features``): PCA, whiten, L2."""
    return PCAWhitening(dim=dim, whiten=whiten, l2=l2).fit_transform(x)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
