"""The default gate's behaviour check: a small digits run learns (machine-independent, unlike the
goldens): the loss falls, the pseudo-labels move towards the classes, and the best block's k-means
NMI ends above the same network at its random initialisation."""

from __future__ import annotations

import pytest

from dcx.core.config import RunConfig
from dcx.runs.runner import execute, new_run


@pytest.mark.slow
def test_a_small_digits_run_learns(tmp_path):
    config = RunConfig(clusterer="kmeans", dataset="digits", k=30, epochs=4, passes=2, batch_size=32, width=0.125,
                       seed=0, options={"digits": {"limit": 400}, "alexnet": {"fc_dim": 64}})
    summary = execute(new_run(config, tmp_path / "run"))
    assert summary["final_loss"] < summary["first"]["loss"]
    assert summary["final"]["nmi_labels"] > summary["first"]["nmi_labels"]
    best = summary["best_block"]
    assert best["learned"] > best["random"] + 0.02, best
