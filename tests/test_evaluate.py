import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dcx.cli import app
from dcx import evaluation as E
from dcx.training.engine import Engine
from dcx.training.setup import setup
from dcx.core.errors import InputError
from dcx.algorithms.kmeans import kmeans
from dcx.algorithms.pca import PCAWhitening
from dcx.algorithms.metrics import clustering_scores, hungarian_accuracy
from dcx.training.rundir import RunDir

runner = CliRunner()




# ----------------------------------------------------------------------------- metrics and protocols


def test_clustering_scores_known_cases():
    truth = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    renamed = np.array([5, 5, 5, 3, 3, 3, 9, 9, 9])  # same partition, other ids
    assert clustering_scores(truth, renamed) == pytest.approx({"nmi": 1.0, "ari": 1.0, "accuracy": 1.0})
    # One point of class 0 moved to cluster 1: best matching gets 8 of 9 right.
    assert hungarian_accuracy(truth, np.array([0, 0, 1, 1, 1, 1, 2, 2, 2])) == pytest.approx(8 / 9)
    # One cluster for everything: NMI and ARI 0, accuracy = largest class share.
    assert clustering_scores(truth, np.zeros(9, int)) == pytest.approx({"nmi": 0.0, "ari": 0.0, "accuracy": 1 / 3})


def test_knn_votes_are_weighted_by_similarity():
    # Test point at angle 0; one class-0 neighbour at angle 0, two class-1 neighbours at 60 degrees.
    # Majority of 3 says class 1, but exp(1/0.1) > 2 exp(0.5/0.1): weighted kNN says class 0.
    a = np.deg2rad([0.0, 60.0, 60.0])
    train = np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32) * np.array([[3.0], [1.0], [2.0]], np.float32)
    scores = E.knn_classify(train, np.array([0, 1, 1]), np.array([[2.0, 0.0]], np.float32), np.array([0]), ks=(1, 3, 200))
    assert scores == {"top1_k1": 1.0, "top1_k3": 1.0, "top1_k200": 1.0}  # k=200 > N uses all 3
    hot = E.knn_classify(train, np.array([0, 1, 1]), np.array([[2.0, 0.0]], np.float32), np.array([0]), ks=(3,), temperature=10.0)
    assert hot == {"top1_k3": 0.0}  # near-uniform weights: the majority wins


def test_linear_probe_separates_linearly_separable_features():
    # Labels from the sign pattern of two random projections in 32-d, with a margin: linearly
    # separable but not clustered (each class is a wedge through the origin), so kNN does poorly.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 32)).astype(np.float32)
    w = rng.normal(size=(32, 2))
    proj = x @ w / np.linalg.norm(w, axis=0)
    keep = np.abs(proj).min(1) > 0.1
    x, proj = x[keep], proj[keep]
    y = (proj[:, 0] > 0) * 2 + (proj[:, 1] > 0)
    tr, te = E.stratified_split(y)
    res = E.linear_probe(x[tr], y[tr], x[te], y[te])
    assert res["top1"] >= 0.98 and res["train_top1"] >= 0.99
    assert E.knn_classify(x[tr], y[tr], x[te], y[te])["top1_k20"] < 0.8
    # Shuffled labels carry no signal: chance level on the test split.
    shuffled = rng.permutation(y)
    assert E.linear_probe(x[tr], shuffled[tr], x[te], shuffled[te])["top1"] < 0.4


def test_cluster_protocol_finds_separated_classes_and_reports_both_preprocessings():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 150)
    centres = np.zeros((2, 16))
    centres[0, 0] = centres[1, 1] = 10.0
    x = (centres[y] + rng.normal(size=(300, 16))).astype(np.float32)
    res = E.cluster_protocol(x, y, runs=3)
    assert set(res) == {"l2", "pca256-whiten-l2"}
    assert res["l2"]["nmi"] == pytest.approx(1.0) and res["l2"]["accuracy"] == pytest.approx(1.0)
    assert res["l2"]["nmi_std"] == pytest.approx(0.0)
    # Whitening all 16 dims gives the 15 noise dims the weight of the one that separates the
    # classes: the reason the l2 variant is reported beside the paper's preprocessing.
    assert res["pca256-whiten-l2"]["nmi"] < 0.5


