"""Plugins used by the tests through injected entry points (they are not installed), and fake
installed distributions (a real ``*.dist-info`` folder on a path)."""

import textwrap
from pathlib import Path

import numpy as np

from dcx.core.contracts import Clusterer, Partition
from dcx.core.options import Option


class WrongShape(Clusterer):
    """Breaks the contract: one label too few."""

    name = "wrongshape"
    dcx_api = "3.0"
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


def write_distribution(root: Path, name: str, version: str, entry_points: dict[str, dict[str, str]],
                       modules: dict[str, str] | None = None) -> Path:
    """An installed distribution under ``root`` (put ``root`` on sys.path / PYTHONPATH): METADATA,
    entry_points.txt ({group: {name: target}}) and the given module sources. Returns its dist-info."""
    dist = Path(root) / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    sections = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in entry_points.items()]
    (dist / "entry_points.txt").write_text("\n".join(sections))
    for module, source in (modules or {}).items():
        (Path(root) / f"{module}.py").write_text(textwrap.dedent(source))
    return dist


class NoName(Clusterer):
    """Declares no ``name``: the registry must report it, not invent one."""

    dcx_api = "3.0"

    def fit(self, features, context):
        return Partition(np.zeros(len(features), dtype=np.int64), 1)
