"""The learning-rate schedules, factor by factor and in the engine's optimiser."""

from __future__ import annotations

import math

import pytest

from dcx.core.engine import Engine
from dcx.core.schedule import StepSchedule
from dcx.core.setup import setup


def test_cosine_restarts_decay_to_zero_within_every_round_from_the_runs_cosine():
    restarts = StepSchedule("cosine-restarts", epochs=4, steps_per_epoch=10)
    cosine = StepSchedule("cosine", epochs=4, steps_per_epoch=10)
    for first in range(0, 40, 10):
        peak = cosine(first)
        assert restarts(first) == pytest.approx(peak)  # each round restarts at the run's cosine
        assert restarts(first + 5) == pytest.approx(0.5 * peak)
        assert restarts(first + 9) < 0.03 * peak  # settled before the next clustering
        assert all(restarts(first + i) > restarts(first + i + 1) for i in range(9))
    assert restarts(10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4))) and restarts(10) > restarts(9) * 10


def test_cosine_restarts_follow_a_warm_up():
    restarts = StepSchedule("cosine-restarts", epochs=4, steps_per_epoch=10, warmup_epochs=1)
    assert [restarts(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    # after one epoch of warm-up the run's cosine spans the 3 epochs left
    assert restarts(10) == pytest.approx(1.0) and restarts(20) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))
    assert restarts(19) < 0.03


@pytest.mark.parametrize("schedule", ["cosine", "cosine-restarts"])
def test_the_engine_restarts_the_rate_at_each_round_only_when_asked(tiny_config, schedule):
    engine = Engine(setup(tiny_config.model_copy(update={"lr_schedule": schedule})))
    steps = engine.steps_per_epoch
    lrs = []
    for _ in range(2 * steps):
        lrs.append(engine.optimizer.param_groups[0]["lr"])
        engine.scheduler.step()
    assert (lrs[steps] > 2 * lrs[steps - 1]) == (schedule == "cosine-restarts")  # round 1 starts high again
    assert lrs[steps] == pytest.approx(tiny_config.lr * 0.5 * (1 + math.cos(math.pi * 1 / tiny_config.epochs)))