def test_gram_pca_whitening_equals_the_covariance_one():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(200, 30)) @ rng.normal(size=(30, 400)) + 0.1 * rng.normal(size=(200, 400))).astype(np.float32)
    a, b = E.pca_whiten_l2(x, 20), PCAWhitening(20).fit_transform(x)  # N < d: Gram route
    signs = np.sign((a * b).sum(0))
    assert np.abs(a - b * signs).max() < 1e-3


def test_stratified_split_is_fixed_and_keeps_class_shares():
    y = np.repeat(np.arange(4), [50, 30, 10, 3])
    tr, te = E.stratified_split(y)
    tr2, te2 = E.stratified_split(y)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(y)
    assert [int((y[te] == c).sum()) for c in range(4)] == [15, 9, 3, 1]


def test_pooling_bounds_dims():
    assert E.pooled_side(24, 15, 15) is None  # 5,400 dims: kept
    side = E.pooled_side(96, 55, 55)  # full-size AlexNet conv1
    assert 96 * side * side <= E.MAX_DIMS and 96 * (side + 1) ** 2 > E.MAX_DIMS
    assert E.pooled_side(20000, 2, 2) == 1


def test_unknown_protocol_and_layer_are_one_line_errors(tiny_config):
    with pytest.raises(InputError, match="unknown protocol"):
        E.check_protocols("linear,svm")
    with pytest.raises(InputError, match="conv1, conv2, conv3, conv4, conv5, features"):
        E.layer_names(setup(tiny_config, load_images=False).model, ["conv9"])


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 1-epoch run on 200 digits, with the random-init weights it started from."""
    from dcx.core.config import RunConfig

    cfg = RunConfig(clusterer="kmeans", backbone="alexnet", dataset="digits", k=10, epochs=1, passes=1,
                    batch_size=32, image_size=32, width=0.125, seed=3, probe=False,
                    options={"digits": {"limit": 200}, "alexnet": {"fc_dim": 64}})
    path = tmp_path_factory.mktemp("run")
    s = setup(cfg)
    init = {k: v.clone() for k, v in s.model.state_dict().items()}
    run = RunDir(path)
    run.create()
    run.write_config(s.config.to_toml())
    Engine(s).run(run)
    return path, init


def test_random_baseline_is_the_runs_initialisation(tiny_run):
    path, init = tiny_run
    loaded = E.load_run(path)
    assert all(torch.equal(init[k], v) for k, v in loaded.random.state_dict().items())
    assert not all(torch.equal(init[k], v) for k, v in loaded.learned.state_dict().items())
    assert loaded.data.split.startswith("digits has no test split: seeded stratified split")


def test_eval_cli_prints_table_and_stores_eval_json_and_summary(tiny_run):
    path, _ = tiny_run
    result = runner.invoke(app, ["eval", str(path), "--protocol", "all", "--layers", "conv3,features", "--no-report"])
    assert result.exit_code == 0, result.output
    for words in ("linear probe top-1", "learned", "random", "weighted kNN", "pca256-whiten-l2", "stratified split"):
        assert words in result.output
    ev = json.loads((path / E.EVAL_JSON).read_text())
    assert ev["layers"] == ["conv3", "features"] and ev["protocols"] == ["linear", "knn", "cluster"]
    for net in ("learned", "random"):
        for layer in ev["layers"]:
            assert 0.0 <= ev[net]["linear"][layer]["top1"] <= 1.0
            assert set(ev[net]["knn"][layer]) == {"top1_k20", "top1_k200"}
            assert set(ev[net]["cluster"][layer]) == {"l2", "pca256-whiten-l2"}
    summary = json.loads((path / "summary.json").read_text())
    assert summary["eval"]["layer"] in ev["layers"] and "linear_top1" in summary["eval"]["random"]
    # A later partial evaluation keeps the other protocols and layers.
    result = runner.invoke(app, ["eval", str(path), "-p", "knn", "-l", "conv5", "--no-report", "--quiet"])
    assert result.exit_code == 0, result.output
    ev = json.loads((path / E.EVAL_JSON).read_text())
    assert set(ev["learned"]["knn"]) == {"conv3", "conv5", "features"} and "conv3" in ev["learned"]["linear"]


def test_eval_random_network_alone():
    result = runner.invoke(app, ["eval", "--random", "--backbone", "alexnet", "--opt", "digits.limit=120",
                                 "--opt", "alexnet.fc_dim=64", "--width", "0.125", "-p", "knn", "-l", "conv5", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert "learned" not in out and set(out["random"]["knn"]) == {"conv5"}


def test_unlabelled_run_dataset_asks_for_a_labelled_one(tmp_path):
    images = tmp_path / "flat"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(images / f"{i}.png")
    run = runner.invoke(app, ["run", "--dataset", "imagefolder", "--data-root", str(images), "--opt",
                              "imagefolder.grayscale=true", "--k", "3", "--epochs", "1", "--image-size", "32",
                              "--width", "0.125", "--opt", "alexnet.fc_dim=64", "--out", str(tmp_path / "run"),
                              "--quiet", "--no-report", "--no-probe"])
    assert run.exit_code == 0, run.output
    result = runner.invoke(app, ["eval", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert len(text.splitlines()) == 1, text
    assert "has no labels" in text and "--dataset" in text and "digits" in text
    # ... and evaluating it on a labelled dataset works (the grayscale network takes digits as is).
    ok = runner.invoke(app, ["eval", str(tmp_path / "run"), "--dataset", "digits", "--opt", "digits.limit=100",
                             "-p", "knn", "-l", "features", "--quiet", "--no-report"])
    assert ok.exit_code == 0, ok.output


def test_eval_of_a_missing_run_is_one_line(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "config.toml" in result.output


def test_run_summary_names_the_best_block_and_agrees_with_dcx_eval(tiny_config, tmp_path):
    from dcx.evaluation import evaluate_run
    from dcx.runs.runner import execute, new_run

    tiny_config.epochs = 1
    summary = execute(new_run(tiny_config, tmp_path / "run"))
    best = summary["best_block"]
    assert best["block"] in best["blocks"] and best["images"] == 300 and best["runs"] == E.CLUSTER_RUNS
    assert best["gain"] == pytest.approx(best["learned"] - best["random"])
    assert best["learned"] == max(b["learned"] for b in best["blocks"].values())
    ev = evaluate_run(tmp_path / "run", "cluster", [best["block"]])
    assert ev["learned"]["cluster"][best["block"]]["l2"]["nmi"] == pytest.approx(best["learned"], abs=1e-9)
    assert ev["random"]["cluster"][best["block"]]["l2"]["nmi"] == pytest.approx(best["random"], abs=1e-9)


def test_eval_cluster_runs_sets_the_seeds_averaged_and_replaces_scores_of_another_count(tiny_run, tmp_path):
    """--cluster-runs N: the cluster protocol's mean over N k-means seeds (its first seeds are the
    default's); a previous eval.json's k-means scores of another count are dropped, not mixed."""
    import shutil

    path = tmp_path / "run"
    shutil.copytree(tiny_run[0], path)
    (path / E.EVAL_JSON).unlink(missing_ok=True)
    args = ["eval", str(path), "-p", "cluster", "--no-report", "--quiet"]
    assert runner.invoke(app, [*args, "-l", "conv3,features"]).exit_code == 0
    five = json.loads((path / E.EVAL_JSON).read_text())
    assert five["cluster_runs"] == E.CLUSTER_RUNS and f"mean of {E.CLUSTER_RUNS} seeds" in five["settings"]["cluster"]
    result = runner.invoke(app, [*args, "-l", "features", "--cluster-runs", "2"])
    assert result.exit_code == 0, result.output
    two = json.loads((path / E.EVAL_JSON).read_text())
    assert two["cluster_runs"] == 2 and "mean of 2 seeds" in two["settings"]["cluster"]
    assert set(two["learned"]["cluster"]) == {"features"}  # conv3's 5-seed scores dropped
    loaded = E.load_run(path)
    x = E.extract_layers(loaded.learned, loaded.data, ["features"], 32, torch.device("cpu"))["features"]
    want = E.cluster_protocol(x[loaded.data.cluster_idx], loaded.data.labels[loaded.data.cluster_idx], runs=2)
    assert two["learned"]["cluster"]["features"]["l2"]["nmi"] == pytest.approx(want["l2"]["nmi"])
    bad = runner.invoke(app, [*args, "--cluster-runs", "0"])
    assert bad.exit_code == 2 and "--cluster-runs 0" in bad.output and "Traceback" not in bad.output


def test_stratified_sample_keeps_each_class_share_and_is_seeded():
    labels = np.repeat(np.arange(4), [100, 200, 300, 400])
    idx = np.arange(1000)
    got = E.stratified_sample(labels, idx, 100)
    assert len(got) == 100 and np.all(np.diff(got) > 0)
    assert np.bincount(labels[got]).tolist() == [10, 20, 30, 40]
    assert np.array_equal(got, E.stratified_sample(labels, idx, 100))
    assert not np.array_equal(got, E.stratified_sample(labels, idx, 100, seed=1))
    assert E.stratified_sample(labels, idx, 0) is idx and E.stratified_sample(labels, idx, 1000) is idx
    assert set(labels[E.stratified_sample(labels, idx, 2)]) == {0, 1, 2, 3}  # every class keeps one image


def test_eval_cluster_images_caps_what_is_extracted_and_clustered(tiny_run, tmp_path):
    """--cluster-images N: k-means on a stratified sample of N images; the cluster protocol alone
    decodes and extracts only those; earlier k-means scores on another number of images are dropped."""
    import shutil

    path = tmp_path / "run"
    shutil.copytree(tiny_run[0], path)
    (path / E.EVAL_JSON).unlink(missing_ok=True)
    args = ["eval", str(path), "-p", "cluster", "-l", "features", "--no-report", "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads((path / E.EVAL_JSON).read_text())["cluster_images"] == 200  # digits.limit=200 < the cap
    progress = RecordingProgress()
    ev = E.evaluate_run(path, "cluster", ["conv3"], progress=progress, cluster_images=60)
    assert ev["cluster_images"] == 60 and "at most 60" in ev["settings"]["cluster"]
    assert [t[1] for t in progress.tasks if t[0].startswith("extract")] == [60, 60]  # learned, random
    saved = json.loads((path / E.EVAL_JSON).read_text())
    assert set(saved["learned"]["cluster"]) == {"conv3"}  # features' scores on 200 images dropped, not mixed
    loaded = E.load_run(path)
    sample = E.stratified_sample(loaded.data.labels, loaded.data.cluster_idx, 60)
    x = E.extract_layers(loaded.learned, loaded.data, ["conv3"], 32, torch.device("cpu"))["conv3"]
    want = E.cluster_protocol(x[sample], loaded.data.labels[sample])
    assert ev["learned"]["cluster"]["conv3"]["l2"]["nmi"] == pytest.approx(want["l2"]["nmi"], abs=1e-6)
    # With other protocols the cap applies to k-means only: the classifiers still see every image.
    both = E.evaluate_run(path, ["knn", "cluster"], ["features"], cluster_images=60, save=False)
    assert both["cluster_images"] == 60 and both["train_images"] + both["test_images"] == 200
    bad = runner.invoke(app, [*args, "--cluster-images", "1"])
    assert bad.exit_code == 2 and "--cluster-images 1" in bad.output and "Traceback" not in bad.output


# ----------------------------------------------------------------------------- pace (issue 37)


def test_top_eigenpairs_solver_gives_the_full_solvers_whitening():
    """The eval's leading-eigenpairs PCA (randomized SVD of the covariance) and the full float64
    one: same whitened rows up to each component's sign, same eigenvalues."""
    from dcx.algorithms.pca import top_eigh

    rng = np.random.default_rng(2)
    spectrum = np.arange(1, 301) ** -0.7
    x = (rng.normal(size=(1500, 300)) * spectrum) @ np.linalg.qr(rng.normal(size=(300, 300)))[0]
    x = x.astype(np.float32)
    full = PCAWhitening(dim=40).fit_transform(x)
    top = PCAWhitening(dim=40, solver="top").fit_transform(x)
    signs = np.sign((full * top).sum(0))
    assert np.abs(full - top * signs).max() < 1e-3
    cov = np.cov(x.T.astype(np.float64))
    w, v = top_eigh(cov, 40)
    assert np.all(np.diff(w) <= 0) and np.allclose(w, np.linalg.eigvalsh(cov)[::-1][:40], rtol=1e-4)
    with pytest.raises(ValueError, match="unknown PCA solver"):
        PCAWhitening(dim=4, solver="lanczos").fit(x)


