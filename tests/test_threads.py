"""The CPU thread pool: Numba's TBB layer, from the tbb wheel (cpu_fallback/_threads.py)."""

import importlib.metadata
import os
import platform
import subprocess
import sys

import pytest

from cpu_fallback import _threads


def _has_tbb() -> bool:
    try:
        importlib.metadata.version("tbb")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# the dependency's platforms, where it was installed (not with pip --no-deps)
TBB_WHEEL = sys.platform.startswith("linux") and platform.machine() == "x86_64" and _has_tbb()


@pytest.mark.skipif(not TBB_WHEEL, reason="the tbb dependency is for x86-64 Linux")
def test_parallel_kernels_run_on_tbb():
    """In a fresh process, as a user's: the first parallel kernel starts Numba's TBB pool, not
    GNU OpenMP, whose spinning workers starve NumPy's BLAS threads."""
    code = (
        "import numba, numpy as np, gpukernels as gk\n"
        "gk.batch_sum(np.ones(1 << 20, np.float32))\n"
        "print(numba.threading_layer())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "tbb"


def test_without_the_wheel_nothing_is_loaded(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    assert _threads.load_pip_tbb() is False
