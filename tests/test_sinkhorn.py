"""Sinkhorn-Knopp: SwAV codes and SeLa labels (dcx.algorithms.sinkhorn), the sinkhorn and swav plugins."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from torch import nn

from dcx.core.contracts import EpochContext, FitContext, Partition, StepContext, TrainSpec
from dcx.core.errors import InputError, OptionError
from dcx.algorithms.metrics import nmi
from dcx.algorithms.sinkhorn import balanced_argmax, sela_labels, sela_solve, swav_codes, swav_codes_reference
from dcx.clusterers.sinkhorn import SinkhornLabels
from dcx.clusterers.swav import SwAV


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


@pytest.fixture
def two_threads():
    """The test session runs on one thread (conftest); these tests need a pool of two."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("b, k", [(256, 100), (1100, 1000)])
def test_swav_codes_one_thread_path_equals_the_pool_path(monkeypatch, two_threads, b, k):
    """Tiny calls run on one thread (dcx.algorithms.threads), large ones in the pool: same codes."""
    import dcx.algorithms.threads as threads

    scores = unit_scores(b, k, seed=4)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n, _set=torch.set_num_threads: (seen.append(n), _set(n)))
    monkeypatch.setattr(threads, "SMALL_OP_NUMEL", 0)  # every call in the pool
    pool = swav_codes(scores, eps=0.05, n_iter=3)
    assert seen == []
    monkeypatch.setattr(threads, "SMALL_OP_NUMEL", b * k)  # every call on one thread
    threads_before = torch.get_num_threads()
    one = swav_codes(scores, eps=0.05, n_iter=3)
    assert seen == [1, threads_before] and torch.get_num_threads() == threads_before
    assert torch.allclose(one, pool, atol=1e-6, rtol=0)


def test_one_thread_if_small_restores_the_count_and_skips_large_work(two_threads):
    from dcx.algorithms.threads import SMALL_OP_NUMEL, one_thread_if_small

    n = torch.get_num_threads()
    with one_thread_if_small(SMALL_OP_NUMEL + 1) as lowered:
        assert not lowered and torch.get_num_threads() == n
    with pytest.raises(RuntimeError):
        with one_thread_if_small(10) as lowered:
            assert lowered and torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == n
    with one_thread_if_small(10, device="meta") as lowered:  # not the CPU: unchanged
        assert not lowered and torch.get_num_threads() == n


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


def test_sinkhorn_plugin_fits_with_head(monkeypatch):
    import dcx.clusterers.sinkhorn as sinkhorn_plugin

    monkeypatch.setattr(sinkhorn_plugin, "SCORE_ROWS", 500)  # the head scores the rows in several chunks
    rng = np.random.default_rng(0)
    n, d, k = 1200, 24, 12
    feats = rng.standard_normal((n, d)).astype(np.float32) * 3
    clusterer = SinkhornLabels(k=k)
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
    with caplog.at_level(logging.INFO, logger="dcx.clusterers.swav"):
        for s in range(4):
            swav.loss(head, [torch.randn(16, 6), torch.randn(16, 6)], StepContext(1, 10 + s, 10))
    assert swav._queue.shape == (2, 48, 8) and swav._queue_filled == 48
    assert swav.epoch_stats()["queue_used"]  # 3 pushes fill it; the 4th batch used it
    assert any("queue" in r.message for r in caplog.records)


def test_swav_collapse_guard_warns(caplog):
    swav = SwAV(k=32, proj_dim=8, hidden_dim=0, n_small=0)
    head = swav.build_head(TrainSpec(6, 1000))
    same = torch.ones(64, 6)  # every image identical: uniform codes, loss at or above ln k
    with caplog.at_level(logging.WARNING, logger="dcx.clusterers.swav"):
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
    with pytest.raises(InputError, match="small_min_scale=0.6 exceeds large_min_scale=0.5"):
        SwAV(small_min_scale=0.6)


def test_swav_small_data_defaults(caplog):
    # Digits defaults (see the option comments): no full-size "small" crops, eps 0.02, and SwAV's
    # 128-d projection whatever k (a k-dependent narrower one lost trained runs).
    assert SwAV().crops().n_small == 0 and SwAV().params["epsilon"] == 0.02
    assert SwAV(k=100).build_head(TrainSpec(16, 1000)).prototypes.weight.shape == (100, 128)
    assert SwAV(k=10, proj_dim=64).build_head(TrainSpec(16, 1000)).prototypes.weight.shape == (10, 64)
    swav = SwAV(k=40, hidden_dim=0)
    head = swav.build_head(TrainSpec(6, 1000))
    with caplog.at_level(logging.WARNING, logger="dcx.clusterers.swav"):
        loss, _ = swav.loss(head, [torch.randn(16, 6), torch.randn(16, 6)], StepContext(0, 0, 1))
    assert torch.isfinite(loss) and not caplog.records  # a batch below k trains, unwarned (decisions D51)


def test_swav_projection_takes_pre_activation_features_as_they_are():
    """fc7 before its ReLU and the projection's first Linear compose into one linear map over all of fc7."""
    head = SwAV(k=6, proj_dim=8, hidden_dim=0).build_head(TrainSpec(16, 100, preactivation=True))
    x = -torch.rand(4, 16) - 0.1  # all negative: a ReLU would zero them
    assert not torch.allclose(head.embed(x), head.embed(torch.zeros(4, 16)))
