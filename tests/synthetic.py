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


def varied_mixture(
    n: int, d: int = 256, c: int = 1000, noise: tuple[float, float] = (0.4, 1.5), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The hard case for kNN graphs: unit-norm centres + isotropic noise whose norm is drawn per
    class, log-uniform in ``noise``; rows L2-normalised, float32, generated in chunks (1M rows fit).

    At d=256 with 50 rows per class (N=50k, c=1000) the squared distance to the 5th neighbour
    spans 0.25-1.27 (1st-99th percentile), per-class medians 0.24-1.26: tight and diffuse classes
    side by side, as in issue 10. ``mixture`` with one noise level is the easy case.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sigma = np.exp(rng.uniform(np.log(noise[0]), np.log(noise[1]), c)).astype(np.float32)
    y = rng.integers(0, c, n)
    x = np.empty((n, d), dtype=np.float32)
    step = 65_536
    for s in range(0, n, step):
        ys = y[s : s + step]
        chunk = rng.standard_normal((len(ys), d), dtype=np.float32)
        chunk *= (sigma[ys] / np.float32(np.sqrt(d)))[:, None]
        chunk += centres[ys]
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        x[s : s + step] = chunk
    return x, y
