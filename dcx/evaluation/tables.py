"""Evaluation results as text tables: the CLI prints them with rich, the report as markdown."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcx.evaluation.protocols import CLUSTER_PREPROCESSING, KNN_K, KNN_T


@dataclass
class EvalTable:
    """One protocol's numbers as text: the CLI prints it with rich, the report as markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


def fmt(value: float | None) -> str:
    """Scores as printed everywhere (4 decimals, fractions not percents)."""
    return "-" if value is None else f"{value:.4f}"


def eval_tables(result: dict[str, Any]) -> list[EvalTable]:
    """Per protocol, one row per layer, learned beside random (or one network alone)."""
    nets = [n for n in ("learned", "random") if n in result]
    layers = result.get("layers", [])
    tables: list[EvalTable] = []

    def get(net: str, protocol: str, layer: str, *keys: str) -> float | None:
        value: Any = result.get(net, {}).get(protocol, {}).get(layer)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    if any("linear" in result[n] for n in nets):
        t = EvalTable("linear probe top-1 (test split)", ["layer", "dims", *nets])
        if len(nets) == 2:
            t.columns.append("learned - random")
        for layer in layers:
            vals = [get(n, "linear", layer, "top1") for n in nets]
            if all(v is None for v in vals):
                continue
            row = [layer, str(result[nets[0]]["dims"].get(layer, "-")), *map(fmt, vals)]
            if len(nets) == 2:
                row.append("-" if None in vals else f"{vals[0] - vals[1]:+.4f}")
            t.rows.append(row)
        tables.append(t)
    if any("knn" in result[n] for n in nets):
        t = EvalTable(f"weighted kNN top-1 (T={KNN_T})", ["layer", *[f"k={k} {n}" for k in KNN_K for n in nets]])
        for layer in layers:
            vals = [get(n, "knn", layer, f"top1_k{k}") for k in KNN_K for n in nets]
            if any(v is not None for v in vals):
                t.rows.append([layer, *map(fmt, vals)])
        tables.append(t)
    if any("cluster" in result[n] for n in nets):
        for variant in CLUSTER_PREPROCESSING:
            t = EvalTable(f"k-means (k={result.get('classes', '#classes')}) after {variant}",
                          ["layer", *[f"{m} {n}" for m in ("NMI", "ARI", "acc") for n in nets]])
            for layer in layers:
                vals = [get(n, "cluster", layer, variant, m) for m in ("nmi", "ari", "accuracy") for n in nets]
                if any(v is not None for v in vals):
                    t.rows.append([layer, *map(fmt, vals)])
            if t.rows:
                tables.append(t)
    return tables
