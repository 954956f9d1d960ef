"""Feature matrices: a ``.npy`` file too large for RAM read in row chunks, row-chunk iteration, and the
NaN / inf check every consumer of features runs.

``NpyRows`` reads rows with plain file reads rather than ``np.load(mmap_mode="r")``: pages of a
memory map count towards the process's resident memory until the kernel reclaims them, so one
pass over a 1.6 GB memory-mapped file shows as 1.6 GB of RSS; chunked reads keep RSS at one chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from dcx.core.errors import InputError

#: Bytes of float32 rows processed at once by the chunked passes (PCA, checks, transforms).
CHUNK_BYTES = 16 * 1024**2


class NpyRows:
    """Read-only, row-sliceable view of a 2-D C-order ``.npy`` file (``x[a:b]`` reads those rows)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                self.offset = fh.tell()
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{self.path} is not a readable .npy array ({exc}); save features with numpy.save") from None
        if dtype.hasobject:
            raise InputError(f"{self.path} holds Python objects (a pickled array): save plain numbers with numpy.save")
        if len(shape) != 2:
            raise InputError(f"{self.path} holds an array of shape {shape}; need 2-D (N, d): reshape it")
        if fortran:
            raise InputError(f"{self.path} is stored in Fortran order: save np.ascontiguousarray(x) instead")
        if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
            raise InputError(f"{self.path} holds {dtype} values; need real numbers")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        expected = self.offset + self.shape[0] * self.shape[1] * dtype.itemsize
        if self.path.stat().st_size < expected:
            raise InputError(f"{self.path} is truncated ({self.path.stat().st_size} of {expected} bytes): rewrite it")

    ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("NpyRows supports contiguous row slices only")
        a, b, _ = rows.indices(self.shape[0])
        b = max(a, b)
        d = self.shape[1]
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + a * d * self.dtype.itemsize)
            out = np.fromfile(fh, dtype=self.dtype, count=(b - a) * d)
        return out.reshape(b - a, d)


def chunk_rows(d: int, itemsize: int = 4) -> int:
    """Rows per chunk so that one chunk of ``d`` columns takes about CHUNK_BYTES."""
    return max(256, CHUNK_BYTES // max(1, d * itemsize))


def row_chunks(n: int, d: int, rows: slice | None = None) -> Iterator[slice]:
    """Consecutive row slices covering ``rows`` (default: all ``n`` rows), each about CHUNK_BYTES."""
    start, stop, _ = (rows or slice(0, n)).indices(n)
    step = chunk_rows(d)
    for a in range(start, stop, step):
        yield slice(a, min(stop, a + step))


def check_finite(features: np.ndarray, what: str = "features") -> None:
    """Raise InputError naming the first bad rows if ``features`` holds NaN or inf (read in chunks)."""
    n = len(features)
    d = int(np.prod(features.shape[1:])) if features.ndim > 1 else 1
    bad: list[int] = []
    total = 0
    for rows in row_chunks(n, d):
        chunk = np.asarray(features[rows]).reshape(rows.stop - rows.start, -1)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            idx = np.flatnonzero(~finite) + rows.start
            total += len(idx)
            bad.extend(idx[: 5 - len(bad)].tolist() if len(bad) < 5 else [])
    if total:
        shown = ", ".join(map(str, bad)) + (", ..." if total > len(bad) else "")
        raise InputError(
            f"{what} contain NaN or inf in {total} row(s) ({shown}): the network diverged "
            "(lower --lr) or the input holds invalid values"
        )
