import numpy as np
import pytest
from sklearn.decomposition import PCA

from dcx.core.errors import InputError
from dcx.core.features import PCAWhitening, preprocess


def test_matches_sklearn_whitened_pca_up_to_sign():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(800, 40)) @ rng.normal(size=(40, 40))).astype(np.float32)
    ours = PCAWhitening(dim=16, l2=False).fit_transform(x)
    # sklearn whitens with the unbiased variance (N-1); the reference (faiss) with N.
    ref = PCA(16, whiten=True, svd_solver="full").fit_transform(x) * np.sqrt(len(x) / (len(x) - 1))
    signs = np.sign((ours * ref).sum(0))
    assert np.allclose(ours * signs, ref, atol=1e-3)
    assert np.allclose(ours.std(0), 1, atol=1e-3)  # whitened: unit variance per component


def test_rows_are_unit_norm_and_degenerate_input_is_safe():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    x[:, 3] = 0  # a dead feature: zero eigenvalue
    x[5] = x.mean(0)  # a row at the mean: zero after centring
    y = preprocess(x, dim=256)
    assert y.shape == (100, 8) and np.isfinite(y).all()
    norms = np.linalg.norm(y, axis=1)
    assert np.allclose(np.delete(norms, 5), 1, atol=1e-5)


def test_nan_features_fail_loudly():
    x = np.ones((10, 4), np.float32)
    x[3, 1] = np.inf
    with pytest.raises(InputError, match=r"NaN or inf in 1 row\(s\) \(3\)"):
        preprocess(x)
