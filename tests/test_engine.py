import importlib.metadata as md

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score
from interrupts import run_until_ctrl_c

from dcx.core.engine import Engine
from dcx.core.errors import ContractError, InputError
from dcx.core.registry import Registry
from dcx.core.rundir import RunDir
from dcx.core.setup import setup


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


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
    engine.scratch = tmp_path
    seen = []
    real = engine._feature_array

    def spy(d):
        out = real(d)
        seen.append(type(out))
        return out

    engine._feature_array = spy
    on_disk = engine.run()
    assert seen and all(t is np.memmap for t in seen)
    assert not (tmp_path / "features.f32.npy").exists()  # removed at the end of the run
    assert on_disk["final"]["nmi_labels"] == pytest.approx(in_ram["final"]["nmi_labels"], abs=1e-6)


def test_cluster_layer_clusters_the_pooled_block(tiny_config):
    """--cluster-layer conv5: the clusterer receives conv5 as dcx eval pools it, not the fc output."""
    from dcx.core.layers import pooled_layer

    tiny_config.cluster_layer, tiny_config.epochs = "conv5", 1
    s = setup(tiny_config)
    engine = Engine(s)
    _, dim = pooled_layer(s.model, "conv5", 32, 1, torch.device("cpu"))
    feats = engine.extract_features()
    assert feats.shape == (300, dim) and dim != s.model.feature_dim
    assert engine.run()["final"]["clusters"] == 20


@pytest.mark.parametrize("layer, clusterer, message", [
    ("conv9", "kmeans", "--cluster-layer conv9: this network's layers are conv1, conv2, conv3, conv4, conv5, features"),
    ("all", "kmeans", "--cluster-layer all: this network's layers are conv1"),
    ("conv5", "swav", "swav labels batches from its own head"),
])
def test_cluster_layer_mistakes_are_input_errors(tiny_config, layer, clusterer, message):
    tiny_config.cluster_layer, tiny_config.clusterer = layer, clusterer
    with pytest.raises(InputError, match=message):
        setup(tiny_config)


def test_label_smoothing_softens_the_pseudo_label_loss():
    """--label-smoothing e: (1 - e) x cross-entropy to the pseudo-label + e x the mean over all k."""
    from torch import nn

    from dcx.core.contracts import StepContext, TrainingHead
    from dcx.core.objective import PartitionObjective

    torch.manual_seed(0)
    head, feats = nn.Linear(6, 4), torch.randn(5, 6)
    targets = np.array([0, 3, 1, 2, 3, 0, 1])
    step = StepContext(epoch=0, step=0, steps_per_epoch=1, indices=torch.tensor([1, 2, 4, 5, 6]))
    hard, _ = PartitionObjective(TrainingHead(head, targets), 0.1, 0.0, torch.device("cpu")).loss([feats], step)
    soft, _ = PartitionObjective(TrainingHead(head, targets), 0.1, 0.0, torch.device("cpu"),
                                 label_smoothing=0.2).loss([feats], step)
    logp = torch.log_softmax(head(feats), dim=1)
    y = torch.as_tensor(targets[[1, 2, 4, 5, 6]])
    nll = -logp[torch.arange(5), y].mean()
    assert hard.item() == pytest.approx(nll.item(), rel=1e-6)
    assert soft.item() == pytest.approx((0.8 * nll - 0.2 * logp.mean(dim=1).mean()).item(), rel=1e-6)


