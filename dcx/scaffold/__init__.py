"""``dcx plugin new``: write an installable third-party plugin package, filled in minimally but
correctly (it passes the conformance kit and ``dcx run`` uses it right after ``pip install``)."""

from __future__ import annotations

import importlib.metadata as md
import keyword
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from string import Template

from dcx.core.contracts import API_VERSION
from dcx.core.errors import InputError
from dcx.scaffold.templates import INIT, KINDS, PYPROJECT, README, TESTS


@dataclass(frozen=True)
class NewPlugin:
    """What was written: the package folder, its distribution name and the files."""

    directory: Path
    dist: str
    kind: str
    name: str
    files: tuple[Path, ...]


def class_name(name: str) -> str:
    """``my_clusterer`` -> ``MyClusterer``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Plugin"


def _dcx_requirement() -> str:
    try:
        major = md.version("dcx").split(".")[0]
    except md.PackageNotFoundError:  # running from a source tree that is not installed
        return "dcx"
    return f"dcx>={major}.0" if major != "0" else "dcx>=0.1"


def _run_flags(kind: str, name: str) -> str:
    tiny = "--epochs 2 --opt digits.limit=300"
    return {
        "clusterer": f"--clusterer {name} {tiny}",
        "online-clusterer": f"--clusterer {name} {tiny}",
        "backbone": f"--backbone {name} {tiny}",
        "dataset": f"--dataset {name} --epochs 2",
    }[kind]


def new_plugin(name: str, kind: str, directory: Path | str | None = None) -> NewPlugin:
    """Write package ``dcx-NAME`` for a plugin of ``kind`` into ``directory`` (default ./dcx-NAME).

    InputError for a name that is not a Python identifier, an unknown kind, or a directory that
    exists and is not empty (nothing is overwritten).
    """
    if not name.isascii() or not name.isidentifier() or keyword.iskeyword(name):
        # an ASCII identifier: it names the module, the entry point and the distribution (dcx-NAME)
        plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        example = plain if plain.isidentifier() and not keyword.iskeyword(plain) else "my_clusterer"
        raise InputError(f"plugin name {name!r} must be a Python identifier of ASCII letters, digits and "
                         f"underscores, e.g. {example}")
    if kind not in KINDS:
        raise InputError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
    registry_kind, group, file, source, title = KINDS[kind]
    dist = "dcx-" + name.replace("_", "-").lower()
    module = "dcx_" + name.lower()
    target = Path(directory) if directory is not None else Path(dist)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"{target} exists and is not empty: choose another --dir")
    values = dict(
        name=name, Class=class_name(name), module=module, file=file, dist=dist, group=group, kind=registry_kind,
        dcx_requirement=_dcx_requirement(), dcx_api=API_VERSION, title=title, run_flags=_run_flags(kind, name),
    )
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{module}/__init__.py": INIT,
        f"{module}/{file}.py": source,
        f"tests/test_{name}.py": TESTS,
    }
    written = []
    for rel, template in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
        written.append(path)
    return NewPlugin(target, dist, registry_kind, name, tuple(written))
