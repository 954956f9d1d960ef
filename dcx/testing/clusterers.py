"""Checks of offline clusterers (``Clusterer``): fit, its inputs, build_head, state.

Every check fits fresh instances on a few hundred planted-cluster rows (``data.blobs``), with
``k`` set to the planted count when the clusterer declares it; the determinism checks fit 6,000
rows of overlapping clusters (``data.overlapping``), where a subsample or start drawn from
anything but ``context.seed`` regroups rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dcx.core.contracts import Clusterer, FitContext, Partition, TrainingHead, TrainSpec
from dcx.core.errors import DcxError
from dcx.algorithms.metrics import ari, nmi
from dcx.testing.base import PluginUnderTest, check, is_offline
from dcx.testing.data import (
    D, D_OVERLAP, K, N, N_OVERLAP, assert_json_serialisable, blobs, overlapping, same, same_partition, saved_state,
    scramble_global_rngs,
)

#: NMI a clusterer must reach on the planted clusters (they are far apart: k-means gets 1.0).
MIN_NMI = 0.8
SPEC = TrainSpec(feature_dim=D, num_samples=N)
SPEC_OVERLAP = TrainSpec(feature_dim=D_OVERLAP, num_samples=N_OVERLAP)


def _new(p: PluginUnderTest) -> Clusterer:
    """A fresh instance with k = the planted count when the clusterer declares k."""
    return p.new(**({"k": K} if any(o.name == "k" for o in p.cls.options) else {}))


def _clusterer(p: PluginUnderTest, spec: TrainSpec = SPEC) -> Clusterer:
    """A fresh instance (``_new``) prepared for ``spec`` from torch seed 0."""
    plugin = _new(p)
    torch.manual_seed(0)
    plugin.prepare(spec)
    return plugin


def _fit(plugin: Clusterer, x: np.ndarray, seed: int = 0) -> Partition:
    """fit, with its result checked against the contract (ContractError becomes the check's failure)."""
    part = plugin.fit(x, FitContext(epoch=0, seed=seed))
    assert isinstance(part, Partition), f"fit must return a Partition, got {type(part).__name__}"
    return part.validate(len(x), plugin.name or type(plugin).__name__)


def _agree(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert nmi(a, b) > 0.99, f"{what} gave other clusters (NMI {nmi(a, b):.3f} to float32 contiguous input)"


def _identical(a: np.ndarray, b: np.ndarray, what: str, fix: str) -> None:
    """The same grouping of the rows (compared up to relabelling), then the same cluster ids."""
    assert same_partition(a, b), f"{what} grouped the rows differently (adjusted Rand {ari(a, b):.3f}): {fix}"
    assert np.array_equal(a, b), f"{what} grouped the rows alike but numbered the clusters differently: {fix}"


@check("fit returns a Partition: (N,) integer labels in 0..n_clusters-1", applies=is_offline)
def check_fit_returns_partition(p: PluginUnderTest) -> None:
    x, _ = blobs()
    part = _fit(_clusterer(p), x)
    assert part.n_clusters >= 1, f"n_clusters is {part.n_clusters}"
    if part.centroids is not None:
        assert np.asarray(part.centroids).shape[0] == part.n_clusters, "centroids must have one row per cluster"


@check(f"fit gives the same partition and labels for the same FitContext.seed, whatever the global RNGs hold "
       f"({N_OVERLAP} rows in overlapping clusters: a subsample or start drawn elsewhere regroups some)",
       applies=is_offline)
def check_fit_deterministic(p: PluginUnderTest) -> None:
    x = overlapping()
    scramble_global_rngs(1)
    first = _fit(_clusterer(p, SPEC_OVERLAP), x, seed=3).labels
    scramble_global_rngs(2)
    again = _fit(_clusterer(p, SPEC_OVERLAP), x, seed=3).labels
    _identical(first, again, "a second fit with the same seed",
               "take every random choice (subsamples and starting points too) from context.seed")


@check(f"fit recovers {K} well-separated planted clusters (NMI >= {MIN_NMI}) when it gets preprocessed features",
       applies=lambda cls: is_offline(cls) and cls.wants_preprocessing)
def check_fit_recovers_planted_clusters(p: PluginUnderTest) -> None:
    x, y = blobs()
    labels = _fit(_clusterer(p), x).labels
    score = nmi(y, labels)
    assert score >= MIN_NMI, f"NMI {score:.2f}"


@check("fit does not modify its input features", applies=is_offline)
def check_fit_does_not_modify_input(p: PluginUnderTest) -> None:
    x, _ = blobs()
    kept = x.copy()
    _fit(_clusterer(p), x)
    assert np.array_equal(x, kept), "the features array was changed in place: copy before modifying"


@check("fit accepts read-only features (memory-mapped arrays)", applies=is_offline)
def check_fit_accepts_read_only_input(p: PluginUnderTest) -> None:
    x, _ = blobs()
    x.setflags(write=False)
    _fit(_clusterer(p), x)


@check("fit accepts float64 features", applies=is_offline)
def check_fit_accepts_float64(p: PluginUnderTest) -> None:
    x, _ = blobs()
    base = _fit(_clusterer(p), x).labels
    _agree(base, _fit(_clusterer(p), x.astype(np.float64)).labels, "float64 input")


@check("fit accepts non-contiguous features (a strided view)", applies=is_offline)
def check_fit_accepts_non_contiguous(p: PluginUnderTest) -> None:
    x, _ = blobs()
    wide = np.zeros((len(x), 2 * x.shape[1]), dtype=np.float32)
    wide[:, ::2] = x
    view = wide[:, ::2]
    assert not view.flags.c_contiguous
    base = _fit(_clusterer(p), x).labels
    _agree(base, _fit(_clusterer(p), view).labels, "a non-contiguous view")


@check("fit refuses features with NaN with a DcxError (e.g. InputError), not garbage labels", applies=is_offline)
def check_fit_refuses_nan(p: PluginUnderTest) -> None:
    x, _ = blobs()
    x[7, 3] = np.nan
    try:
        _clusterer(p).fit(x, FitContext(epoch=0, seed=0))
    except DcxError:
        return
    except Exception as exc:
        raise AssertionError(f"raised {type(exc).__name__} ({exc}), not a DcxError: check with "
                             "dcx.algorithms.arrays.check_finite") from None
    raise AssertionError("returned labels for NaN features: check with dcx.algorithms.arrays.check_finite")


@check("Partition.stats has string keys and can be written to metrics.jsonl (JSON)", applies=is_offline)
def check_fit_stats_serialisable(p: PluginUnderTest) -> None:
    x, _ = blobs()
    assert_json_serialisable(dict(_fit(_clusterer(p), x).stats), "Partition.stats")


def _training_head(p: PluginUnderTest) -> tuple[TrainingHead, Partition]:
    x, _ = blobs()
    plugin = _clusterer(p)
    part = _fit(plugin, x)
    head = plugin.build_head(part, SPEC)
    assert isinstance(head, TrainingHead), f"build_head must return a TrainingHead, got {type(head).__name__}"
    assert isinstance(head.module, nn.Module), f"TrainingHead.module must be an nn.Module, got {type(head.module).__name__}"
    return head, part


@check("build_head returns a TrainingHead whose (N,) (or (N, heads)) integer targets lie in 0..outputs-1 of its "
       "module", applies=is_offline)
def check_build_head(p: PluginUnderTest) -> None:
    head, _ = _training_head(p)
    targets = np.asarray(head.targets)
    assert targets.ndim in (1, 2) and targets.shape[0] == N, (
        f"targets have shape {targets.shape}, expected ({N},) or ({N}, heads)")
    assert np.issubdtype(targets.dtype, np.integer), f"targets are {targets.dtype}, expected integers"
    head.module.eval()
    with torch.no_grad():
        out = head.module(torch.zeros(2, D))
    heads = targets.shape[1:]
    assert out.ndim == 2 + len(heads) and out.shape[0] == 2 and tuple(out.shape[2:]) == heads, (
        f"the head maps (2, {D}) features to {tuple(out.shape)}, expected (2, outputs{', ' + str(heads[0]) if heads else ''})")
    assert targets.min() >= 0 and targets.max() < out.shape[1], (
        f"targets span {targets.min()}..{targets.max()} but the head has {out.shape[1]} outputs")


@check("training towards build_head's targets sends nonzero gradients to the backbone features", applies=is_offline)
def check_build_head_gradients(p: PluginUnderTest) -> None:
    head, _ = _training_head(p)
    x, _ = blobs()
    feats = torch.from_numpy(x[:64].copy()).requires_grad_(True)
    head.module.train()
    loss = nn.functional.cross_entropy(head.module(feats), torch.as_tensor(np.asarray(head.targets)[:64]).long())
    loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0, "the head's loss does not reach the features"


@check("state_dict() survives a checkpoint and load_state_dict() restores it: a resumed run continues exactly "
       f"(the next fit on {N_OVERLAP} rows in overlapping clusters gives the same partition and labels)",
       applies=is_offline)
def check_state_dict_round_trip(p: PluginUnderTest) -> None:
    x = overlapping()
    plugin = _clusterer(p, SPEC_OVERLAP)
    _fit(plugin, x)
    state = plugin.state_dict()
    saved = saved_state(state)
    fresh = _new(p)
    torch.manual_seed(1)  # another initialisation: only the loaded state may make it equal
    fresh.prepare(SPEC_OVERLAP)
    fresh.load_state_dict(saved)
    assert same(fresh.state_dict(), state), "the restored plugin's state_dict differs from the saved one"
    _identical(_fit(fresh, x, seed=1).labels, _fit(plugin, x, seed=1).labels, "the restored plugin's next epoch",
               "restore all state in load_state_dict and take every random choice from context.seed")
