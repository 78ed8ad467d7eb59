"""The host side of the direct CUDA launch (``gpukernels.cuda._direct``) with stand-ins for
CuPy, ``cuda.core`` and a Numba kernel: CI has no GPU, and the simulator launches through
Numba. What reaches ``cuda.core.launch`` (stream, configuration, kernel, parameters) is
checked here; the parameters against the PTX in ``test_ptx.py``; the launch itself on a GPU
in ``test_gpu.py``.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from numba.core import types
from test_ptx import _CupyStandIn

from gpukernels.cuda import _direct


class _Kernel:
    """A Numba kernel: ``compile`` counts its signatures and returns a compiled kernel whose
    code library loads a ``cuda.core`` kernel (``handle``; ``None``: an older numba-cuda)."""

    def __init__(self, handle):
        self.compiled, self.handle = [], handle

    def compile(self, sig):
        self.compiled.append(sig)
        cufunc = SimpleNamespace() if self.handle is None else SimpleNamespace(kernel=self.handle)
        return SimpleNamespace(_codelibrary=SimpleNamespace(get_cufunc=lambda: cufunc))


@pytest.fixture
def launched(monkeypatch):
    """What ``cuda.core.launch`` received, a tuple per launch; device 0, CuPy's stream
    pointer in ``launched.stream``."""
    calls = []
    runtime = SimpleNamespace(getDevice=lambda: 0)
    cupy = SimpleNamespace(
        cuda=SimpleNamespace(
            runtime=runtime,
            get_current_stream=lambda: SimpleNamespace(ptr=launched.stream),
        )
    )
    core = SimpleNamespace(
        launch=lambda *args: calls.append(args),
        Stream=SimpleNamespace(from_handle=lambda ptr: ("stream", ptr)),
        LaunchConfig=lambda **config: ("config", tuple(sorted(config.items()))),
    )
    monkeypatch.setattr(_direct, "_libraries", lambda: (cupy, core))
    monkeypatch.setattr(_direct, "_KERNELS", {})
    _direct._stream.cache_clear()
    _direct._config.cache_clear()
    launched = SimpleNamespace(calls=calls, stream=0)
    yield launched
    _direct._stream.cache_clear()
    _direct._config.cache_clear()


def test_a_launch_passes_the_packed_parameters(launched):
    x = _CupyStandIn(np.zeros((4, 6), np.float32)[:, ::2])
    kernel = _Kernel("handle")
    assert _direct.launch(kernel, (2, 3), (32, 4), 512, (x, 2.5, 7, True))
    (call,) = launched.calls
    stream, config, handle, *params = call
    assert stream == ("stream", 1)  # CuPy's null stream is the legacy default stream
    assert config == ("config", (("block", (32, 4)), ("grid", (2, 3)), ("shmem_size", 512)))
    assert handle == "handle"
    assert params == [0, 0, 12, 4, x.data.ptr, 4, 3, 24, 8, 2.5, 7, True]
    assert kernel.compiled == [
        (types.Array(types.float32, 2, "A"), types.float64, types.int64, types.boolean)
    ]


def test_a_kernel_is_compiled_once_per_signature_and_device(launched, monkeypatch):
    kernel = _Kernel("handle")
    c = _CupyStandIn(np.zeros(8, np.float64))
    for value in (c, _CupyStandIn(np.ones(9, np.float64)), c):
        assert _direct.launch(kernel, 1, 32, 0, (value, 1.0))
    assert len(kernel.compiled) == 1
    _direct.launch(kernel, 1, 32, 0, (_CupyStandIn(np.zeros(8, np.float32)), 1.0))
    _direct.launch(kernel, 1, 32, 0, (_CupyStandIn(np.zeros(8, np.float64)[::2]), 1.0))
    _direct.launch(kernel, 1, 32, 0, (c, 1))
    assert len(kernel.compiled) == 4
    cupy, _ = _direct._libraries()
    monkeypatch.setattr(cupy.cuda.runtime, "getDevice", lambda: 1)
    _direct.launch(kernel, 1, 32, 0, (c, 1.0))
    assert len(kernel.compiled) == 5 and len(launched.calls) == 7


def test_the_current_stream_is_launched_on(launched):
    kernel = _Kernel("handle")
    for ptr in (0x5000, 2, 0):
        launched.stream = ptr
        _direct.launch(kernel, 1, 32, 0, (1,))
    assert [call[0] for call in launched.calls] == [
        ("stream", 0x5000),
        ("stream", 2),
        ("stream", 1),
    ]


def test_no_cuda_core_kernel_means_no_launch(launched):
    """Where numba-cuda loads kernels without ``cuda.core``, nothing is launched and the
    caller is told so (it then launches through Numba); asked once per signature."""
    kernel = _Kernel(None)
    x = _CupyStandIn(np.zeros(3, np.float32))
    assert not _direct.launch(kernel, 1, 32, 0, (x,))
    assert not _direct.launch(kernel, 1, 32, 0, (x,))
    assert launched.calls == [] and len(kernel.compiled) == 1


def test_no_cuda_core_means_no_launch(monkeypatch):
    monkeypatch.setattr(_direct, "_libraries", lambda: None)
    kernel = _Kernel("handle")
    assert not _direct.launch(kernel, 1, 32, 0, (_CupyStandIn(np.zeros(3, np.float32)),))
    assert kernel.compiled == []
