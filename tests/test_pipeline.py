"""Images decoded once, batches augmented on the device, the epoch's time split, ``--profile``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dcx import data as D
from dcx.core.contracts import ImageSet
from dcx.core.errors import UnreadableImage
from dcx.runs.runner import execute, new_run
from dcx.training.engine import Engine
from dcx.training.setup import setup


class _Images(list):
    """PIL images, one of which fails to decode when read (as a corrupt file in a folder)."""

    def __init__(self, n: int, broken: int) -> None:
        rng = np.random.default_rng(0)
        super().__init__(Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8), mode="L") for _ in range(n))
        self.broken = broken

    def __getitem__(self, i):
        if i == self.broken:
            raise UnreadableImage(f"img{i}.png", "truncated file")
        return super().__getitem__(i)


def _set(n: int = 10, broken: int = 3) -> ImageSet:
    return ImageSet(_Images(n, broken), None, None, channels=1)


def test_decoded_once_in_memory_equals_decoded_on_every_read():
    """The in-memory store and the streamed one give the same extraction batches (the eval transform
    of each image, blank for the unreadable one) and the same training batches (without it)."""
    memory, streamed = D.DecodedImages(_set(), 16), D.DecodedImages(_set(), 16, memory_gb=1e-9)
    assert memory.in_memory and not streamed.in_memory
    a, b = list(memory.extraction(range(10), 4)), list(streamed.extraction(range(10), 4))
    for (xa, ia, fa), (xb, ib, fb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ia, ib) and torch.equal(fa, fb)
    rows = torch.cat([x for x, _, _ in a])
    eval_t = D.eval_transform(16, 1)
    assert torch.equal(rows[0], eval_t(_set().images[0]))  # the extraction input of dcx 0.2, bit for bit
    assert torch.all(rows[3] == rows[3].flatten()[0]) and [f.tolist() for _, _, f in a] == [[3], [], []]
    for store in (memory, streamed):
        ((x, idx, failed), sides), = list(store.training([[1, 3, 5]]))
        assert sides.tolist() == [20, 20]  # the originals' shorter side: the grid of their crops
        assert idx.tolist() == [1, 5] and failed.tolist() == [3] and x.dtype == torch.uint8 and x.shape == (2, 1, 16, 16)
        assert torch.equal(x[0], memory.pixels[1])


def test_a_cached_store_decodes_once_into_a_memory_map_and_removes_it(tmp_path):
    memory = D.DecodedImages(_set(), 16)
    cached = D.DecodedImages(_set(), 16, memory_gb=1e-9, cache=True)
    cached.scratch = tmp_path
    assert cached.in_memory and cached.mapped
    for (xa, ia, fa), (xb, ib, fb) in zip(memory.extraction(range(10), 4), cached.extraction(range(10), 4)):
        assert torch.equal(xa, xb) and torch.equal(ia, ib) and torch.equal(fa, fb)
    assert [p.name for p in tmp_path.iterdir()] == ["images-rank0.u8.npy"]
    assert np.load(tmp_path / "images-rank0.u8.npy", mmap_mode="r").shape == (10, 1, 16, 16)
    ((x, idx, failed), _), = list(cached.training([[0, 3, 9]]))
    assert idx.tolist() == [0, 9] and failed.tolist() == [3] and torch.equal(x, memory.pixels[[0, 9]])
    cached.close()
    assert not list(tmp_path.iterdir())


def test_a_run_with_an_image_cache_leaves_no_images_behind(tiny_config, tmp_path):
    tiny_config.epochs, tiny_config.image_cache, tiny_config.image_memory_gb = 1, True, 1e-6
    execute(new_run(tiny_config, tmp_path / "run"))
    assert (tmp_path / "run" / "summary.json").exists()
    assert not list((tmp_path / "run").glob("images-*"))


def test_a_store_over_its_memory_budget_is_never_decoded_whole():
    store = D.DecodedImages(_set(), 16, memory_gb=1e-9)
    list(store.training([[0, 1]]))
    list(store.extraction(range(10), 5))
    assert store._pixels is None


def test_an_epoch_of_batches_is_fixed_by_its_seed_and_reports_its_time_split():
    store = D.DecodedImages(_set(12, broken=-1), 16)
    batches = D.TrainingBatches(store, D.train_augment(16, False, 0.5, "elastic"), torch.device("cpu"))
    order = [[0, 1, 2, 3], [4, 5, 6, 7]]
    first = [v[0] for v, _, _ in batches.epoch(order, seed=5)]
    split = batches.time_split(1.0)
    again = [v[0] for v, _, _ in batches.epoch(order, seed=5)]
    other = [v[0] for v, _, _ in batches.epoch(order, seed=6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.equal(first[0], other[0])
    assert set(split) == {"time_data", "time_step", "time_wait", "images_per_s"}
    assert split["time_data"] > 0 and split["time_wait"] == 0 and split["images_per_s"] == 8
    assert split["time_data"] + split["time_step"] == pytest.approx(1.0)


def test_metrics_rows_split_the_training_time(tiny_config, tmp_path):
    tiny_config.epochs = 1
    run = new_run(tiny_config, tmp_path / "run")
    execute(run)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["time_data"] > 0 and row["time_step"] > 0 and row["time_wait"] == 0
    assert row["time_data"] + row["time_step"] + row["time_wait"] == pytest.approx(row["time_train"], rel=1e-6)
    assert row["images_per_s"] > 0
    from dcx.runs.report import write_report

    _, markdown = write_report(tmp_path / "run")
    header = next(line for line in markdown.read_text().splitlines() if "train data s" in line)
    assert "train step s" in header and "train wait s" in header


def test_engine_decodes_each_image_once_for_all_epochs_and_extractions(tiny_config, monkeypatch):
    calls = []
    decode = D.DecodedImages._decode_all
    monkeypatch.setattr(D.DecodedImages, "_decode_all", lambda self: calls.append(1) or decode(self))
    Engine(setup(tiny_config)).run()
    assert calls == [1]


def test_profile_writes_a_trace_of_one_epoch(tiny_config, tmp_path):
    tiny_config.epochs, tiny_config.profile, tiny_config.probe = 2, True, False
    execute(new_run(tiny_config, tmp_path / "run"))
    folder = tmp_path / "run" / "profile"
    assert sorted(p.name for p in folder.iterdir()) == ["ops-epoch0.txt", "trace-epoch0.json"]
    trace = json.loads((folder / "trace-epoch0.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("grid_sampler" in n for n in names) and any("convolution" in n for n in names)
    assert "Self CPU" in (folder / "ops-epoch0.txt").read_text()


def test_evaluation_decodes_its_images_once_for_every_network_and_layer_group(tiny_config, monkeypatch):
    from dcx.evaluation.extraction import extract_layers
    from dcx.evaluation.data import EvalData

    calls = []
    decode = D.DecodedImages._decode_all
    monkeypatch.setattr(D.DecodedImages, "_decode_all", lambda self: calls.append(1) or decode(self))
    s = setup(tiny_config)
    n = len(s.images)
    data = EvalData(s.images, s.images.labels, np.arange(n), np.arange(0), np.arange(n), "digits", "test")
    first = extract_layers(s.model, data, ["conv1"], 32, torch.device("cpu"))
    second = extract_layers(s.model, data, ["conv1", "conv2"], 32, torch.device("cpu"))
    assert calls == [1] and np.array_equal(first["conv1"], second["conv1"])
