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
from typing import TYPE_CHECKING

import numpy as np

from ._dtypes import BFLOAT16

if TYPE_CHECKING:
    from ._dispatch import ArrayArguments


def torch_module():
    """The ``torch`` module if the program has imported it, else ``None``."""
    return sys.modules.get("torch")


def is_tensor(x) -> bool:
    torch = torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


def device_kind(t, name: str) -> str:
    """``"numpy"`` for a CPU tensor (it runs like a NumPy array), ``"cuda"`` for a CUDA one;
    ``TypeError`` naming the argument ``name`` for any other device. (``is_cpu`` and
    ``is_cuda`` cost a tenth of ``t.device``, which builds a ``torch.device`` each time:
    small calls feel it.)"""
    if t.is_cpu:
        return "numpy"
    if t.is_cuda:
        return "cuda"
    raise TypeError(f"{name} is on {t.device}, which is not supported: use CPU or CUDA tensors")


def as_array(t, name: str):
    """``t``'s memory as a NumPy (CPU) or CuPy (CUDA) array, without a copy. A bfloat16
    tensor is handed over as its 16 bits and viewed as ``ml_dtypes.bfloat16``: neither
    ``Tensor.numpy`` nor every CuPy's DLPack import takes bfloat16. A CPU tensor that NumPy
    cannot view (sparse, nested, float8, a lazy negation) is a ``TypeError`` naming it, with
    PyTorch's reason. (Only there: on a CUDA tensor the same catch could relabel a CUDA
    error left by earlier work as the tensor's fault.)"""
    torch = torch_module()
    t = t.detach() if t.requires_grad else t
    bf16 = t.dtype is torch.bfloat16
    if bf16 and BFLOAT16 is None:
        raise TypeError(f"{name}: bfloat16 tensors need ml_dtypes (pip install ml_dtypes)")
    cupy = None if t.is_cpu else _cupy(name)
    if bf16 and cupy is not None and not _cupy_has_bfloat16():
        raise TypeError(
            f"{name}: bfloat16 CUDA tensors need a CuPy with bfloat16 arrays (CuPy 14 or "
            f"later; this is CuPy {cupy.__version__})"
        )
    if cupy is not None:
        if bf16:
            return cupy.from_dlpack(t.view(torch.int16)).view(BFLOAT16)
        return cupy.from_dlpack(t)
    try:
        return t.view(torch.int16).numpy().view(BFLOAT16) if bf16 else t.numpy()
    except (TypeError, RuntimeError) as error:
        # (a tensor of a torch.func transform, vmap's say, has no storage to read)
        no_storage = " (torch.func transforms are not supported)" if "storage" in str(error) else ""
        raise TypeError(
            f"{name}: this {t.dtype} tensor ({t.layout}) cannot be read in place as an array: "
            f"{error}{no_storage}"
        ) from error


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
    """Whether CuPy's kernels take ``ml_dtypes.bfloat16`` arrays (CuPy 14 and later). Tried
    with a conversion, which runs a kernel: CuPy 13 allocates and zeroes such an array (no
    kernel) but refuses the dtype in its kernels."""
    import cupy
    from cupy.cuda.compiler import CompileException

    try:
        cupy.zeros(1, BFLOAT16).astype(np.float32)
    except (TypeError, ValueError, LookupError, NotImplementedError, CompileException):
        return False  # the dtype refused where the kernel is typed or compiled
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


@contextlib.contextmanager
def _cuda_stream(device):
    """A context in which CuPy's current device is ``device`` and its current stream is
    PyTorch's current stream there, so kernels, allocations and CuPy expressions are ordered
    with the caller's PyTorch work (and DLPack hands tensors over without a cross-stream
    wait)."""
    import cupy

    torch = torch_module()
    with cupy.cuda.Device(device.index):
        with cupy_stream(cupy, torch.cuda.current_stream(device)):
            yield


def cupy_stream(cupy, stream):
    """The PyTorch CUDA ``stream`` as a CuPy stream (no new CUDA stream): through the CUDA
    stream protocol where CuPy has it (CuPy 14 and later, where ``ExternalStream`` warns that
    it is deprecated), else by its handle and device."""
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, stream.device_index)


