"""Synthetic data shared by the tests."""

import numpy as np


def mixture(n: int, d: int, c: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm centres + isotropic noise of norm ~``noise``, rows L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, c, n)
    x = centres[y] + rng.standard_normal((n, d)) * (noise / np.sqrt(d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y
