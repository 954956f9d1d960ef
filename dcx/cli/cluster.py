"""`dcx cluster`: the clustering step alone, on any (N, d) feature array in a .npy file.

The file is read in row chunks (``arrays.NpyRows``), never whole: validation, PCA and the
projection stream over it, so a 1.6 GB input clusters in well under 1 GB of memory
(docs/benchmarks.md, benchmarks/bench_cluster_cli.py). Only the (N, pca_dim) projection is held in RAM;
torch is never imported (about 0.45 GB resident on its own).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from dcx.cli.ui import handle_errors, print_json, setup_logging
from dcx.algorithms.arrays import NpyRows, row_chunks
from dcx.core.errors import InputError, OptionError
from dcx.core.options import parse_assignments

_F32_MAX = float(np.finfo(np.float32).max)


def open_features(path: Path) -> NpyRows:
    """An (N, d) finite numeric .npy file, checked chunk by chunk; InputError otherwise."""
    from dcx.algorithms.arrays import check_finite

    if not path.is_file():
        raise InputError(f"{path} does not exist: pass a .npy file holding an (N, d) feature array")
    x = NpyRows(path)
    n, d = x.shape
    if n < 1 or d < 1:
        raise InputError(f"{path} holds an empty array of shape {x.shape}: need at least one row and column")
    for rows in row_chunks(n, d):
        chunk = x[rows]
        if np.issubdtype(chunk.dtype, np.floating) and chunk.dtype.itemsize > 4:
            finite = chunk[np.isfinite(chunk)]
            if finite.size and np.abs(finite).max() > _F32_MAX:
                raise InputError(f"{path} holds values beyond float32's range (max |x| = {np.abs(finite).max():.3g}): "
                                 "rescale the features, e.g. divide by their largest absolute value")
        check_finite(chunk, str(path))
    return x


def load_rows(x: NpyRows) -> np.ndarray:
    """All rows as one float32 array (for clusterers that take the features as they are)."""
    n, d = x.shape
    out = np.empty((n, d), dtype=np.float32)
    for rows in row_chunks(n, d):
        out[rows] = x[rows]
    return out


@handle_errors
def cluster(
    features: Path = typer.Argument(..., help="(N, d) float array saved with numpy.save"),
    clusterer: str = typer.Option("kmeans", "--clusterer", "-c", help="clusterer plugin name (dcx list)"),
    k: Optional[int] = typer.Option(None, "--k", help="number of clusters, for clusterers that take one"),
    opt: list[str] = typer.Option([], "--opt", help="plugin option PLUGIN.KEY=VALUE (repeatable)"),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the (N,) int64 labels (.npy)"),
    preprocess: bool = typer.Option(True, "--preprocess/--no-preprocess", help="PCA-256 + whitening + L2 first"),
    pca_dim: int = typer.Option(256, "--pca-dim", help="PCA dimensions of the preprocessing"),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="print the clusterer's statistics as JSON"),
) -> None:
    """Cluster a feature file with any offline clusterer; the output is written atomically."""
    from dcx.core.contracts import FitContext, OnlineClusterer
    from dcx.algorithms.pca import PCAWhitening
    from dcx.core.registry import Registry
    from dcx.training.rundir import save_npy

    setup_logging(quiet)
    if pca_dim < 1:
        raise InputError(f"--pca-dim must be >= 1, got {pca_dim}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder: pass a file name such as {out / 'labels.npy'}")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    if out.exists() and features.exists() and os.path.samefile(out, features):  # also through a link
        raise InputError(f"--out {out} is the features file {features}: the labels would replace the features; "
                         "choose another --out")
    registry = Registry()
    ref = registry.resolve("clusterer", clusterer)
    options: dict = {}
    for owner, values in parse_assignments(opt).items():
        if not ref.refers_to(owner):
            raise OptionError(f"options given for '{owner}', which is not the clusterer ({clusterer}): drop them")
        options.update(values)
    cls = registry.load("clusterer", clusterer)
    if issubclass(cls, OnlineClusterer):
        raise InputError(f"clusterer '{clusterer}' labels batches while it trains, not a feature file: use kmeans or pic")
    if k is not None:
        if k < 1:
            raise InputError(f"--k must be >= 1, got {k}")
        if not any(o.name == "k" for o in cls.options):
            raise InputError(f"clusterer '{clusterer}' chooses its own number of clusters: drop --k")
        options.setdefault("k", k)
    # One labelling is written: further clusterings (k-means heads, merged heads over a kNN graph of
    # every row) only train heads in a run; here they would cost time and memory for nothing.
    for name, single in (("heads", 1), ("merged_heads", 0)):
        if any(o.name == name for o in cls.options):
            options.setdefault(name, single)
    algo = registry.create("clusterer", clusterer, options)
    x = open_features(features)
    k_eff = algo.params.get("k")
    if k_eff is not None and k_eff > len(x):
        raise InputError(f"k={k_eff} is larger than the number of rows N={len(x)} in {features}: lower --k")
    if len(x) < 2:
        raise InputError(f"{features} holds {len(x)} row: clustering needs at least 2")
    if preprocess and cls.wants_preprocessing:
        data = PCAWhitening(dim=pca_dim).fit(x).transform(x)
    else:
        data = load_rows(x)
    part = algo.fit(data, FitContext(seed=seed)).validate(len(data), clusterer)
    save_npy(out, part.labels)
    stats = {"clusterer": clusterer, "n": len(data), "n_clusters": part.n_clusters,
             "nonempty": int(len(np.unique(part.labels))), **dict(part.stats), "out": str(out)}
    if as_json:
        print_json(stats)
    elif not quiet:
        typer.echo(f"wrote {len(data)} labels ({stats['nonempty']} non-empty of {part.n_clusters} clusters) to {out}")
