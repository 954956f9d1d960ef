"""Tiny per-step tensor ops on one thread, so they never wait on a busy core.

torch runs an element-wise op on more than 2,048 elements (``exp``, ``log``: the VML kernels) or
any op on more than 32,768 in its OpenMP pool. When another process holds a core, the pool's
barrier waits for a descheduled thread: SwAV's codes at B = 256, K = 100 (25,600 elements, ~0.07 ms
of work) took 12-16 ms on a loaded 2-core machine, the reference's as long, and ~0.1 ms on one
thread (benchmarks/bench_sinkhorn.py --busy, docs/benchmarks.md "Sinkhorn and per-step ops under
load"); a switch to one thread and back costs a few microseconds.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

#: Ops on at most this many elements run on one thread (docs/decisions.md D56: a SwAV codes call of
#: 2^20 elements costs ~1.2 ms on one thread against ~0.8 ms on two, while one wait for a
#: descheduled pool thread costs several ms).
SMALL_OP_NUMEL = 1 << 20


@contextmanager
def one_thread_if_small(numel: int, device: torch.device | str = "cpu", limit: int | None = None) -> Iterator[bool]:
    """Run the block on one torch thread when its work is at most ``limit`` (default ``SMALL_OP_NUMEL``)
    elements on the CPU; elsewhere (larger work, a GPU, already one thread) change nothing.

    Yields whether the thread count was lowered. The count is restored on exit, also on an exception.
    Results equal the multi-threaded ones up to the order of float sums in reductions.
    """
    limit = SMALL_OP_NUMEL if limit is None else limit
    threads = torch.get_num_threads()
    if threads <= 1 or numel > limit or torch.device(device).type != "cpu":
        yield False
        return
    torch.set_num_threads(1)
    try:
        yield True
    finally:
        torch.set_num_threads(threads)
