"""SwAV (Caron et al., NeurIPS 2020): online codes by Sinkhorn-Knopp and swapped prediction.

Per batch: the large crops' prototype scores give equipartitioned codes
(``dcx.algorithms.sinkhorn.swav_codes``); every other view predicts each code through a softmax with
temperature. Hyper-parameters follow the reference ``main_swav.py`` ImageNet recipe except where
a comment at the option says why and points at its row of docs/decisions.md (epsilon, crops).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dcx.core.contracts import CropSpec, OnlineClusterer, RunDefaults, StepContext, TrainSpec
from dcx.core.errors import InputError
from dcx.core.options import Option
from dcx.algorithms.projection import (
    ProjectionHead, crop_options, crop_spec, hidden_width, nearest_prototype, projection_options, unwrap,
)
from dcx.algorithms.sinkhorn import swav_codes
from dcx.algorithms.threads import one_thread_if_small

log = logging.getLogger(__name__)

#: An epoch's mean loss above this fraction of ln K counts as "stuck at ln K" (collapse guard):
#: collapsed embeddings give uniform codes, and the cross-entropy to uniform codes is >= ln K.
_NEAR_LN_K = 0.95


class SwAVHead(ProjectionHead):
    """Projection to unit embeddings, then unit-norm prototypes without bias (SwAV's head)."""

    def __init__(self, feature_dim: int, hidden_dim: int, proj_dim: int, k: int) -> None:
        super().__init__(feature_dim, hidden_dim, proj_dim)
        self.prototypes = nn.Linear(proj_dim, k, bias=False)
        self.normalize_prototypes()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit embeddings (B, proj_dim), prototype scores (B, K))."""
        z = self.embed(x)
        return z, self.prototypes(z)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        with one_thread_if_small(w.numel(), w.device):  # a per-step op: never wait on a busy core
            w.copy_(F.normalize(w, dim=1))


def _distributed_hooks(step: StepContext):
    """(sum, max) all-reduce callables for swav_codes in a multi-process run, else (None, None)."""
    if step.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None, None
    dist = torch.distributed

    def reduce(op):
        def run(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t, op=op)
            return t

        return run

    return reduce(dist.ReduceOp.SUM), reduce(dist.ReduceOp.MAX)


class SwAV(OnlineClusterer):
    """SwAV: prototypes, Sinkhorn codes of the large crops, swapped prediction over multi-crop views."""

    name = "swav"
    dcx_api = "3.0"
    options = (
        Option("k", int, 3000, "number of prototypes (SwAV ImageNet: 3000; ~10x the classes on small data)", min=2),
        # eps 0.02, not SwAV's 0.05: at a small K and batch a fresh head's scores spread little, so
        # eps 0.05 gives near-uniform codes, the loss stays at ln K and the features collapse
        # (docs/decisions.md D43).
        Option("epsilon", float, 0.02, "Sinkhorn entropy eps (SwAV: 0.05; raise it for large K and batch)", min=1e-4),
        Option("sinkhorn_iters", int, 3, "Sinkhorn-Knopp iterations per batch (SwAV: 3)", min=1),
        Option("temperature", float, 0.1, "softmax temperature of the predictions (SwAV: 0.1)", min=1e-4),
        *projection_options("SwAV"),
        *crop_options("SwAV"),
        Option(
            "freeze_prototypes_steps", int, None,
            "optimiser steps the prototypes stay fixed; auto = the first epoch (SwAV: 313 = one ImageNet epoch)",
            min=0, nullable=True,
        ),
        Option("queue_length", int, 0, "past embeddings added to the codes' batch when batch < k; 0 = off (SwAV: 3840)", min=0),
        Option("queue_start_epoch", int, 15, "epoch from which the queue fills (SwAV: 15)", min=0),
    )

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._crops = crop_spec(self.name, self.params)
        self._queue: torch.Tensor | None = None  # (n_large, length, proj_dim), newest first
        self._queue_filled = 0
        self._queue_used = False
        self._reset_stats()

    # ------------------------------------------------------------------ engine hooks

    def crops(self) -> CropSpec:
        return self._crops

    def run_defaults(self, defaults: RunDefaults) -> RunDefaults:
        """The online defaults, then SwAV's own (docs/decisions.md D34, D37): twice the k-means-equal passes
        where no time budget binds, and views at twice the dataset's jitter (SwAV's colour distortion is
        0.8 where digits declare 0.4). k stays the dataset's even above the batch (D51)."""
        d = super().run_defaults(defaults)
        passes = d.passes * 2 if d.budget is None else d.passes
        return dataclasses.replace(d, passes=passes, jitter=min(1.0, 2 * d.jitter))

    def build_head(self, spec: TrainSpec) -> nn.Module:
        """The projection MLP + unit-norm prototypes; its parameters join the backbone's optimiser."""
        p = self.params
        if p["k"] > spec.num_samples:
            log.warning("swav: %d prototypes for %d images: most will stay unused; lower --k", p["k"], spec.num_samples)
        return SwAVHead(spec.feature_dim, hidden_width(p, spec.feature_dim), p["proj_dim"], p["k"])

    def before_step(self, head: nn.Module, step: StepContext) -> None:
        """L2-normalise the prototypes (SwAV does this before every forward pass)."""
        unwrap(head, SwAVHead, self.name).normalize_prototypes()

    def after_backward(self, head: nn.Module, step: StepContext) -> None:
        """Drop the prototypes' gradient while frozen, so the optimiser skips them (SwAV)."""
        if self._global_step(step) < self._freeze_steps(step):
            unwrap(head, SwAVHead, self.name).prototypes.weight.grad = None

    def loss(self, head: nn.Module, views: Sequence[torch.Tensor], step: StepContext) -> tuple[torch.Tensor, dict]:
        """Swapped prediction: for each large crop s, cross-entropy of its codes q_s against
        softmax(scores_t / T) of every other view t, averaged over t, then over s (main_swav.py)."""
        p = self.params
        n_views, n_large = len(views), p["n_large"]
        if n_views < max(2, n_large):
            raise InputError(f"swav needs at least {max(2, n_large)} views (large crops first), got {n_views}")
        bs = views[0].shape[0]
        if any(v.shape[0] != bs for v in views):
            raise InputError(f"swav: views have batch sizes {[v.shape[0] for v in views]}; all must be equal")
        # One pass over all crops, as SwAV: the projection's BatchNorm sees every view together.
        z, scores = head(torch.cat(list(views)))
        queue = self._queue_for(step, z)
        logp = F.log_softmax(scores.float() / p["temperature"], dim=1).view(n_views, bs, -1)
        logp_total = logp.sum(dim=0)
        codes = self._codes(unwrap(head, SwAVHead, self.name).prototypes, queue, scores.detach(), bs, step)
        loss = z.new_zeros((), dtype=torch.float32)
        for s, q in enumerate(codes):
            # sum over t != s of -<q_s, log p_t>, averaged over the batch and the n_views - 1 views
            loss = loss - (q * (logp_total - logp[s])).sum(dim=1).mean() / (n_views - 1)
        loss = loss / n_large
        if queue is not None:
            with torch.no_grad():
                self._push(queue, z.detach(), bs)

        with torch.no_grad(), one_thread_if_small(scores.numel(), scores.device):
            q_all = torch.cat(codes)
            entropy = -torch.special.xlogy(q_all, q_all).sum(dim=1)
            if self._usage.device != q_all.device:  # accumulate where the codes live: no copies per step
                self._usage, self._entropy_sum, self._loss_sum = (
                    t.to(q_all.device) for t in (self._usage, self._entropy_sum, self._loss_sum)
                )
            self._usage += torch.bincount(q_all.argmax(dim=1), minlength=q_all.shape[1])
            self._entropy_sum += entropy.sum()
            self._loss_sum += loss.detach()
            self._rows += len(q_all)
            self._batches += 1
            self._last_epoch = step.epoch
        # Tensors, not floats: a .item() per step would stall the GPU queue (epoch_stats syncs once).
        return loss, {"loss": loss.detach(), "code_entropy": entropy.mean()}

    def assign(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """Hard labels (B,): the nearest unit prototype of each projected feature (head in eval mode)."""
        h = unwrap(head, SwAVHead, self.name)
        return nearest_prototype(h, h.prototypes, features)

    def epoch_stats(self) -> dict:
        """Prototypes used (argmax of codes), mean code entropy and mean loss since the last call."""
        if self._batches == 0:
            return {}
        k = self.params["k"]
        used = int((self._usage > 0).sum())
        rows = self._rows
        loss = float(self._loss_sum) / self._batches
        stats = {
            "prototypes_used": used,
            "prototype_usage": used / k,
            "code_entropy": float(self._entropy_sum) / rows,
            "loss": loss,
            "ln_k": math.log(k),
            "queue_used": self._queue_used,
        }
        # Collapse guard (SwAV on small data): codes on few prototypes, or no information in them.
        reachable = min(k, rows)
        if used < reachable / 2:
            log.warning(
                "swav: only %d of %d prototypes received codes this epoch (collapse?): lower --k or "
                "swav.epsilon, or enable swav.queue_length", used, k,
            )
        if self._last_epoch >= 1 and loss >= _NEAR_LN_K * math.log(k):
            log.warning(
                "swav: mean loss %.3f has not dropped below ln k = %.3f (collapse?): lower swav.epsilon (e.g. 0.03), "
                "use the queue when the batch is smaller than k, or train longer", loss, math.log(k),
            )
        self._reset_stats()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The feature queue (when on): without it a resumed run would restart the queue empty."""
        if self._queue is None:
            return {}
        return {"queue": self._queue.detach().cpu().clone(), "queue_filled": self._queue_filled,
                "queue_used": self._queue_used}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "queue" in state:
            self._queue = state["queue"].clone()
            self._queue_filled = int(state["queue_filled"])
            self._queue_used = bool(state["queue_used"])

    # ------------------------------------------------------------------ internals

    def _codes(self, prototypes: nn.Linear, queue: torch.Tensor | None, scores: torch.Tensor, bs: int,
               step: StepContext) -> list[torch.Tensor]:
        """Sinkhorn codes (B, K) for each large crop's block of B rows of ``scores``, with the queue's
        embeddings prepended once it is full."""
        p = self.params
        reduce_sum, reduce_max = _distributed_hooks(step)
        codes = []
        with torch.no_grad(), one_thread_if_small(scores.numel(), scores.device):
            for s in range(p["n_large"]):
                out = scores[s * bs : (s + 1) * bs].float()
                if queue is not None and self._queue_filled >= queue.shape[1]:
                    if not self._queue_used:
                        log.info("swav: feature queue of %d full; codes now use it", queue.shape[1])
                        self._queue_used = True
                    out = torch.cat([queue[s] @ prototypes.weight.t().float(), out])
                q = swav_codes(out, eps=p["epsilon"], n_iter=p["sinkhorn_iters"],
                               all_reduce=reduce_sum, all_reduce_max=reduce_max)
                codes.append(q[-bs:])
        return codes

    def _queue_for(self, step: StepContext, z: torch.Tensor) -> torch.Tensor | None:
        """The queue, created when its start epoch is reached (each rank holds length / world_size rows)."""
        p = self.params
        if p["queue_length"] == 0 or step.epoch < p["queue_start_epoch"]:
            return None
        length = max(1, p["queue_length"] // max(1, step.world_size))
        if self._queue is None or self._queue.shape[1] != length:
            self._queue = torch.zeros(p["n_large"], length, z.shape[1], device=z.device)
            self._queue_filled = 0
        elif self._queue.device != z.device:  # restored from a checkpoint (read on the CPU)
            self._queue = self._queue.to(z.device)
        return self._queue

    def _push(self, queue: torch.Tensor, z: torch.Tensor, bs: int) -> None:
        """Shift the queue and put this batch's large-crop embeddings in front (SwAV's order)."""
        length = queue.shape[1]
        m = min(bs, length)
        for s in range(self.params["n_large"]):
            if m < length:
                queue[s, m:] = queue[s, :-m].clone()
            queue[s, :m] = z[s * bs : s * bs + m].float()
        self._queue_filled = min(length, self._queue_filled + m)

    def _freeze_steps(self, step: StepContext) -> int:
        steps = self.params["freeze_prototypes_steps"]
        return step.steps_per_epoch if steps is None else steps

    @staticmethod
    def _global_step(step: StepContext) -> int:
        # The engine counts StepContext.step across epochs (epoch * steps_per_epoch + i).
        return step.step

    def _reset_stats(self) -> None:
        self._usage = torch.zeros(self.params["k"], dtype=torch.long)
        self._entropy_sum = torch.zeros(())
        self._loss_sum = torch.zeros(())
        self._rows = 0
        self._batches = 0
        self._last_epoch = 0
