"""Collapse and health warnings: each fires on its case, names a fix, and reaches the summary."""

from __future__ import annotations

import math

import numpy as np

from dcx.training.diagnostics import health_warnings, partition_row
from dcx.training.engine import Engine
from dcx.training.setup import setup


def test_one_giant_cluster_is_a_collapse_warning():
    labels = np.array([0] * 80 + list(range(1, 21)))
    row = {"epoch": 1, **partition_row(labels, 30, None, None), "loss": 0.5}
    assert row["size_max_share"] == 0.8
    (warning,) = health_warnings(row, None, offline=True)
    assert "80%" in warning and "collapse" in warning and "--lr" in warning


def test_sharp_fall_of_nonempty_clusters():
    prev = {"epoch": 0, "nonempty": 100}
    row = {"epoch": 1, "nonempty": 30, "clusters": 100, "size_max_share": 0.1, "loss": 1.0}
    (warning,) = health_warnings(row, prev, offline=True)
    assert "fell from 100 to 30" in warning


def test_loss_stuck_at_ln_k_only_after_the_first_epoch_and_only_offline():
    row = {"epoch": 0, "nonempty": 50, "clusters": 50, "size_max_share": 0.03, "loss": math.log(50)}
    assert health_warnings(row, None, offline=True) == []
    row["epoch"] = 2
    (warning,) = health_warnings(row, None, offline=True)
    assert "ln(#clusters)" in warning and "--passes" in warning
    assert health_warnings(row, None, offline=False) == []
    row["loss"] = 0.5 * math.log(50)
    assert health_warnings(row, None, offline=True) == []


def test_summary_carries_the_warnings(tiny_config):
    tiny_config.lr = 1e-6  # too low to fit anything: the loss stays at ln k
    tiny_config.epochs = 2
    summary = Engine(setup(tiny_config)).run()
    assert any("ln(#clusters)" in w and w.startswith("epoch 1:") for w in summary["warnings"])
