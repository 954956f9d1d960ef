"""Feature extraction (eval mode, streamed) and the offline preprocessing: PCA-whitening + L2."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from dcx.core.errors import InputError

log = logging.getLogger(__name__)


def check_finite(features: np.ndarray, what: str = "features") -> None:
    """Raise InputError naming the first bad rows if ``features`` holds NaN or inf."""
    finite = np.isfinite(features)
    if not finite.all():
        rows = np.flatnonzero(~finite.reshape(len(features), -1).all(axis=1))
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise InputError(
            f"{what} contain NaN or inf in {len(rows)} row(s) ({shown}): the network diverged "
            "(lower --lr) or the input holds invalid values"
        )


@torch.no_grad()
def extract(
    model: torch.nn.Module,
    batches: Iterable,
    n: int,
    device: torch.device,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_failed: Callable[[torch.Tensor], None] | None = None,
) -> np.ndarray:
    """Run ``model`` in eval mode over ``batches`` of (images, indices, failed indices) and stack
    the outputs (N, d), row i for dataset index i.

    The model's train/eval state is restored afterwards. ``forward`` replaces ``model(x)``
    (e.g. to take an intermediate block); ``on_batch`` receives the batch size (progress);
    ``on_failed`` the indices of images that could not be read (blank rows).
    """
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    pos = 0
    try:
        for batch in batches:
            x, idx = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            y = (forward or model)(x.to(device, non_blocking=True))
            y = y.reshape(len(y), -1).float().cpu().numpy()
            if out is None:
                out = np.empty((n, y.shape[1]), dtype=np.float32)
            if idx is None:
                out[pos : pos + len(y)] = y
            else:
                out[idx.numpy()] = y
            pos += len(y)
            if on_failed is not None and len(batch) > 2 and len(batch[2]):
                on_failed(batch[2])
            if on_batch is not None:
                on_batch(len(y))
    finally:
        model.train(was_training)
    if out is None or pos != n:
        raise InputError(f"feature extraction saw {pos} images, expected {n}: the dataset changed while reading")
    return out


@dataclass
class PCAWhitening:
    """PCA to ``dim`` components, optional whitening (eigenvalue^-1/2), then L2 rows.

    Same maps as ``faiss.PCAMatrix(d, dim, -0.5)`` + L2 (the DeepCluster reference) but through
    an eigendecomposition of the covariance: ~4-5x faster at d=4096 (benchmarks/bench_pca.py,
    docs/benchmarks.md), because faiss's PCA runs a single-threaded d x d solver.
    """

    dim: int = 256
    whiten: bool = True
    l2: bool = True
    eps: float = 1e-8

    mean_: np.ndarray | None = None
    components_: np.ndarray | None = None  # (d, dim), scaled by eigenvalue^-1/2 when whitening
    eigenvalues_: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> "PCAWhitening":
        check_finite(x)
        if x.ndim != 2 or len(x) < 2:
            raise InputError(f"PCA needs an (N, d) matrix with N >= 2, got shape {x.shape}")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        mean = t.mean(0, dtype=torch.float64)
        centred = t - mean.float()
        # Covariance in float32 (the O(N d^2) part, multithreaded BLAS), eigh in float64.
        cov = (centred.T @ centred).double() / len(t)
        evals, evecs = torch.linalg.eigh(cov)
        keep = min(self.dim, x.shape[1])
        evals = evals.flip(0)[:keep].clamp_min(0)
        evecs = evecs.flip(1)[:, :keep]
        if self.whiten:
            # Guard tiny/zero eigenvalues (constant or duplicated features) against division by 0.
            evecs = evecs / torch.sqrt(evals + self.eps * max(float(evals[0]), 1e-30))
        self.mean_ = mean.float().numpy()
        self.components_ = evecs.float().numpy()
        self.eigenvalues_ = evals.float().numpy()
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.components_ is None:
            raise RuntimeError("PCAWhitening.transform called before fit")
        check_finite(x)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        y = (t - torch.from_numpy(self.mean_)) @ torch.from_numpy(self.components_)
        if self.l2:
            y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return y.numpy()

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)


def preprocess(x: np.ndarray, dim: int = 256, whiten: bool = True, l2: bool = True) -> np.ndarray:
    """DeepCluster's preprocessing (paper §3, reference ``preprocess_features``): PCA, whiten, L2."""
    return PCAWhitening(dim=dim, whiten=whiten, l2=l2).fit_transform(x)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
