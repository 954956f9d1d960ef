"""Train and evaluate several clusterers under the same seed, budget and data; tabulate and plot.

Each (clusterer, seed) is an ordinary run directory under the comparison directory, so a run can
be inspected, evaluated or resumed on its own. Every run's settings are validated before the first
trains; then runs are independent: one failing is recorded in the table and the others go on;
``resume`` skips the finished ones and continues the others.
"""

from __future__ import annotations

import io
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dcx.core.config import RunConfig
from dcx.training.environment import environment_key
from dcx.core.errors import DcxError, RunDirError
from dcx.core.progress import NullProgress, Progress
from dcx.core.registry import Registry
from dcx.training.rundir import SUMMARY, RunDir, atomic_write, save_json
from dcx.runs.runner import Interrupted, execute, new_run, prepare, resume_run

log = logging.getLogger(__name__)

TABLE_JSON = "comparison.json"
TABLE_MD = "comparison.md"
FIGURE = "comparison.png"
PHASES = ("extract", "preprocess", "cluster", "train")


@dataclass
class Comparison:
    """What to compare: clusterers x seeds on one base configuration."""

    clusterers: list[str]
    seeds: list[int]
    base: RunConfig
    protocols: list[str] = field(default_factory=lambda: ["knn", "cluster"])
    layers: str | Sequence[str] | None = "all"

    def run_name(self, clusterer: str, seed: int) -> str:
        return f"{clusterer}-seed{seed}"

    def config(self, clusterer: str, seed: int, registry: Registry) -> RunConfig:
        """The base settings with this clusterer and seed; a ``--opt`` for another clusterer of the
        comparison applies to that clusterer's runs only."""
        others = [registry.resolve("clusterer", c) for c in self.clusterers if c != clusterer]
        mine = registry.resolve("clusterer", clusterer)
        options = {owner: opts for owner, opts in self.base.options.items()
                   if mine.refers_to(owner) or not any(o.refers_to(owner) for o in others)}
        return self.base.model_copy(update={"options": options}).merged({"clusterer": clusterer, "seed": seed})


def _finished(path: Path, protocols: Sequence[str]) -> bool:
    if not (path / SUMMARY).is_file():
        return False
    if not protocols:
        return True
    eval_path = path / "eval.json"
    if not eval_path.is_file():
        return False
    done = set(json.loads(eval_path.read_text()).get("protocols", []))
    return set(protocols) <= done


def run_one(cmp: Comparison, clusterer: str, seed: int, out: Path, resume: bool,
            progress: Progress, registry: Registry) -> str:
    """Train (or resume) and evaluate one run; returns 'trained', 'resumed' or 'skipped'."""
    path = out / cmp.run_name(clusterer, seed)
    if resume and _finished(path, cmp.protocols):
        return "skipped"
    status = "trained"
    if not (path / SUMMARY).is_file():
        if RunDir(path).is_run():
            if not resume:
                raise RunDirError(f"{path} holds an unfinished run: pass --resume to continue it")
            execute(resume_run(path, registry=registry, progress=progress))
            status = "resumed"
        else:
            execute(new_run(cmp.config(clusterer, seed, registry), path, registry, progress))
    if cmp.protocols:
        from dcx.evaluation import evaluate_run

        evaluate_run(path, cmp.protocols, cmp.layers, progress=progress, registry=registry)
    return status


def collect(path: Path) -> dict[str, Any]:
    """One table row from a finished run directory (summary, metrics, eval headline)."""
    run = RunDir(path)
    summary = run.read_json(SUMMARY)
    rows = run.metrics()
    train = [r for r in rows if r.get("phase") == "train"]
    final = summary.get("final", {})
    out: dict[str, Any] = {
        "clusters": final.get("nonempty"),
        "nmi_labels": final.get("nmi_labels"),
        "nmi_prev": train[-1].get("nmi_prev") if train else None,
        "probe_nmi_initial": summary.get("probe_nmi_initial"),
        "probe_nmi_final": summary.get("probe_nmi_final"),
        "final_loss": summary.get("final_loss"),
        "seconds": summary.get("seconds"),
        "epochs": summary.get("epochs"),
        "environment": environment_key(summary.get("environment")),
    }
    for phase in PHASES:
        values = [r[f"time_{phase}"] for r in train if f"time_{phase}" in r]
        out[f"time_{phase}"] = statistics.mean(values) if values else None
    best = summary.get("best_block")
    if best:
        out.update(best_block=best["block"], best_learned=best["learned"], best_random=best["random"],
                   best_gain=best["gain"])
    ev = summary.get("eval")
    if ev:
        out["eval_layer"] = ev.get("layer")
        for net in ("learned", "random"):
            for key, value in ev.get(net, {}).items():
                out[f"{net}_{key}"] = value
    return out