def test_wide_blocks_use_the_top_solver_with_the_same_cluster_scores(monkeypatch):
    """Blocks of >= PCA_TOP_MIN_DIMS dims (here lowered) go through the top solver; the protocol's
    scores equal the full solver's on a tiny case."""
    from dcx.evaluation import protocols as P

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 150)
    x = (rng.normal(size=(4, 120))[y] + 0.8 * rng.normal(size=(600, 120))).astype(np.float32)
    monkeypatch.setattr(P, "PCA_TOP_MIN_DIMS", 10**9)
    full = P.pca_whiten_l2(x, 32)
    monkeypatch.setattr(P, "PCA_TOP_MIN_DIMS", 100)
    used = []
    real = PCAWhitening.fit

    def spy(self, *a, **k):
        used.append(self.solver)
        return real(self, *a, **k)

    monkeypatch.setattr(PCAWhitening, "fit", spy)
    top = P.pca_whiten_l2(x, 32)
    assert used == ["top"]
    signs = np.sign((full * top).sum(0))
    assert np.abs(full - top * signs).max() < 1e-3
    a = clustering_scores(y, kmeans(full, 4, 20, 0).labels)
    b = clustering_scores(y, kmeans(top, 4, 20, 0).labels)
    assert a["nmi"] == pytest.approx(b["nmi"], abs=1e-6)


