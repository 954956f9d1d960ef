"""Progress reporting seen by the engine: a tiny protocol the CLI implements with rich."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator, Protocol


class Progress(Protocol):
    def task(self, description: str, total: int) -> ContextManager[Callable[[int], None]]:
        """Context manager yielding ``advance(n)`` for a phase of ``total`` units."""
        ...


class NullProgress:
    """No output: for tests, library use and ``--quiet``."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None
