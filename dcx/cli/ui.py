"""Terminal output for the CLI: logging, rich progress bars, tables, and errors as exit codes."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dcx.core.errors import DcxError, Terminated

err_console = Console(stderr=True)


def setup_logging(quiet: bool, rank: int = 0) -> None:
    """INFO for dcx (WARNING with --quiet; errors only on ranks other than 0 of a distributed
    run, which would repeat rank 0's lines) on stderr; third-party chatter at WARNING."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("dcx").setLevel(logging.ERROR if rank else logging.WARNING if quiet else logging.INFO)
    logging.getLogger("faiss").setLevel(logging.WARNING)


class RichProgress:
    """The engine's Progress protocol as rich progress bars on stderr (none with --quiet)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and err_console.is_terminal
        self._bar: Progress | None = None

    def __enter__(self) -> "RichProgress":
        if self.enabled:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), console=err_console, transient=True,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        if self._bar is None:
            yield lambda n=1: None
            return
        task = self._bar.add_task(description, total=total)
        try:
            yield lambda n=1: self._bar.advance(task, n)
        finally:
            self._bar.remove_task(task)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn DcxError into a one-line message and its exit code; Ctrl-C into exit 130, SIGTERM 143."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DcxError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except Terminated:
            raise fail("terminated", 143) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


def terminate_like_ctrl_c() -> None:
    """Handle SIGTERM (a scheduler stopping the job) as Ctrl-C: ``Terminated`` is raised where the
    program is, so a run keeps its finished epochs or removes its unfinished folder; a second
    SIGTERM ends the process at once."""

    def raise_terminated(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    signal.signal(signal.SIGTERM, raise_terminated)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
