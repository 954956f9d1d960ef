"""Sinkhorn-Knopp equipartition, shared by the Sinkhorn clusterers (plugins never import each other).

Two reference behaviours (docs/algorithms.md, "Sinkhorn-Knopp codes"):

- ``sela_labels``: SeLa (Asano et al. 2020, self-label ``sinkhornknopp.py``), offline over the
  whole dataset: hard labels from P = softmax(scores)^lambda scaled to equal-size clusters.
- ``swav_codes``: SwAV (Caron et al. 2020, ``main_swav.py`` ``distributed_sinkhorn``), online per
  batch: soft codes from exp(scores / eps) after a few scaling iterations.

Both are written with scaling *vectors* (Q = diag(u) P diag(v)) instead of rescaling the matrix
in place: equal in exact arithmetic, each iteration is two matrix-vector products.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from dcx.algorithms.threads import one_thread_if_small
from dcx.core.errors import InputError

log = logging.getLogger(__name__)

#: Sums (or maxima) a tensor over the ranks of a distributed run and returns it; identity alone.
Reduce = Callable[[torch.Tensor], torch.Tensor]

#: How SeLa turns its transport plan into hard labels (see ``sela_labels``).
ROUNDINGS = ("argmax", "balanced")


# ----------------------------------------------------------------------------- SeLa (offline)


@dataclass(frozen=True)
class SelaResult:
    """Labels and the solver's trace: iterations run, last convergence error, scaling vectors."""

    labels: np.ndarray  # (N,) int64
    iterations: int
    error: float
    converged: bool
    moved: int  # labels that balanced rounding changed from the plain argmax (0 for "argmax")
    r: np.ndarray  # (K,) cluster scaling, up to a common factor
    c: np.ndarray  # (N,) sample scaling of the row-shifted P (see sela_solve), up to r's inverse factor


