"""Pseudo-label bookkeeping: contiguous relabelling and sampling uniform over clusters (paper §3.3)."""

from __future__ import annotations

import numpy as np
import torch


def relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map the non-empty cluster ids to 0..m-1. Returns (new labels, old id of each new id)."""
    kept, new = np.unique(labels, return_inverse=True)
    return new.astype(np.int64), kept


def uniform_label_indices(labels: np.ndarray, n_total: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n_total`` images drawn uniformly over pseudo-labels (reference UnifLabelSampler).

    Each non-empty cluster gets a quota of int(n_total / m) + 1 draws, without replacement when it
    has enough images, with replacement otherwise. Unlike the reference, indices are drawn per
    cluster from the *original* dataset order (the reference indexed a cluster-sorted copy, so
    draws tracked cluster size; see docs/algorithms "Reference sampler pitfall"), and the surplus
    over ``n_total`` is removed one draw from each of some clusters rather than by truncating a
    shuffle, so per-cluster counts differ by at most one.
    """
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nonempty = np.flatnonzero(counts)
    quota = int(n_total / len(nonempty)) + 1
    surplus = len(nonempty) * quota - n_total  # 1..m by the choice of quota
    short = set(rng.choice(len(nonempty), size=surplus, replace=False).tolist())
    picks = []
    for j, c in enumerate(nonempty):
        members = order[starts[c] : starts[c] + counts[c]]
        size = quota - (j in short)
        picks.append(rng.choice(members, size=size, replace=len(members) < size))
    out = np.concatenate(picks)
    rng.shuffle(out)
    return out


class UniformLabelSampler(torch.utils.data.Sampler[int]):
    """A torch Sampler over ``uniform_label_indices``; a new draw on every iteration."""

    def __init__(self, labels: np.ndarray, n_total: int, seed: int) -> None:
        self.labels = np.asarray(labels)
        self.n_total = int(n_total)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.n_total

    def __iter__(self):
        return iter(uniform_label_indices(self.labels, self.n_total, self.rng).tolist())
