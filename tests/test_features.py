import numpy as np
import pytest
from sklearn.decomposition import PCA

from dcx.core.errors import InputError
from dcx.algorithms.pca import PCAWhitening, preprocess


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


def _same_up_to_sign(a, b, tol):
    signs = np.sign((a * b).sum(0))
    return np.abs(a - b * signs).max() < tol


def test_chunked_and_gram_pca_match_the_in_memory_pca(tmp_path, monkeypatch):
    from dcx.algorithms import arrays
    from dcx.algorithms.arrays import NpyRows

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3000, 40)) @ rng.standard_normal((40, 40))).astype(np.float32)
    ref = PCAWhitening(dim=16).fit_transform(x)
    path = tmp_path / "x.npy"
    np.save(path, x)
    monkeypatch.setattr(arrays, "CHUNK_BYTES", 4096 * 4)  # many small chunks
    chunked = PCAWhitening(dim=16).fit(NpyRows(path)).transform(NpyRows(path))
    assert _same_up_to_sign(ref, chunked, 1e-3)
    # fewer rows than dims: the N x N Gram form, no d x d covariance
    wide = rng.standard_normal((50, 400)).astype(np.float32)
    gram = PCAWhitening(dim=16).fit(wide)
    assert gram.components_.shape == (400, 16)
    cov = PCAWhitening(dim=16)._fit_chunked(wide, None, None)
    assert _same_up_to_sign(gram.transform(wide), cov.transform(wide), 1e-3)


def test_npy_rows_refuses_what_it_cannot_stream(tmp_path):
    from dcx.algorithms.arrays import NpyRows
    from dcx.core.errors import InputError

    np.save(tmp_path / "obj.npy", np.array([[object()]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((4, 3), np.float32)))
    np.save(tmp_path / "ok.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:-8])
    for name, words in [("obj.npy", "Python objects"), ("f.npy", "Fortran order"), ("cut.npy", "truncated")]:
        with pytest.raises(InputError, match=words):
            NpyRows(tmp_path / name)
    rows = NpyRows(tmp_path / "ok.npy")
    assert rows.shape == (4, 3) and np.array_equal(rows[1:3], np.arange(3, 9, dtype=np.float32).reshape(2, 3))
