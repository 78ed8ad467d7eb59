"""The host side of the direct CUDA launch (``gpukernels.cuda._direct``) with stand-ins for
CuPy, ``cuda.core`` and a Numba kernel: CI has no GPU, and the simulator launches through
Numba. What reaches ``cuda.core.launch`` (stream, configuration, kernel, parameters) is
checked here; the parameters against the PTX in ``test_ptx.py``; the launch itself on a GPU
in ``test_gpu.py``.
"""

import threading
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from numba.core import types
from test_ptx import _CupyStandIn

from gpukernels.cuda import _direct


class _Handle:
    """A ``cuda.core`` kernel whose parameters have the sizes the driver reports (``None``:
    a driver before CUDA 12.4, which cannot say)."""

    def __init__(self, sizes):
        self.sizes = sizes

    @property
    def arguments_info(self):
        if self.sizes is None:
            raise NotImplementedError("the driver is older than CUDA 12.4")
        return [SimpleNamespace(offset=8 * i, size=size) for i, size in enumerate(self.sizes)]


class _Kernel:
    """A Numba kernel: ``compile`` counts its signatures and returns a compiled kernel whose
    code library loads ``handle`` (``None``: an older numba-cuda loads no ``cuda.core``
    kernel); ``debug`` as Numba's ``debug=True``."""

    def __init__(self, handle, debug=False):
        self.compiled, self.handle, self.debug = [], handle, debug
        self.targetoptions, self.py_func = {}, SimpleNamespace(__name__="stand_in")

    def compile(self, sig):
        self.compiled.append(sig)
        cufunc = SimpleNamespace() if self.handle is None else SimpleNamespace(kernel=self.handle)
        return SimpleNamespace(
            _codelibrary=SimpleNamespace(get_cufunc=lambda: cufunc),
            debug=self.debug,
            cooperative=False,
        )


@pytest.fixture
def launched(monkeypatch):
    """What ``cuda.core.launch`` received (``calls``, a tuple per launch), CuPy's current
    device and stream pointer (``device``, ``stream``) and the devices made current
    (``bound``, a ``(thread, device)`` per ``setDevice``)."""
    state = SimpleNamespace(calls=[], bound=[], device=0, stream=0)
    runtime = SimpleNamespace(
        getDevice=lambda: state.device,
        setDevice=lambda d: state.bound.append((threading.get_ident(), d)),
    )
    cupy = SimpleNamespace(
        cuda=SimpleNamespace(
            runtime=runtime, get_current_stream=lambda: SimpleNamespace(ptr=state.stream)
        )
    )
    core = SimpleNamespace(
        launch=lambda *args: state.calls.append(args),
        Stream=SimpleNamespace(from_handle=lambda ptr: ("stream", ptr)),
        LaunchConfig=lambda **config: ("config", tuple(sorted(config.items()))),
    )
    monkeypatch.setattr(_direct, "_libraries", lambda: (cupy, core))
    monkeypatch.setattr(_direct, "_KERNELS", {})
    monkeypatch.setattr(_direct, "_BOUND", threading.local())
    _direct._stream.cache_clear()
    _direct._config.cache_clear()
    yield state
    _direct._stream.cache_clear()
    _direct._config.cache_clear()


def _vector(dtype=np.float32, n=8):
    return _CupyStandIn(np.zeros(n, dtype))


VECTOR = [8] * 7  # an array's parameters: 5 fields, one extent, one stride


def test_a_launch_passes_the_packed_parameters(launched):
    x = _CupyStandIn(np.zeros((4, 6), np.float32)[:, ::2])
    handle = _Handle([8] * 9 + [8, 8, 1])
    kernel = _Kernel(handle)
    assert _direct.launch(kernel, (2, 3), (32, 4), 512, (x, 2.5, 7, True))
    (call,) = launched.calls
    stream, config, launched_handle, *params = call
    assert stream == ("stream", 1)  # CuPy's null stream is the legacy default stream
    assert config == ("config", (("block", (32, 4)), ("grid", (2, 3)), ("shmem_size", 512)))
    assert launched_handle is handle
    assert params == [0, 0, 12, 4, x.data.ptr, 4, 3, 24, 8, 2.5, 7, True]
    assert kernel.compiled == [
        (types.Array(types.float32, 2, "A"), types.float64, types.int64, types.boolean)
    ]


