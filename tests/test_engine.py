import importlib.metadata as md

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score
from interrupts import run_until_ctrl_c

from dcx.training.engine import Engine
from dcx.core.errors import ContractError, InputError
from dcx.core.registry import Registry
from dcx.training.rundir import RunDir
from dcx.training.setup import setup


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _partition(engine, epoch=0):
    """The offline epoch's clustering of the engine's current features."""
    return engine.epochs._cluster(engine.extract(), epoch)[0]


def test_an_epoch_changes_weights_and_labels(tiny_config):
    tiny_config.epochs = 2
    s = setup(tiny_config)
    before = _params(s.model)
    engine = Engine(s)
    summary = engine.run()
    assert not torch.equal(before, _params(s.model))
    rows = [summary["first"], summary["final"]]
    assert rows[0]["nonempty"] <= 20 and rows[0]["clusters"] == 20
    assert 0 < summary["final"]["nmi_prev"] < 1  # labels moved between epochs but are related
    for key in ("nmi_labels", "probe_nmi", "size_min", "size_median", "size_max", "loss",
                "time_extract", "time_preprocess", "time_cluster", "time_train"):
        assert key in summary["first"], key
    assert np.isfinite(summary["final_loss"])


def test_same_seed_gives_identical_assignments_and_losses(tiny_config, tmp_path):
    outs = []
    for name in ("a", "b"):
        run_dir = RunDir(tmp_path / name)
        run_dir.create()
        Engine(setup(tiny_config)).run(run_dir)
        outs.append((np.load(run_dir.path / "assignments.npy"), [r.get("loss") for r in run_dir.metrics()]))
    assert np.array_equal(outs[0][0], outs[1][0])
    assert outs[0][1] == outs[1][1]


def test_resume_reproduces_the_uninterrupted_run(tiny_config, tmp_path):
    tiny_config.epochs = 3
    full = RunDir(tmp_path / "full")
    full.create()
    Engine(setup(tiny_config)).run(full)

    part = RunDir(tmp_path / "part")
    part.create()
    run_until_ctrl_c(tiny_config, part, epoch=2)  # Ctrl-C during the third epoch
    assert not (part.path / "assignments.npy").exists() and not list(part.path.glob(".*.tmp"))
    assert part.load_checkpoint()["epoch"] == 2
    engine = Engine(setup(tiny_config))
    engine.restore(part.load_checkpoint())
    part.truncate_metrics(engine.start_epoch)
    engine.run(part)
    assert np.array_equal(np.load(full.path / "assignments.npy"), np.load(part.path / "assignments.npy"))
    assert [r["loss"] for r in full.metrics() if "loss" in r] == [r["loss"] for r in part.metrics() if "loss" in r]


def test_plugin_returning_wrong_shape_is_a_contract_error(tiny_config):
    eps = [md.EntryPoint("wrongshape", "fake_plugins:WrongShape", "dcx.clusterers")]
    real = Registry()

    def entry_points(group):
        return eps if group == "dcx.clusterers" else real._entry_points(group)

    tiny_config.clusterer = "wrongshape"
    s = setup(tiny_config, Registry(entry_points))
    with pytest.raises(ContractError, match="wrongshape.*shape"):
        Engine(s).run()


def test_k_larger_than_dataset_is_rejected_before_any_work(tiny_config):
    tiny_config.k = 301
    with pytest.raises(InputError, match="k=301 is larger than the dataset"):
        setup(tiny_config)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(tiny_config, precision):
    tiny_config.precision = precision
    tiny_config.epochs = 1
    s = setup(tiny_config)
    before = _params(s.model)
    engine = Engine(s)
    summary = engine.run()
    assert np.isfinite(summary["final_loss"]) and summary["final_loss"] > 0
    assert not torch.equal(before, _params(s.model))
    assert engine.scaler.is_enabled() == (precision == "fp16")


def test_features_over_the_memory_budget_stream_to_a_memory_map(tiny_config, tmp_path):
    tiny_config.epochs = 1
    in_ram = Engine(setup(tiny_config)).run()
    tiny_config.feature_memory_gb = 1e-6  # a few hundred bytes: everything goes to the memory map
    engine = Engine(setup(tiny_config))
    engine.extract.scratch = tmp_path
    seen = []
    real = engine.extract._array

    def spy(d):
        out = real(d)
        seen.append(type(out))
        return out

    engine.extract._array = spy
    on_disk = engine.run()
    assert seen and all(t is np.memmap for t in seen)
    assert not (tmp_path / "features.f32.npy").exists()  # removed at the end of the run
    assert on_disk["final"]["nmi_labels"] == pytest.approx(in_ram["final"]["nmi_labels"], abs=1e-6)


