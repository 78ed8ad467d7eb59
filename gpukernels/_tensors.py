"""PyTorch tensors at the array level: zero-copy array views in, tensors out.

A CPU tensor is viewed as a NumPy array (``Tensor.numpy``; bfloat16 through its 16 bits as
``ml_dtypes.bfloat16``), a CUDA tensor as a CuPy array through DLPack (bfloat16 likewise,
where CuPy has the dtype), on PyTorch's current stream (so nothing waits on the host).
Results go back with ``torch.from_numpy`` and ``torch.from_dlpack``: the same memory, on the
same device. PyTorch is never imported here: a tensor can only reach us from a program that
has imported it already.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
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


def as_array(t, name: str):
    """``t``'s memory as a NumPy (CPU) or CuPy (CUDA) array, without a copy. A bfloat16
    tensor is handed over as its 16 bits and viewed as ``ml_dtypes.bfloat16``: neither
    ``Tensor.numpy`` nor every CuPy's DLPack import takes bfloat16."""
    torch = torch_module()
    t = t.detach() if t.requires_grad else t
    bf16 = t.dtype == torch.bfloat16
    if bf16 and BFLOAT16 is None:
        raise TypeError(f"{name}: bfloat16 tensors need ml_dtypes (pip install ml_dtypes)")
    if t.device.type == "cpu":
        return t.view(torch.int16).numpy().view(BFLOAT16) if bf16 else t.numpy()
    cupy = _cupy(name)
    if not bf16:
        return cupy.from_dlpack(t)
    if not _cupy_has_bfloat16():
        raise TypeError(
            f"{name}: bfloat16 CUDA tensors need a CuPy with bfloat16 arrays (CuPy 14 or "
            f"later; this is CuPy {cupy.__version__})"
        )
    return cupy.from_dlpack(t.view(torch.int16)).view(BFLOAT16)


def _cupy(name: str):
    try:
        import cupy
    except ImportError as error:
        raise TypeError(
            f"{name}: CUDA tensors run through CuPy, which cannot be imported ({error}); "
            "install CuPy (pip install gpukernels[gpu])"
        ) from error
    return cupy


@functools.cache
def _cupy_has_bfloat16() -> bool:
    """Whether CuPy can allocate and fill ``ml_dtypes.bfloat16`` arrays (CuPy 14 and later);
    older versions refuse the dtype in their kernels."""
    import cupy

    try:
        cupy.zeros(1, BFLOAT16)
    except (TypeError, ValueError, NotImplementedError):
        return False
    return True


def as_tensor(a):
    """The array ``a`` (NumPy or CuPy) as a tensor on its device, sharing its memory
    (bfloat16 through its 16 bits, as in :func:`as_array`)."""
    torch = torch_module()
    bf16 = BFLOAT16 is not None and a.dtype == BFLOAT16
    bits = a.view(np.int16) if bf16 else a
    if isinstance(a, np.ndarray):
        t = torch.from_numpy(bits)
    else:
        t = torch.from_dlpack(bits)
    return t.view(torch.bfloat16) if bf16 else t


def current_stream(device):
    """A context in which CuPy's current device is ``device`` and its current stream is
    PyTorch's current stream there, so kernels, allocations and CuPy expressions are ordered
    with the caller's PyTorch work (and DLPack hands tensors over without a cross-stream
    wait). Nothing for a CPU device."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return _cuda_stream(device)


@contextlib.contextmanager
def _cuda_stream(device):
    import cupy

    torch = torch_module()
    with cupy.cuda.Device(device.index):
        with cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
            yield


def tensor_io(fn):
    """Let the array-level function ``fn`` take PyTorch tensors: tensors in, tensors out.

    Tensor arguments become zero-copy arrays (``as_array``), ``fn`` runs with CuPy's current
    stream set to PyTorch's (CUDA tensors), and every array it returns becomes a tensor of the
    same memory; an ``out=`` tensor comes back as the very tensor passed. Tensors may not be
    mixed with other arrays, nor tensors of different devices (``TypeError``). Calls without
    tensors pass straight through.
    """
    positional = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        torch = torch_module()
        if (
            torch is None
            or len(args) > len(positional)  # fn raises its own TypeError
            or not _any_tensor(torch.Tensor, args, kwargs)
        ):
            return fn(*args, **kwargs)
        # the arguments by name (cheaper than Signature.bind, which a small call would feel)
        arguments = {**dict(zip(positional, args, strict=False)), **kwargs}
        tensors = {k: v for k, v in arguments.items() if isinstance(v, torch.Tensor)}
        _check_tensor_arguments(arguments, tensors)
        device = next(iter(tensors.values())).device
        originals = {}
        with current_stream(device):  # DLPack then hands CUDA tensors over on that stream
            for name, t in tensors.items():
                array = as_array(t, name)
                originals[id(array)] = t
                arguments[name] = array
            args = [arguments.pop(name) for name in positional[: len(args)]]
            result = fn(*args, **arguments)
            if isinstance(result, tuple):
                return tuple(_back(r, originals) for r in result)
            return _back(result, originals)

    return wrapper


def _any_tensor(tensor: type, args: tuple, kwargs: dict) -> bool:
    """Whether an argument is a ``tensor``: plain loops, as a call without tensors (the
    common one) pays for this check."""
    for a in args:
        if isinstance(a, tensor):
            return True
    for a in kwargs.values():
        if isinstance(a, tensor):
            return True
    return False


_OPTIONS = (str, int, float)  # arguments that are never arrays (bool is an int)


def _check_tensor_arguments(arguments: dict, tensors: dict) -> None:
    first_name, first = next(iter(tensors.items()))
    device_kind(first)  # CPU or CUDA, else TypeError
    for name, value in arguments.items():
        if name in tensors:
            if tensors[name].device != first.device:
                raise TypeError(
                    f"{name} is on {tensors[name].device} but {first_name} is on "
                    f"{first.device}: pass tensors of one device"
                )
        elif value is None or isinstance(value, _OPTIONS):
            continue
        elif isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__"):
            raise TypeError(
                f"{name} is a {type(value).__module__}.{type(value).__name__} but {first_name} "
                "is a torch.Tensor: pass arrays of one library (no copies are made behind "
                "your back)"
            )


def _back(value, originals: dict):
    original = originals.get(id(value))
    if original is not None:
        return original
    if value is None or isinstance(value, _OPTIONS):
        return value
    return as_tensor(value)
