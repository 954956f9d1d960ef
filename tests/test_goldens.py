"""Exact numbers of a default run per built-in clusterer, behind the ``golden`` marker.

A refactoring must leave a default run bit-identical; these runs prove it on a machine kind whose
numbers were recorded (``python tests/goldens.py record``) and are skipped on any other kind (its
kernels round differently). Each is a full default digits run: ``pytest -m golden`` takes minutes.
"""

from __future__ import annotations

import pytest
from goldens import CLUSTERERS, golden_file, load, machine_kind, numbers

pytestmark = pytest.mark.golden


@pytest.mark.parametrize("clusterer", CLUSTERERS)
def test_a_default_run_is_bit_identical_to_its_golden(clusterer):
    want = load().get(clusterer)
    if want is None:
        pytest.skip(f"no golden for {clusterer} on {machine_kind()} ({golden_file().name}): "
                    f"python tests/goldens.py record {clusterer}")
    got = numbers(clusterer)
    assert got["weights_sha256"] == want["weights_sha256"]
    assert got["assignments_sha256"] == want["assignments_sha256"]
    assert got["rows"] == want["rows"]
    assert got["best_block"] == want["best_block"]
