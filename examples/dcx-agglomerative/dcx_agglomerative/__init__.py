"""Agglomerative clustering (scikit-learn) and a LeNet backbone, as dcx plugins."""

from dcx_agglomerative.agglomerative import Agglomerative
from dcx_agglomerative.lenet import LeNet

__all__ = ["Agglomerative", "LeNet"]