def test_several_kmeans_heads_train_one_head_per_clustering(tiny_config):
    """kmeans.heads=3: three clusterings of the round's features (the first is the run's labels),
    one fresh head each, and the loss is the mean of the three cross-entropies."""
    from dcx.core.contracts import StepContext

    tiny_config.options = {**tiny_config.options, "kmeans": {"heads": 3, "merged_heads": 0}}
    engine = Engine(setup(tiny_config))
    part = _partition(engine)
    assert part.more_labels.shape == (300, 2)
    one = Engine(setup(tiny_config.model_copy(update={"options": {**tiny_config.options, "kmeans": {"heads": 1}}})))
    assert np.array_equal(part.labels, _partition(one).labels)
    assert all(normalized_mutual_info_score(part.labels, col) < 1 for col in part.more_labels.T)
    objective = engine.epochs._objective(part)
    feats, idx = torch.randn(5, engine.spec.feature_dim), torch.tensor([3, 1, 4, 159, 26])
    logits = objective.head(feats)
    assert logits.shape == (5, 20, 3)
    targets = np.column_stack([part.labels, part.more_labels])[idx.numpy()]
    expected = np.mean([torch.nn.functional.cross_entropy(logits[:, :, h], torch.as_tensor(targets[:, h])).item()
                        for h in range(3)])
    loss, _ = objective.loss([feats], StepContext(epoch=0, step=0, steps_per_epoch=1, indices=idx))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(engine.run()["final_loss"])


def test_merged_heads_train_on_the_runs_clusters_merged(tiny_config):
    """kmeans.merged_heads=1 beside one k-means head: the second target column groups the run's
    labels (each cluster inside one of k/4 groups), one more (B, k) slice, and the run trains."""
    tiny_config.options = {**tiny_config.options, "kmeans": {"heads": 1, "merged_heads": 1}}
    engine = Engine(setup(tiny_config))
    part = _partition(engine)
    groups = part.more_labels[:, 0]
    assert len(np.unique(groups)) == 5
    assert all(len(np.unique(groups[part.labels == c])) == 1 for c in np.unique(part.labels))
    assert engine.epochs._objective(part).head(torch.randn(4, engine.spec.feature_dim)).shape == (4, 20, 2)
    assert np.isfinite(engine.run()["final_loss"])


def test_the_clusterer_gets_pca_whitened_rows(tiny_config):
    """The clusterer receives PCA + whitening + L2 rows (paper §3.2), not PCA + L2 alone."""
    from dcx.algorithms.pca import preprocess

    tiny_config.pca_dim = 16
    s = setup(tiny_config)
    engine = Engine(s)
    feats = engine.extract()
    seen = []
    fit = s.clusterer.fit
    s.clusterer.fit = lambda x, ctx: seen.append(np.array(x)) or fit(x, ctx)
    engine.epochs._cluster(feats, 0)
    assert np.allclose(seen[0], preprocess(feats, 16), atol=1e-5)
    assert not np.allclose(seen[0], preprocess(feats, 16, whiten=False), atol=1e-3)


def test_online_clusterers_take_their_views_from_their_crops(tiny_config):
    tiny_config.clusterer = "swav"
    engine = Engine(setup(tiny_config))
    assert engine.epochs.views == engine.s.clusterer.crops().views == 2
    assert len(engine.batches.augment) == 2


def _jitter_of(engine):
    return [v.jitter for v in engine.batches.augment.views if v.jitter > 0]


def test_jitter_defaults_to_the_datasets_and_reaches_every_training_transform(tiny_config):
    """Digits and characters declare jitter 0.4 (intensity never decides their class); datasets that
    declare nothing train with the reference's none; --jitter overrides either."""
    from dcx.datasets.textures import Textures

    s = setup(tiny_config)
    assert s.config.jitter == 0.4 and s.dataset.defaults.jitter == 0.4 and Textures.defaults.jitter == 0.0
    assert _jitter_of(Engine(s)) == [pytest.approx(0.4)]
    off = setup(tiny_config.model_copy(update={"jitter": 0.0}))
    assert off.config.jitter == 0.0 and not _jitter_of(Engine(off))
    tiny_config.clusterer = "swav"  # online clusterers' multi-crop gets it too
    engine = Engine(setup(tiny_config))
    assert len(_jitter_of(engine)) == len(engine.batches.augment) > 0


