"""Shared by the benchmark scripts: results JSON and the matching section of docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


def environment() -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "when": time.strftime("measured %Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
                   f"{platform.processor() or platform.machine()}, load average {load:.1f}",
    }


def write_results(name: str, result: dict) -> None:
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def write_section(title: str, body: str) -> None:
    """Replace (or append) the '## title' section of docs/benchmarks.md, leaving the others."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    section = f"## {title}\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.write_text(text.rstrip() + "\n")
