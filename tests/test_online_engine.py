"""The engine's online schedule (SwAV) end to end on a tiny digits config: a few real steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcx.core.config import RunConfig
from dcx.core.engine import Engine
from dcx.core.setup import setup



def _params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def test_swav_online_epoch_trains_and_reports_collapse_guard():
    # 64 images, batch 32, passes 1: two optimiser steps, all in the prototypes' frozen first epoch.
    cfg = RunConfig(
        clusterer="swav", backbone="resnet18", dataset="digits", options={"digits": {"limit": 64}},
        epochs=1, passes=1, width=0.125, batch_size=32, k=10, probe=False,
    )
    s = setup(cfg)
    engine = Engine(s)
    before, head_before = _params(s.model), _params(engine.head)
    prototypes = engine.head.prototypes.weight.detach().clone()
    summary = engine.run()

    assert not torch.equal(before, _params(s.model))  # the backbone trained
    assert not torch.equal(head_before, _params(engine.head))  # so did the projection
    assert torch.allclose(engine.head.prototypes.weight, prototypes, atol=1e-6)  # frozen in epoch 0
    row = summary["first"]
    stats = row["clusterer"]
    for key in ("prototypes_used", "prototype_usage", "code_entropy", "loss", "ln_k"):
        assert key in stats, key
    assert 1 <= stats["prototypes_used"] <= 10
    assert 0 < stats["code_entropy"] <= math.log(10) + 1e-6
    assert np.isfinite(row["loss"]) and "nmi_labels" in row
    assert summary["final"]["clusters"] == 10


def test_online_clusterers_see_each_image_their_passes_scale_times_as_often_as_kmeans_by_default():
    """Default passes: the dataset's image passes, times the views an online step takes, times the
    clusterer's passes_scale (SwAV 2, DeepCluster-v2 1), so passes // views (what the engine trains)
    is passes_scale times k-means' passes; an explicit --passes is kept as given."""
    def resolved(clusterer, **extra):
        s = setup(RunConfig(clusterer=clusterer, dataset="digits", k=10, **extra), load_images=False)
        return s.config.passes, s.clusterer

    kmeans_passes, _ = resolved("kmeans")
    for name, extra, scale in (("dcv2", {}, 1), ("swav", {}, 2), ("swav", {"options": {"swav": {"n_small": 2}}}, 2),
                               ("swav", {"options": {"swav": {"passes_scale": 1.0}}}, 1)):
        passes, clusterer = resolved(name, **extra)
        crops = clusterer.crops()
        assert crops.passes_scale == scale
        assert passes == kmeans_passes * crops.views * scale
        assert passes // crops.views == kmeans_passes * scale
    assert resolved("dcv2", passes=2)[0] == 2
    assert resolved("swav", passes=2)[0] == 2
    # A fraction rounds to whole passes and never to none.
    assert resolved("swav", options={"swav": {"passes_scale": 0.5}})[0] == kmeans_passes
    assert resolved("swav", options={"swav": {"passes_scale": 0.1}})[0] == 1


def test_a_checkpoint_that_no_longer_fits_the_config_is_one_clear_error(tiny_config):
    """A plugin default that changed shape (e.g. swav.proj_dim) must not end a resume in a traceback."""
    from dcx.core.errors import RunDirError

    tiny_config.clusterer, tiny_config.epochs = "swav", 1
    tiny_config.options = {**tiny_config.options, "swav": {"proj_dim": 8}}
    state = Engine(setup(tiny_config)).state(0)
    tiny_config.options["swav"] = {"proj_dim": 16}
    with pytest.raises(RunDirError, match="does not fit the network this run's config.toml builds"):
        Engine(setup(tiny_config)).restore(state)


def test_epoch_context_features_reuse_the_last_epochs_extraction_with_the_same_result(monkeypatch):
    """dcv2.cluster_on=images asks for every image's features at each epoch's start: the engine hands
    it the previous epoch's end-of-epoch extraction (nothing trained in between) instead of a
    second pass, and the run is the same as with a fresh extraction."""
    cfg = dict(clusterer="dcv2", backbone="alexnet", dataset="digits", epochs=3, passes=2, width=0.125,
               batch_size=32, k=8, probe=False,
               options={"digits": {"limit": 96}, "dcv2": {"cluster_on": "images", "heads": 1, "merged_heads": 0}})

    def train(reuse: bool):
        engine = Engine(setup(RunConfig(**cfg)))
        calls = []
        extract = engine.extract_features

        start_epoch = engine.s.clusterer.start_epoch

        def counted(desc="extract", cluster_epoch=None):
            calls.append(desc)
            return extract(desc, cluster_epoch)

        def start_fresh(head, context):
            engine._features_now = None  # no reuse: every epoch start extracts again
            return start_epoch(head, context)

        monkeypatch.setattr(engine, "extract_features", counted)
        if not reuse:
            monkeypatch.setattr(engine.s.clusterer, "start_epoch", start_fresh)
        engine.run()
        return _params(engine.s.model), _params(engine.head), calls

    reused, head_reused, calls = train(True)
    fresh, head_fresh, fresh_calls = train(False)
    assert torch.equal(reused, fresh) and torch.equal(head_reused, head_fresh)
    assert len(fresh_calls) - len(calls) == cfg["epochs"] - 1  # one pass saved per epoch after the first
    assert sum(c.startswith("extract for") for c in calls) == 1  # only epoch 0 extracts for the clusterer
