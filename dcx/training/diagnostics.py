"""Per-epoch diagnostics of a partition: sizes, NMI to the previous epoch and to the true labels,
and the k-means probe of the features (how well they cluster by class)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from dcx.data import derive_seed
from dcx.algorithms.pca import PCAWhitening, l2_normalize
from dcx.algorithms.kmeans import kmeans
from dcx.algorithms.metrics import cluster_sizes, nmi
from dcx.training.environment import environment


def probe_nmi(x: np.ndarray, labels: np.ndarray, seed: int, restarts: int = 10) -> float:
    """NMI to ``labels`` of k-means(#classes) on ``x``: how well these features cluster by class.

    The best of ``restarts`` k-means runs by objective, so the probe is not a coin toss.
    """
    k = int(len(np.unique(labels)))
    best = min((kmeans(x, k, 20, seed + r) for r in range(restarts)), key=lambda r: r.objective)
    return nmi(labels, best.labels)


#: The per-epoch probe clusters at most this many rows (a fixed seeded sample): on all 1.28M
#: ImageNet rows its 2 x 10 restarts would cost ~16x DeepCluster's own k-means (issue 10).
PROBE_ROWS = 20_000

#: Health rules (the collapse questions users of the field ask most; docs/peers.md). A warning
#: fires when one cluster holds more than this share of the images,
LARGEST_SHARE = 0.5
#: when the non-empty clusters fall below this fraction of the previous epoch's,
CLUSTER_DROP = 0.5
#: or when an offline epoch's loss stays above this fraction of ln(#clusters) after the first epoch.
NEAR_LN_K = 0.95


def health_warnings(row: dict[str, Any], previous: dict[str, Any] | None, offline: bool) -> list[str]:
    """Collapse and training-health warnings for one epoch's row, each with what usually fixes it."""
    out = []
    share = row.get("size_max_share")
    if share is not None and share > LARGEST_SHARE and row.get("nonempty", 0) > 1:
        out.append(f"one cluster holds {share:.0%} of the images (collapse): lower --lr, raise --k, or train "
                   "fewer passes per round")
    elif row.get("nonempty") == 1 and row.get("clusters", 1) > 1:
        out.append("every image is in one cluster (collapse): lower --lr or raise --k")
    if previous is not None and previous.get("nonempty") and row.get("nonempty") is not None:
        if row["nonempty"] < CLUSTER_DROP * previous["nonempty"]:
            out.append(f"non-empty clusters fell from {previous['nonempty']} to {row['nonempty']} in one epoch: "
                       "lower --lr, or use a clusterer with balanced clusters (sinkhorn, swav)")
    loss, m = row.get("loss"), row.get("nonempty")
    if offline and row.get("epoch", 0) >= 1 and loss is not None and m and m > 1 and loss >= NEAR_LN_K * math.log(m):
        out.append(f"loss {loss:.3f} stays at ln(#clusters) = {math.log(m):.3f}: the network does not fit its "
                   "pseudo-labels; train more steps per round (--passes), raise --lr, or lower --k")
    return out


def probe_rows(n: int, seed: int) -> np.ndarray | None:
    """The probe's fixed sample of rows (the same every epoch), or None when all N fit."""
    if n <= PROBE_ROWS:
        return None
    return np.sort(np.random.default_rng(derive_seed(seed, 8)).choice(n, PROBE_ROWS, replace=False))


def partition_row(
    labels: np.ndarray, n_clusters: int, previous: np.ndarray | None, truth: np.ndarray | None,
    features: np.ndarray | None = None, whitened: np.ndarray | None = None, probe: bool = False,
    seed: int = 0, epoch: int = 0, pca_dim: int = 256,
) -> dict[str, Any]:
    """Cluster sizes, NMI to the previous labels and to the true labels, and the k-means probe.

    The probe is reported on two views of the same features, because they can disagree
    (docs/algorithms "Evaluation preprocessing changes conclusions"): ``probe_nmi`` on
    L2-normalised features, ``probe_nmi_whitened`` on the PCA-whitened + L2 features that
    offline clusterers see.
    """
    row: dict[str, Any] = dict(cluster_sizes(labels, n_clusters))
    row["size_max_share"] = row["size_max"] / max(1, len(labels))
    if previous is not None and len(previous) == len(labels):
        row["nmi_prev"] = nmi(labels, previous)
    if truth is not None:
        row["nmi_labels"] = nmi(truth, labels)
        if probe and features is not None:
            t = time.perf_counter()
            probe_seed = derive_seed(seed, epoch, 7)
            rows = probe_rows(len(labels), seed)
            raw = np.asarray(features[rows] if rows is not None else features)
            y = truth[rows] if rows is not None else truth
            if whitened is None:
                whitened = PCAWhitening(dim=pca_dim).fit_transform(raw)
            elif rows is not None:
                whitened = whitened[rows]
            row["probe_nmi"] = probe_nmi(l2_normalize(raw), y, probe_seed)
            row["probe_nmi_whitened"] = probe_nmi(whitened, y, probe_seed)
            row["time_probe"] = time.perf_counter() - t
    return row


def summarize(rows: list[dict], cfg: Any, n: int, seconds: float, processes: int, skipped: int, device) -> dict:
    """summary.json's body: the run's identity and size, its first and final rows, the probe's first
    and last values, every health warning, and the environment its numbers depend on."""
    train_rows = [r for r in rows if r.get("phase") == "train"]
    out: dict[str, Any] = {
        "clusterer": cfg.clusterer, "backbone": cfg.backbone, "dataset": cfg.dataset,
        "plugins": cfg.plugins,
        "epochs": cfg.epochs, "images": n, "seconds": seconds,
        "processes": processes,
        "skipped_images": skipped,
        "final": rows[-1] if rows else {},
        # what the numbers depend on besides the config (another CPU kind: another trajectory)
        "environment": environment(device),
    }
    if train_rows:
        out["first"] = train_rows[0]
        out["final_loss"] = train_rows[-1]["loss"]
    for key in ("probe_nmi", "probe_nmi_whitened"):
        probes = [r[key] for r in rows if key in r]
        if probes:
            out[f"{key}_initial"], out[f"{key}_final"] = probes[0], probes[-1]
    warnings = [f"epoch {r['epoch']}: {w}" for r in rows for w in r.get("warnings", [])]
    if warnings:
        out["warnings"] = warnings
    return out