def sela_solve(
    scores: np.ndarray | torch.Tensor,
    lam: float = 25.0,
    tol: float = 0.1,
    check_every: int = 10,
    max_iter: int = 10_000,
    rounding: str = "argmax",
) -> SelaResult:
    """SeLa's Sinkhorn-Knopp on (N, K) logits or log-probabilities; see ``sela_labels``.

    Runs on the device of ``scores`` in float64, as the reference.
    """
    if rounding not in ROUNDINGS:
        raise InputError(f"Sinkhorn rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    x = torch.as_tensor(scores)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"Sinkhorn needs (N, K) scores with N, K > 0, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("Sinkhorn scores contain NaN or inf: the head or the backbone diverged (lower --lr)")
    n, k = x.shape
    # log P = lam * log_softmax; log_softmax is idempotent, so log-probabilities work as well.
    logp = torch.log_softmax(x.to(torch.float64), dim=1).mul_(lam)
    # Exponentiate minus each row's max m_n: the reference's softmax^lam underflows to 0 for a
    # whole row once lam * ln K > ~700 (e.g. lam=100, K=3000, flat rows) and then divides by 0.
    # Scaling row n by a_n = exp(-m_n) is exact when c starts at exp(m_n) / N instead of 1/N:
    # the iterates are then c_ref * exp(m_n). A common factor on c is exact too (r takes its
    # inverse; the error test and the argmax ignore it), so c starts at exp(m_n - max m) / N,
    # which cannot underflow everywhere. r, the iterations and the labels are the reference's.
    # The floor e^-690 (~1e-300, still a normal float64) only lifts entries the reference holds
    # as 0: a cluster no sample gives any mass (a dead class of a trained head) would make the
    # reference's r infinite and every label NaN; here it gets a huge finite r and its N/K share.
    m = logp.amax(dim=1, keepdim=True)
    p = logp.sub_(m).clamp_(min=-690.0).exp_()  # (N, K), in place
    m = m.squeeze(1)
    c = torch.exp(m - m.max()).div_(n)
    inv_k, inv_n = 1.0 / k, 1.0 / n
    err, it = float("inf"), 0
    r = torch.full((k,), inv_k, dtype=torch.float64, device=p.device)
    while err > tol and it < max_iter:
        r = torch.reciprocal(p.t() @ c).mul_(inv_k)  # r = (1/K) / (P c)
        c_new = torch.reciprocal(p @ r).mul_(inv_n)  # c = (1/N) / (r^T P)
        if it % check_every == 0:
            # reference: np.nansum(|c / c_new - 1|), checked every 10 iterations from the first
            err = float(torch.nansum((c / c_new - 1).abs()))
        c = c_new
        it += 1
    converged = err <= tol
    if not converged:  # the cap is deliberate (docs/decisions.md D49): said, not warned; in the row's stats
        log.info("SeLa Sinkhorn stopped after %d iterations with error %.3g > tol %.3g", it, err, tol)
    # argmax_k of diag(r) P diag(c) over k: the per-sample factor c_n does not change it.
    plan = p.mul_(r)
    labels = torch.argmax(plan, dim=1)
    moved = 0
    if rounding == "balanced":
        balanced = balanced_argmax(plan)
        moved = int((balanced != labels).sum())
        labels = balanced
    return SelaResult(
        labels=labels.cpu().numpy().astype(np.int64),
        iterations=it,
        error=err,
        converged=converged,
        moved=moved,
        r=r.cpu().numpy(),
        c=c.cpu().numpy(),
    )


def sela_labels(
    scores: np.ndarray | torch.Tensor,
    lam: float = 25.0,
    tol: float = 0.1,
    check_every: int = 10,
    max_iter: int = 10_000,
    rounding: str = "argmax",
) -> np.ndarray:
    """Equal-size hard labels (N,) from (N, K) head logits or log-probabilities, as SeLa.

    P = softmax(scores)^lam (lam=25 for ImageNet, 10 for CIFAR in the paper); alternate
    r = (1/K) / (P c), c = (1/N) / (r^T P) until sum|c / c_prev - 1| < tol, checked every
    ``check_every`` iterations (the reference has no cap; ``max_iter`` stops with a warning);
    labels = argmax over k of diag(r) P diag(c). Float64 throughout.

    ``rounding="argmax"`` is the reference. Its clusters are equal only approximately: the
    plan is balanced, its argmax is not (N=1000, K=10 random logits: sizes 97..103 at logit
    std 1, 87..105 at std 0.05, the scale of a freshly initialised head). ``"balanced"``
    rounds the same plan to sizes floor(N/K) or ceil(N/K) exactly (``balanced_argmax``).
    """
    return sela_solve(
        scores, lam=lam, tol=tol, check_every=check_every, max_iter=max_iter, rounding=rounding
    ).labels


def balanced_argmax(plan: torch.Tensor) -> torch.Tensor:
    """Labels (N,) maximising ``plan`` (N, K) per row, with every column taking N//K or N//K + 1 rows.

    Greedy in rounds: each unplaced row proposes its best open column; a column accepts its
    highest-valued proposals up to its remaining capacity and closes when full. Every round
    places all proposals or closes a column, so there are at most K rounds (a few in practice,
    where the plain argmax is nearly balanced already). First every column gets N//K rows, then
    the N % K rows left over go to distinct columns.
    """
    n, k = plan.shape
    base, extra = divmod(n, k)
    labels = torch.full((n,), -1, dtype=torch.long, device=plan.device)
    pending = torch.arange(n, device=plan.device)
    for cap_each in (base, 1 if extra else 0):
        if cap_each == 0:
            continue
        capacity = torch.full((k,), cap_each, dtype=torch.long, device=plan.device)
        while len(pending):
            open_ids = torch.nonzero(capacity > 0).squeeze(1)
            if len(open_ids) == 0:
                break
            sub = plan[pending][:, open_ids]
            value, local = sub.max(dim=1)
            choice = open_ids[local]
            # sort proposals by column, best first inside a column, then rank them per column
            order = torch.argsort(value, descending=True, stable=True)
            order = order[torch.argsort(choice[order], stable=True)]
            chosen = choice[order]
            counts = torch.bincount(chosen, minlength=k)
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(len(order), device=plan.device) - starts[chosen]
            take = rank < capacity[chosen]
            labels[pending[order[take]]] = chosen[take]
            capacity -= torch.bincount(chosen[take], minlength=k)
            pending = pending[order[~take]]
    return labels


# ----------------------------------------------------------------------------- SwAV (online)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@torch.no_grad()
def swav_codes(
    scores: torch.Tensor,
    eps: float = 0.05,
    n_iter: int = 3,
    all_reduce: Reduce | None = None,
    all_reduce_max: Reduce | None = None,
) -> torch.Tensor:
    """SwAV codes (B, K) for a batch of prototype scores (B, K); each row sums to 1.

    Reference: Q = exp(scores / eps)^T, Q /= Q.sum(); ``n_iter`` times: rows /= row sums, /= K;
    columns /= column sums, /= B; return (Q * B)^T. The scalar divisions cancel against the next
    normalisation, so this keeps Q fixed and iterates u = 1 / (Q^T v), v = 1 / (Q u) and returns
    Q * u * v: the same codes (to float32 rounding) in about half the time (benchmarks/bench_sinkhorn.py).

    Stability: each prototype's scores are shifted by their max over the batch before exp. That
    scales row k of the reference's Q by a constant, which the first row normalisation cancels
    exactly, and guarantees no prototype's row underflows to 0 (the reference divides 0 by 0
    when scores span more than ~87 * eps, e.g. unnormalised features).

    Distributed: ``all_reduce`` sums the K-vector of prototype masses over ranks (the only
    reduction SwAV does inside the loop); ``all_reduce_max`` takes the max of the K-vector of
    shifts over ranks so every rank shifts alike. Both default to the identity (one process).
    The scalar total and the global B of the reference are not needed (they cancel).
    Half-precision scores are computed in float32 (exp(1 / 0.05) already overflows float16).
    CPU scores of at most ``dcx.algorithms.threads.SMALL_OP_NUMEL`` elements are computed on one thread.
    """
    if scores.ndim != 2:
        raise InputError(f"SwAV codes need (B, K) scores, got shape {tuple(scores.shape)}")
    if n_iter < 1:
        raise InputError(f"SwAV codes need at least one Sinkhorn iteration, got n_iter={n_iter}")
    # A laptop batch (B=256, K=100) is ~0.07 ms of work: on one thread it never waits for a pool
    # thread that a busy core descheduled (dcx.algorithms.threads).
    with one_thread_if_small(scores.numel(), scores.device):
        return _swav_codes(scores, eps, n_iter, all_reduce, all_reduce_max)


def _swav_codes(scores: torch.Tensor, eps: float, n_iter: int, all_reduce: Reduce | None,
                all_reduce_max: Reduce | None) -> torch.Tensor:
    reduce_sum = all_reduce or _identity
    reduce_max = all_reduce_max or _identity
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    shift = reduce_max(scores.amax(dim=0))
    # Q = exp((scores - shift) / eps) in one pass plus an in-place exp.
    q = torch.add(shift.mul(-1.0 / eps), scores, alpha=1.0 / eps).exp_()
    v = None
    for _ in range(n_iter):
        mass = reduce_sum(q.sum(dim=0) if v is None else v @ q)  # (K,) prototype masses
        # u = 1 / mass equalises them; the scalar mean(mass) only keeps u near 1 (otherwise u
        # and v drift by a factor B/K per iteration and overflow after ~60 of them).
        u = torch.reciprocal(mass).mul_(mass.mean())
        v = torch.reciprocal(q @ u)  # (B,) makes every sample's code sum to 1
    if not bool(torch.isfinite(v).all()):
        raise InputError(
            "SwAV codes are not finite: scores are NaN/inf or span far more than eps allows; "
            "L2-normalise embeddings and prototypes, or raise epsilon"
        )
    return q.mul_(u).mul_(v.unsqueeze(1))


@torch.no_grad()
def swav_codes_reference(scores: torch.Tensor, eps: float = 0.05, n_iter: int = 3) -> torch.Tensor:
    """SwAV's ``distributed_sinkhorn`` on one process, written as in main_swav.py.

    Not used in training: the plain formulation that tests check ``swav_codes`` against and that
    benchmarks/bench_sinkhorn.py times it against.
    """
    q = torch.exp(scores / eps).t()
    b, k = q.shape[1], q.shape[0]
    q /= torch.sum(q)
    for _ in range(n_iter):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()
