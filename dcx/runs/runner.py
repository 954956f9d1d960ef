"""A run directory's life: start a new run or resume one, under a lock, losing nothing.

* A new run validates everything (config, plugins, data) before it creates its folder, and a
  failure, Ctrl-C or SIGTERM before its first checkpoint removes the folder it created.
* A resume is the run's own: it reads the run's ``config.toml``; flags may change only what does
  not alter what was trained (``RESUMABLE``); nothing in the folder is written before the
  checkpoint has been restored, and a run whose metrics record finished epochs never restarts
  from epoch 0.
* One writer at a time: an advisory lock on the folder for the run's whole life.
"""

from __future__ import annotations

import logging
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcx.core.config import REMOVED_AFTER, RunConfig, flag_of
from dcx.core.contracts import API_VERSION
from dcx.core.errors import DcxError, DiskFull, InputError, RunDirError, Terminated
from dcx.core.progress import Progress
from dcx.core.registry import Registry
from dcx.results.clustering import ClusteringWriter
from dcx.training.callbacks import Callback
from dcx.training.engine import Engine
from dcx.training.rundir import CHECKPOINT, CONFIG, METRICS, RunDir, RunLock
from dcx.training.setup import Setup, setup

log = logging.getLogger(__name__)

#: Settings a resume may change: how the rest of the run executes, not what it trains.
#: ``epochs`` may only grow (the cosine schedule is stretched from where the run is).
RESUMABLE = ("epochs", "workers", "device", "probe", "save_every_epoch", "feature_memory_gb", "image_memory_gb",
             "image_cache", "compile", "profile")


