"""A run's report: one PNG of its curves (paper Fig. 2) and a short markdown file with the numbers.

Read from the run directory only (metrics.jsonl, assignments.npy, summary.json, eval.json), so
it can be rewritten at any time: at the end of ``dcx run``, after ``dcx eval``, or by ``dcx report``.
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from dcx.core.errors import RunDirError
from dcx.evaluation import EVAL_JSON, best_layer, eval_tables, fmt
from dcx.training.rundir import ASSIGNMENTS, METRICS, SUMMARY, RunDir, atomic_write

log = logging.getLogger(__name__)

PNG = "report.png"
MARKDOWN = "report.md"
#: Per-epoch phase timings, in the order of an epoch.
PHASES = ("time_extract", "time_preprocess", "time_cluster", "time_train", "time_probe")
#: The training time's split (data: decode + augment; step: forward + backward + optimiser; wait: on loader workers).
TRAIN_SPLIT = ("time_data", "time_step", "time_wait")
#: Per-epoch columns of the markdown table: (metrics key, header, format).
EPOCH_COLUMNS = (
    ("loss", "loss", "{:.4f}"),
    ("nmi_labels", "NMI labels", "{:.4f}"),
    ("nmi_prev", "NMI prev", "{:.4f}"),
    ("probe_nmi", "probe NMI", "{:.4f}"),
    ("probe_nmi_whitened", "probe NMI whitened", "{:.4f}"),
    ("nonempty", "non-empty", "{}"),
    ("size_min", "size min", "{}"),
    ("size_median", "size median", "{:g}"),
    ("size_max", "size max", "{}"),
    *((p, p.removeprefix("time_") + " s", "{:.1f}") for p in PHASES),
    *((p, "train " + p.removeprefix("time_") + " s", "{:.1f}") for p in TRAIN_SPLIT),
)


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): left out of the report", path, exc)
        return None


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.md`` into ``run_dir`` (atomically); return their paths."""
    run = RunDir(Path(run_dir))
    rows = run.metrics()
    if not rows:
        raise RunDirError(f"{run.path / METRICS} is missing or empty: pass a run directory written by dcx run")
    summary = _read_json(run.path / SUMMARY) or {}
    evaluation = _read_json(run.path / EVAL_JSON)
    sizes = None
    if (run.path / ASSIGNMENTS).exists():
        labels = np.load(run.path / ASSIGNMENTS, allow_pickle=False)
        counts = np.bincount(labels.astype(np.int64).ravel())
        sizes = np.sort(counts[counts > 0])[::-1]
    png, md = run.path / PNG, run.path / MARKDOWN
    atomic_write(png, _figure(rows, summary, evaluation, sizes))
    atomic_write(md, _markdown(run.path, rows, summary, evaluation, sizes).encode())
    log.info("report: %s, %s", md, png)
    return png, md


# ----------------------------------------------------------------------------- figure


def _figure(rows: list[dict], summary: dict, evaluation: dict | None, sizes: np.ndarray | None) -> bytes:
    # The object API with the Agg canvas: no pyplot, no global backend, safe in any process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in rows if r.get("phase") == "train"]
    final = [r for r in rows if r.get("phase") == "final"]
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).ravel()
    fig.suptitle(_title(summary, rows))

    ax = axes[0]
    for key, label, style in (("nmi_labels", "pseudo-labels vs labels", "o-"),
                              ("probe_nmi", "k-means(#classes), L2 features", "s--"),
                              ("probe_nmi_whitened", "k-means(#classes), PCA-whitened features", "^:")):
        x, y = _series(train + final, key)
        if x:
            ax.plot(x, y, style, label=label)
    _finish(ax, "(a) NMI to labels per epoch (paper Fig. 2a)", "NMI", "no labels in this dataset")

    ax = axes[1]
    x, y = _series(train + final, "nmi_prev")
    if x:
        ax.plot(x, y, "o-", color="tab:green", label="NMI(t, t-1)")
    _finish(ax, "(b) NMI to the previous epoch (paper Fig. 2b)", "NMI", "needs two epochs")

    ax = axes[2]
    x, y = _series(train, "loss")
    if x:
        ax.plot(x, y, "o-", color="tab:red", label="training loss")
        clusters = train[-1].get("nonempty")
        if clusters and clusters > 1:
            ax.axhline(math.log(clusters), color="grey", ls=":", label=f"ln {clusters} (uniform guess)")
    _finish(ax, "(c) loss per epoch", "cross-entropy", "no training epochs")

    ax = axes[3]
    if sizes is not None and len(sizes):
        ax.bar(np.arange(len(sizes)), sizes, width=1.0, color="tab:purple")
        ax.axhline(float(np.median(sizes)), color="black", ls="--", lw=1, label=f"median {np.median(sizes):g}")
        ax.set_xlabel("cluster (sorted by size)")
    _finish(ax, f"(d) cluster sizes, last epoch ({len(sizes) if sizes is not None else 0} non-empty)", "images",
            "no assignments.npy", xlabel=False)

    ax = axes[4]
    bottom = np.zeros(len(train))
    epochs = [r["epoch"] for r in train]
    split = all("time_data" in r for r in train)  # runs before dcx 0.3 have no split of the training time
    for phase in (p for name in PHASES for p in (TRAIN_SPLIT if name == "time_train" and split else (name,))):
        vals = np.array([float(r.get(phase, 0.0) or 0.0) for r in train])
        if vals.any():
            label = phase.removeprefix("time_")
            ax.bar(epochs, vals, bottom=bottom, label=f"train: {label}" if phase in TRAIN_SPLIT else label)
            bottom += vals
    _finish(ax, "(e) time per phase per epoch", "seconds", "no timings")

    ax = axes[5]
    linear = (evaluation or {}).get("learned", {}).get("linear") or (evaluation or {}).get("random", {}).get("linear")
    if linear:
        layers = [n for n in evaluation.get("layers", []) if n in linear]
        nets = [n for n in ("learned", "random") if evaluation.get(n, {}).get("linear")]
        width = 0.8 / len(nets)
        for i, net in enumerate(nets):
            vals = [evaluation[net]["linear"].get(n, {}).get("top1", np.nan) for n in layers]
            bars = ax.bar(np.arange(len(layers)) + (i - (len(nets) - 1) / 2) * width, vals, width, label=net)
            ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
        ax.set_xticks(np.arange(len(layers)), layers)
        lows = [v for net in nets for v in (evaluation[net]["linear"].get(n, {}).get("top1") for n in layers) if v is not None]
        ax.set_ylim(max(0.0, min(lows) - 0.1), min(1.0, max(lows)) + 0.03)
    _finish(ax, f"(f) linear probe top-1 per layer ({(evaluation or {}).get('dataset', '')})", "top-1",
            f"no {EVAL_JSON}: run dcx eval RUN_DIR", xlabel=False)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _finish(ax, title: str, ylabel: str, empty: str, xlabel: bool = True) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel("epoch")
    if ax.has_data():
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xticks([])
        ax.set_yticks([])


