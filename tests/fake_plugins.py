"""Plugins used by the tests through injected entry points (they are not installed)."""

import numpy as np

from dcx.core.contracts import Clusterer, Partition
from dcx.core.options import Option


class WrongShape(Clusterer):
    """Breaks the contract: one label too few."""

    name = "wrongshape"
    options = (Option("k", int, 5, min=1),)

    def fit(self, features, context):
        return Partition(np.zeros(len(features) - 1, dtype=np.int64), self.params["k"])


class OldApi(Clusterer):
    name = "oldapi"
    dcx_api = "0.3"

    def fit(self, features, context):
        return Partition(np.zeros(len(features), dtype=np.int64), 1)


class NotAPlugin:
    pass
