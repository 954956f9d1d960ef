"""Features of every image of a folder (or dataset) from a run's trained network, streamed to disk:
``features.npy`` (N, d), ``files.csv`` (row -> path, label), ``embed.json``; bounded memory."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcx.core.contracts import ImageSet
from dcx.core.errors import InputError
from dcx.evaluation.runs import TrainedNetwork
from dcx.training.layers import FEATURES
from dcx.core.progress import Progress
from dcx.results.clustering import file_names
from dcx.results.source import layer_forward, stream_rows

FEATURES_NPY = "features.npy"
FILES_CSV = "files.csv"
EMBED_JSON = "embed.json"
#: Bytes copied at a time when the streamed rows become features.npy.
COPY_CHUNK = 8 * 1024**2


@dataclass
class Embedding:
    """What ``embed`` wrote: where, how many rows of how many dims, and the images it skipped."""

    out: Path
    rows: int
    dims: int
    layer: str
    skipped: int


def check_new_output(out: Path) -> Path:
    """``out`` must not exist: results are never overwritten (InputError saying what to do)."""
    out = Path(out)
    if out.exists():
        raise InputError(f"--out {out} already exists: choose another --out or remove it")
    return out


def embed_to(trained: TrainedNetwork, images: ImageSet, out: Path, layer: str = FEATURES, half: bool = False,
             batch_size: int = 256, workers: int | None = None, progress: Progress | None = None) -> Embedding:
    """Write ``out``/features.npy + files.csv + embed.json for ``images``; ``out`` appears only
    when complete (built under a temporary name beside it, then renamed)."""
    out = check_new_output(out)
    forward, dims = layer_forward(trained, layer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        result = _write(trained, images, tmp, forward, dims, layer, half, batch_size, workers, progress)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out = out
    return result


def _write(trained: TrainedNetwork, images: ImageSet, tmp: Path, forward: Any, dims: int, layer: str, half: bool,
           batch_size: int, workers: int | None, progress: Progress | None) -> Embedding:
    dtype = np.float16 if half else np.float32
    names = file_names(images)
    classes, labels = images.classes, images.labels
    raw = tmp / "rows.bin"
    n = skipped = 0
    with open(raw, "wb") as rows_fh, open(tmp / FILES_CSV, "w", newline="") as files_fh:
        w = csv.writer(files_fh, lineterminator="\n")
        w.writerow(["row", "path" if names is not None else "index", *(["label"] if labels is not None else [])])
        for rows, idx, failed in stream_rows(trained, images, forward, batch_size, workers, progress):
            skipped += len(failed)
            rows_fh.write(np.ascontiguousarray(rows, dtype=dtype).tobytes())
            for i in idx.tolist():
                label = [] if labels is None else [classes[labels[i]] if classes else int(labels[i])]
                w.writerow([n, names[i] if names is not None else i, *label])
                n += 1
    if n == 0:
        raise InputError(f"none of the {len(images)} images could be read: nothing to embed")
    _rows_to_npy(raw, tmp / FEATURES_NPY, (n, dims), dtype)
    meta = {"run_dir": str(trained.run_dir), "layer": layer, "rows": n, "dims": dims,
            "dtype": np.dtype(dtype).name, "skipped_images": skipped, "epoch": trained.epoch}
    (tmp / EMBED_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return Embedding(tmp, n, dims, layer, skipped)


def _rows_to_npy(raw: Path, path: Path, shape: tuple[int, int], dtype: Any) -> None:
    """The streamed raw rows behind an .npy header, copied in chunks (the row count is known only
    at the end: unreadable images are left out)."""
    with open(path, "wb") as fh, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
        shutil.copyfileobj(src, fh, COPY_CHUNK)
    raw.unlink()
