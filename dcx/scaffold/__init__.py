"""``dcx plugin new``: write an installable third-party plugin package, filled in minimally but
correctly (it passes the conformance kit and ``dcx run`` uses it right after ``pip install``)."""

from __future__ import annotations

import importlib.metadata as md
import keyword
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from string import Template

from dcx.core.contracts import API_VERSION
from dcx.core.errors import InputError
from dcx.scaffold.templates import INIT, KINDS, PYPROJECT, README, TESTS

#: A name the scaffold takes: ASCII letters and digits, single '-' or '_' between them, a letter first
#: (every such name is a legal plugin name, and '-' -> '_' makes it a module name).
NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)*")
#: The example a refusal gives, per kind.
EXAMPLES = {"clusterer": "my-clusterer", "online-clusterer": "my-online-clusterer", "backbone": "my-backbone",
            "dataset": "my-dataset"}


@dataclass(frozen=True)
class NewPlugin:
    """What was written: the package folder, its distribution name and the files."""

    directory: Path
    dist: str
    kind: str
    name: str
    files: tuple[Path, ...]


def class_name(name: str) -> str:
    """``my_clusterer`` (or ``my-clusterer``) -> ``MyClusterer``."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]", name) if part) or "Plugin"


def _class_for(name: str, sources: str) -> str:
    """``class_name(name)``, with ``Plugin`` appended when that is a keyword or a name the templates
    already use (``clusterer`` would shadow the ``Clusterer`` base it subclasses)."""
    cls = class_name(name)
    return cls + "Plugin" if keyword.iskeyword(cls) or re.search(rf"\b{cls}\b", sources) else cls


def _dcx_requirement() -> str:
    """At least the running dcx's release (its minor version in 0.x provides this API version)."""
    try:
        major, minor = (md.version("dcx").split(".") + ["0"])[:2]
    except md.PackageNotFoundError:  # running from a source tree that is not installed
        return "dcx"
    return f"dcx>={major}.{minor}"


def _run_flags(kind: str, name: str) -> str:
    tiny = "--epochs 2 --opt digits.limit=300"
    return {
        "clusterer": f"--clusterer {name} {tiny}",
        "online-clusterer": f"--clusterer {name} {tiny}",
        "backbone": f"--backbone {name} {tiny}",
        "dataset": f"--dataset {name} --epochs 2",
    }[kind]


def new_plugin(name: str, kind: str, directory: Path | str | None = None) -> NewPlugin:
    """Write package ``dcx-NAME`` (module ``dcx_NAME``, '-' as '_') for a plugin of ``kind`` into
    ``directory`` (default ./dcx-NAME).

    InputError for an unknown kind, a name ``NAME`` does not match, or a directory that exists and
    is not empty (nothing is overwritten).
    """
    if kind not in KINDS:
        raise InputError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
    if not NAME.fullmatch(name):
        plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()  # spëctral -> spectral
        example = plain if not name.isascii() and NAME.fullmatch(plain) else EXAMPLES[kind]
        raise InputError(f"plugin name {name!r} must start with a letter and hold only ASCII letters, digits and "
                         f"single '-' or '_' between them, e.g. {example}")
    registry_kind, group, file, source, title = KINDS[kind]
    snake = name.replace("-", "_").lower()
    dist = "dcx-" + snake.replace("_", "-")
    module = "dcx_" + snake
    target = Path(directory) if directory is not None else Path(dist)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"{target} exists and is not empty: choose another --dir")
    values = dict(
        name=name, Class=_class_for(name, source + TESTS + INIT), module=module, file=file, test=f"test_{snake}", dist=dist, group=group,
        kind=registry_kind,
        dcx_requirement=_dcx_requirement(), dcx_api=API_VERSION, title=title, run_flags=_run_flags(kind, name),
    )
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{module}/__init__.py": INIT,
        f"{module}/{file}.py": source,
        f"tests/test_{snake}.py": TESTS,
    }
    written = []
    for rel, template in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
        written.append(path)
    return NewPlugin(target, dist, registry_kind, name, tuple(written))
