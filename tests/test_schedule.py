"""The learning-rate schedules, factor by factor and in the engine's optimiser."""

from __future__ import annotations

import math

import pytest

from dcx.training.engine import Engine
from dcx.training.schedule import StepSchedule
from dcx.training.setup import setup


def test_cosine_follows_a_warm_up_and_decays_to_zero():
    cosine = StepSchedule("cosine", epochs=4, steps_per_epoch=10, warmup_epochs=1)
    assert [cosine(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    # after one epoch of warm-up the run's cosine spans the 3 epochs left
    assert cosine(10) == pytest.approx(1.0) and cosine(20) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))
    assert cosine(39) < 0.01 and StepSchedule("constant", 4, 10)(39) == 1.0


def test_the_engine_follows_one_cosine_over_the_run(tiny_config):
    engine = Engine(setup(tiny_config))
    steps = engine.steps_per_epoch
    lrs = []
    for _ in range(2 * steps):
        lrs.append(engine.optimizer.param_groups[0]["lr"])
        engine.scheduler.step()
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # never restarts
    assert lrs[steps] == pytest.approx(tiny_config.lr * 0.5 * (1 + math.cos(math.pi * 1 / tiny_config.epochs)))