def validate(cmp: Comparison, out: Path, resume: bool, registry: Registry) -> None:
    """Refuse before anything trains: a folder that is neither new, empty, nor (with ``resume``) a
    comparison (its table, or run directories of these runs), and any run's settings that would
    fail (``runner.prepare``; an existing seed vouches for its clusterer's settings on resume)."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder: choose another --out")
    ours = (out / TABLE_JSON).is_file() or any(RunDir(out / cmp.run_name(c, s)).is_run()
                                               for c in cmp.clusterers for s in cmp.seeds)
    if resume and not ours:
        raise RunDirError(f"{out} is not a dcx comparison (no {TABLE_JSON}, none of these runs): pass the --out of "
                          "an earlier dcx compare, or drop --resume")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise RunDirError(f"{out} holds a comparison: continue it with --resume, or choose another --out" if ours
                          else f"{out} exists and is not empty: choose another --out")
    dcx_log = logging.getLogger("dcx")
    level = dcx_log.level
    dcx_log.setLevel(logging.ERROR)  # a run's warnings come once, with the run
    try:
        for clusterer in cmp.clusterers:
            if not (resume and RunDir(out / cmp.run_name(clusterer, cmp.seeds[0])).is_run()):
                prepare(cmp.config(clusterer, cmp.seeds[0], registry), registry)
    finally:
        dcx_log.setLevel(level)


def compare(cmp: Comparison, out: Path, resume: bool = False, progress: Progress | None = None,
            registry: Registry | None = None) -> list[dict[str, Any]]:
    """Run every (clusterer, seed), then write comparison.json/.md/.png; returns the rows."""
    progress = progress or NullProgress()
    registry = registry or Registry()
    out = Path(out)
    validate(cmp, out, resume, registry)
    out.mkdir(parents=True, exist_ok=True)
    table: list[dict[str, Any]] = []
    if not resume:
        write_table(out, cmp, table)  # the folder is a comparison (--resume) from its start
    for clusterer in cmp.clusterers:
        for seed in cmp.seeds:
            row: dict[str, Any] = {"clusterer": clusterer, "seed": seed, "run_dir": cmp.run_name(clusterer, seed)}
            t = time.perf_counter()
            try:
                row["status"] = run_one(cmp, clusterer, seed, out, resume, progress, registry)
                row.update(collect(out / row["run_dir"]))
            except Interrupted as exc:  # Ctrl-C or SIGTERM stops the comparison, not only this run
                raise Interrupted(f"{exc}; or continue the comparison: the same dcx compare with --resume --out {out}",
                                  exc.exit_code) from None
            except DcxError as exc:
                row.update(status="failed", error=str(exc))
                log.error("%s (seed %d) failed: %s", clusterer, seed, exc)
            except Exception as exc:  # one broken run must not lose the others
                row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                log.exception("%s (seed %d) crashed", clusterer, seed)
            row["wall_seconds"] = time.perf_counter() - t
            table.append(row)
            write_table(out, cmp, table)  # after every run: an interrupted comparison keeps its rows
    write_figure(out, table)
    return table


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS = [
    ("clusterer", "clusterer"), ("seed", "seed"), ("clusters", "#clusters"),
    ("best_block", "best block"), ("best_learned", "k-means NMI best block"), ("best_random", "same block random"),
    ("nmi_labels", "NMI labels"), ("nmi_prev", "NMI prev epoch"),
    ("probe_nmi_initial", "k-means NMI random"), ("probe_nmi_final", "k-means NMI final"),
    ("learned_k20", "kNN-20 top-1"), ("random_k20", "kNN-20 random"),
    ("learned_linear_top1", "linear top-1"), ("random_linear_top1", "linear random"),
    ("time_extract", "extract s/ep"), ("time_cluster", "cluster s/ep"), ("time_train", "train s/ep"),
    ("status", "status"),
]


def markdown(cmp: Comparison, table: list[dict[str, Any]]) -> str:
    b = cmp.base
    epochs = b.epochs if b.epochs is not None else next((r["epochs"] for r in table if r.get("epochs")), "default")
    lines = [
        f"# Comparison: {', '.join(cmp.clusterers)} on {b.dataset} with {b.backbone}",
        "",
        f"Same data, backbone, budget ({epochs} epochs) and seeds ({', '.join(map(str, cmp.seeds))}) for every "
        f"clusterer. NMI labels: the last epoch's pseudo-labels against the true labels; k-means NMI: "
        f"k-means(#classes) on L2-normalised features at random init and after training; kNN/linear: "
        f"`dcx eval` on the evaluation layer{' (' + str(table[0].get('eval_layer')) + ')' if table and table[0].get('eval_layer') else ''}.",
        "",
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in table:
        lines.append("| " + " | ".join(_fmt(row.get(k)) for k, _ in COLUMNS) + " |")
    by = per_clusterer(table)
    if by and len(cmp.seeds) > 1:
        lines += ["", f"Per clusterer, mean ± sd over seeds {', '.join(map(str, cmp.seeds))} (best block: the block "
                  "where the trained network's k-means(#classes) NMI is highest; gain: minus the same block at "
                  "random init):", "",
                  "| clusterer | runs | best block NMI | gain over random | NMI labels | train s |", "|---|---|---|---|---|---|"]
        for name, agg in by.items():
            lines.append(f"| {name} | {agg['runs']} | {agg['best_learned']} | {agg['best_gain']} | {agg['nmi_labels']} | "
                         f"{agg['seconds']} |")
        for key in PAIRED_MEASURES:
            lines += paired_lines(table, cmp.clusterers[0], key)
    lines += environment_lines(table)
    failed = [r for r in table if r.get("status") == "failed"]
    if failed:
        lines += ["", "Failed runs:"] + [f"- {r['clusterer']} seed {r['seed']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def per_clusterer(table: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean ± sd over seeds of each clusterer's finished runs (best block, gain, NMI labels, time)."""
    def agg(values: list[float], digits: int = 3) -> str:
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["clusterer"] for r in table):
        rows = [r for r in table if r["clusterer"] == name and r.get("status") != "failed"]
        out[name] = {"runs": len(rows)}
        for key in ("best_learned", "best_gain", "nmi_labels"):
            out[name][key] = agg([r[key] for r in rows if r.get(key) is not None])
        out[name]["seconds"] = agg([r["seconds"] for r in rows if r.get("seconds") is not None], 0)
    return out


