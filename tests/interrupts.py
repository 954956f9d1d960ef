"""Stopping a run part-way the way a user does, for the resume tests."""

from __future__ import annotations

import pytest

from dcx.training.engine import Engine
from dcx.training.rundir import RunDir
from dcx.training.setup import setup


def run_until_ctrl_c(config, run_dir: RunDir, epoch: int) -> None:
    """Run ``config`` into ``run_dir`` and press Ctrl-C as epoch ``epoch`` starts (the epochs
    before it are checkpointed, that one is not)."""
    engine = Engine(setup(config))
    real_epoch = engine.run_epoch

    def interrupted(e):
        if e == epoch:
            raise KeyboardInterrupt
        return real_epoch(e)

    engine.run_epoch = interrupted
    with pytest.raises(KeyboardInterrupt):
        engine.run(run_dir)
