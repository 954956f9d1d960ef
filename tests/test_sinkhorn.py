"""Sinkhorn-Knopp: SwAV codes and SeLa labels (dcx.core.sinkhorn), the sinkhorn and swav plugins."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcx.core.contracts import EpochContext, FitContext, Partition, StepContext, TrainSpec
from dcx.core.bank import sample_neighbours
from dcx.core.errors import InputError, OptionError
from dcx.core.metrics import nmi
from dcx.core.sinkhorn import balanced_argmax, sela_labels, sela_solve, swav_codes, swav_codes_reference
from dcx.plugins.sinkhorn import SinkhornLabels
from dcx.plugins.swav import SwAV



def reference_sela(probs: np.ndarray, lam: float = 25.0) -> tuple[np.ndarray, int]:
    """self-label's optimize_L_sk (float64) on softmax outputs (N, K): (labels, iterations)."""
    ps = probs.T.copy() ** lam
    k, n = ps.shape
    r, c = np.ones((k, 1)) / k, np.ones((n, 1)) / n
    err, counter = 1e6, 0
    while err > 0.1:
        r = (1.0 / k) / (ps @ c)
        c_new = (1.0 / n) / (r.T @ ps).T
        if counter % 10 == 0:
            err = np.nansum(np.abs(c / c_new - 1))
        c = c_new
        counter += 1
    ps *= np.squeeze(c)
    ps = (ps.T * np.squeeze(r)).T
    return np.nanargmax(ps, 0), counter


def unit_scores(b: int, k: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    w = nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    return z @ w.t()


# ----------------------------------------------------------------------------- swav_codes


def test_swav_codes_doubly_stochastic_and_equal_to_reference():
    b, k = 256, 100
    scores = unit_scores(b, k)
    q = swav_codes(scores, eps=0.05, n_iter=3)
    assert q.shape == (b, k)
    assert torch.allclose(q.sum(dim=1), torch.ones(b), atol=1e-5)
    # 3 iterations leave the prototype masses near B/K (within ~16% here), exact only at convergence
    assert torch.allclose(q.sum(dim=0), torch.full((k,), b / k), rtol=0.25)
    ref = swav_codes_reference(scores.clone())
    assert torch.allclose(q, ref, atol=1e-6, rtol=1e-4)


def test_swav_codes_converge_to_doubly_stochastic():
    b, k = 200, 50
    q = swav_codes(unit_scores(b, k, seed=1), n_iter=200)
    assert torch.allclose(q.sum(dim=1), torch.ones(b), atol=1e-5)
    assert torch.allclose(q.sum(dim=0), torch.full((k,), b / k), atol=1e-5 * b / k)


def test_swav_codes_stable_where_reference_overflows():
    scores = unit_scores(64, 16, seed=2)
    # per-prototype offsets (e.g. unnormalised prototypes): exp(s / eps) overflows float32
    shifted = scores + torch.linspace(0, 10, 16)
    assert not torch.isfinite(swav_codes_reference(shifted.clone())).all()
    q = swav_codes(shifted)
    assert torch.isfinite(q).all()
    assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-5)
    # the reference's own answer, computed where it does not overflow (float64)
    ref = swav_codes_reference(shifted.double()).float()
    assert torch.allclose(q, ref, atol=1e-6, rtol=1e-4)
    # a common offset cancels exactly
    assert torch.allclose(swav_codes(scores + 10), swav_codes(scores), atol=1e-6)


def test_swav_codes_all_reduce_hooks_see_k_vectors():
    seen = []

    def record(t):
        seen.append(tuple(t.shape))
        return t

    q = swav_codes(unit_scores(32, 12), all_reduce=record, all_reduce_max=record)
    assert seen == [(12,)] * 4  # one max, then one sum per iteration
    assert torch.allclose(q, swav_codes(unit_scores(32, 12)))


def test_swav_codes_use_most_prototypes_on_distinct_inputs():
    b, k = 512, 64
    q = swav_codes(unit_scores(b, k, seed=3))
    used = len(torch.unique(q.argmax(dim=1)))
    assert used >= 0.9 * k


def test_swav_codes_reject_bad_input():
    with pytest.raises(InputError):
        swav_codes(torch.zeros(3))
    with pytest.raises(InputError):
        swav_codes(torch.full((4, 3), float("nan")))