def _title(summary: dict, rows: list[dict]) -> str:
    if not summary:
        return f"run of {sum(r.get('phase') == 'train' for r in rows)} epoch(s)"
    return (f"{summary.get('clusterer', '?')} + {summary.get('backbone', '?')} on {summary.get('dataset', '?')}: "
            f"{summary.get('epochs', '?')} epochs, {summary.get('images', '?')} images")


# ----------------------------------------------------------------------------- markdown


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _cell(row: dict, key: str, pattern: str) -> str:
    value = row.get(key)
    return "-" if value is None else pattern.format(value)


def _markdown(path: Path, rows: list[dict], summary: dict, evaluation: dict | None, sizes: np.ndarray | None) -> str:
    out = [f"# Run report: {_title(summary, rows)}", ""]
    if summary.get("seconds") is not None:
        out.append(f"Run directory `{path}`, {summary['seconds']:.0f} s in all.")
    else:
        out.append(f"Run directory `{path}`.")
    out += ["", f"![curves]({PNG})", "", "## Per epoch", "",
            "From `metrics.jsonl`: training rows, then the `final` row (the trained network's features, "
            "clustered once more without training). NMI labels: pseudo-labels vs the true labels; NMI prev: "
            "vs the previous epoch's pseudo-labels; probe NMI: k-means(#classes) on L2-normalised features "
            "(whitened: on the PCA-whitened + L2 features the clusterer sees).", ""]
    present = [c for c in EPOCH_COLUMNS if any(c[0] in r for r in rows)]
    table = [[str(r.get("epoch", "-")), str(r.get("phase", "-")), *[_cell(r, k, p) for k, _, p in present]] for r in rows]
    out += _md_table(["epoch", "phase", *[h for _, h, _ in present]], table)
    if sizes is not None and len(sizes):
        out += ["", "## Clusters of the last epoch", "",
                f"{len(sizes)} non-empty clusters; sizes min {int(sizes.min())}, median {float(np.median(sizes)):g}, "
                f"max {int(sizes.max())} (`assignments.npy`)."]
    if (Path(path) / "gallery" / "index.html").is_file():
        out += ["", "See the clusters: [gallery/index.html](gallery/index.html) (contact sheet: "
                "[gallery/contact_sheet.png](gallery/contact_sheet.png))."]
    else:
        out += ["", f"See the clusters: `dcx gallery {path}` writes gallery/index.html and a PNG contact sheet."]
    out += ["", "## Evaluation", ""]
    if evaluation is None:
        out.append(f"No `{EVAL_JSON}` yet: run `dcx eval {path}` to score the features against the random-init network.")
    else:
        out += _eval_markdown(evaluation)
    return "\n".join(out) + "\n"


def _eval_markdown(evaluation: dict[str, Any]) -> list[str]:
    out = [f"From `{EVAL_JSON}` (network of epoch {evaluation.get('epoch', '?')}, random init = same seed "
           f"{evaluation.get('seed', '?')}). Data: {evaluation.get('split', '?')}.", ""]
    layer = best_layer(evaluation)
    if layer and "random" in evaluation and layer in evaluation["random"].get("linear", {}):
        learned = evaluation["learned"]["linear"][layer]["top1"]
        random = evaluation["random"]["linear"][layer]["top1"]
        verdict = "beats" if learned > random else "does not beat"
        n_test = evaluation.get("test_images")
        images = f" ({round((learned - random) * n_test):+d} of {n_test} test images)" if n_test else ""
        out += [f"Best layer by linear probe: **{layer}**, learned {fmt(learned)} vs random {fmt(random)}{images}: "
                f"the learned network {verdict} its random init there.", ""]
    for t in eval_tables(evaluation):
        out += [f"### {t.title}", "", *_md_table(t.columns, t.rows), ""]
    for key, text in evaluation.get("settings", {}).items():
        out.append(f"- {key}: {text}")
    return out

