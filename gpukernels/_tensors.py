"""PyTorch tensors at the array level: zero-copy array views in, tensors out.

A CPU tensor is viewed as a NumPy array (``Tensor.numpy``; bfloat16 through its 16 bits as
``ml_dtypes.bfloat16``), a CUDA tensor as a CuPy array through DLPack, on PyTorch's current
stream (so nothing waits on the host). Results go back with ``torch.from_numpy`` and
``torch.from_dlpack``: the same memory, on the same device. PyTorch is never imported here:
a tensor can only reach us from a program that has imported it already.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from ._dtypes import BFLOAT16


def torch_module():
    """The ``torch`` module if the program has imported it, else ``None``."""
    return sys.modules.get("torch")


def is_tensor(x) -> bool:
    torch = torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


def device_kind(t) -> str:
    """``"numpy"`` for a CPU tensor (it runs like a NumPy array), ``"cuda"`` for a CUDA one;
    ``TypeError`` for any other device."""
    kind = t.device.type
    if kind == "cpu":
        return "numpy"
    if kind == "cuda":
        return "cuda"
    raise TypeError(f"tensors on {t.device} are not supported: use CPU or CUDA tensors")


def device_index(t) -> int | None:
    return t.device.index if t.device.type == "cuda" else None


def as_array(t, name: str):
    """``t``'s memory as a NumPy (CPU) or CuPy (CUDA) array, without a copy."""
    torch = torch_module()
    t = t.detach()
    if t.device.type == "cpu":
        if t.dtype == torch.bfloat16:
            if BFLOAT16 is None:
                raise TypeError(f"{name}: bfloat16 tensors need ml_dtypes (pip install ml_dtypes)")
            return t.view(torch.int16).numpy().view(BFLOAT16)
        return t.numpy()
    if t.dtype == torch.bfloat16:
        raise TypeError(f"{name}: bfloat16 CUDA tensors are not supported yet (CPU tensors are)")
    import cupy

    return cupy.from_dlpack(t)


def as_tensor(a):
    """The array ``a`` (NumPy or CuPy) as a tensor on its device, sharing its memory."""
    torch = torch_module()
    if isinstance(a, np.ndarray):
        if BFLOAT16 is not None and a.dtype == BFLOAT16:
            return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(np.asarray(a))
    return torch.from_dlpack(a)


def current_stream(device):
    """A context in which CuPy's current stream is PyTorch's on ``device`` (so kernels and
    CuPy's allocations and expressions are ordered with the caller's PyTorch work)."""
    if device is None or device.type != "cuda":
        return contextlib.nullcontext()
    import cupy

    torch = torch_module()
    return cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