# ----------------------------------------------------------------------------- SeLa


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_sela_argmax_matches_reference(scale):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 12)) * scale
    probs = np.exp(x - x.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ref_labels, ref_iters = reference_sela(probs)
    result = sela_solve(x, rounding="argmax")
    assert result.iterations == ref_iters
    assert result.converged
    np.testing.assert_array_equal(result.labels, ref_labels)
    # log-probabilities give the same labels as logits
    np.testing.assert_array_equal(sela_labels(np.log(probs)), ref_labels)


@pytest.mark.parametrize("scale", [0.05, 1.0])
def test_sela_balanced_labels_within_one(scale):
    rng = np.random.default_rng(1)
    for n, k in [(1000, 10), (1005, 10), (3000, 100)]:
        x = rng.standard_normal((n, k)) * scale
        plain = np.bincount(sela_labels(x, rounding="argmax"), minlength=k)
        sizes = np.bincount(sela_labels(x, rounding="balanced"), minlength=k)
        assert sizes.min() >= n // k and sizes.max() <= -(-n // k)
        # the improvement over the reference's argmax, whose sizes spread wider
        assert plain.max() - plain.min() > 1


def test_balanced_argmax_keeps_a_balanced_argmax():
    plan = torch.eye(5, dtype=torch.float64).repeat(4, 1) + 0.01 * torch.rand(20, 5, dtype=torch.float64)
    np.testing.assert_array_equal(balanced_argmax(plan).numpy(), plan.argmax(1).numpy())


def test_sela_survives_extreme_logits():
    x = np.random.default_rng(2).standard_normal((400, 20)) * 200  # softmax^25 underflows per row
    labels = sela_labels(x, rounding="balanced")
    assert np.bincount(labels, minlength=20).tolist() == [20] * 20


def test_sela_survives_where_softmax_power_underflows():
    # flat rows with lam * ln K > 745: every entry of softmax^lam is 0 in float64
    x = np.random.default_rng(3).standard_normal((1200, 600)) * 0.01
    with np.errstate(all="ignore"):
        assert not (np.exp(x - np.log(np.exp(x).sum(1, keepdims=True))) ** 130).any()
    result = sela_solve(x, lam=130, rounding="balanced")
    assert result.converged and np.isfinite(result.r).all()
    assert np.bincount(result.labels, minlength=600).tolist() == [2] * 600


def test_sela_survives_a_dead_cluster():
    # no image gives cluster 0 any mass (softmax^25 = 0): the reference's r is inf, labels NaN
    x = np.random.default_rng(4).standard_normal((500, 10))
    x[:, 0] = -1000.0
    result = sela_solve(x, rounding="balanced")
    assert np.isfinite(result.r).all()
    assert np.bincount(result.labels, minlength=10).tolist() == [50] * 10


def test_sela_rejects_nan():
    with pytest.raises(InputError):
        sela_labels(np.array([[0.0, np.nan]]))


# ----------------------------------------------------------------------------- sinkhorn plugin


def make_head(d: int, k: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    head = nn.Linear(d, k)
    nn.init.normal_(head.weight, 0, 0.01)
    nn.init.zeros_(head.bias)
    return head


def test_sinkhorn_plugin_fits_with_head():
    rng = np.random.default_rng(0)
    n, d, k = 1200, 24, 12
    feats = rng.standard_normal((n, d)).astype(np.float32) * 3
    clusterer = SinkhornLabels(k=k, batch_size=500)
    assert not clusterer.wants_preprocessing
    clusterer.head = make_head(d, k)
    part = clusterer.fit(feats, FitContext(epoch=0)).validate(n, "sinkhorn")
    assert isinstance(part, Partition) and part.n_clusters == k
    assert np.bincount(part.labels, minlength=k).tolist() == [n // k] * k
    assert part.stats["sinkhorn_iterations"] >= 1 and part.stats["sinkhorn_converged"]
    # the labels follow the head: a head that separates the data is obeyed
    centers = rng.standard_normal((k, d)).astype(np.float32) * 5
    y = np.repeat(np.arange(k), n // k)
    x = centers[y] + rng.standard_normal((n, d)).astype(np.float32)
    head = make_head(d, k)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(centers))
    clusterer.head = head
    labels = clusterer.fit(x, FitContext()).labels
    assert (labels == y).mean() > 0.95
    # the engine trains that same head on the labels as they are
    training = clusterer.build_head(Partition(labels, k), TrainSpec(d, n))
    assert training.module is head and np.array_equal(training.targets, labels)


def test_sinkhorn_prepare_makes_one_head_kept_in_its_state():
    clusterer = SinkhornLabels(k=5)
    torch.manual_seed(0)
    clusterer.prepare(TrainSpec(feature_dim=8, num_samples=50, preactivation=True))
    assert isinstance(clusterer.head[0], nn.ReLU) and clusterer.head[1].out_features == 5
    state = clusterer.state_dict()
    other = SinkhornLabels(k=5)
    torch.manual_seed(1)
    other.prepare(TrainSpec(feature_dim=8, num_samples=50, preactivation=True))
    other.load_state_dict(state)
    assert torch.equal(other.head[1].weight, clusterer.head[1].weight)


def test_sinkhorn_plugin_errors():
    feats = np.zeros((10, 4), dtype=np.float32)
    with pytest.raises(InputError, match="head"):
        SinkhornLabels(k=3).fit(feats, FitContext())
    big = SinkhornLabels(k=30)
    big.head = make_head(4, 30)
    with pytest.raises(InputError, match="larger"):
        big.fit(feats, FitContext())
    wrong = SinkhornLabels(k=3)
    wrong.head = make_head(4, 5)
    with pytest.raises(InputError, match="outputs"):
        wrong.fit(feats, FitContext())
    with pytest.raises(OptionError):
        SinkhornLabels(rounding="round")


# ----------------------------------------------------------------------------- swav plugin


def toy_batch(gen: torch.Generator, centers: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, len(centers), (b,), generator=gen)
    return centers[y] + 0.5 * torch.randn(b, centers.shape[1], generator=gen), y


def test_swav_swapped_loss_decreases_on_toy_problem():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=gen) * 3
    swav = SwAV(k=8, proj_dim=16, hidden_dim=32, n_small=1, freeze_prototypes_steps=5)
    assert swav.crops().n_large == 2 and swav.crops().n_small == 1
    backbone = nn.Linear(16, 32)
    head = swav.build_head(TrainSpec(32, 1000))
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    losses = []
    for it in range(60):
        x, _ = toy_batch(gen, centers, 64)
        views = [x + 0.3 * torch.randn(x.shape, generator=gen) for _ in range(3)]
        step = StepContext(epoch=it // 20, step=it, steps_per_epoch=20)
        swav.before_step(head, step)
        loss, stats = swav.loss(head, [backbone(v) for v in views], step)
        opt.zero_grad()
        loss.backward()
        swav.after_backward(head, step)
        opt.step()
        losses.append(stats["loss"])
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert np.mean(losses[-10:]) < 0.6 * math.log(8)
    stats = swav.epoch_stats()
    assert stats["prototypes_used"] >= 4 and 0 < stats["code_entropy"] < math.log(8)
    assert swav.epoch_stats() == {}  # reset after reading
    x, y = toy_batch(gen, centers, 400)
    labels = swav.assign(head, backbone(x))
    assert labels.shape == (400,) and labels.dtype == torch.long
    # purity: each prototype's images mostly come from one of the 4 true clusters
    table = np.zeros((8, 4), dtype=int)
    np.add.at(table, (labels.numpy(), y.numpy()), 1)
    assert table.max(axis=1).sum() / 400 > 0.95


def test_swav_prototypes_frozen_then_trained_and_unit_norm():
    swav = SwAV(k=10, proj_dim=8, hidden_dim=0, n_small=0)  # auto freeze = first epoch
    head = swav.build_head(TrainSpec(6, 100))
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    with torch.no_grad():
        head.prototypes.weight.mul_(3.0)  # off the unit sphere: before_step must fix it

    def run(step: StepContext) -> None:
        swav.before_step(head, step)
        assert torch.allclose(head.prototypes.weight.norm(dim=1), torch.ones(10), atol=1e-6)
        loss, _ = swav.loss(head, [torch.randn(32, 6), torch.randn(32, 6)], step)
        opt.zero_grad()
        loss.backward()
        swav.after_backward(head, step)
        opt.step()

    run(StepContext(epoch=0, step=0, steps_per_epoch=3))
    frozen = head.prototypes.weight.detach().clone()
    proj = head.projection.weight.detach().clone()
    for s in (1, 2):
        run(StepContext(epoch=0, step=s, steps_per_epoch=3))
    # frozen through epoch 0 (re-normalising unit rows may move the last bit)
    assert torch.allclose(head.prototypes.weight, frozen, atol=1e-7)
    assert not torch.equal(head.projection.weight, proj)  # while the projection trains
    run(StepContext(epoch=1, step=3, steps_per_epoch=3))  # step counts across epochs, as the engine
    assert not torch.allclose(head.prototypes.weight, frozen, atol=1e-4)


def test_swav_queue_fills_then_feeds_codes(caplog):
    swav = SwAV(k=16, proj_dim=8, hidden_dim=0, n_small=0, queue_length=48, queue_start_epoch=1)
    head = swav.build_head(TrainSpec(6, 1000))
    step0 = StepContext(epoch=0, step=0, steps_per_epoch=10)
    swav.loss(head, [torch.randn(16, 6), torch.randn(16, 6)], step0)
    assert swav._queue is None  # not before queue_start_epoch
    with caplog.at_level(logging.INFO, logger="dcx.plugins.swav"):
        for s in range(4):
            swav.loss(head, [torch.randn(16, 6), torch.randn(16, 6)], StepContext(1, 10 + s, 10))
    assert swav._queue.shape == (2, 48, 8) and swav._queue_filled == 48
    assert swav.epoch_stats()["queue_used"]  # 3 pushes fill it; the 4th batch used it
    assert any("queue" in r.message for r in caplog.records)


def test_swav_collapse_guard_warns(caplog):
    swav = SwAV(k=32, proj_dim=8, hidden_dim=0, n_small=0)
    head = swav.build_head(TrainSpec(6, 1000))
    same = torch.ones(64, 6)  # every image identical: uniform codes, loss at or above ln k
    with caplog.at_level(logging.WARNING, logger="dcx.plugins.swav"):
        swav.loss(head, [same, same], StepContext(epoch=1, step=1, steps_per_epoch=1))
        stats = swav.epoch_stats()
    assert stats["loss"] >= math.log(32) and stats["prototypes_used"] < 32 / 2
    messages = " ".join(r.message for r in caplog.records)
    assert "prototypes" in messages and "ln k" in messages


def test_swav_rejects_bad_views_and_options():
    swav = SwAV(k=4, proj_dim=4, hidden_dim=0, n_small=0)
    head = swav.build_head(TrainSpec(3, 100))
    step = StepContext(0, 0, 1)
    with pytest.raises(InputError):
        swav.loss(head, [torch.randn(8, 3)], step)
    with pytest.raises(InputError):
        swav.loss(head, [torch.randn(8, 3), torch.randn(7, 3)], step)
    with pytest.raises(OptionError):
        SwAV(epsilon=0)
    with pytest.raises(InputError):
        SwAV(small_min_scale=0.5, small_max_scale=0.2)


def test_swav_small_data_defaults(caplog):
    # Digits defaults (see the option comments): no full-size "small" crops, eps 0.02, and SwAV's
    # 128-d projection whatever k (a k-dependent narrower one lost trained runs).
    assert SwAV().crops().n_small == 0 and SwAV().params["epsilon"] == 0.02
    assert SwAV(k=100).build_head(TrainSpec(16, 1000)).prototypes.weight.shape == (100, 128)
    assert SwAV(k=10, proj_dim=64).build_head(TrainSpec(16, 1000)).prototypes.weight.shape == (10, 64)
    swav = SwAV(k=40, hidden_dim=0)
    head = swav.build_head(TrainSpec(6, 1000))
    with caplog.at_level(logging.WARNING, logger="dcx.plugins.swav"):
        swav.loss(head, [torch.randn(16, 6), torch.randn(16, 6)], StepContext(0, 0, 1))
    assert any("batch 16 < k=40" in r.message for r in caplog.records)


def test_swav_prototype_sets_average_the_one_set_losses():
    """heads=3: the loss is the mean of the swapped losses a one-set SwAV gives with each set's
    prototypes on the same projection; every set stays frozen in the first epoch; the first labels."""
    torch.manual_seed(0)
    three = SwAV(k=12, proj_dim=8, hidden_dim=0, n_small=1, heads=3)
    head = three.build_head(TrainSpec(6, 1000))
    sets = head.prototype_sets()
    assert len(sets) == 3 and not torch.allclose(sets[0].weight, sets[1].weight)
    assert set(SwAV(k=12, hidden_dim=0).build_head(TrainSpec(6, 100)).state_dict()) == {
        "projection.weight", "projection.bias", "prototypes.weight"}  # one set: the keys it always had
    views = [torch.randn(24, 6) for _ in range(3)]
    step = StepContext(epoch=0, step=0, steps_per_epoch=5)
    loss, _ = three.loss(head, views, step)
    singles = []
    for protos in sets:
        one = SwAV(k=12, proj_dim=8, hidden_dim=0, n_small=1)
        single = one.build_head(TrainSpec(6, 1000))
        single.load_state_dict({"projection.weight": head.projection.weight, "projection.bias": head.projection.bias,
                                "prototypes.weight": protos.weight})
        singles.append(one.loss(single, views, step)[0])
    assert torch.allclose(loss, torch.stack(singles).mean(), atol=1e-6)
    assert not torch.allclose(singles[0], singles[1])
    loss.backward()
    assert all(p.weight.grad is not None for p in sets)
    three.after_backward(head, step)
    assert all(p.weight.grad is None for p in sets)  # frozen through the first epoch, every set
    z = torch.randn(40, 6)
    expected = (F.normalize(head.projection(z), dim=1) @ F.normalize(sets[0].weight, dim=1).t()).argmax(dim=1)
    assert torch.equal(three.assign(head, z), expected)


def test_swav_coarser_prototype_set_averages_the_one_set_losses_at_its_own_size():
    """heads=2, head_scale=0.25: a set of k and one of k/4, the loss the mean of each set's one-set loss."""
    torch.manual_seed(0)
    two = SwAV(k=12, proj_dim=8, hidden_dim=0, heads=2, head_scale=0.25)
    head = two.build_head(TrainSpec(6, 1000))
    assert [p.weight.shape[0] for p in head.prototype_sets()] == [12, 3]
    views = [torch.randn(24, 6) for _ in range(2)]
    step = StepContext(epoch=0, step=0, steps_per_epoch=5)
    singles = []
    for protos in head.prototype_sets():
        k = protos.weight.shape[0]
        one = SwAV(k=k, proj_dim=8, hidden_dim=0)
        single = one.build_head(TrainSpec(6, 1000))
        single.load_state_dict({"projection.weight": head.projection.weight, "projection.bias": head.projection.bias,
                                "prototypes.weight": protos.weight})
        singles.append(one.loss(single, views, step)[0])
    assert torch.allclose(two.loss(head, views, step)[0], torch.stack(singles).mean(), atol=1e-6)



def test_swav_neighbour_codes_pull_each_view_towards_its_bank_neighbours_codes():
    """neighbour_weight=w: the bank's kNN graph (same-class neighbours on planted classes), one neighbour
    drawn per image and step (the same draw for the same step), every view's cross-entropy to the
    neighbour's Sinkhorn codes, the loss (swapped + w * neighbour) / (1 + w); the bank takes the first
    crop; w = 0 is the plain loss."""
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(5, 12, generator=gen), dim=1)
    y = torch.arange(400) % 5
    x = F.normalize(centres[y] + 0.1 * torch.randn(400, 12, generator=gen), dim=1)
    swav = SwAV(k=20, proj_dim=12, hidden_dim=0, neighbour_weight=0.5, neighbours=4)
    head = swav.build_head(TrainSpec(12, 400))
    with torch.no_grad():
        head.projection.weight.copy_(torch.eye(12))
        head.projection.bias.zero_()
    ctx = EpochContext(epoch=0, seed=7, steps_per_epoch=1, num_samples=400, device=torch.device("cpu"),
                       features=lambda: x)
    swav.start_epoch(head, ctx)
    table = swav.neighbour_table
    assert table.shape == (400, 4) and not (table == torch.arange(400)[:, None]).any()
    assert (y[table] == y[:, None]).all()  # planted classes 10x apart: every neighbour is of the class
    d = torch.cdist(x, x).fill_diagonal_(float("inf"))
    assert torch.equal(table[:, 0], d.argmin(dim=1))  # nearest first

    idx = torch.tensor([3, 50, 7, 200, 11, 123])
    views = [x[idx] + 0.01, x[idx] - 0.01]
    step = StepContext(epoch=1, step=5, steps_per_epoch=5, indices=idx)
    drawn = sample_neighbours(table, idx, 7, 5)
    assert torch.equal(drawn, sample_neighbours(table, idx, 7, 5))
    assert (table[idx] == drawn[:, None]).any(dim=1).all()
    draws = torch.stack([sample_neighbours(table, idx, 7, s) for s in range(40)])
    assert all(len(torch.unique(draws[:, i])) > 1 for i in range(len(idx)))  # a fresh draw per step
    bank_before = swav.bank.rows[0].clone()
    loss, _ = swav.loss(head, views, step)

    plain = SwAV(k=20, proj_dim=12, hidden_dim=0)
    single = plain.build_head(TrainSpec(12, 400))
    single.load_state_dict(head.state_dict())
    swapped = plain.loss(single, views, step)[0]
    _, scores = head(torch.cat(views))
    logp = F.log_softmax(scores[0] / 0.1, dim=1).view(2, len(idx), -1)
    q_nb = swav_codes(bank_before[drawn] @ head.prototypes.weight.t(), eps=0.02, n_iter=3)
    neighbour = -(q_nb * logp).sum(dim=2).mean()
    assert torch.allclose(loss, (swapped + 0.5 * neighbour) / 1.5, atol=1e-6)
    written = (swav.bank.rows[0] != bank_before).any(dim=1)
    assert set(torch.nonzero(written).ravel().tolist()) == set(idx.tolist())
    assert torch.allclose(swav.bank.rows[0][idx], head.embed(views[0]), atol=1e-6)

    restored = SwAV(k=20, proj_dim=12, hidden_dim=0, neighbour_weight=0.5, neighbours=4)
    restored.load_state_dict(swav.state_dict())
    assert torch.equal(restored.bank.rows, swav.bank.rows)
    with pytest.raises(InputError, match="before start_epoch"):
        restored.loss(head, views, step)
    with pytest.raises(InputError, match="indices"):
        swav.loss(head, views, StepContext(epoch=1, step=6, steps_per_epoch=5))

def test_swav_merged_set_groups_the_nearest_prototypes_into_classes_and_adds_its_cross_entropy():
    """merged_heads=1: the bank's equal-size first-set labels merged along its kNN graph (k/4 = 5
    groups of 5 planted classes), group-mean prototypes that never train, the loss the mean of the
    swapped loss and the merged cross-entropy; the bank is saved and restored."""
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(5, 12, generator=gen), dim=1)
    y = torch.arange(400) % 5
    x = F.normalize(centres[y] + 0.1 * torch.randn(400, 12, generator=gen), dim=1)
    swav = SwAV(k=20, proj_dim=12, hidden_dim=0, merged_heads=1)
    head = swav.build_head(TrainSpec(12, 400))
    assert [p.weight.shape[0] for p in head.merged_prototypes] == [5]
    with torch.no_grad():
        head.projection.weight.copy_(torch.eye(12))
        head.projection.bias.zero_()
        head.prototypes.weight.copy_(x[:20])  # 4 prototypes per class: the first labels split each class
    calls = []
    ctx = EpochContext(epoch=0, seed=0, steps_per_epoch=1, num_samples=400, device=torch.device("cpu"),
                       features=lambda: calls.append(1) or x)
    swav.start_epoch(head, ctx)
    first = balanced_argmax(x @ head.prototypes.weight.t())  # equal-size, as the codes
    assert torch.equal(torch.bincount(first), torch.full((20,), 20))
    merged = swav.merged_targets[0]
    assert calls == [1] and swav.bank.rows.shape == (1, 400, 12)
    assert all(len(torch.unique(merged[first == c])) == 1 for c in torch.unique(first))
    assert nmi(y.numpy(), merged.numpy()) > 0.95 and nmi(y.numpy(), first.numpy()) < 0.9
    for g in range(5):
        assert torch.allclose(head.merged_prototypes[0].weight[g], F.normalize(x[merged == g].mean(0), dim=0), atol=1e-5)

    idx = torch.tensor([3, 50, 7, 200])
    views = [x[idx] + 0.01, x[idx] - 0.01]
    step = StepContext(epoch=1, step=5, steps_per_epoch=5, indices=idx)  # past the prototypes' freeze
    before = swav.bank.rows[0].clone()
    loss, _ = swav.loss(head, views, step)
    one = SwAV(k=20, proj_dim=12, hidden_dim=0)
    single = one.build_head(TrainSpec(12, 400))
    single.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("merged")})
    _, scores = head(torch.cat(views))
    ce = F.cross_entropy(scores[1] / 0.1, merged[idx].repeat(2))
    assert torch.allclose(loss, (one.loss(single, views, step)[0] + ce) / 2, atol=1e-6)
    written = (swav.bank.rows[0] != before).any(dim=1)
    assert set(torch.nonzero(written).ravel().tolist()) == {3, 7, 50, 200}  # the first crop, at the indices
    loss.backward()
    swav.after_backward(head, step)
    assert head.merged_prototypes[0].weight.grad is None and head.prototypes.weight.grad is not None

    restored = SwAV(k=20, proj_dim=12, hidden_dim=0, merged_heads=1)
    restored.load_state_dict(swav.state_dict())
    assert torch.equal(restored.bank.rows, swav.bank.rows)
    restored.start_epoch(head, ctx)  # the restored bank: no extraction
    assert calls == [1]
    with pytest.raises(InputError, match="indices"):
        swav.loss(head, views, StepContext(epoch=1, step=6, steps_per_epoch=5))