def paired_differences(table: list[dict[str, Any]], reference: str, key: str = "best_learned") -> dict[str, dict[str, Any]]:
    """Each other clusterer minus ``reference`` on ``key``, paired by seed (a seed starts every
    clusterer from the same initial network): mean, sd and 95 % interval (Student's t) of the per-seed
    differences, seeds won, and a verdict: "above" / "below" when the interval excludes 0, else
    "undecided". Three seeds resolve only gaps of a few times the seed-to-seed spread, so small
    differences are usually "undecided" (docs/decisions.md D02)."""
    from scipy.stats import t as student_t

    def by_seed(name: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in table
                if r["clusterer"] == name and r.get("status") != "failed" and r.get(key) is not None}

    ref = by_seed(reference)
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["clusterer"] for r in table):
        if name == reference:
            continue
        mine = by_seed(name)
        seeds = sorted(set(ref) & set(mine))
        diffs = [mine[s] - ref[s] for s in seeds]
        row: dict[str, Any] = {"seeds": seeds, "differences": diffs, "mean": None, "sd": None, "low": None,
                               "high": None, "wins": sum(d > 0 for d in diffs), "verdict": "-"}
        if diffs:
            row["mean"] = statistics.mean(diffs)
        if len(diffs) > 1:
            row["sd"] = statistics.stdev(diffs)
            half = float(student_t.ppf(0.975, len(diffs) - 1)) * row["sd"] / len(diffs) ** 0.5
            row["low"], row["high"] = row["mean"] - half, row["mean"] + half
            row["verdict"] = "above" if row["low"] > 0 else "below" if row["high"] < 0 else "undecided"
        out[name] = row
    return out


