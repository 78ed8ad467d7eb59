"""Backend choice: gk.backend, gk.cuda_available, GPUKERNELS_BACKEND, import cost, and arrays
of different libraries."""

import inspect
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import gpukernels as gk


class FakeDeviceArray:
    """The smallest object that a second array library could hand us: an array described
    only by ``__cuda_array_interface__``. Its pointer is host memory that it keeps alive, so
    that a library that wrongly reads it (the simulator can) does not crash the test run."""

    def __init__(self, shape=(3, 4), typestr="<f4"):
        self.shape = shape
        self.dtype = np.dtype(typestr)
        self._memory = np.ones(shape, self.dtype)
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (self._memory.ctypes.data, False),
            "strides": None,
            "version": 3,
        }


def test_numpy_arrays_run_on_the_cpu_by_default(monkeypatch):
    monkeypatch.delenv("GPUKERNELS_BACKEND", raising=False)
    assert gk.backend(np.ones(3, np.float32)) == "cpu"
    monkeypatch.setenv("GPUKERNELS_BACKEND", "auto")
    assert gk.backend(np.ones(3, np.float32)) == "cpu"
    monkeypatch.setenv("GPUKERNELS_BACKEND", "cpu")
    assert gk.backend(np.ones((2, 2), np.float64)) == "cpu"


def test_the_backend_setting_is_read_at_every_call(monkeypatch):
    """Changes made through os.environ are seen by the next call (the setting is read from
    the mapping behind os.environ, which they update)."""
    x = np.ones(3, np.float32)
    monkeypatch.setenv("GPUKERNELS_BACKEND", "gpu")
    with pytest.raises(ValueError, match="GPUKERNELS_BACKEND must be one of"):
        gk.backend(x)
    monkeypatch.setenv("GPUKERNELS_BACKEND", " CPU ")
    assert gk.backend(x) == "cpu"
    monkeypatch.setenv("GPUKERNELS_BACKEND", "bad")
    with pytest.raises(ValueError, match="got 'bad'"):
        gk.backend(x)
    monkeypatch.delenv("GPUKERNELS_BACKEND")
    assert gk.backend(x) == "cpu"


def test_the_launch_setting_is_read_at_every_launch(monkeypatch):
    """``GPUKERNELS_CUDA_LAUNCH``: ``direct`` unless set; ``numba``; anything else raises."""
    from gpukernels._env import cuda_launch

    monkeypatch.delenv("GPUKERNELS_CUDA_LAUNCH", raising=False)
    assert cuda_launch() == "direct"
    monkeypatch.setenv("GPUKERNELS_CUDA_LAUNCH", " Numba ")
    assert cuda_launch() == "numba"
    monkeypatch.setenv("GPUKERNELS_CUDA_LAUNCH", "")
    assert cuda_launch() == "direct"
    monkeypatch.setenv("GPUKERNELS_CUDA_LAUNCH", "fast")
    with pytest.raises(ValueError, match="GPUKERNELS_CUDA_LAUNCH must be one of direct, numba"):
        cuda_launch()


def test_backend_fixture_is_honoured(backend):
    """The test fixture forces cpu or, under the simulator, cuda for NumPy arrays."""
    expected = "cpu" if backend == "cpu" else "cuda"
    assert gk.backend(np.ones((2, 3), np.float32)) == expected


def test_results_are_numpy_arrays(backend):
    x = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    labels = np.array([0, 1, 3])
    for result in (
        gk.softmax_cross_entropy(x, labels),
        gk.bce_with_logits(x, np.full_like(x, 0.5)),
        gk.mse(x, np.full_like(x, 0.5), reduction="none"),
        (gk.sigmoid(x), gk.sigmoid_derivative(x), gk.batch_sum(x), gk.batch_sum(x, axis=0)),
    ):
        for array in result:
            assert type(array) is np.ndarray


PUBLIC = [
    "softmax_cross_entropy",
    "bce_with_logits",
    "mse",
    "composite_loss",
    "sigmoid",
    "sigmoid_derivative",
    "sigmoid_backward",
    "batch_sum",
    "backend",
    "cuda_available",
]


def test_public_names_survive_kernel_imports(backend):
    """Importing a backend's kernel modules lazily must not rebind gk.mse, gk.sigmoid, ...
    (a kernel module of the same name imported into the package once replaced them)."""
    x = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3)
    gk.softmax_cross_entropy(x, np.array([0, 2]))
    gk.bce_with_logits(x, np.full_like(x, 0.5))
    gk.mse(x, np.zeros_like(x))
    gk.composite_loss(x, np.zeros_like(x), [gk.LossTerm("mse", slice(0, 3))])
    gk.sigmoid(x)
    gk.sigmoid_derivative(x)
    gk.sigmoid_backward(x, x)
    gk.batch_sum(x)
    for name in PUBLIC:
        value = getattr(gk, name)
        assert callable(value) and not inspect.ismodule(value), name
    assert inspect.isclass(gk.LossTerm)


