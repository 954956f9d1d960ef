"""See the clusters: a static HTML page (opens from disk) and a PNG contact sheet of the largest
clusters, each with its images nearest the centroid and a few at its edge, its size, and its
majority label and purity where labels exist; plus a t-SNE map of the rows coloured by cluster."""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from dcx.core.progress import Progress
from dcx.results.assign import Assignment, assign_images
from dcx.results.embed import check_new_output

if TYPE_CHECKING:  # pragma: no cover
    from dcx.api import Run

THUMB = 64  # side of a thumbnail (px)
EDGE = 3  # images shown at each cluster's edge (farthest from its centroid)
MAP_POINTS = 2000  # rows of the t-SNE map (a seeded sample above this)


@dataclass
class ClusterView:
    """One cluster as the gallery shows it: members nearest its centroid, members at its edge."""

    cluster: int
    size: int
    nearest: list[int]
    edge: list[int]
    majority: str | None = None
    purity: float | None = None


@dataclass
class Gallery:
    out: Path
    clusters: list[ClusterView]

    @property
    def html(self) -> Path:
        return self.out / "index.html"


def write_gallery(run: "Run", out: Path | None = None, clusters: int = 12, per_cluster: int = 8,
                  progress: Progress | None = None) -> Gallery:
    """Assign the run's own images to its last clustering and write ``out`` (default RUN_DIR/gallery):
    index.html, contact_sheet.png, map.png, thumbs/, gallery.json; ``out`` appears complete or not at all."""
    out = check_new_output(Path(out) if out is not None else run.path / "gallery")
    images = run.images()
    result = assign_images(run.trained, images, progress=progress, keep_rows=True)
    views = cluster_views(result, images.labels, images.classes, clusters, per_cluster)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        thumbs = _thumbnails(images.images, views, tmp / "thumbs")
        _contact_sheet(views, thumbs, tmp / "contact_sheet.png")
        _tsne_map(result, views, tmp / "map.png", run.trained.setup.config.seed)
        title = f"{run.config.clusterer} + {run.config.backbone} on {run.config.dataset} ({run.path.name})"
        (tmp / "index.html").write_text(_page(title, views, thumbs, result))
        (tmp / "gallery.json").write_text(json.dumps({"run_dir": str(run.path), "images": len(result.labels),
                                                      "clusters": [v.__dict__ for v in views]}, indent=1) + "\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Gallery(out, views)


def cluster_views(result: Assignment, labels: np.ndarray | None, classes: list[str] | None, clusters: int,
                  per_cluster: int) -> list[ClusterView]:
    """The ``clusters`` largest clusters: members by distance to the centroid (offline: the run's
    centroids; online: the cluster's mean row of L2-normalised features)."""
    lab = result.labels
    dist = result.distances if result.distances is not None else _distance_to_means(result.rows, lab)
    sizes = np.bincount(lab)
    order = np.argsort(-sizes, kind="stable")[: max(1, clusters)]
    views = []
    for c in order:
        if sizes[c] == 0:
            break
        members = np.flatnonzero(lab == c)
        ranked = members[np.argsort(dist[members], kind="stable")]
        nearest = ranked[:per_cluster]
        edge = [i for i in ranked[::-1][:EDGE] if i not in set(nearest.tolist())][::-1]
        view = ClusterView(int(c), int(sizes[c]), [int(result.index[i]) for i in nearest],
                           [int(result.index[i]) for i in edge])
        if labels is not None:
            truth = labels[result.index[members]]
            values, counts = np.unique(truth, return_counts=True)
            top = int(values[np.argmax(counts)])
            view.majority = classes[top] if classes else str(top)
            view.purity = float(counts.max() / len(members))
        views.append(view)
    return views


def _distance_to_means(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from dcx.results.clustering import cluster_means

    means = cluster_means(rows, labels, int(labels.max()) + 1)
    return np.linalg.norm(rows - means[labels], axis=1)


def _thumbnails(images: Any, views: list[ClusterView], folder: Path) -> dict[int, str]:
    """One small PNG per shown image (works for datasets without files); index -> relative path."""
    folder.mkdir(parents=True)
    out = {}
    for i in sorted({i for v in views for i in v.nearest + v.edge}):
        img = images[i].convert("RGB")
        if max(img.size) > THUMB:
            img.thumbnail((THUMB, THUMB))
        elif max(img.size) < THUMB:  # small images (digits) scaled up to be seen
            scale = THUMB / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
        img.save(folder / f"{i}.png")
        out[i] = f"thumbs/{i}.png"
    return out


def _contact_sheet(views: list[ClusterView], thumbs: dict[int, str], path: Path) -> None:
    """One row per cluster: a caption, its nearest images, a gap, its edge images."""
    root = path.parent
    caption, gap, pad = 150, 16, 4
    cols = max((len(v.nearest) for v in views), default=1)
    width = caption + cols * (THUMB + pad) + gap + EDGE * (THUMB + pad)
    sheet = Image.new("RGB", (width, len(views) * (THUMB + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, v in enumerate(views):
        y = pad + r * (THUMB + pad)
        text = f"cluster {v.cluster}\n{v.size} images"
        if v.majority is not None:
            text += f"\n{v.majority}: {v.purity:.0%}"
        draw.text((pad, y + 4), text, fill="black")
        for j, i in enumerate(v.nearest):
            sheet.paste(Image.open(root / thumbs[i]), (caption + j * (THUMB + pad), y))
        x0 = caption + cols * (THUMB + pad) + gap
        for j, i in enumerate(v.edge):
            sheet.paste(Image.open(root / thumbs[i]), (x0 + j * (THUMB + pad), y))
    sheet.save(path)


def _tsne_map(result: Assignment, views: list[ClusterView], path: Path, seed: int) -> None:
    """t-SNE (scikit-learn) of at most MAP_POINTS rows; the shown clusters in colour, the rest grey."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    n = len(result.labels)
    pick = np.sort(rng.choice(n, size=min(n, MAP_POINTS), replace=False))
    xy = TSNE(2, perplexity=float(min(30, max(2, (len(pick) - 1) / 3))), init="pca", random_state=seed).fit_transform(
        np.asarray(result.rows[pick], np.float32))
    lab = result.labels[pick]
    fig = Figure(figsize=(7, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    shown = [v.cluster for v in views]
    rest = ~np.isin(lab, shown)
    ax.scatter(xy[rest, 0], xy[rest, 1], s=4, c="lightgrey", label="other clusters" if rest.any() else None)
    for k, c in enumerate(shown):
        m = lab == c
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=_colour(k), label=f"cluster {c}")
    ax.set_title(f"t-SNE of {len(pick)} of {n} images, by cluster")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize="x-small", markerscale=2, loc="best", ncol=2)
    fig.savefig(path, dpi=100)


def _colour(k: int):
    from matplotlib import colormaps

    return colormaps["tab20"](k % 20)


def _page(title: str, views: list[ClusterView], thumbs: dict[int, str], result: Assignment) -> str:
    """The static page: relative links only (thumbs/, map.png, contact_sheet.png)."""
    esc = html.escape
    names = result.names
    parts = [f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}section{margin-bottom:1.2em}"
             "img{image-rendering:pixelated;margin:1px;border:1px solid #ddd}.edge img{border-color:#e99}"
             "h2{font-size:1.05em;margin:.3em 0}.meta{color:#555}.map{float:right;max-width:440px;margin-left:1em}"
             "</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p class='meta'>{len(result.labels)} images; the {len(views)} largest clusters, each with the images "
             "nearest its centroid, then (red border) a few at its edge. "
             "<a href='contact_sheet.png'>PNG contact sheet</a></p>",
             "<img class='map' src='map.png' alt='t-SNE map of the images coloured by cluster'>"]
    for v in views:
        label = f" &middot; majority <b>{esc(v.majority)}</b> ({v.purity:.0%})" if v.majority is not None else ""
        parts.append(f"<section class='cluster' id='c{v.cluster}'><h2>cluster {v.cluster} &middot; {v.size} images{label}</h2>")
        for group, ids in (("nearest", v.nearest), ("edge", v.edge)):
            parts.append(f"<span class='{group}'>")
            for i in ids:
                name = esc(names[i]) if names is not None else str(i)
                parts.append(f"<img src='{thumbs[i]}' title='{name}' alt='{name}' height='{THUMB}'>")
            parts.append("</span>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