class Interrupted(DcxError):
    """Ctrl-C (exit 130) or SIGTERM (exit 143), with what was kept and how to go on."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Run:
    """A run directory ready to train: its setup, engine, and what this process owns of it."""

    setup: Setup
    run_dir: RunDir
    engine: Engine
    resume: bool = False
    created: bool = False  # this process made the folder (so a failure before epoch 1 may remove it)
    resumed_at: int | None = None  # the epoch a checkpoint restored

    @property
    def path(self) -> Path:
        return self.run_dir.path


def new_run(config: RunConfig, out: Path, registry: Registry | None = None, progress: Progress | None = None,
            callbacks: tuple[Callback, ...] = ()) -> Run:
    """Validate ``config`` and build the run without writing anything; ``execute`` creates ``out``."""
    run_dir = RunDir(Path(out))
    s = prepare(config, registry)
    if s.world.is_main:
        run_dir.check_new()
    s.config.out = str(run_dir.path)
    engine = Engine(s, progress, _with_probe(s, (*callbacks, ClusteringWriter(run_dir)), run_dir.path))
    return Run(s, run_dir, engine)


def prepare(config: RunConfig, registry: Registry | None = None) -> Setup:
    """``setup`` plus what only a new run is refused for (a resume keeps what its run recorded): a
    ``--data-root`` its dataset never reads, a ``--batch-size`` over the number of images."""
    s = setup(config, registry)
    if config.data_root is not None and not s.dataset.reads_root:
        raise InputError(f"--data-root {config.data_root}: dataset {config.dataset} reads no folder (its images come "
                         "with it): drop --data-root, or did you mean --dataset imagefolder?")
    if config.batch_size is not None and s.images is not None and config.batch_size > len(s.images):
        raise InputError(f"--batch-size {config.batch_size} is larger than the dataset ({len(s.images)} images): "
                         f"pass {len(s.images)} or less")
    return s


def _with_probe(s: Setup, callbacks: tuple[Callback, ...], path: Path) -> tuple[Callback, ...]:
    """The end-of-run block probe (learned vs random k-means NMI per block) joins runs that probe; the
    profiler joins ``--profile`` runs."""
    if s.config.profile:
        from dcx.results.profile import ProfileEpoch

        callbacks = (*callbacks, ProfileEpoch(path / "profile"))
    if not s.config.probe:
        return callbacks
    from dcx.evaluation.probe import BlockProbe

    return (*callbacks, BlockProbe())


def read_run_config(path: Path) -> RunConfig:
    """The config.toml of a run directory, or a RunDirError saying it is not a run."""
    run_dir = RunDir(Path(path))
    if not run_dir.path.is_dir():
        raise RunDirError(f"{run_dir.path} is not a folder: pass the run directory to resume")
    if not run_dir.is_run():
        raise RunDirError(f"{run_dir.path} is not a dcx run (no {CONFIG}): pass a folder written by dcx run")
    return RunConfig.load_run(run_dir.path / CONFIG)


def resume_config(run: RunConfig, given: dict[str, Any], options: dict[str, dict[str, Any]]) -> RunConfig:
    """The run's config with the ``given`` settings applied; InputError naming any setting that
    a resume may not change (one that differs from the run's own value)."""
    current = run.model_dump()
    changes: dict[str, Any] = {}
    wanted = RunConfig.from_dict({**current, **{k: v for k, v in given.items() if v is not None}}, "flags")
    for key, value in given.items():
        if value is None or key in ("out", "options"):
            continue
        new, old = getattr(wanted, key), current.get(key)
        if new == old:
            continue
        if key not in RESUMABLE:
            raise InputError(
                f"{flag_of(key)} cannot change when resuming (run: {old!r}, given: {new!r}): it would no longer be "
                f"the same run; start a new run with another --out. A resume may change: "
                + ", ".join(flag_of(k) for k in RESUMABLE)
            )
        if key == "epochs" and new < old:
            raise InputError(f"--epochs can only grow when resuming (run: {old}, given: {new})")
        changes[key] = new
    for plugin, opts in options.items():
        stored = current["options"].get(plugin, {})
        for key, value in opts.items():
            if str(stored.get(key)) != str(value) and stored.get(key) != value:
                raise InputError(
                    f"--opt {plugin}.{key} cannot change when resuming (run: {stored.get(key)!r}, given: {value!r}): "
                    "start a new run with another --out"
                )
    return run.model_copy(update=changes)


def resume_run(path: Path, given: dict[str, Any] | None = None, options: dict[str, dict[str, Any]] | None = None,
               registry: Registry | None = None, progress: Progress | None = None,
               callbacks: tuple[Callback, ...] = ()) -> Run:
    """Rebuild a run from its own config.toml and checkpoint; writes nothing."""
    run_dir = RunDir(Path(path))
    stored = read_run_config(run_dir.path)
    cfg = resume_config(stored, given or {}, options or {})
    s = setup(cfg, registry)
    s.config.out = stored.out or str(run_dir.path)
    engine = Engine(s, progress, _with_probe(s, (*callbacks, ClusteringWriter(run_dir)), run_dir.path))
    state = run_dir.load_checkpoint()
    rows = run_dir.metrics()
    done = {r.get("epoch") for r in rows if r.get("phase") == "train"}
    resumed_at = None
    # Without a checkpoint, a lone row of epoch 0 is the epoch a kill cut short (row written, not its checkpoint).
    if state is None and (done - {0} or any(r.get("phase") == "final" for r in rows)):
        raise RunDirError(f"{run_dir.path} has no {CHECKPOINT} but its {METRICS} records {len(done)} finished "
                          "epoch(s), which starting over would overwrite: restore the checkpoint, or start a new run "
                          "with another --out")
    if state is not None:
        _check_checkpoint(run_dir, state, stored)
        engine.restore(state)
        resumed_at = engine.start_epoch
        missing = [e for e in range(resumed_at) if e not in done]
        if missing:
            log.warning("%s lacks the rows of epoch(s) %s, which the checkpoint has trained (deleted or edited?): the "
                        "run's curves and summary will miss them; restore the file first to keep them",
                        run_dir.path / METRICS, _span(missing))
    return Run(s, run_dir, engine, resume=True, resumed_at=resumed_at)


def _span(epochs: list[int]) -> str:
    """[0, 1, 2] -> '0-2'; [0, 2] -> '0, 2'."""
    if len(epochs) > 1 and epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}-{epochs[-1]}"
    return ", ".join(map(str, epochs))