def test_sobel_defaults_to_the_datasets_then_the_backbones(tiny_config):
    """Photos declares no Sobel (colour tells its classes apart); digits and textures declare nothing
    and get AlexNet's Sobel, a ResNet none; --sobel/--no-sobel decide when given, and the network
    follows the resolved setting."""
    from dcx.training.network import Sobel

    digits = setup(tiny_config)
    assert digits.config.sobel is True and isinstance(digits.model.input, Sobel)
    photos = tiny_config.model_copy(update={"dataset": "photos", "options": {"photos": {"limit": 40}}})
    s = setup(photos)
    assert s.config.sobel is False and not isinstance(s.model.input, Sobel)
    assert s.model.net.blocks["conv1"][0].in_channels == 3  # colour reaches the first conv
    assert setup(photos.model_copy(update={"sobel": True}), load_images=False).config.sobel is True
    textures = photos.model_copy(update={"dataset": "textures", "options": {"textures": {"limit": 40}}})
    assert setup(textures, load_images=False).config.sobel is True
    assert setup(textures.model_copy(update={"sobel": False}), load_images=False).config.sobel is False
    assert setup(tiny_config.model_copy(update={"sobel": False})).config.sobel is False
    resnet = tiny_config.model_copy(update={"backbone": "resnet18", "options": {"digits": {"limit": 300}}})
    assert setup(resnet, load_images=False).config.sobel is False


def test_swav_views_take_twice_the_datasets_jitter_unless_jitter_is_given(tiny_config):
    """SwAV's colour distortion is 0.8 where digits declares 0.4 for k-means (its run_defaults); a
    dataset that declares none stays at none, and --jitter decides when given."""
    swav = tiny_config.model_copy(update={"clusterer": "swav"})
    s = setup(swav)
    assert s.config.jitter == pytest.approx(0.8)
    assert _jitter_of(Engine(s)) == [pytest.approx(0.8)] * 2
    assert setup(swav.model_copy(update={"jitter": 0.3})).config.jitter == 0.3
    assert setup(tiny_config.model_copy(update={"clusterer": "dcv2"})).config.jitter == pytest.approx(0.4)
    textures = swav.model_copy(update={"dataset": "textures", "options": {"textures": {"limit": 40}}})
    assert setup(textures, load_images=False).config.jitter == 0.0


def test_swav_keeps_the_datasets_k_above_the_batch_without_a_warning(tiny_config, caplog):
    """Codes over a batch smaller than k trained better than k or the batch made to fit, or a queue
    (docs/decisions.md D43, D51): a default SwAV run keeps k and warns about none of its defaults."""
    swav = tiny_config.model_copy(update={"clusterer": "swav", "k": None, "batch_size": 16, "epochs": 1,
                                          "options": {"digits": {"limit": 128}}})
    with caplog.at_level("WARNING"):
        engine = Engine(setup(swav))
        engine.run()
    assert engine.s.config.k == 100 and not caplog.records, [r.message for r in caplog.records]


def test_online_clusterers_hold_a_folders_time_budget(tiny_config):
    """Where the defaults were sized to a time budget (a folder), an online clusterer trains the k-means
    run's view-passes in rounds of at least one image pass; elsewhere every image is seen as often per
    round as in a one-view k-means run (SwAV: twice that)."""
    from dcx.core.contracts import RunDefaults
    from dcx.clusterers.dcv2 import DeepClusterV2
    from dcx.clusterers.swav import SwAV

    free = RunDefaults(k=100, epochs=10, batch_size=64, passes=3)
    assert DeepClusterV2(k=10).run_defaults(free).passes == 6
    assert SwAV(k=10).run_defaults(free).passes == 12
    budget = RunDefaults(k=500, epochs=5, batch_size=128, passes=1, budget=150_000.0)
    for plugin in (DeepClusterV2(k=10), SwAV(k=10)):
        d = plugin.run_defaults(budget)
        assert (d.passes, d.epochs) == (2, 3)  # 6 view-passes where k-means trains 5
