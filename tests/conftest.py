"""Test set-up: the CUDA simulator is switched on before Numba is imported.

Every public-API test takes the ``backend`` fixture and runs twice: on the ``cpu`` backend
(the ``cpu_fallback`` kernels) and on ``cudasim`` (the CUDA kernels on Numba's simulator, fed
NumPy arrays). On a machine with a GPU, ``NUMBA_ENABLE_CUDASIM=0 pytest -m gpu`` runs the
tests marked ``gpu`` against the real device instead.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
SIMULATOR = os.environ["NUMBA_ENABLE_CUDASIM"] == "1"

import pytest  # noqa: E402

BACKENDS = ["cpu", "cudasim"] if SIMULATOR else ["cpu"]


@pytest.fixture(autouse=True)
def parallel_cpu_kernels(monkeypatch):
    """Run the CPU kernels' parallel compilation at every size, small test inputs included:
    it is the one with tasks and chunk edges. tests/test_cpu_paths.py checks that the serial
    one, which small inputs get by default, gives the same bits."""
    import cpu_fallback

    monkeypatch.setattr(cpu_fallback, "PARALLEL_MIN_WORK", 0)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Force the library onto one backend for the test; NumPy arrays in and out either way."""
    monkeypatch.setenv("GPUKERNELS_BACKEND", "cpu" if request.param == "cpu" else "cuda")
    return request.param


@pytest.fixture
def cpu_backend(monkeypatch):
    """Force the CPU backend (sizes or step counts the simulator cannot afford)."""
    monkeypatch.setenv("GPUKERNELS_BACKEND", "cpu")


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests where no real GPU and CuPy are present."""
    if SIMULATOR:
        reason = "needs a real GPU: run with NUMBA_ENABLE_CUDASIM=0 pytest -m gpu"
    else:
        try:
            import cupy

            reason = None if cupy.cuda.is_available() else "CuPy sees no GPU"
        except ImportError:
            reason = "CuPy is not installed"
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
