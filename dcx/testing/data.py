"""Tiny inputs and comparisons shared by the checks: planted clusters, state equality, JSON."""

from __future__ import annotations

import io
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcx.training.rundir import save_json

#: Planted-cluster problem size: small enough that every check runs in milliseconds.
N, D, K = 200, 16, 5
#: Determinism problem size: more rows than a clusterer that subsamples to at most 5,000 keeps, in
#: few dimensions so that a fit stays fast.
N_OVERLAP, D_OVERLAP = 6000, 4


def blobs(n: int = N, d: int = D, k: int = K, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 unit rows around ``k`` well-separated unit centres, and the true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.arange(n) % k
    x = centres[y] + 0.05 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def overlapping(n: int = N_OVERLAP, d: int = D_OVERLAP, k: int = K, seed: int = 0) -> np.ndarray:
    """(n, d) float32 rows of ``k`` overlapping unit Gaussians around standard-normal centres: any
    other subsample or starting point moves some rows to another cluster (k-means on two random
    5,000-row subsamples regroups thousands of rows)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    return (centres[np.arange(n) % k] + rng.normal(size=(n, d))).astype(np.float32)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings group the rows identically, whatever their cluster ids (every
    cluster of one meets exactly one cluster of the other)."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = len(np.unique(np.stack([a, b], axis=1), axis=0))
    return a.shape == b.shape and pairs == len(np.unique(a)) == len(np.unique(b))


def scramble_global_rngs(seed: int) -> None:
    """Put Python's and NumPy's global generators in a state unrelated to the run seed: a plugin
    that draws from them is not reproducible (the engine seeds only torch's)."""
    random.seed(seed)
    np.random.seed(seed)


def same(a: Any, b: Any) -> bool:
    """Deep equality of state dicts: dicts, sequences, tensors, arrays, numbers, strings."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return type(a) is type(b) and a == b


def checkpoint_round_trip(state: Any) -> Any:
    """``state`` written and read back the way checkpoints are (``torch.load(weights_only=True)``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def saved_state(state: Any) -> Any:
    """A plugin's ``state_dict()`` as the engine's checkpoint gives it back; an AssertionError
    naming the rule when it is not a dict or cannot be read back with ``weights_only=True``."""
    assert isinstance(state, dict), f"state_dict must return a dict, got {type(state).__name__}"
    try:
        return checkpoint_round_trip(state)
    except Exception as exc:
        raise AssertionError(f"state_dict cannot be read back with torch.load(weights_only=True) ({exc}): "
                             "use tensors, numbers, strings, lists and dicts") from None


def assert_json_serialisable(obj: Any, what: str) -> None:
    """``obj`` can be written the way the run directory writes metrics and summaries."""
    assert isinstance(obj, dict), f"{what} must be a dict, got {type(obj).__name__}"
    bad = [k for k in obj if not isinstance(k, str)]
    assert not bad, f"{what} keys must be strings, got {bad!r}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            save_json(Path(tmp) / "stats.json", obj)
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"{what} cannot be written to metrics.jsonl ({exc}): use numbers, strings, lists, dicts")
