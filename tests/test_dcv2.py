"""DeepCluster-v2 (dcv2): spherical k-means on a memory bank, prototypes = centroids, per-image targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcx.core.contracts import EpochContext, StepContext, TrainSpec
from dcx.algorithms.metrics import nmi
from dcx.clusterers.dcv2 import DeepClusterV2, spherical_kmeans


def _unit_blobs(n=300, d=16, k=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, d, generator=gen), dim=1)
    y = torch.arange(n) % k
    return F.normalize(centres[y] + 0.1 * torch.randn(n, d, generator=gen), dim=1), y


def test_spherical_kmeans_recovers_planted_clusters_with_unit_centroids():
    x, y = _unit_blobs()
    c, labels = spherical_kmeans(x, 5, 10, torch.Generator().manual_seed(0))
    assert torch.allclose(c.norm(dim=1), torch.ones(5), atol=1e-5)
    assert nmi(y.numpy(), labels.numpy()) > 0.95


def _ctx(x, epoch=0):
    return EpochContext(epoch=epoch, seed=epoch, steps_per_epoch=1, num_samples=len(x), device=torch.device("cpu"),
                        features=lambda: x)


def test_start_epoch_clusters_the_bank_and_sets_prototypes_to_centroids():
    # As the reference: the bank is filled once and later epochs cluster what training wrote.
    x, y = _unit_blobs(d=12)
    plugin = DeepClusterV2(k=5, heads=2, proj_dim=8, hidden_dim=0, merged_heads=0)
    torch.manual_seed(0)
    head = plugin.build_head(TrainSpec(feature_dim=12, num_samples=len(x)))
    calls = []
    ctx = _ctx(x)
    ctx.features = lambda: calls.append(1) or x
    plugin.start_epoch(head, ctx)
    assert calls == [1] and plugin.bank.rows.shape == (2, len(x), 8)
    assert plugin.assignments.shape == (2, len(x))
    plugin.bank.write(0, torch.arange(10), torch.zeros(10, 8))  # a training step's crops
    with torch.no_grad():
        head.projection.weight.mul_(-1)  # the network moved
    ctx.epoch = 1
    plugin.start_epoch(head, ctx)
    assert calls == [1] and torch.equal(plugin.bank.rows[0][:10], torch.zeros(10, 8))
    for h, protos in enumerate(head.prototypes):
        # every bank row is assigned to its nearest prototype, and the prototypes are unit centroids
        assert torch.equal((plugin.bank.rows[h] @ protos.weight.t()).argmax(1), plugin.assignments[h])
        assert torch.allclose(protos.weight.norm(dim=1), torch.ones(5), atol=1e-5)


def test_loss_trains_towards_the_assignments_and_writes_the_bank_at_the_batch_indices():
    x, y = _unit_blobs(d=12)
    plugin = DeepClusterV2(k=5, heads=1, proj_dim=8, hidden_dim=0)
    torch.manual_seed(0)
    head = plugin.build_head(TrainSpec(feature_dim=12, num_samples=len(x)))
    plugin.start_epoch(head, _ctx(x))
    before = plugin.bank.rows.clone()
    idx = torch.tensor([3, 50, 7])
    views = [x[idx].requires_grad_(True), x[idx] + 0.01]
    loss, _ = plugin.loss(head, views, StepContext(epoch=0, step=0, steps_per_epoch=1, indices=idx))
    loss.backward()
    assert views[0].grad.abs().sum() > 0 and torch.isfinite(loss)
    changed = (plugin.bank.rows != before).any(dim=2).any(dim=0)
    assert set(torch.nonzero(changed).ravel().tolist()) <= {3, 7, 50}
    plugin.after_backward(head, StepContext(epoch=0, step=0, steps_per_epoch=1, indices=idx))
    assert head.prototypes[0].weight.grad is None  # prototypes are centroids, not trained


def test_needs_the_batch_indices_and_refuses_more_prototypes_than_images():
    x, _ = _unit_blobs(n=20, d=12)
    plugin = DeepClusterV2(k=5, heads=1, proj_dim=8)
    head = plugin.build_head(TrainSpec(feature_dim=12, num_samples=20))
    plugin.start_epoch(head, _ctx(x))
    from dcx.core.errors import InputError

    with pytest.raises(InputError, match="indices"):
        plugin.loss(head, [x[:4], x[:4]], StepContext(epoch=0, step=0, steps_per_epoch=1))
    with pytest.raises(InputError, match="lower --k"):
        DeepClusterV2(k=50).build_head(TrainSpec(feature_dim=12, num_samples=20))


def test_merged_set_groups_the_first_heads_clusters_into_classes_with_mean_prototypes():
    # 5 planted classes clustered into 20: each merged group must be a union of first-head clusters,
    # and with k/4 = 5 groups the union of a class's clusters (the kNN graph joins them).
    x, y = _unit_blobs(n=400, d=12, k=5)
    plugin = DeepClusterV2(k=20, heads=1, proj_dim=12, hidden_dim=0, merged_heads=1, merge_scale=0.25)
    torch.manual_seed(0)
    head = plugin.build_head(TrainSpec(feature_dim=12, num_samples=len(x)))
    with torch.no_grad():
        head.projection.weight.copy_(torch.eye(12))
        head.projection.bias.zero_()
    assert [p.weight.shape[0] for p in head.prototype_sets()] == [20, 5]
    plugin.start_epoch(head, _ctx(x))
    first, merged = plugin.assignments
    assert all(len(torch.unique(merged[first == c])) == 1 for c in torch.unique(first))
    assert nmi(y.numpy(), merged.numpy()) > 0.95 and nmi(y.numpy(), first.numpy()) < 0.9
    protos = head.merged_prototypes[0].weight
    for g in range(5):
        assert torch.allclose(protos[g], F.normalize(plugin.bank.rows[0][merged == g].mean(0), dim=0), atol=1e-5)
    idx = torch.arange(8)
    loss, _ = plugin.loss(head, [x[idx], x[idx]], StepContext(epoch=0, step=0, steps_per_epoch=1, indices=idx))
    loss.backward()
    plugin.after_backward(head, StepContext(epoch=0, step=0, steps_per_epoch=1, indices=idx))
    assert head.merged_prototypes[0].weight.grad is None and torch.isfinite(loss)


def test_dcv2_projection_takes_pre_activation_features_as_they_are():
    head = DeepClusterV2(k=5, proj_dim=8, hidden_dim=0).build_head(TrainSpec(16, 100, preactivation=True))
    x = -torch.rand(4, 16) - 0.1  # all negative: a ReLU would zero them
    assert not torch.allclose(head.embed(x), head.embed(torch.zeros(4, 16)))


@pytest.mark.parametrize("pending", [16_384, 7])
def test_bank_buffered_writes_equal_indexed_writes_and_the_latest_wins(monkeypatch, pending):
    """The bank buffers each step's rows in arrival order (a slice copy, as the reference) and scatters them
    by index when full or read: the same rows as writing every step by index, an image written twice keeps
    its latest row, and ``_written`` marks what this rank wrote (MemoryBank.sync)."""
    import dcx.algorithms.bank as bank_mod
    from dcx.algorithms.bank import MemoryBank

    monkeypatch.setattr(bank_mod, "PENDING_ROWS", pending)
    g = torch.Generator().manual_seed(0)
    n, d = 40, 3
    bank = MemoryBank(torch.zeros(2, n, d))
    bank.start_epoch(torch.device("cpu"))
    expected = torch.zeros(2, n, d)
    for step in range(12):  # three passes over 40 images in batches of 10 (the latest of each wins)
        idx = torch.randperm(n, generator=g)[:10]
        for slot in range(2):
            z = torch.randn(10, d, generator=g)
            bank.write(slot, idx, z)
            expected[slot][idx] = z
    bank.write(0, torch.arange(n - 1), torch.ones(n - 1, d))  # a batch larger than a small buffer
    expected[0][: n - 1] = 1.0
    assert torch.equal(bank.rows, expected)
    assert torch.equal(bank._written, (expected != 0).any(dim=2).any(dim=0))
    bank.write(1, torch.tensor([5, 5]), torch.tensor([[1.0, 1, 1], [2.0, 2, 2]]))  # duplicates in one batch
    assert torch.equal(bank.rows[1][5], torch.tensor([2.0, 2, 2]))
