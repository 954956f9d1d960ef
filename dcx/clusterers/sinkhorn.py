"""SeLa self-labelling (Asano, Rupprecht & Vedaldi, ICLR 2020): equal-size pseudo-labels.

The plugin owns one classifier head for the whole run (``prepare``). Each epoch that head scores
every image; Sinkhorn-Knopp turns softmax(scores)^lambda into an equipartitioned assignment
(``dcx.algorithms.sinkhorn.sela_solve``), and ``build_head`` hands the same head and those labels to
the engine, which trains backbone and head on them. The head is the plugin's state (checkpoints).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from dcx.core.contracts import Clusterer, FitContext, Partition, TrainingHead, TrainSpec, linear_head
from dcx.core.errors import InputError
from dcx.algorithms.arrays import check_finite
from dcx.core.options import Option
from dcx.algorithms.sinkhorn import ROUNDINGS, sela_solve

log = logging.getLogger(__name__)

#: Rows the head scores at once (bounded memory at any N).
SCORE_ROWS = 4096


class SinkhornLabels(Clusterer):
    """SeLa: labels from the kept head's scores, balanced by Sinkhorn-Knopp (float64, CPU or GPU)."""

    name = "sinkhorn"
    dcx_api = "3.0"
    # The head consumes the raw backbone features, so PCA-whitening would only cost time.
    wants_preprocessing = False
    options = (
        Option("k", int, 3000, "clusters = outputs of the kept head (SeLa ImageNet: 3000, CIFAR-10: 128)", min=2),
        Option("lam", float, 25.0, "power lambda of softmax(scores) (SeLa: 25; 10 for CIFAR)", min=1e-3),
        Option("tol", float, 0.1, "stop when sum |c / c_prev - 1| falls below this (SeLa: 0.1)", min=0.0),
        # Capped (the reference has no cap): once the head is confident, P = softmax^25 is so peaked
        # that convergence to tol takes thousands of iterations; balanced rounding makes the sizes
        # exact anyway, and the capped labels match the converged ones (docs/decisions.md D49).
        # At ImageNet scale each iteration is ~2 N K flops.
        Option("max_iter", int, 1000, "cap on Sinkhorn iterations; stops with a warning (the reference has none)",
               min=1),
        Option(
            "rounding",
            str,
            "balanced",
            "plan -> labels: 'argmax' (reference, sizes only roughly equal) or 'balanced' (N/K +- 1)",
            choices=ROUNDINGS,
        ),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.head: nn.Module | None = None

    def prepare(self, spec: TrainSpec) -> None:
        """The run's one head, N(0, 0.01) as SeLa (no k-means warm start), from torch's RNG."""
        self.head = linear_head(spec.feature_dim, self.params["k"], spec.preactivation).to(spec.device)

    def build_head(self, partition: Partition, spec: TrainSpec) -> TrainingHead:
        """The kept head, trained on the labels as they are: its outputs are the cluster ids."""
        return TrainingHead(self.head, partition.labels)

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict()} if self.head is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.head.load_state_dict(state["head"])

    def fit(self, features: np.ndarray, context: FitContext) -> Partition:
        """Score the raw features with the kept head and return SeLa's equal-size labels."""
        p = self.params
        if self.head is None:
            raise InputError(
                "sinkhorn labels images by the scores of the head it trains with the network: it cannot "
                "cluster a feature file on its own; use kmeans or pic"
            )
        raw = np.asarray(features)
        check_finite(raw, "features")
        n, k = len(raw), p["k"]
        if k > n:
            raise InputError(f"sinkhorn: k={k} is larger than the {n} images; lower --k")

        # First epoch: the head is the random N(0, 0.01) init, as in SeLa (no k-means warm start).
        # Its scores are small (std 0.01 * |x|), so P = softmax^lambda is only mildly peaked: the
        # plan converges in ~10 iterations and gives a balanced partition by a random linear map
        # of the features, a function of the input that the first epoch can fit. A k-means start
        # would add a second clusterer's dependency for no gain SeLa reports; balanced rounding
        # keeps these early labels exactly equal-size (their plain argmax is off by 13-30%).
        t0 = time.perf_counter()
        scores = head_scores(self.head, raw, context.device, SCORE_ROWS)
        if scores.shape[1] != k:
            raise InputError(
                f"sinkhorn: the head has {scores.shape[1]} outputs but k={k}; build it as nn.Linear(D, k)"
            )
        result = sela_solve(scores, lam=p["lam"], tol=p["tol"], max_iter=p["max_iter"], rounding=p["rounding"])
        sizes = np.bincount(result.labels, minlength=k)
        log.debug("SeLa: %d Sinkhorn iterations, error %.3g, %d labels moved by rounding",
                  result.iterations, result.error, result.moved)
        return Partition(
            labels=result.labels,
            n_clusters=k,
            stats={
                "sinkhorn_iterations": result.iterations,
                "sinkhorn_error": result.error,
                "sinkhorn_converged": result.converged,
                "rounding_moved": result.moved,
                "size_min": int(sizes.min()),
                "size_max": int(sizes.max()),
                "seconds": time.perf_counter() - t0,
            },
        )


@torch.no_grad()
def head_scores(head: nn.Module, raw: np.ndarray, device: torch.device, batch_size: int) -> torch.Tensor:
    """(N, K) head outputs for the (N, D) rows of ``raw``, computed in eval mode on the head's device."""
    params = list(head.parameters())
    dev = params[0].device if params else torch.device(device)
    was_training = head.training
    head.eval()
    try:
        out = [
            head(torch.from_numpy(np.array(raw[i : i + batch_size], dtype=np.float32)).to(dev)).float()
            for i in range(0, len(raw), batch_size)
        ]
    finally:
        head.train(was_training)
    return torch.cat(out)
