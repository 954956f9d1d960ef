import importlib.metadata as md
import json

import torch

from dcx.runs.compare import Comparison, compare, environment_lines
from dcx.training.environment import environment_key
from dcx.core.registry import Registry


def _registry():
    real = Registry()
    extra = [md.EntryPoint("wrongshape", "fake_plugins:WrongShape", "dcx.clusterers")]

    def entry_points(group):
        found = list(real._entry_points(group))
        return found + extra if group == "dcx.clusterers" else found

    return Registry(entry_points)


def test_compare_tabulates_each_run_and_isolates_failures(tiny_config, tmp_path):
    tiny_config.epochs = 1
    cmp = Comparison(["kmeans", "wrongshape", "pic"], [0], tiny_config, protocols=["cluster"], layers=["conv3"])
    rows = compare(cmp, tmp_path, registry=_registry())
    by = {r["clusterer"]: r for r in rows}
    assert by["kmeans"]["status"] == "trained" and by["pic"]["status"] == "trained"
    assert by["wrongshape"]["status"] == "failed" and "shape" in by["wrongshape"]["error"]
    assert by["kmeans"]["clusters"] <= 20  # k from the config
    for name in ("kmeans", "pic"):
        row = by[name]
        summary = json.loads((tmp_path / row["run_dir"] / "summary.json").read_text())
        assert row["nmi_labels"] == summary["final"]["nmi_labels"]
        assert row["probe_nmi_final"] == summary["probe_nmi_final"]
        assert row["time_train"] > 0 and row["eval_layer"] == "conv3"
        assert 0 < row["learned_l2_nmi"] <= 1 and 0 < row["random_l2_nmi"] <= 1
    table = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["clusterer"] for r in table["runs"]] == ["kmeans", "wrongshape", "pic"]
    assert table["paired"]["reference"] == "kmeans" and set(table["paired"]["against"]) == {"wrongshape", "pic"}
    assert table["paired"]["against"]["wrongshape"]["seeds"] == []  # a failed run pairs with nothing
    assert table["paired"]["by_measure"]["best_learned"] == table["paired"]["against"]
    probe_pic = table["paired"]["by_measure"]["probe_nmi_final"]["pic"]
    assert probe_pic["differences"] == [by["pic"]["probe_nmi_final"] - by["kmeans"]["probe_nmi_final"]]
    md_text = (tmp_path / "comparison.md").read_text()
    assert "| kmeans | 0 |" in md_text and "Failed runs:" in md_text
    assert "environments" not in md_text  # one machine, one environment: no warning
    summary = json.loads((tmp_path / "kmeans-seed0" / "summary.json").read_text())
    assert summary["environment"]["torch"] == torch.__version__
    assert summary["environment"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert by["kmeans"]["environment"] == environment_key(summary["environment"]) == by["pic"]["environment"]
    assert (tmp_path / "comparison.png").stat().st_size > 10_000

    again = compare(cmp, tmp_path, resume=True, registry=_registry())
    assert [r["status"] for r in again] == ["skipped", "failed", "skipped"]
    assert again[0]["nmi_labels"] == by["kmeans"]["nmi_labels"]


def test_paired_differences_give_a_t_interval_over_the_shared_seeds_and_a_verdict():
    from dcx.runs.compare import paired_differences, paired_lines

    def rows(name, values, status="done"):
        return [{"clusterer": name, "seed": s, "best_learned": v, "status": status} for s, v in values.items()]

    table = (rows("kmeans", {0: 0.90, 1: 0.80, 2: 0.85})
             + rows("close", {0: 0.92, 1: 0.83, 2: 0.86})              # +0.02, +0.03, +0.01
             + rows("better", {0: 0.95, 1: 0.85, 2: 0.90, 3: 0.99})    # +0.05 on every shared seed (3 not in kmeans)
             + rows("worse", {0: 0.80, 1: 0.71, 2: 0.74})              # -0.10, -0.09, -0.11
             + rows("failed", {0: 0.99}, status="failed"))
    paired = paired_differences(table, "kmeans")
    close = paired["close"]
    assert close["seeds"] == [0, 1, 2] and close["wins"] == 3
    assert abs(close["mean"] - 0.02) < 1e-9 and abs(close["sd"] - 0.01) < 1e-9
    half = 4.302653 * 0.01 / 3 ** 0.5  # t(0.975, 2 degrees of freedom)
    assert abs(close["low"] - (0.02 - half)) < 1e-6 and abs(close["high"] - (0.02 + half)) < 1e-6
    assert close["verdict"] == "undecided"  # three wins, yet the interval holds 0
    assert paired["better"]["seeds"] == [0, 1, 2] and paired["better"]["verdict"] == "above"
    assert paired["worse"]["verdict"] == "below"
    assert paired["failed"]["seeds"] == [] and paired["failed"]["verdict"] == "-"
    md = "\n".join(paired_lines(table, "kmeans"))
    assert "| close | 0, 1, 2 | +0.020, +0.030, +0.010 | +0.020 |" in md and "| failed |" not in md
    assert "best block's k-means NMI" in md
    for row in table:  # the same table on the run's final probe: its own measure, its own differences
        row["probe_nmi_final"] = row["best_learned"] * (2 if row["clusterer"] == "worse" else 1)
    probe = "\n".join(paired_lines(table, "kmeans", "probe_nmi_final"))
    assert "best of 10 restarts" in probe and "| worse | 0, 1, 2 | +0.700, +0.620, +0.630 |" in probe
    assert paired_differences(table, "kmeans", "probe_nmi_final")["worse"]["verdict"] == "above"


def test_runs_from_several_environments_are_named_in_a_warning():
    """Runs trained on two CPU kinds (or library versions) do not pair like for like: the table says
    which runs came from which environment; one environment, or failed runs, give no warning."""
    amd = {"torch": "2.14.1", "torch_cpu_capability": "AVX512", "blas_core": "SkylakeX", "cpu_kind": "AMD"}
    intel = {**amd, "cpu_kind": "Intel+AMX"}
    table = [{"clusterer": "kmeans", "seed": 0, "status": "trained", "environment": environment_key(amd)},
             {"clusterer": "swav", "seed": 0, "status": "skipped", "environment": environment_key(amd)},
             {"clusterer": "swav", "seed": 1, "status": "failed", "environment": environment_key(intel)}]
    assert environment_lines(table) == []
    table.append({"clusterer": "kmeans", "seed": 1, "status": "trained", "environment": environment_key(intel)})
    lines = environment_lines(table)
    assert "2 environments" in lines[1]
    assert lines[2] == "- torch 2.14.1, torch_cpu_capability AVX512, blas_core SkylakeX, cpu_kind AMD: kmeans seed 0, swav seed 0"
    assert lines[3].endswith("cpu_kind Intel+AMX: kmeans seed 1")
    assert environment_key(None) == "unknown"  # a run from before runs recorded it
