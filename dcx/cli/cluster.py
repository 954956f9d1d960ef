"""`dcx cluster`: the clustering step alone, on any (N, d) feature array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from dcx.cli.ui import handle_errors, print_json, setup_logging
from dcx.core.contracts import FitContext, OnlineClusterer
from dcx.core.errors import InputError, OptionError
from dcx.core.features import PCAWhitening, check_finite
from dcx.core.options import parse_assignments
from dcx.core.registry import Registry
from dcx.core.rundir import save_npy


def load_features(path: Path) -> np.ndarray:
    """Read an (N, d) finite numeric array from a .npy file, or raise InputError."""
    if not path.is_file():
        raise InputError(f"{path} does not exist: pass a .npy file holding an (N, d) feature array")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path} is not a readable .npy array ({exc}); save features with numpy.save") from None
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise InputError(f"{path} holds an array of shape {getattr(x, 'shape', '?')}; need 2-D (N, d): reshape it")
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{path} holds {x.dtype} values; need numbers")
    check_finite(x, f"{path}")
    return x.astype(np.float32, copy=False)


@handle_errors
def cluster(
    features: Path = typer.Argument(..., help="(N, d) float array saved with numpy.save"),
    clusterer: str = typer.Option("kmeans", "--clusterer", "-c", help="clusterer plugin name (dcx list)"),
    k: int = typer.Option(None, "--k", help="number of clusters, for clusterers that take one"),
    opt: list[str] = typer.Option([], "--opt", help="plugin option PLUGIN.KEY=VALUE (repeatable)"),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the (N,) int64 labels (.npy)"),
    preprocess: bool = typer.Option(True, "--preprocess/--no-preprocess", help="PCA-256 + whitening + L2 first"),
    pca_dim: int = typer.Option(256, "--pca-dim", help="PCA dimensions of the preprocessing"),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="print the clusterer's statistics as JSON"),
) -> None:
    """Cluster a feature file with any offline clusterer; the output is written atomically."""
    setup_logging(quiet)
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
        if not any(o.name == "k" for o in cls.options):
            raise InputError(f"clusterer '{clusterer}' chooses its own number of clusters: drop --k")
        options.setdefault("k", k)
    algo = registry.create("clusterer", clusterer, options)
    x = load_features(features)
    k_eff = algo.params.get("k")
    if k_eff is not None and k_eff > len(x):
        raise InputError(f"k={k_eff} is larger than the number of rows N={len(x)} in {features}: lower --k")
    if preprocess and cls.wants_preprocessing:
        x = PCAWhitening(dim=pca_dim).fit_transform(x)
    part = algo.fit(x, FitContext(seed=seed)).validate(len(x), clusterer)
    save_npy(out, part.labels)
    stats = {"clusterer": clusterer, "n": len(x), "n_clusters": part.n_clusters,
             "nonempty": int(len(np.unique(part.labels))), **dict(part.stats), "out": str(out)}
    if as_json:
        print_json(stats)
    elif not quiet:
        typer.echo(f"wrote {len(x)} labels ({stats['nonempty']} non-empty of {part.n_clusters} clusters) to {out}")
