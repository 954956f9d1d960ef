import numpy as np
import pytest

from dcx.core.config import RunConfig


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny problems: one thread is as fast, and far faster on a loaded machine (no OpenMP waits)."""
    import torch

    try:
        import faiss
    except ImportError:  # the torch k-means backend follows torch's setting
        faiss = None
    before = torch.get_num_threads(), faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    if faiss is not None:
        faiss.omp_set_num_threads(before[1])


@pytest.fixture
def tiny_config(tmp_path) -> RunConfig:
    """A run that takes a second or two: 300 digits, a narrow AlexNet, 2 epochs."""
    return RunConfig(
        clusterer="kmeans", backbone="alexnet", dataset="digits", k=20, epochs=2, passes=1,
        batch_size=32, image_size=32, width=0.125, seed=0,
        options={"digits": {"limit": 300}, "alexnet": {"fc_dim": 64}},
    )


@pytest.fixture
def blobs():
    """Planted clusters: 600 points, 6 well-separated Gaussian blobs in 16-d."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16)) * 5
    y = np.repeat(np.arange(6), 100)
    x = (centres[y] + rng.normal(size=(600, 16))).astype(np.float32)
    return x, y
