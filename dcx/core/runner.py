"""A run directory's life: start a new run or resume one, under a lock, losing nothing.

* A new run validates everything (config, plugins, data) before it creates its folder, and a
  failure or Ctrl-C before its first checkpoint removes the folder it created.
* A resume is the run's own: it reads the run's ``config.toml``; flags may change only what does
  not alter what was trained (``RESUMABLE``); nothing in the folder is written before the
  checkpoint has been restored.
* One writer at a time: an advisory lock on the folder for the run's whole life.
"""

from __future__ import annotations

import logging
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcx.core.callbacks import Callback
from dcx.core.config import RAN_AT_WHEN_ABSENT, RunConfig, flag_of, options_ran_at
from dcx.core.contracts import API_VERSION
from dcx.core.engine import Engine
from dcx.core.errors import DcxError, InputError, RunDirError
from dcx.core.progress import Progress
from dcx.core.registry import Registry
from dcx.core.rundir import CHECKPOINT, CONFIG, RunDir, RunLock
from dcx.core.setup import Setup, setup
from dcx.results.clustering import ClusteringWriter

log = logging.getLogger(__name__)

#: Settings a resume may change: how the rest of the run executes, not what it trains.
#: ``epochs`` may only grow (the cosine schedule is stretched from where the run is).
RESUMABLE = ("epochs", "workers", "device", "probe", "save_every_epoch", "feature_memory_gb")


class Interrupted(DcxError):
    """Ctrl-C: exit 130 with what was kept and how to go on."""

    exit_code = 130


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
    s = setup(config, registry)
    if s.world.is_main:
        run_dir.check_new()
    s.config.out = str(run_dir.path)
    return Run(s, run_dir, Engine(s, progress, _with_probe(s, (*callbacks, ClusteringWriter(run_dir)))))


def _with_probe(s: Setup, callbacks: tuple[Callback, ...]) -> tuple[Callback, ...]:
    """The end-of-run block probe (learned vs random k-means NMI per block) joins runs that probe."""
    if not s.config.probe:
        return callbacks
    from dcx.core.evaluate.probe import BlockProbe

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
    engine = Engine(s, progress, _with_probe(s, (*callbacks, ClusteringWriter(run_dir))))
    state = run_dir.load_checkpoint()
    resumed_at = None
    if state is not None:
        _check_checkpoint(run_dir, state, stored)
        engine.restore(state)
        resumed_at = engine.start_epoch
    return Run(s, run_dir, engine, resume=True, resumed_at=resumed_at)


def _check_checkpoint(run_dir: RunDir, state: dict, stored: RunConfig) -> None:
    """The checkpoint must belong to this config.toml (same settings but the resumable ones)."""
    api = str(state.get("api", "1.0"))
    if api.split(".")[0] != API_VERSION.split(".")[0]:
        raise RunDirError(f"{run_dir.path / CHECKPOINT} was written by dcx API {api}; this dcx has {API_VERSION}: "
                          "finish the run with the version that wrote it")
    saved = state.get("config")
    if not isinstance(saved, dict):
        return
    ignore = set(RESUMABLE) | {"out"}
    ours = {k: v for k, v in stored.to_dict().items() if k not in ignore}
    # A setting added to dcx after the checkpoint was written is absent from it: it ran at the default
    # (or at RAN_AT_WHEN_ABSENT's value, where the default now resolves to something else).
    # A default of None is resolved by setup (e.g. --views from the clusterer) and written as its value
    # in config.toml on the first resume: any value matches it there.
    defaults = {**RunConfig().to_dict(), **RAN_AT_WHEN_ABSENT}
    saved = {**saved, "options": options_ran_at(saved.get("options", {}), stored.plugin_names())}
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
        run.engine.scratch = run_dir.path
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
    except KeyboardInterrupt:
        if _cleanup(run, lock):
            raise Interrupted(f"interrupted; finished epochs are saved in {run_dir.path}. "
                              f"Resume with: dcx run --resume {run_dir.path}") from None
        raise Interrupted("interrupted before the first epoch finished; nothing was kept") from None
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
