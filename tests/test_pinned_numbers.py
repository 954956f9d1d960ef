"""The numbers of the built-in clusterers on a tiny fixed run, pinned.

Recorded with the engine before it had one training loop (two copies of the step, SeLa's
``keeps_head`` flag, hand-set learning rates); the single loop, ``Clusterer.build_head`` and the
``torch.optim.lr_scheduler`` schedules must reproduce them. A deliberate change of behaviour
updates these values in the same commit, saying why. Values depend on torch's CPU kernels: they
were recorded with one thread (tests/conftest.py) and torch 2.14.

They also depend on the CPU: torch's kernels (AVX2 vs AVX-512) and OpenBLAS's (numpy's PCA
eigendecomposition) differ in their last bits, k-means and the trajectory after it diverge from
there; AMD's and Intel's AVX-512 kernels differ too. ``PINNED`` was recorded on the machine that first
wrote these tests (an AMX-capable Intel Xeon, ``machine()`` ("AVX512", "SkylakeX", "Intel+AMX"): a later
session on that kind reproduced every value); ``PINNED_ON`` holds the same runs recorded on other CPUs,
keyed by ``machine()`` (same torch 2.14.1, numpy 2.4.6, faiss-cpu 1.15.1). On any one machine every
value is exact and still catches a change of behaviour. ``python tests/test_pinned_numbers.py``
prints this machine's values, the entry to add for a new kind.
"""

from __future__ import annotations

import numpy as np
import pytest

from dcx.core.config import RunConfig
from dcx.core.engine import Engine
from dcx.core.environment import blas_core, cpu_kind
from dcx.core.setup import setup

PINNED = {
    "kmeans": dict(loss=[2.3132986068725585, 2.3166047096252442], nmi_labels_final=0.18911770626705254,
                   labels_sum=58854, param_sum=177.7880626512796),
    "pic": dict(loss=[2.783643198013306, 2.7852232456207275], nmi_labels_final=0.32944934890320293,
                labels_sum=94010, param_sum=178.8670194297442),
    "sinkhorn": dict(loss=[2.3064477920532225, 2.297990417480469], nmi_labels_final=0.41038330623095254,
                     labels_sum=55028, param_sum=179.846193860525),
    "swav": dict(loss=[3.946621894836426, 2.791190481185913], nmi_labels_final=0.0, labels_sum=0,
                 param_sum=642.3423566559111),
    "swav_queue": dict(loss=[3.8831287384033204, 2.7050745487213135], nmi_labels_final=0.0, labels_sum=63600,
                       param_sum=657.2458036081164),
    "kmeans_constant": dict(loss=[2.313266706466675, 2.317244052886963], nmi_labels_final=0.19057029416745516,
                            labels_sum=49682, param_sum=172.07711100365688),
}


#: The same runs on other CPUs: machine() -> values.
PINNED_ON = {
    ("AVX512", "SkylakeX", "AMD"): {  # AMD EPYC with AVX-512 (recorded 2026-12-03)
        "kmeans": dict(loss=[2.308875322341919, 2.3196178913116454], nmi_labels_final=0.18168414666162272,
                       labels_sum=60200, param_sum=179.28777166178534),
        "kmeans_constant": dict(loss=[2.3088350772857664, 2.313729429244995], nmi_labels_final=0.1705565607855413,
                                labels_sum=55321, param_sum=176.12057967726417),
        "pic": dict(loss=[2.7837337970733644, 2.5735379219055177], nmi_labels_final=0.35580577058714247,
                    labels_sum=95021, param_sum=178.57347618202928),
        "sinkhorn": dict(loss=[2.3064477920532225, 2.297990417480469], nmi_labels_final=0.41038330623095254,
                         labels_sum=55028, param_sum=179.84619390147935),
        "swav": dict(loss=[3.9316815376281737, 3.070883274078369], nmi_labels_final=0.0,
                     labels_sum=0, param_sum=637.6620933535028),
        "swav_queue": dict(loss=[3.9666188240051268, 2.569120264053345], nmi_labels_final=0.0,
                           labels_sum=63600, param_sum=640.7536568893572),
    },
}


def machine() -> tuple[str, str, str]:
    """What the pinned values depend on besides the code (``dcx.core.environment``): torch's CPU
    kernels, numpy's OpenBLAS's, and the CPU's vendor and matrix units (an AMD and an AMX-capable
    Intel both report "AVX512" / "SkylakeX" and round differently)."""
    import torch

    return torch.backends.cpu.get_cpu_capability(), blas_core(), cpu_kind()


def _config(name: str) -> RunConfig:
    clusterer = name.split("_")[0]
    backbone = "resnet18" if clusterer == "swav" else "alexnet"
    options = {"digits": {"limit": 160}}
    if backbone == "alexnet":
        options["alexnet"] = {"fc_dim": 64}
    extra = {}
    if clusterer == "swav":
        extra["passes"] = 2
        options["swav"] = {"proj_dim": 8}  # the width these numbers were recorded with (the auto rule then)
    if name == "swav_queue":
        extra["epochs"] = 3
        options["swav"].update(queue_length=64, queue_start_epoch=1)
    if clusterer == "kmeans":
        options["kmeans"] = {"heads": 1, "merged_heads": 0}  # one head, as recorded (the default was the paper's then)
    if name == "kmeans_constant":
        extra["lr_schedule"] = "constant"
    base = dict(clusterer=clusterer, backbone=backbone, dataset="digits", k=None if clusterer == "pic" else 10,
                epochs=2, passes=1, batch_size=32, image_size=32, width=0.125, seed=0, probe=False, options=options,
                augment="crop",  # the augmentation these numbers were recorded with (the default then)
                jitter=0.0)  # no photometric jitter, as recorded (digits' default was none then)
    base.update(extra)
    return RunConfig(**base)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_clusterer_numbers_are_pinned(name):
    got = _numbers(name)
    want = PINNED_ON.get(machine(), PINNED)[name]
    assert got["labels_sum"] == want["labels_sum"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-9)
    assert got["nmi_labels_final"] == pytest.approx(want["nmi_labels_final"], abs=1e-9)
    assert got["param_sum"] == pytest.approx(want["param_sum"], rel=1e-7)


def _numbers(name: str) -> dict:
    """The pinned quantities of one tiny run."""
    s = setup(_config(name))
    engine = Engine(s)
    summary = engine.run()
    return dict(
        loss=[summary["first"]["loss"], summary["final_loss"]],
        nmi_labels_final=summary["final"]["nmi_labels"],
        labels_sum=int((engine.labels * np.arange(len(engine.labels))).sum()),
        param_sum=float(sum(p.detach().double().sum() for p in s.model.parameters())),
    )


if __name__ == "__main__":  # python tests/test_pinned_numbers.py: this machine's values, for PINNED_ON
    import faiss
    import torch

    torch.set_num_threads(1)  # as tests/conftest.py
    faiss.omp_set_num_threads(1)
    print(f"    {machine()!r}: {{")
    for run in sorted(PINNED):
        print(f"        {run!r}: {_numbers(run)!r},")
    print("    },")