class RecordingProgress:
    """A Progress that records every task: (description, total, units advanced)."""

    def __init__(self):
        self.tasks = []

    def task(self, description, total):
        from contextlib import contextmanager

        @contextmanager
        def cm():
            row = [description, total, 0]
            self.tasks.append(row)

            def advance(n=1):
                row[2] += n

            yield advance

        return cm()


def test_cluster_eval_shows_progress_per_block_and_seed(tiny_run):
    """dcx eval's cluster protocol reports each block's preprocessings and k-means seeds as they end:
    long evaluations move on the terminal instead of printing nothing until the table."""
    path, _ = tiny_run
    progress = RecordingProgress()
    E.evaluate_run(path, protocols="cluster", layers=["conv5", "features"], progress=progress, save=False,
                   cluster_runs=2)
    kmeans_tasks = [t for t in progress.tasks if t[0].startswith("k-means")]
    assert [t[0] for t in kmeans_tasks] == ["k-means learned conv5", "k-means learned features",
                                            "k-means random conv5", "k-means random features"]
    # 2 preprocessings x (PCA or L2, then the seeds' 20 Lloyd steps together)
    assert all(t[1] == 2 * (1 + 20) and t[2] == t[1] for t in kmeans_tasks)
    assert any(t[0].startswith("extract learned") for t in progress.tasks)