def test_cuda_available_is_a_cached_bool():
    first = gk.cuda_available()
    assert type(first) is bool
    start = time.perf_counter()
    for _ in range(1000):
        assert gk.cuda_available() is first
    assert time.perf_counter() - start < 0.1


def test_cuda_available_is_false_on_the_simulator(monkeypatch):
    """The simulator is no GPU: arrays are not moved to one, nor GPU tests run."""
    from gpukernels import _dispatch

    monkeypatch.setattr(_dispatch, "SIMULATOR", True)
    _dispatch.cuda_available.cache_clear()
    try:
        assert _dispatch.cuda_available() is False
    finally:
        _dispatch.cuda_available.cache_clear()


def test_a_backend_setting_the_arrays_cannot_run_on(monkeypatch):
    """CUDA arrays under GPUKERNELS_BACKEND=cpu, and NumPy arrays under =cuda off the
    simulator: a TypeError that says why, rather than a hidden copy or a failed launch."""
    from gpukernels import _dispatch

    monkeypatch.setenv("GPUKERNELS_BACKEND", "cpu")
    with pytest.raises(TypeError, match="GPUKERNELS_BACKEND=cpu cannot run CUDA arrays"):
        gk.backend(FakeDeviceArray())
    monkeypatch.setenv("GPUKERNELS_BACKEND", "cuda")
    monkeypatch.setattr(_dispatch, "SIMULATOR", False)
    with pytest.raises(TypeError, match="NumPy arrays only on Numba's simulator"):
        gk.backend(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="NumPy arrays only on Numba's simulator"):
        gk.mse(np.ones(3, np.float32), np.zeros(3, np.float32))
    monkeypatch.setattr(_dispatch, "SIMULATOR", True)
    assert gk.backend(np.ones(3, np.float32)) == "cuda"


def test_a_cuda_array_interface_object_runs_on_cuda(monkeypatch):
    monkeypatch.delenv("GPUKERNELS_BACKEND", raising=False)
    assert gk.backend(FakeDeviceArray()) == "cuda"


def test_import_is_cheap():
    """`import gpukernels` must not compile kernels or import CUDA machinery eagerly."""
    code = "import time; t = time.perf_counter(); import gpukernels; print(time.perf_counter() - t)"
    env = dict(os.environ)
    env.pop("GPUKERNELS_BACKEND", None)
    timings = []
    for _ in range(2):  # the first run may fill bytecode caches
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        timings.append(float(done.stdout.strip().splitlines()[-1]))
    assert min(timings) < 2.0, timings


@pytest.mark.parametrize("device_first", [False, True])
def test_mixing_array_libraries_is_a_type_error(device_first):
    host_logits = np.ones((3, 4), np.float32)
    host_labels = np.array([0, 1, 2])
    if device_first:
        with pytest.raises(TypeError):
            gk.mse(FakeDeviceArray(), host_logits)
        with pytest.raises(TypeError):
            gk.bce_with_logits(FakeDeviceArray(), host_logits)
    else:
        with pytest.raises(TypeError):
            gk.softmax_cross_entropy(host_logits, FakeDeviceArray((3,), "<i8"))
        with pytest.raises(TypeError):
            gk.mse(host_logits, FakeDeviceArray())
        with pytest.raises(TypeError):
            gk.sigmoid_backward(host_logits, FakeDeviceArray())
        with pytest.raises(TypeError):
            gk.softmax_cross_entropy(host_logits, host_labels, out=FakeDeviceArray())


def test_mixing_numpy_and_cupy_is_a_type_error():
    cupy = pytest.importorskip("cupy")
    if not cupy.cuda.is_available():
        pytest.skip("CuPy sees no GPU")
    device = cupy.ones((3, 4), cupy.float32)
    with pytest.raises(TypeError):
        gk.mse(device, np.ones((3, 4), np.float32))


def test_cuda_arrays_off_the_current_device_are_refused(monkeypatch):
    """Kernels launch, and results are allocated, on CuPy's current device. CuPy adopts an
    array of another device as a copy on the current one, where writes (``out``, in place)
    would be lost: a ValueError naming the argument instead. CI has no GPU, so a stand-in
    CuPy, current device 0, adopts as CuPy does: a view there, a copy from elsewhere."""
    from types import SimpleNamespace

    from gpukernels import _dispatch

    copies = iter(range(1, 100))

    def asarray(x):
        pointer = x.__cuda_array_interface__["data"][0]
        same_device = x.device.id == 0
        return SimpleNamespace(data=SimpleNamespace(ptr=pointer if same_device else next(copies)))

    runtime = SimpleNamespace(getDevice=lambda: 0)
    cupy = SimpleNamespace(asarray=asarray, cuda=SimpleNamespace(runtime=runtime))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    _dispatch.array_module.cache_clear()
    try:
        pred, target = FakeDeviceArray(), FakeDeviceArray()
        pred.device = target.device = SimpleNamespace(id=1)
        message = "pred is on CUDA device 1 but the current device is 0"
        with pytest.raises(ValueError, match=message):
            gk.mse(pred, target)
    finally:
        _dispatch.array_module.cache_clear()
