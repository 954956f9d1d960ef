import importlib.metadata as md
import json

from dcx.core.compare import Comparison, compare
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
    md_text = (tmp_path / "comparison.md").read_text()
    assert "| kmeans | 0 |" in md_text and "Failed runs:" in md_text
    assert (tmp_path / "comparison.png").stat().st_size > 10_000

    again = compare(cmp, tmp_path, resume=True, registry=_registry())
    assert [r["status"] for r in again] == ["skipped", "failed", "skipped"]
    assert again[0]["nmi_labels"] == by["kmeans"]["nmi_labels"]
