import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dcx.cli import app
from dcx.core.errors import RunDirError
from dcx.evaluation import evaluate_run, fmt
from dcx.runs.report import EPOCH_COLUMNS, write_report

runner = CliRunner()
TINY = ["--opt", "digits.limit=200", "--k", "10", "--epochs", "2", "--passes", "1", "--width", "0.125",
        "--opt", "alexnet.fc_dim=64", "--batch-size", "32", "--quiet"]




@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-epoch run written by `dcx run` (which writes the report itself), then evaluated."""
    path = tmp_path_factory.mktemp("runs") / "r"
    result = runner.invoke(app, ["run", *TINY, "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


def _tables(md: str) -> dict[str, list[dict[str, str]]]:
    """Markdown tables by the heading above them, each as a list of {column: cell}."""
    tables, heading, lines = {}, None, md.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("# ").strip()
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            cols = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(cols, (c.strip() for c in lines[i].strip("|").split("|")))))
                i += 1
            tables[heading] = rows
            continue
        i += 1
    return tables


def _check_png(path):
    assert path.stat().st_size > 30_000  # six panels of curves, bars and text, not an empty canvas
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] >= 1000 and img.size[1] >= 600
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10  # not a blank image


def test_run_writes_the_report_and_its_numbers_are_the_metrics(run_dir):
    png, md = run_dir / "report.png", run_dir / "report.md"
    assert png.exists() and md.exists()  # written by `dcx run` itself
    _check_png(png)
    text = md.read_text()
    assert "![curves](report.png)" in text and "dcx eval" in text  # no eval.json yet: says how to get one
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    table = _tables(text)["Per epoch"]
    assert [(r["epoch"], r["phase"]) for r in table] == [(str(r["epoch"]), r["phase"]) for r in rows]
    for md_row, row in zip(table, rows):
        for key, header, pattern in EPOCH_COLUMNS:
            if header in md_row:
                assert md_row[header] == ("-" if key not in row else pattern.format(row[key])), (key, md_row)
    assert table[0]["NMI labels"] != "-" and table[-1]["phase"] == "final"
    sizes = np.bincount(np.load(run_dir / "assignments.npy"))
    assert f"{int((sizes > 0).sum())} non-empty clusters" in text


def test_report_after_eval_shows_learned_and_random_equal_to_eval_json(run_dir):
    evaluate_run(run_dir, ["linear", "knn", "cluster"], ["conv4", "conv5", "features"])
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    _check_png(run_dir / "report.png")
    ev = json.loads((run_dir / "eval.json").read_text())
    tables = _tables((run_dir / "report.md").read_text())
    linear = {r["layer"]: r for r in tables["linear probe top-1 (test split)"]}
    assert list(linear) == ev["layers"] == ["conv4", "conv5", "features"]
    for layer, r in linear.items():
        assert r["learned"] == fmt(ev["learned"]["linear"][layer]["top1"])
        assert r["random"] == fmt(ev["random"]["linear"][layer]["top1"])
        assert r["dims"] == str(ev["learned"]["dims"][layer])
    knn = {r["layer"]: r for r in tables["weighted kNN top-1 (T=0.1)"]}
    for layer, r in knn.items():
        for net in ("learned", "random"):
            assert r[f"k=20 {net}"] == fmt(ev[net]["knn"][layer]["top1_k20"])
            assert r[f"k=200 {net}"] == fmt(ev[net]["knn"][layer]["top1_k200"])
    for variant in ("l2", "pca256-whiten-l2"):
        title = next(t for t in tables if t.endswith(f"after {variant}"))
        for r in tables[title]:
            for net in ("learned", "random"):
                assert r[f"NMI {net}"] == fmt(ev[net]["cluster"][r["layer"]][variant]["nmi"])
                assert r[f"acc {net}"] == fmt(ev[net]["cluster"][r["layer"]][variant]["accuracy"])
    text = (run_dir / "report.md").read_text()
    assert ev["split"] in text and re.search(r"Best layer by linear probe: \*\*\w+\*\*", text)


def test_report_of_a_directory_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(RunDirError, match="metrics.jsonl"):
        write_report(tmp_path)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