def test_a_kernel_is_loaded_once_per_signature_and_device(launched):
    kernel = _Kernel(_Handle(VECTOR + [8]))
    c = _vector(np.float64)
    for value in (c, _vector(np.float64, 9), c):
        assert _direct.launch(kernel, 1, 32, 0, (value, 1.0))
    assert len(kernel.compiled) == 1
    _direct.launch(kernel, 1, 32, 0, (_vector(np.float32), 1.0))
    _direct.launch(kernel, 1, 32, 0, (_CupyStandIn(np.zeros(8, np.float64)[::2]), 1.0))
    _direct.launch(kernel, 1, 32, 0, (c, 1))
    assert len(kernel.compiled) == 4
    launched.device = 1
    _direct.launch(kernel, 1, 32, 0, (c, 1.0))
    assert len(kernel.compiled) == 5 and len(launched.calls) == 7


def test_each_thread_makes_the_device_current_before_its_first_launch(launched):
    """A launch goes to the context current on its thread, which a worker thread may not
    have: the device's context is made current once per thread and device."""
    kernel = _Kernel(_Handle([8]))
    _direct.launch(kernel, 1, 32, 0, (1,))
    _direct.launch(kernel, 1, 32, 0, (1,))
    worker = threading.Thread(target=_direct.launch, args=(kernel, 1, 32, 0, (1,)))
    worker.start()
    worker.join()
    launched.device = 1
    _direct.launch(kernel, 1, 32, 0, (1,))
    main = threading.get_ident()
    assert [d for _, d in launched.bound] == [0, 0, 1]
    assert launched.bound[0][0] == main != launched.bound[1][0] and launched.bound[2][0] == main
    assert len(launched.calls) == 4


def test_the_current_stream_is_launched_on(launched):
    kernel = _Kernel(_Handle([8]))
    for ptr in (0x5000, 2, 0):
        launched.stream = ptr
        _direct.launch(kernel, 1, 32, 0, (1,))
    assert [call[0] for call in launched.calls] == [
        ("stream", 0x5000),
        ("stream", 2),
        ("stream", 1),
    ]


@pytest.mark.parametrize(
    "sizes",
    [VECTOR, VECTOR + [8, 8], VECTOR[:-1] + [4, 8], VECTOR + [4]],
    ids=["one-fewer", "one-more", "narrow-stride", "float-as-f32"],
)
def test_parameters_that_do_not_fit_the_kernel_are_launched_through_numba(launched, sizes):
    """The driver's sizes of the kernel's parameters are checked once, at its load: a
    mismatch warns and leaves the kernel to Numba's launch (``launch`` returns False)."""
    kernel = _Kernel(_Handle(sizes))
    with pytest.warns(RuntimeWarning, match="launching it through Numba"):
        assert not _direct.launch(kernel, 1, 32, 0, (_vector(), 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _direct.launch(kernel, 1, 32, 0, (_vector(), 0.5))
    assert launched.calls == [] and len(kernel.compiled) == 1


def test_booleans_fit_one_byte_parameters_only():
    """Recent cuda.core packs a bool in one byte: a wider parameter would read past it."""
    assert _direct.fits([True, 7, 0.5, np.int32(3), np.float32(1.0)], [1, 8, 8, 4, 4])
    assert not _direct.fits([7], [4])
    assert not _direct.fits([np.int32(3)], [8])
    assert not _direct.fits([1.5], [4])
    for size in (2, 4, 8, 16):
        assert not _direct.fits([True], [size])


def test_a_driver_that_cannot_tell_sizes_is_trusted(launched):
    """Before CUDA 12.4 the driver reports no parameter sizes; tests/test_ptx.py checked
    them against the PTX instead."""
    assert _direct.launch(_Kernel(_Handle(None)), 1, 32, 0, (_vector(), 0.5))


def test_kernels_only_numbas_launch_handles_are_left_to_it(launched):
    """Debug kernels report device exceptions through Numba's launch."""
    kernel = _Kernel(_Handle(VECTOR + [8]), debug=True)
    assert not _direct.launch(kernel, 1, 32, 0, (_vector(), 0.5))
    assert launched.calls == []


def test_no_cuda_core_kernel_means_no_launch(launched):
    """Where numba-cuda loads kernels without ``cuda.core``, nothing is launched and the
    caller is told so (it then launches through Numba); asked once per signature."""
    kernel = _Kernel(None)
    assert not _direct.launch(kernel, 1, 32, 0, (_vector(),))
    assert not _direct.launch(kernel, 1, 32, 0, (_vector(),))
    assert launched.calls == [] and len(kernel.compiled) == 1


def test_no_cuda_core_means_no_launch(monkeypatch):
    monkeypatch.setattr(_direct, "_libraries", lambda: None)
    kernel = _Kernel(_Handle([8]))
    assert not _direct.launch(kernel, 1, 32, 0, (_vector(),))
    assert kernel.compiled == []