def test_several_kmeans_heads_train_one_head_per_clustering(tiny_config):
    """kmeans.heads=3: three clusterings of the round's features (the first is the run's labels),
    one fresh head each, and the loss is the mean of the three cross-entropies."""
    from dcx.core.contracts import StepContext

    tiny_config.options = {**tiny_config.options, "kmeans": {"heads": 3, "merged_heads": 0}}
    engine = Engine(setup(tiny_config))
    part, _, _ = engine._cluster(engine.extract_features(), 0)
    assert part.more_labels.shape == (300, 2)
    one = Engine(setup(tiny_config.model_copy(update={"options": {**tiny_config.options, "kmeans": {"heads": 1}}})))
    assert np.array_equal(part.labels, one._cluster(one.extract_features(), 0)[0].labels)
    assert all(normalized_mutual_info_score(part.labels, col) < 1 for col in part.more_labels.T)
    objective = engine._partition_objective(part)
    feats, idx = torch.randn(5, engine.spec.feature_dim), torch.tensor([3, 1, 4, 159, 26])
    logits = objective.head(feats)
    assert logits.shape == (5, 20, 3)
    targets = np.column_stack([part.labels, part.more_labels])[idx.numpy()]
    expected = np.mean([torch.nn.functional.cross_entropy(logits[:, :, h], torch.as_tensor(targets[:, h])).item()
                        for h in range(3)])
    loss, _ = objective.loss([feats], StepContext(epoch=0, step=0, steps_per_epoch=1, indices=idx))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(engine.run()["final_loss"])


def test_head_scale_trains_coarser_heads_beside_the_runs_labels(tiny_config):
    """kmeans.head_scale=0.5 with 3 heads (cluster counts: test_kmeans): the first clustering is the
    one-head labels, every head one (B, k) slice of the module, and the run trains."""
    tiny_config.options = {**tiny_config.options, "kmeans": {"heads": 3, "head_scale": 0.5, "merged_heads": 0}}
    engine = Engine(setup(tiny_config))
    part, _, _ = engine._cluster(engine.extract_features(), 0)
    assert int(part.more_labels[:, 1].max()) < 5  # the k/4 head's ids stay within its 5 clusters
    one = Engine(setup(tiny_config.model_copy(update={"options": {**tiny_config.options, "kmeans": {"heads": 1}}})))
    assert np.array_equal(part.labels, one._cluster(one.extract_features(), 0)[0].labels)
    assert engine._partition_objective(part).head(torch.randn(4, engine.spec.feature_dim)).shape == (4, 20, 3)
    assert np.isfinite(engine.run()["final_loss"])


def test_merged_heads_train_on_the_runs_clusters_merged(tiny_config):
    """kmeans.merged_heads=1 beside one k-means head: the second target column groups the run's
    labels (each cluster inside one of k/4 groups), one more (B, k) slice, and the run trains."""
    tiny_config.options = {**tiny_config.options, "kmeans": {"heads": 1, "merged_heads": 1}}
    engine = Engine(setup(tiny_config))
    part, _, _ = engine._cluster(engine.extract_features(), 0)
    groups = part.more_labels[:, 0]
    assert len(np.unique(groups)) == 5
    assert all(len(np.unique(groups[part.labels == c])) == 1 for c in np.unique(part.labels))
    assert engine._partition_objective(part).head(torch.randn(4, engine.spec.feature_dim)).shape == (4, 20, 2)
    assert np.isfinite(engine.run()["final_loss"])


def test_several_kmeans_heads_refuse_a_kept_head(tiny_config):
    tiny_config.options = {**tiny_config.options, "kmeans": {"heads": 2, "keep_head": True}}
    with pytest.raises(InputError, match="add --opt kmeans.heads=1 --opt kmeans.merged_heads=0"):
        setup(tiny_config)


@pytest.mark.parametrize("head_lr, expected", [(None, 0.05), (0.5, 0.5)])
def test_head_lr_sets_only_the_fresh_heads_rate(tiny_config, head_lr, expected):
    """--head-lr: the offline head's SGD runs at it (default --lr, as the reference's optimizer_tl);
    the backbone keeps --lr."""
    tiny_config.head_lr, tiny_config.lr = head_lr, 0.05
    engine = Engine(setup(tiny_config))
    part, _, _ = engine._cluster(engine.extract_features(), 0)
    objective = engine._partition_objective(part)
    assert [g["lr"] for g in objective.optimizers[0].param_groups] == [expected]
    assert {g["initial_lr"] for g in engine.optimizer.param_groups} == {0.05}