def test_swav_merged_sets_and_neighbour_codes_share_one_knn_graph_per_epoch(monkeypatch):
    """With both on, the bank's kNN graph is built once per epoch and the merged sets use it: the
    same groups as with the merged sets alone."""
    import dcx.core.knn as knn

    gen = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(5, 12, generator=gen), dim=1)
    x = F.normalize(centres[torch.arange(300) % 5] + 0.1 * torch.randn(300, 12, generator=gen), dim=1)
    built = []
    real = knn.knn_graph
    monkeypatch.setattr(knn, "knn_graph", lambda *a, **kw: built.append(1) or real(*a, **kw))
    targets = []
    for extra in ({}, {"neighbour_weight": 0.5}):
        swav = SwAV(k=20, proj_dim=12, hidden_dim=0, merged_heads=1, **extra)
        head = swav.build_head(TrainSpec(12, 300))
        with torch.no_grad():
            head.projection.weight.copy_(torch.eye(12))
            head.projection.bias.zero_()
            head.prototypes.weight.copy_(x[:20])
        built.clear()
        swav.start_epoch(head, EpochContext(epoch=0, seed=0, steps_per_epoch=1, num_samples=300,
                                            device=torch.device("cpu"), features=lambda: x))
        assert len(built) == 1
        targets.append(swav.merged_targets)
    assert torch.equal(targets[0], targets[1])


