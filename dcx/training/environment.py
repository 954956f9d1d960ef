"""What a run's numbers depend on besides its config: library versions and the CPU's kernels.

The same seed and config give the same weights bit for bit on one machine, but another CPU kind
(AVX2 vs AVX-512, AMD vs an AMX-capable Intel) or another torch / numpy / faiss rounds differently
in the last bits; k-means then splits a cluster differently and the run follows another trajectory
(docs/decisions.md D02). Every run records this in summary.json, and ``dcx compare`` says when its
runs do not share one.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

#: The entries that decide whether two runs of one config can be expected to match to the last digit.
KEY_FIELDS = ("torch", "numpy", "faiss", "torch_cpu_capability", "blas_core", "cpu_kind", "cuda_device")


def environment(device: Any = None) -> dict[str, Any]:
    """Versions, CPU kernels and (for a CUDA ``device``) the GPU of this process."""
    import torch

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    faiss = next((v for v in (version("faiss-cpu"), version("faiss-gpu"), version("faiss")) if v), None)
    cuda = None
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        cuda = torch.cuda.get_device_name(torch.device(device))
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": version("numpy"),
        "faiss": faiss,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas_core": blas_core(),
        "cpu": cpu_model(),
        "cpu_kind": cpu_kind(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": cuda,
    }


def environment_key(env: dict[str, Any] | None) -> str:
    """One line naming what ``KEY_FIELDS`` hold ('unknown' for a run written before runs recorded it)."""
    if not env:
        return "unknown"
    return ", ".join(f"{k} {env.get(k)}" for k in KEY_FIELDS if env.get(k) is not None)


def blas_core() -> str:
    """The core numpy's OpenBLAS dispatches to (e.g. 'SkylakeX', 'Haswell'); '' when not OpenBLAS.

    scipy ships another OpenBLAS that may report another core: numpy's is the one PCA uses.
    """
    try:
        import threadpoolctl
    except ImportError:  # a dependency of scikit-learn, so normally present
        return ""
    import numpy  # noqa: F401  (loads numpy's BLAS so threadpoolctl sees it)

    return next((i.get("architecture", "") or "" for i in threadpoolctl.threadpool_info()
                 if i.get("internal_api") == "openblas" and "numpy" in i.get("filepath", "")), "")


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read(1 << 16)
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else ``platform.processor()``)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_kind() -> str:
    """'AMD', 'Intel' or 'Intel+AMX' ('' where /proc/cpuinfo cannot be read): an AMD EPYC and an
    AMX-capable Intel Xeon both report torch's "AVX512" and OpenBLAS's "SkylakeX" and round differently."""
    info = _cpuinfo()
    vendor = "AMD" if "AuthenticAMD" in info else "Intel" if "GenuineIntel" in info else ""
    return vendor + ("+AMX" if vendor and " amx_tile" in info else "")


def prefers_channels_last(device: Any) -> bool:
    """Convolutions in channels_last memory format: on a GPU (tensor cores), and on CPUs whose torch
    kernels are AVX-512 (oneDNN's blocked layouts; docs/benchmarks.md "Training step variants")."""
    import torch

    if torch.device(device).type == "cuda":
        return True
    return torch.device(device).type == "cpu" and torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")