@pytest.mark.parametrize("whiten", [True, False])
def test_the_clusterer_gets_pca_whitened_or_only_pca_rows(tiny_config, whiten):
    """--no-whiten: the clusterer receives PCA + L2 rows without the eigenvalue scaling."""
    from dcx.core.features import preprocess

    tiny_config.whiten, tiny_config.pca_dim = whiten, 16
    s = setup(tiny_config)
    engine = Engine(s)
    feats = engine.extract_features()
    seen = []
    fit = s.clusterer.fit
    s.clusterer.fit = lambda x, ctx: seen.append(np.array(x)) or fit(x, ctx)
    engine._cluster(feats, 0)
    assert np.allclose(seen[0], preprocess(feats, 16, whiten=whiten), atol=1e-5)
    assert not np.allclose(seen[0], preprocess(feats, 16, whiten=not whiten), atol=1e-3)


def test_several_views_train_every_crop_towards_the_image_label():
    """--views 2: the loss is the mean of each view's cross-entropy to the image's pseudo-label."""
    from torch import nn

    from dcx.core.contracts import StepContext, TrainingHead
    from dcx.core.objective import PartitionObjective

    torch.manual_seed(0)
    head, a, b = nn.Linear(6, 4), torch.randn(3, 6), torch.randn(3, 6)
    targets = np.array([2, 0, 3, 1])
    step = StepContext(epoch=0, step=0, steps_per_epoch=1, indices=torch.tensor([3, 0, 2]))
    objective = PartitionObjective(TrainingHead(head, targets), 0.1, 0.0, torch.device("cpu"))
    both, _ = objective.loss([a, b], step)
    one_a, _ = objective.loss([a], step)
    one_b, _ = objective.loss([b], step)
    assert both.item() == pytest.approx((one_a.item() + one_b.item()) / 2, rel=1e-6)
    y = torch.tensor([1, 2, 3])
    assert one_a.item() == pytest.approx(nn.functional.cross_entropy(head(a), y).item(), rel=1e-6)


def test_offline_views_give_each_step_several_crops_at_the_same_image_passes(tiny_config):
    tiny_config.views, tiny_config.passes = 2, None
    s = setup(tiny_config)
    assert s.config.views == 2 and s.config.passes == 2 * s.dataset.run_defaults(s.images).passes
    engine = Engine(s)
    crops, i, ok = engine.train_set[5]
    assert ok and i == 5 and len(crops) == 2 and crops[0].shape == crops[1].shape
    assert not torch.equal(crops[0], crops[1])  # independent draws of the augmentation
    one = Engine(setup(tiny_config.model_copy(update={"views": None})))
    assert one.views == 1 and engine.images_per_epoch() == one.images_per_epoch()
    before = _params(s.model)
    summary = engine.run()
    assert not torch.equal(before, _params(s.model)) and np.isfinite(summary["final_loss"])


def test_cluster_views_cluster_the_mean_of_plain_and_augmented_features(tiny_config, caplog):
    """--cluster-views 2: each row is the mean of the plain image's features and one augmented
    view's, drawn from a seed of the epoch's own, leaving training's random stream as it was."""
    from torchvision.transforms import functional as TF

    from dcx.core import data as D

    tiny_config.cluster_views = 2
    s = setup(tiny_config)
    assert s.config.cluster_views == 2 and setup(tiny_config.model_copy(update={"cluster_views": None})).config.cluster_views == 1
    engine = Engine(s)
    plain = engine.extract_features()
    state = torch.get_rng_state()
    mixed = engine.extract_features(cluster_epoch=0)
    assert torch.equal(state, torch.get_rng_state())  # the training stream is untouched
    assert np.array_equal(mixed, engine.extract_features(cluster_epoch=0))  # seeded by the epoch
    assert not np.allclose(mixed, plain) and not np.array_equal(mixed, engine.extract_features(cluster_epoch=1))
    # The mean itself, with a deterministic "augmentation" (a flip) in place of the random one.
    eval_t = engine.eval_set.transform
    engine.cluster_set = D.IndexedImages(s.images, D.PlainAndAugmented(eval_t, lambda im: TF.hflip(eval_t(im)), 2))
    engine.eval_set = D.IndexedImages(s.images, lambda im: TF.hflip(eval_t(im)))
    flipped = engine.extract_features()
    np.testing.assert_allclose(engine.extract_features(cluster_epoch=0), (plain + flipped) / 2, rtol=1e-5, atol=1e-6)

    tiny_config.clusterer = "swav"  # online clusterers label their own crops
    assert setup(tiny_config).config.cluster_views == 1
    assert "swav labels its own crops in each step: --cluster-views 2 is ignored" in caplog.text