#: The measures ``dcx compare`` pairs by seed, with what each is: the best block's NMI averages k-means
#: over the evaluation's seeds (what one k-means run gives); the run's final probe clusters the
#: clustering layer's features with the best of 10 restarts by objective (where k-means can get to).
PAIRED_MEASURES = {  # key -> (short name, what it is)
    "best_learned": ("best block NMI", "the best block's k-means NMI (mean over the evaluation's k-means seeds)"),
    "probe_nmi_final": ("final probe NMI",
                        "the final features' k-means NMI (the run's probe: clustering layer, best of 10 restarts)"),
}


def paired_lines(table: list[dict[str, Any]], reference: str, key: str = "best_learned") -> list[str]:
    """The markdown table of ``paired_differences`` on ``key`` (empty when no clusterer shares a seed
    with the reference)."""
    paired = {n: r for n, r in paired_differences(table, reference, key).items() if r["seeds"]}
    if not paired:
        return []
    lines = ["", f"Each clusterer minus {reference} on {PAIRED_MEASURES[key][1]}, paired by seed (95 % interval: Student's t "
             "over the seeds; \"undecided\" when it holds 0: these seeds cannot tell the two apart):", "",
             f"| clusterer | seeds | minus {reference}, per seed | mean | 95 % interval | seeds above | verdict |",
             "|---|---|---|---|---|---|---|"]
    for name, r in paired.items():
        interval = f"[{r['low']:+.3f}, {r['high']:+.3f}]" if r["low"] is not None else "-"
        lines.append(f"| {name} | {', '.join(map(str, r['seeds']))} | {', '.join(f'{d:+.3f}' for d in r['differences'])} | "
                     f"{r['mean']:+.3f} | {interval} | {r['wins']} of {len(r['seeds'])} | {r['verdict']} |")
    return lines


def environment_lines(table: list[dict[str, Any]]) -> list[str]:
    """A warning, with each environment's runs, when the finished runs were trained on more than one
    (versions or CPU kernels): a seed follows another trajectory there, so pairs across them are not like
    for like (``dcx.training.environment``). Empty when they share one."""
    runs: dict[str, list[str]] = {}
    for r in table:
        if r.get("status") != "failed" and r.get("environment"):
            runs.setdefault(r["environment"], []).append(f"{r['clusterer']} seed {r['seed']}")
    if len(runs) < 2:
        return []
    return ["", f"Warning: these runs were trained in {len(runs)} environments; one seed gives other numbers on "
            "another CPU kind or library version, so compare runs within one:"] + \
        [f"- {key}: {', '.join(names)}" for key, names in runs.items()]


def write_table(out: Path, cmp: Comparison, table: list[dict[str, Any]]) -> None:
    save_json(out / TABLE_JSON, {"clusterers": cmp.clusterers, "seeds": cmp.seeds, "base": cmp.base.to_dict(),
                                 "protocols": cmp.protocols, "runs": table,
                                 "paired": {"reference": cmp.clusterers[0],
                                            "against": paired_differences(table, cmp.clusterers[0]),
                                            "by_measure": {key: paired_differences(table, cmp.clusterers[0], key)
                                                           for key in PAIRED_MEASURES}}})
    atomic_write(out / TABLE_MD, markdown(cmp, table).encode())


def write_figure(out: Path, table: list[dict[str, Any]]) -> Path:
    """One figure, every run's curves: NMI to labels, NMI to the previous epoch, probe NMI, loss."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2)
    panels = [("nmi_labels", "NMI pseudo-labels vs labels"), ("nmi_prev", "NMI to previous epoch"),
              ("probe_nmi", "k-means(#classes) NMI of features"), ("loss", "training loss")]
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    names = sorted({r["clusterer"] for r in table})
    for row in table:
        path = out / row["run_dir"]
        if row.get("status") == "failed" or not (path / "metrics.jsonl").exists():
            continue
        rows = RunDir(path).metrics()
        colour = colours[names.index(row["clusterer"]) % len(colours)]
        for ax, (key, _) in zip(axes.flat, panels):
            pts = [(r["epoch"], r[key]) for r in rows if key in r]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, color=colour, alpha=0.9,
                        label=f"{row['clusterer']} (seed {row['seed']})")
    for ax, (_, title) in zip(axes.flat, panels):
        ax.set_title(title)
        ax.set_xlabel("epoch (last point: final features)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(out / FIGURE, buf.getvalue())
    return out / FIGURE