def tensor_io(arguments: ArrayArguments):
    """A decorator that lets an array-level function take PyTorch tensors as its array
    ``arguments`` (its :class:`~gpukernels._dispatch.ArrayArguments`): tensors in, tensors out.

    Tensor arguments become zero-copy arrays (``as_array``), the function runs with CuPy's
    current stream set to PyTorch's (CUDA tensors), and every array it returns becomes a
    tensor of the same memory; an ``out=`` tensor comes back as the very tensor passed. Tensors
    may not be mixed with other arrays, nor tensors of different devices (``TypeError``).
    Options (``reduction``, ``z_loss``, ...) are not arrays: a tensor there reaches the
    function's checks as it is.

    Calls without tensors pass straight through, and every small call pays for that test. So
    the wrapper is written out with the function's own parameters (``def f(x, *, axis=None):
    ... return fn(x, axis=axis)``), the way ``dataclasses`` writes ``__init__``: a generic
    ``(*args, **kwargs)`` wrapper costs a call with keywords half a microsecond, this one a
    tenth. Each array argument is tested with ``type`` against NumPy's array and ``None``
    first, as ``isinstance`` against ``torch.Tensor`` costs three times as much.
    """

    def decorate(fn):
        parameters = inspect.signature(fn).parameters.values()
        header, passed, scope = [], [], {"_fn": fn, "_modules": sys.modules}
        for p in parameters:
            if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                raise TypeError(f"tensor_io: {fn.__name__}'s parameter {p.name} is {p.kind}")
            if p.name.startswith("_") or p.name in _WRAPPER_BUILTINS:
                raise TypeError(f"tensor_io: {fn.__name__}'s parameter {p.name} is reserved")
            if p.kind is p.KEYWORD_ONLY and "*" not in header:
                header.append("*")
            if p.default is p.empty:
                header.append(p.name)
            else:
                scope[f"_default_{p.name}"] = p.default
                header.append(f"{p.name}=_default_{p.name}")
            passed.append(p.name if p.kind is p.POSITIONAL_OR_KEYWORD else f"{p.name}={p.name}")
        names = [p.name for p in parameters]
        missing = sorted(set(arguments.names) - set(names))
        if missing:
            raise TypeError(f"tensor_io: {fn.__name__} has no parameter {', '.join(missing)}")
        tests = " or ".join(
            f"(type({name}) not in _PLAIN and isinstance({name}, _torch.Tensor))"
            for name in arguments.names
        )
        source = (
            f"def _wrapper({', '.join(header)}):\n"
            f"    _torch = _modules.get('torch')\n"
            f"    if _torch is not None and ({tests}):\n"
            f"        _arguments = {{{', '.join(f'{n!r}: {n}' for n in names)}}}\n"
            f"        return _on_tensors(_fn, _arguments, _names, _torch.Tensor)\n"
            f"    return _fn({', '.join(passed)})\n"
        )
        scope.update(_PLAIN=_PLAIN, _on_tensors=_on_tensors, _names=arguments.names)
        # the source is built above from fn's signature alone; tracebacks name the wrapper
        exec(
            compile(source, f"<tensor_io wrapper of {fn.__module__}.{fn.__qualname__}>", "exec"),
            scope,
        )
        return functools.wraps(fn)(scope["_wrapper"])

    return decorate


def _on_tensors(fn, arguments: dict, array_names: tuple[str, ...], tensor: type):
    """``fn`` called with ``arguments``, its tensors among ``array_names`` as arrays, and its
    arrays returned as tensors; on CUDA tensors, with CuPy on PyTorch's current stream
    (DLPack then hands them over on it)."""
    tensors = _tensor_arguments(arguments, array_names, tensor)
    first = next(iter(tensors.values()))
    if not first.is_cuda:
        return _with_arrays(fn, arguments, tensors)
    with _cuda_stream(first.device):
        return _with_arrays(fn, arguments, tensors)


def _with_arrays(fn, arguments: dict, tensors: dict):
    """``fn`` on the tensors' arrays, its arrays returned as tensors. An ``out`` tensor is
    written behind autograd's back, as a kernel writing ``data_ptr`` is: its version counter
    moves on (``torch.autograd.graph.increment_version``), as PyTorch's ``out=`` functions
    move it, so that autograd refuses a backward that saved its old values. It moves on even
    where ``fn`` raises, which may come after the write (``validate``)."""
    originals = {}
    for name, t in tensors.items():
        array = as_array(t, name)
        originals[id(array)] = t
        arguments[name] = array
    written = tensors.get("out")
    try:
        result = fn(**arguments)
    finally:
        if written is not None:
            torch_module().autograd.graph.increment_version(written)
    if isinstance(result, tuple):
        return tuple([_back(r, originals) for r in result])
    return _back(result, originals)


_OPTIONS = (str, int, float)  # results that are not arrays (bool is an int)
_PLAIN = frozenset([np.ndarray, type(None)])  # the common types of array arguments
# the builtins a tensor_io wrapper calls, which a parameter of the same name would hide; the
# wrapper's own names all start with "_", which no parameter may either
_WRAPPER_BUILTINS = frozenset(["type", "isinstance"])


def _tensor_arguments(arguments: dict, array_names: tuple[str, ...], tensor: type) -> dict:
    """The tensors among the ``array_names`` of ``arguments``, by name, checked: all on one
    CPU or CUDA device, and no NumPy or CUDA array beside them."""
    tensors, foreign = {}, None
    for name in array_names:
        value = arguments[name]
        if isinstance(value, tensor):
            tensors[name] = value
        elif foreign is None and (
            isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__")
        ):
            foreign = name
    first_name, first = next(iter(tensors.items()))
    if foreign is not None:
        value = arguments[foreign]
        raise TypeError(
            f"{foreign} is a {type(value).__module__}.{type(value).__name__} but {first_name} "
            "is a torch.Tensor: pass arrays of one library (no copies are made behind your "
            "back)"
        )
    kind, index = device_kind(first, first_name), first.get_device()  # else TypeError
    for name, t in tensors.items():
        if t.get_device() != index or device_kind(t, name) != kind:
            raise TypeError(
                f"{name} is on {t.device} but {first_name} is on {first.device}: "
                "pass tensors of one device"
            )
    out = tensors.get("out")
    if out is not None and out.requires_grad and torch_module().is_grad_enabled():
        raise ValueError(
            "out requires grad: the array-level functions write it without autograd (PyTorch "
            "refuses out= arguments that require grad as well); pass a tensor that does not, "
            "call under torch.no_grad(), or use the autograd losses of gpukernels.torch"
        )
    return tensors


def _back(value, originals: dict):
    original = originals.get(id(value))
    if original is not None:
        return original
    if value is None or isinstance(value, _OPTIONS):
        return value
    return as_tensor(value)