def test_online_clusterers_take_their_views_from_their_crops(tiny_config, caplog):
    tiny_config.clusterer = "swav"
    s = setup(tiny_config)
    assert s.config.views == s.clusterer.crops().views == 2
    tiny_config.views = 1  # e.g. a k-means run's config.toml reused for swav
    assert setup(tiny_config).config.views == 2
    assert "swav takes 2 crops of each image from its own options (dcx list --options): --views 1 is ignored" \
        in caplog.text


def _jitter_of(transform):
    return [s.transforms[0] for s in getattr(transform, "transforms", []) if type(s).__name__ == "RandomApply"
            and type(s.transforms[0]).__name__ == "ColorJitter"]


def test_jitter_defaults_to_the_datasets_and_reaches_every_training_transform(tiny_config):
    """Digits and characters declare jitter 0.4 (intensity never decides their class); datasets that
    declare nothing train with the reference's none; --jitter overrides either."""
    from dcx.datasets.textures import Textures

    s = setup(tiny_config)
    assert s.config.jitter == 0.4 and s.dataset.defaults.jitter == 0.4 and Textures.defaults.jitter == 0.0
    (jitter,) = _jitter_of(Engine(s).train_set.transform)
    assert jitter.brightness == pytest.approx((0.6, 1.4))
    off = setup(tiny_config.model_copy(update={"jitter": 0.0}))
    assert off.config.jitter == 0.0 and not _jitter_of(Engine(off).train_set.transform)
    tiny_config.clusterer = "swav"  # online clusterers' multi-crop gets it too
    crops = Engine(setup(tiny_config)).train_set.transform.transforms
    assert all(_jitter_of(t) for t in crops)


def test_sobel_defaults_to_the_datasets_then_the_backbones(tiny_config):
    """Photos declares no Sobel (colour tells its classes apart); digits and textures declare nothing
    and get AlexNet's Sobel, a ResNet none; --sobel/--no-sobel decide when given, and the network
    follows the resolved setting."""
    from dcx.core.network import Sobel

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
    """SwAV's colour distortion is 0.8 where digits declares 0.4 for k-means; a dataset that declares
    none stays at none, and --jitter or swav.jitter_scale decide when given."""
    swav = tiny_config.model_copy(update={"clusterer": "swav"})
    s = setup(swav)
    assert s.config.jitter == pytest.approx(0.8) and s.config.options["swav"]["jitter_scale"] == 2.0
    assert all(j.brightness == pytest.approx((0.2, 1.8))
               for t in Engine(s).train_set.transform.transforms for j in _jitter_of(t))
    assert setup(swav.model_copy(update={"jitter": 0.3})).config.jitter == 0.3
    own = swav.model_copy(update={"options": {**swav.options, "swav": {"jitter_scale": 1.0}}})
    assert setup(own).config.jitter == pytest.approx(0.4)
    assert setup(tiny_config.model_copy(update={"clusterer": "dcv2"})).config.jitter == pytest.approx(0.4)
    textures = swav.model_copy(update={"dataset": "textures", "options": {"textures": {"limit": 40}}})
    assert setup(textures, load_images=False).config.jitter == 0.0
