"""Multi-process runs with torch.distributed (gloo on CPU): the engine, k-means and SwAV codes.

Each test spawns 2 processes on this machine; they meet through a TCP store on localhost.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dcx.training import distributed
from dcx.training.callbacks import Callback
from dcx.core.config import RunConfig
from dcx.training.distributed import world_from_env
from dcx.algorithms.kmeans import kmeans
from dcx.runs.runner import execute, new_run
from dcx.algorithms.sinkhorn import swav_codes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    distributed.init(world_from_env())


def _spawn(fn, *args, world: int = 2) -> None:
    mp.spawn(fn, args=(world, _free_port(), *args), nprocs=world, join=True)


def _config(**extra) -> RunConfig:
    base = dict(clusterer="kmeans", backbone="alexnet", dataset="digits", k=10, epochs=2, passes=2, batch_size=32,
                image_size=32, width=0.125, seed=0, probe=False, device="cpu",
                # crops only: on 160 images, 2 epochs, elastic warps drawn per rank move epoch 1's
                # labels further than the 0.1 NMI this test allows for rank-local augmentation
                augment="crop", jitter=0.0,
                options={"digits": {"limit": 160}, "alexnet": {"fc_dim": 32}, "kmeans": {"backend": "torch"}})
    base.update(extra)
    return RunConfig(**base)


class Record(Callback):
    """Per epoch: this rank's assignments, a checksum of every weight and buffer, NMI to labels."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_epoch_end(self, engine, row) -> None:
        state = engine.s.model.state_dict()
        self.rows.append({
            "labels": engine.labels.copy(),
            "weights": torch.cat([v.double().flatten() for v in state.values()]).numpy(),
            "nmi_labels": row["nmi_labels"],
        })


def _train(rank: int, world: int, port: int, out: str, results: str) -> None:
    _join(rank, world, port)
    record = Record()
    try:
        execute(new_run(_config(), Path(out), callbacks=(record,)))
    finally:
        distributed.shutdown()
    torch.save(record.rows, Path(results) / f"rank{rank}.pt")


def test_two_processes_train_one_run_with_identical_ranks(tmp_path):
    out, results = tmp_path / "runs" / "ddp", tmp_path / "results"
    results.mkdir()
    _spawn(_train, str(out), str(results))
    ranks = [torch.load(results / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    for a, b in zip(*ranks):  # after every epoch
        assert np.array_equal(a["labels"], b["labels"])
        assert np.array_equal(a["weights"], b["weights"])
    # exactly one run directory, written once
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in rows] == [(0, "train"), (1, "train"), (2, "final")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    # the same global batch in one process: the pseudo-labels of epoch 0 come from the same
    # random network (identical), those of epoch 1 after one epoch of training that differs only
    # by per-rank BatchNorm statistics and augmentation draws
    single = Record()
    execute(new_run(_config(), tmp_path / "single", callbacks=(single,)))
    assert ranks[0][0]["nmi_labels"] == pytest.approx(single.rows[0]["nmi_labels"], abs=1e-9)
    assert ranks[0][1]["nmi_labels"] == pytest.approx(single.rows[1]["nmi_labels"], abs=0.1)


def _dcv2_epoch(rank: int | None, world: int, port: int, x: np.ndarray, results: str | None) -> np.ndarray:
    from dcx.core.contracts import EpochContext, StepContext, TrainSpec
    from dcx.clusterers.dcv2 import DeepClusterV2

    feats = torch.from_numpy(x).float()
    plugin = DeepClusterV2(k=12, heads=1, proj_dim=8, hidden_dim=0, merged_heads=2, merge_scale=0.5)
    torch.manual_seed(0)
    head = plugin.build_head(TrainSpec(feature_dim=x.shape[1], num_samples=len(x)))
    ctx = EpochContext(epoch=0, seed=3, steps_per_epoch=1, num_samples=len(x), device=torch.device("cpu"),
                       features=lambda: feats)
    mine = torch.arange(len(x))
    if rank is not None:
        _join(rank, world, port)
        w = world_from_env()
        ctx.rank, ctx.world_size, ctx.all_reduce = rank, world, w.all_reduce
        mine = mine[rank::world]
    try:
        plugin.start_epoch(head, ctx)
        targets = plugin.assignments.numpy().astype(np.float32)
        with torch.no_grad():
            plugin.loss(head, [2 * feats[mine], feats[mine]], StepContext(0, 0, 1, indices=mine))
        plugin.end_epoch(head, ctx)
    finally:
        if rank is not None:
            distributed.shutdown()
    out = np.concatenate([targets, plugin.bank.rows[0].numpy().T])  # k-means and merged labels, then the bank
    if results is not None:
        np.save(Path(results) / f"rank{rank}.npy", out)
    return out


def test_dcv2_merged_sets_reach_every_rank_and_the_bank_gathers_every_ranks_rows(tmp_path, blobs):
    """Rank 0 merges the bank's clusters along its kNN graph and every rank gets the same targets; after
    the epoch every rank's bank holds the rows all ranks wrote (MemoryBank.sync)."""
    x, _ = blobs
    _spawn(_dcv2_epoch, x, str(tmp_path))
    single = _dcv2_epoch(None, 1, 0, x, None)
    assert [len(np.unique(r)) for r in single[1:3]] == [6, 3]  # the merged sets' groups
    for r in range(2):
        got = np.load(tmp_path / f"rank{r}.npy")
        assert np.array_equal(got[:3], single[:3]) and np.allclose(got[3:], single[3:], atol=1e-6)


def _codes(rank: int, world: int, port: int, scores: torch.Tensor, results: str) -> None:
    _join(rank, world, port)
    dist = torch.distributed
    half = len(scores) // world

    def reduce(op):
        def run(t):
            dist.all_reduce(t, op=op)
            return t
        return run

    try:
        q = swav_codes(scores[rank * half : (rank + 1) * half], eps=0.05, n_iter=3,
                       all_reduce=reduce(dist.ReduceOp.SUM), all_reduce_max=reduce(dist.ReduceOp.MAX))
    finally:
        distributed.shutdown()
    torch.save(q, Path(results) / f"rank{rank}.pt")


def test_swav_codes_with_all_reduce_equal_the_single_process_codes(tmp_path):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 12, generator=gen)
    _spawn(_codes, scores, str(tmp_path))
    single = swav_codes(scores, eps=0.05, n_iter=3)
    both = torch.cat([torch.load(tmp_path / f"rank{r}.pt") for r in range(2)])
    assert torch.allclose(both, single, atol=1e-6)