def _check_checkpoint(run_dir: RunDir, state: dict, stored: RunConfig) -> None:
    """The checkpoint must belong to this config.toml (same settings but the resumable ones)."""
    api = str(state.get("api", "1.0"))
    if api.split(".")[0] != API_VERSION.split(".")[0]:
        raise RunDirError(f"{run_dir.path / CHECKPOINT} was written by a dcx of plugin API {api}; this dcx has "
                          f"{API_VERSION}: finish the run with the version that wrote it (API 2.0: dcx {REMOVED_AFTER})")
    saved = state.get("config")
    if not isinstance(saved, dict):
        return
    ignore = set(RESUMABLE) | {"out"}
    ours = {k: v for k, v in stored.to_dict().items() if k not in ignore}
    # A default of None is resolved by setup and written as its value in config.toml on the first
    # resume: any value matches it there.
    defaults = RunConfig().to_dict()
    theirs = {k: v for k, v in {**{k: defaults.get(k) for k in ours}, **saved}.items() if k not in ignore}
    resolved = {k for k in ours if k not in saved and defaults.get(k) is None}
    diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k) and k not in resolved)
    if diff:
        raise RunDirError(
            f"{run_dir.path / CONFIG} differs from the checkpoint in {', '.join(diff)}: it was edited after the run "
            "started; restore it (the checkpoint records the run's settings) or start a new run"
        )


def execute(run: Run) -> dict[str, Any]:
    """Train ``run`` to its last epoch under the folder's lock; returns the summary.

    A new run creates its folder here; if it fails or is interrupted before its first
    checkpoint, the folder is removed again. A resumed run never loses what it had.
    """
    run_dir = run.run_dir
    world = run.setup.world
    if not world.is_main:  # rank 0 owns the folder; the others train and share its memory maps
        world.barrier()
        run.engine.extract.scratch = run_dir.path
        return run.engine.run(None)
    if not run.resume:
        run.created = run_dir.create()
    lock = RunLock(run_dir.path).acquire()
    try:
        if not run.resume:
            if run_dir.is_run():  # another process started a run here between our checks
                raise RunDirError(f"{run_dir.path} already holds a run: choose another --out")
            run_dir.write_config(run.setup.config.to_toml())
        elif run.setup.config.to_dict() != _stored(run_dir):  # e.g. more --epochs
            run_dir.write_config(run.setup.config.to_toml())
        world.barrier()
        return run.engine.run(run_dir)
    except KeyboardInterrupt as exc:
        what, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        if _cleanup(run, lock):
            raise Interrupted(f"{what}; finished epochs are saved in {run_dir.path}. "
                              f"Resume with: dcx run --resume {run_dir.path}", code) from None
        raise Interrupted(f"{what} before the first epoch finished; nothing was kept", code) from None
    except DiskFull as exc:
        kept = _cleanup(run, lock)
        raise DiskFull(exc.what, f"resume with: dcx run --resume {run_dir.path}" if kept
                       else "run it again (nothing was kept)") from None
    except BaseException:
        _cleanup(run, lock)
        raise
    finally:
        lock.release()


def _stored(run_dir: RunDir) -> dict[str, Any]:
    try:
        return tomllib.loads((run_dir.path / CONFIG).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _cleanup(run: Run, lock: RunLock) -> bool:
    """After a failure: remove a folder this process created and never checkpointed.
    Returns whether a checkpoint is kept."""
    path = run.run_dir.path
    if run.created and not (path / CHECKPOINT).exists():
        lock.release()
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s: the run failed before its first epoch finished", path)
        return False
    return (path / CHECKPOINT).exists()