def test_swav_cluster_heads_train_fresh_classifiers_on_each_epochs_kmeans_of_the_features():
    """cluster_heads: each epoch, k-means(k) labels of the preprocessed features (one seed per head, rank 0's)
    and freshly initialised classifiers on the features; the loss adds every view's cross-entropy."""
    from dcx.core.features import preprocess
    from dcx.core.kmeans import kmeans

    gen = torch.Generator().manual_seed(2)
    centres = 3 * torch.randn(6, 16, generator=gen)
    y = torch.arange(300) % 6
    x = centres[y] + 0.3 * torch.randn(300, 16, generator=gen)
    swav = SwAV(k=6, proj_dim=8, hidden_dim=0, cluster_heads=2)
    head = swav.build_head(TrainSpec(16, 300, preactivation=True))
    with torch.no_grad():
        for c in head.classifiers:
            c[-1].weight.fill_(1.0)  # last epoch's weights: start_epoch must re-initialise them
    ctx = EpochContext(epoch=0, seed=4, steps_per_epoch=1, num_samples=300, device=torch.device("cpu"),
                       features=lambda: x)
    swav.start_epoch(head, ctx)
    z = preprocess(x.numpy(), dim=256)
    for j in range(2):
        assert np.array_equal(swav.cluster_targets[j].numpy(), kmeans(z, 6, 20, 4 + j).labels)
        w = head.classifiers[j][-1].weight
        assert float(w.std()) < 0.02 and float(head.classifiers[j][-1].bias.abs().max()) == 0.0
        assert isinstance(head.classifiers[j][0], nn.ReLU)  # the features are a pre-activation
    assert nmi(y.numpy(), swav.cluster_targets[0].numpy()) > 0.95

    idx = torch.tensor([0, 7, 100, 299])
    views = [x[idx] + 0.01, x[idx] - 0.01]
    step = StepContext(epoch=1, step=5, steps_per_epoch=5, indices=idx)
    loss, _ = swav.loss(head, views, step)
    plain = SwAV(k=6, proj_dim=8, hidden_dim=0)
    single = plain.build_head(TrainSpec(16, 300, preactivation=True))
    single.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("classifiers")})
    ce = sum(F.cross_entropy(c(torch.cat(views)), swav.cluster_targets[j][idx].repeat(2))
             for j, c in enumerate(head.classifiers))
    assert torch.allclose(loss, (plain.loss(single, views, step)[0] + ce) / 3, atol=1e-6)
    loss.backward()
    assert all(c[-1].weight.grad is not None for c in head.classifiers)
    with pytest.raises(InputError, match="indices"):
        swav.loss(head, views, StepContext(epoch=1, step=6, steps_per_epoch=5))


