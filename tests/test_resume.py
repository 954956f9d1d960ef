"""Kill-and-resume equals an uninterrupted run, plugin state included (SwAV's queue, dcv2's bank)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from interrupts import run_until_ctrl_c

from dcx.core.config import RunConfig
from dcx.training.engine import Engine
from dcx.training.rundir import RunDir
from dcx.training.setup import setup


def _config(clusterer: str) -> RunConfig:
    options = {"digits": {"limit": 96}}
    if clusterer == "swav":
        options["swav"] = {"queue_length": 64, "queue_start_epoch": 0}  # its queue
    if clusterer == "dcv2":
        options["dcv2"] = {"heads": 2, "proj_dim": 16}
    return RunConfig(clusterer=clusterer, backbone="resnet18", dataset="digits", k=8, epochs=3, passes=2,
                     batch_size=32, image_size=32, width=0.125, seed=1, probe=False, options=options)


def _state(engine: Engine) -> dict:
    return {
        "model": {k: v.clone() for k, v in engine.s.model.state_dict().items()},
        "head": {k: v.clone() for k, v in engine.epochs.head.state_dict().items()},
        "plugin": engine.s.clusterer.state_dict(),
        "labels": engine.labels.copy(),
    }


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("clusterer", ["swav", "dcv2"])
def test_resumed_online_run_equals_the_uninterrupted_one(clusterer, tmp_path):
    cfg = _config(clusterer)
    full_dir = RunDir(tmp_path / "full")
    full_dir.create()
    full = Engine(setup(cfg))
    full.run(full_dir)

    part_dir = RunDir(tmp_path / "part")
    part_dir.create()
    run_until_ctrl_c(cfg, part_dir, epoch=2)
    checkpoint = part_dir.load_checkpoint()
    assert checkpoint["epoch"] == 2 and checkpoint["clusterer"]  # the plugin's state is in it
    resumed = Engine(setup(cfg))
    resumed.restore(checkpoint)
    resumed.run(part_dir)

    a, b = _state(full), _state(resumed)
    assert a["plugin"], "the plugin keeps state (queue / memory bank)"
    assert _equal(a["plugin"], b["plugin"])
    assert _equal(a["model"], b["model"]) and _equal(a["head"], b["head"])
    assert np.array_equal(a["labels"], b["labels"])
    assert [r["loss"] for r in full_dir.metrics() if "loss" in r] == [r["loss"] for r in part_dir.metrics() if "loss" in r]
    assert [r["epoch"] for r in part_dir.metrics()] == [0, 1, 2, 3]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_scheduler_state_is_checkpointed_and_follows_more_epochs(tiny_config):
    tiny_config.warmup_epochs = 1
    engine = Engine(setup(tiny_config))
    steps = engine.steps_per_epoch
    lrs = []
    for _ in range(3 * steps):
        lrs.append(engine.optimizer.param_groups[0]["lr"])
        engine.scheduler.step()
    # linear warm-up over the first epoch, then the cosine decays towards 0 at the end (2 epochs)
    assert lrs[0] == pytest.approx(tiny_config.lr / steps) and lrs[steps - 1] == pytest.approx(tiny_config.lr)
    assert lrs[steps] == pytest.approx(tiny_config.lr) and lrs[2 * steps - 1] < 0.05 * tiny_config.lr
    state = engine.state(2)
    longer = Engine(setup(tiny_config.model_copy(update={"epochs": 4})))
    longer.restore(state)
    assert longer.scheduler.last_epoch == engine.scheduler.last_epoch
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(tiny_config.lr * 0.5 * (1 + np.cos(np.pi * 2 / 3)))