def test_swav_cluster_weight_scales_the_heads_and_cluster_until_ends_them():
    """cluster_weight w: loss = (swapped + w * sum of CE) / (sets + w * heads); after the first
    ceil(cluster_until * epochs) epochs no k-means runs and the loss is SwAV's alone, the classifiers
    still in the graph with zero gradients."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(120, 16, generator=gen)
    swav = SwAV(k=6, proj_dim=8, hidden_dim=0, cluster_heads=2, cluster_weight=0.5, cluster_until=0.1)
    head = swav.build_head(TrainSpec(16, 120, preactivation=True, epochs=4))  # ceil(0.4): the first epoch
    calls = []

    def features():
        calls.append(1)
        return x

    def ctx(epoch):
        return EpochContext(epoch=epoch, seed=0, steps_per_epoch=1, num_samples=120, device=torch.device("cpu"),
                            features=features)

    plain = SwAV(k=6, proj_dim=8, hidden_dim=0)
    single = plain.build_head(TrainSpec(16, 120, preactivation=True))
    single.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("classifiers")})
    idx = torch.tensor([0, 7, 100, 119])
    views = [x[idx] + 0.01, x[idx] - 0.01]

    swav.start_epoch(head, ctx(0))
    assert len(calls) == 1
    step = StepContext(epoch=0, step=0, steps_per_epoch=1, indices=idx)
    ce = sum(F.cross_entropy(c(torch.cat(views)), swav.cluster_targets[j][idx].repeat(2))
             for j, c in enumerate(head.classifiers))
    assert torch.allclose(swav.loss(head, views, step)[0], (plain.loss(single, views, step)[0] + 0.5 * ce) / 2,
                          atol=1e-6)

    targets = swav.cluster_targets.clone()
    swav.start_epoch(head, ctx(1))
    assert len(calls) == 1 and torch.equal(swav.cluster_targets, targets)  # no clustering after the first epoch
    step = StepContext(epoch=1, step=1, steps_per_epoch=1, indices=idx)
    loss, _ = swav.loss(head, views, step)
    assert torch.allclose(loss, plain.loss(single, views, step)[0], atol=1e-6)
    loss.backward()
    assert all(c[-1].weight.grad is not None and float(c[-1].weight.grad.abs().max()) == 0.0
               for c in head.classifiers)


@pytest.mark.parametrize("relu", [True, False])
def test_swav_projection_takes_pre_activation_features_through_their_relu(relu):
    """With TrainSpec.preactivation (AlexNet's fc7) the projection sees ReLU(features) unless feature_relu is off."""
    swav = SwAV(k=6, proj_dim=8, hidden_dim=0, feature_relu=relu)
    head = swav.build_head(TrainSpec(16, 100, preactivation=True))
    x = -torch.rand(4, 16) - 0.1  # all negative: the ReLU zeroes them
    zero = head.embed(torch.zeros(4, 16))
    assert torch.allclose(head.embed(x), zero) == relu
    plain = SwAV(k=6, proj_dim=8, hidden_dim=0).build_head(TrainSpec(16, 100))  # not a pre-activation
    assert not torch.allclose(plain.embed(x), plain.embed(torch.zeros(4, 16)))
