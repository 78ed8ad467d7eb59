"""Argument checks, in one place, run before dispatch so both backends raise the same errors.

Every message names the argument and says what was expected. ``TypeError`` is for what an
argument *is* (not an array, an ndarray subclass, a wrong dtype, a read-only ``out``, a foreign
array library); ``ValueError`` for what it *holds* (shapes, dimensions, option values, class
indices, an ``out`` overlapping an input). Checks read arrays' metadata only, O(1) per
argument, except the class-index checks, which read the labels (on the device).
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from typing import NamedTuple

import numpy as np

from ._dtypes import BFLOAT16
from ._dtypes import NAMES as FLOAT_NAMES
from ._dtypes import STORAGE as FLOAT_DTYPES
from ._kinds import MAX_TERMS, TermKind
from ._kinds import NAMES as KIND_NAMES

REDUCTIONS = ("mean", "sum", "none")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Exact array types taken from NumPy: np.matrix would be reshaped to 2-D and written past its
# end, a masked array's mask would be silently ignored, and other subclasses may change
# indexing or arithmetic. A memmap is a plain ndarray over a file.
NUMPY_TYPES = (np.ndarray, np.memmap)
_FLOAT_DTYPE_SET = frozenset(FLOAT_DTYPES)  # a hash lookup: "in" a tuple compares each
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINIEST = float(np.finfo(np.float32).smallest_subnormal)


# isinstance against a tuple: against a union (int | float) it takes several times longer,
# which small calls feel.
# real numbers: Python's, NumPy's, and ml_dtypes' bfloat16 scalar (not an np.floating)
_REALS = (int, float, np.integer, np.floating) + ((BFLOAT16.type,) if BFLOAT16 is not None else ())
_INTEGERS = (int, np.integer)
_BOOLS = (bool, np.bool_)


def is_number(x) -> bool:
    """A plain real number (Python's, NumPy's or ml_dtypes' bfloat16 scalar, not a bool):
    what a scalar option may be."""
    kind = type(x)
    if kind is float or kind is int:
        return True
    return isinstance(x, _REALS) and not isinstance(x, bool)


def is_flag(x) -> bool:
    """``None``, a bool or an integer (Python or NumPy): what a yes/no option may be."""
    return x is None or isinstance(x, _INTEGERS + _BOOLS)


def yes_no(name: str, value) -> bool:
    """A bool option (Python's or NumPy's), as ``bool``: ``TypeError`` for anything else,
    where reading it for its truth would take ``"no"`` or ``[]`` for an answer."""
    if not isinstance(value, _BOOLS):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def gradient_wanted(gradient, out) -> bool:
    """``gradient`` (:func:`yes_no`); ``False`` beside an ``out`` array is a ``ValueError``:
    no gradient would be written into it."""
    wanted = yes_no("gradient", gradient)
    if not wanted and out is not None:
        raise ValueError("out: gradient=False computes no gradient to write into out")
    return wanted


def array_library(name: str, x, number_ok: bool = False) -> str:
    """``"numpy"`` for a NumPy array, ``"cuda"`` for a CUDA array; TypeError otherwise."""
    if type(x) in NUMPY_TYPES:
        return "numpy"
    if isinstance(x, np.ndarray):
        masked = isinstance(x, np.ma.MaskedArray)
        raise TypeError(
            f"{name} must be a plain NumPy array (np.ndarray), got the subclass "
            f"{type(x).__module__}.{type(x).__name__}: pass np.asarray({name})"
            + (
                " (its mask would be ignored: fill or select the masked elements first)"
                if masked
                else ""
            )
        )
    if hasattr(x, "__cuda_array_interface__"):
        return "cuda"
    expected = (
        "a NumPy array, a CUDA array (CuPy) or a real number"
        if number_ok
        else "a NumPy array or a CUDA array (CuPy)"
    )
    raise TypeError(f"{name} must be {expected}, got {type(x).__name__}")


def common_library(
    names: tuple[str, ...],
    values: tuple,
    optional: Container[str] = (),
    numbers: Container[str] = (),
) -> str:
    """The one array library of a call's arrays ``values`` (the arguments ``names``); every
    check of what an argument *is*.

    Every argument must be an array, except that those named in ``optional`` may be
    ``None`` and those named in ``numbers`` may be plain real numbers (skipped here). An
    argument named ``out`` must be writable. Mixing NumPy and CUDA arrays, or CUDA arrays on
    different devices, is a TypeError.
    """
    first_name = first_lib = first_device = None
    # zip's strict keyword would cost every call 0.13 us; each op passes one value per name
    for name, x in zip(names, values):  # noqa: B905
        if x is None and name in optional:
            continue
        if type(x) in NUMPY_TYPES:  # the common case, without array_library's call
            lib = "numpy"
        elif name in numbers and is_number(x):
            continue
        else:
            lib = array_library(name, x, number_ok=name in numbers)
        if name == "out":
            writable("out", x, lib)
        device = device_id(x) if lib == "cuda" else None
        if first_name is None:
            first_name, first_lib, first_device = name, lib, device
        elif lib != first_lib:
            raise TypeError(
                f"{name} is a {lib} array but {first_name} is a {first_lib} array: "
                "pass arrays of one library (no copies are made behind your back)"
            )
        elif device != first_device:
            raise TypeError(
                f"{name} is on CUDA device {device} but {first_name} is on device {first_device}"
            )
    if first_lib is None:
        required = (name for name in names if name not in optional)
        raise TypeError(f"{', '.join(required)} must be arrays, got none")
    return first_lib


def writable(name: str, out, library: str) -> None:
    """``out`` can be written: a read-only array (NumPy's flag, or the read-only bit of
    ``__cuda_array_interface__``) is a TypeError, not a failure inside a kernel."""
    if library == "numpy":
        readonly = not out.flags.writeable
    else:
        readonly = bool(out.__cuda_array_interface__["data"][1])
    if readonly:
        raise TypeError(f"{name} is read-only: pass a writable array to write the result into")


def _layout(x) -> tuple[int, tuple[int, ...], tuple[int, ...], np.dtype]:
    """``(pointer, shape, strides, dtype)`` of an array's memory, read from its metadata only
    (no copy, no device synchronisation)."""
    shape = tuple(x.shape)
    if isinstance(x, np.ndarray):
        return x.__array_interface__["data"][0], shape, tuple(x.strides), np.dtype(x.dtype)
    memory = getattr(x, "data", None)
    pointer, strides = getattr(memory, "ptr", None), getattr(x, "strides", None)  # CuPy
    dtype = getattr(x, "dtype", None)
    if pointer is None or strides is None or dtype is None:
        interface = x.__cuda_array_interface__
        pointer, strides = interface["data"][0], interface.get("strides")
        dtype = np.dtype(interface["typestr"])
    dtype = np.dtype(dtype)
    if strides is None:  # C-contiguous
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.insert(0, step)
            step *= max(n, 1)
    return pointer, shape, tuple(strides), dtype


def _extent(layout) -> tuple[int, int]:
    """``[low, high)``: the bytes an array's elements span (empty for an empty array)."""
    pointer, shape, strides, dtype = layout
    if 0 in shape:
        return pointer, pointer
    low = high = pointer
    for n, stride in zip(shape, strides, strict=True):
        if stride < 0:
            low += (n - 1) * stride
        else:
            high += (n - 1) * stride
    return low, high + dtype.itemsize


def _same_memory(a, b) -> bool:
    """The same elements at the same addresses (strides of length-1 axes do not matter)."""
    pa, shape, sa, da = a
    pb, shape_b, sb, db = b
    return (
        pa == pb
        and shape == shape_b
        and da == db
        and all(x == y for n, x, y in zip(shape, sa, sb, strict=True) if n > 1)
    )


def out_overlap(out, inputs: dict[str, object], in_place: tuple[str, ...] = ()) -> None:
    """``out`` shares no memory with the inputs, except that it may be one of ``in_place``
    itself (same memory, shape, strides and dtype: an in-place result).

    Decided in O(1) per array from the byte ranges the arrays span (like
    ``np.may_share_memory``), so two arrays that interleave without sharing an element count
    as overlapping.
    """
    if out is None:
        return
    host = isinstance(out, np.ndarray)
    out_layout = None if host else _layout(out)
    for name, x in inputs.items():
        if name == "out" or x is None or is_number(x) or (x is out and name in in_place):
            continue
        if host:  # NumPy's own bounds test (max_work=0: the byte ranges only), in C
            if not np.may_share_memory(out, x, max_work=0):
                continue
            out_layout = _layout(out)
            layout = _layout(x)
        else:
            layout = _layout(x)
            low, high = _extent(out_layout)
            x_low, x_high = _extent(layout)
            if low == high or x_low == x_high or x_high <= low or high <= x_low:
                continue
        if name in in_place:
            if _same_memory(out_layout, layout):
                continue
            raise ValueError(
                f"out partly overlaps {name} in memory: out must be {name} itself (the same "
                f"memory, shape, strides and dtype, for an in-place result) or not share "
                f"memory with it"
            )
        raise ValueError(
            f"out overlaps {name} in memory: out must not share memory with {name}"
            + (f" (it may be {' or '.join(in_place)} itself)" if in_place else "")
        )


def device_id(x) -> int | None:
    device = getattr(x, "device", None)
    return getattr(device, "id", None)


def not_copied(name: str, x, adopted, cupy) -> None:
    """``adopted`` (CuPy's adoption of the CUDA array ``x``) must share ``x``'s memory: CuPy
    copies an array that lies on another device than the current one, where the kernels
    launch and the results are allocated. Then a ``ValueError``, as CuPy's own kernels
    raise."""
    original = getattr(getattr(x, "data", None), "ptr", None)  # a CuPy array's pointer
    if original is None:
        original = x.__cuda_array_interface__["data"][0]
    if adopted.data.ptr != original:
        current, device = cupy.cuda.runtime.getDevice(), device_id(x)
        where = "another CUDA device" if device is None else f"CUDA device {device}"
        raise ValueError(
            f"{name} is on {where} but the current device is {current}: call inside "
            "`with cupy.cuda.Device(...)` for the arrays' device, as CuPy requires"
        )


def float_array(name: str, x) -> np.dtype:
    """The dtype of ``x``, which must be a storage dtype of the dtype table (``_dtypes``)."""
    dtype = x.dtype
    if dtype in _FLOAT_DTYPE_SET:  # NumPy's and CuPy's arrays: an np.dtype already
        return dtype
    dtype = np.dtype(dtype)
    if dtype not in _FLOAT_DTYPE_SET:
        _native_byte_order(name, dtype)
        raise TypeError(f"{name} must have dtype {FLOAT_NAMES}, got {dtype}")
    return dtype


def _native_byte_order(name: str, dtype: np.dtype) -> None:
    """A ``TypeError`` that says how to convert ``dtype`` when it is a float dtype the
    kernels read in the other byte order (``>f4`` here)."""
    if dtype.newbyteorder("=") in _FLOAT_DTYPE_SET and not dtype.isnative:
        raise TypeError(
            f"{name} must be in the machine's byte order, got {dtype.str}: convert it with "
            f"{name}.astype({name}.dtype.newbyteorder('='))"
        )


def ndim(name: str, x, expected: int, what: str) -> None:
    if x.ndim != expected:
        raise ValueError(f"{name} must be {what} ({expected}-D), got shape {tuple(x.shape)}")


def same_shape(name: str, x, other_name: str, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the shape of {other_name} {tuple(shape)}, got {tuple(x.shape)}"
        )


def integer_labels(name: str, x) -> None:
    """``x`` holds integer class indices (any signed or unsigned integer dtype)."""
    if np.dtype(x.dtype).kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices, got dtype {x.dtype}")


def class_target(target, n: int, c: int, ignore_index: int) -> bool:
    """The cross-entropy ``target`` of ``(n, c)`` logits: ``(n,)`` integer class indices
    (``True``) or ``(n, c)`` float class probabilities (``False``). ``ignore_index`` names a
    class, so as in PyTorch it must be negative (unused) with probabilities."""
    dtype = np.dtype(target.dtype)
    if dtype.kind in "iu":
        if tuple(target.shape) == (n, c):
            raise TypeError(
                f"target of shape ({n}, {c}) must hold float class probabilities, got dtype "
                f"{target.dtype} (integer targets are class indices, of shape ({n},))"
            )
        same_shape("target", target, "the logits' rows", (n,))
        return True
    if dtype.kind != "f" and dtype not in _FLOAT_DTYPE_SET:  # bfloat16's kind is "V"
        raise TypeError(
            "target must hold integer class indices or float class probabilities "
            f"({FLOAT_NAMES}), got dtype {target.dtype}"
        )
    if tuple(target.shape) == (n,):
        raise TypeError(
            f"target of shape ({n},) must hold integer class indices, got dtype {target.dtype} "
            f"(float targets are class probabilities, of the logits' shape ({n}, {c}))"
        )
    float_array("target", target)  # float128, or another byte order
    same_shape("target", target, "logits", (n, c))
    if ignore_index >= 0:
        raise ValueError(
            f"ignore_index={ignore_index} names a class to skip, which class probabilities do "
            "not have: leave it at its default (any negative value) with probability targets"
        )
    return False


def same_dtype(name: str, x, other_name: str, dtype: np.dtype) -> None:
    if np.dtype(x.dtype) != dtype:
        if np.dtype(x.dtype).newbyteorder("=") == dtype:
            _native_byte_order(name, np.dtype(x.dtype))
        raise TypeError(f"{name} must have the dtype of {other_name} ({dtype}), got {x.dtype}")


def chunk_size(value) -> int | None:
    """``None`` or a positive integer (rows per chunk)."""
    if value is None:
        return None
    value = integer("chunk_size", value)
    if value < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {value}")
    return value


def fan_in(name: str, value) -> int | None:
    """``None`` or an integer >= 2 that fits int64: the fan-in of a tree reduction (one
    chunk a node would never merge anything)."""
    if value is None:
        return None
    value = int64(name, value)
    if value < 2:
        raise ValueError(f"{name} must be at least 2 (chunks merged a node), got {value}")
    return value


def reduction(value: str, allowed: tuple[str, ...] = REDUCTIONS) -> None:
    if not isinstance(value, str):
        raise TypeError(f"reduction must be a str, got {type(value).__name__} {value!r}")
    if value not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def out_array(out, shape: tuple[int, ...], dtype: np.dtype, library: str) -> None:
    """``out`` must be an array of ``library`` with exactly ``shape`` and ``dtype``."""
    if out is None:
        return
    if array_library("out", out) != library:
        raise TypeError(f"out must be a {library} array like the inputs")
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != dtype:
        raise ValueError(
            f"out must have shape {tuple(shape)} and dtype {dtype}, "
            f"got shape {tuple(out.shape)} and dtype {np.dtype(out.dtype)}"
        )
    if library == "numpy" and (out.flags.c_contiguous or out.flags.f_contiguous):
        return  # the common case, without reading the layout
    _, out_shape, strides, out_dtype = _layout(out)
    if not _distinct_elements(out_shape, strides, out_dtype.itemsize):
        raise ValueError(
            f"out's elements may share memory (shape {out_shape}, strides {strides} bytes, as "
            "from broadcast_to, expand or as_strided): each element of out must have its "
            "own memory"
        )


def _distinct_elements(shape, strides, itemsize: int) -> bool:
    """Whether no two elements of a strided layout can share a byte: taken axis by axis, by
    increasing stride, each stride reaches past everything the smaller ones span. True for
    every layout slicing and transposing make; a layout that fails may still be free of
    overlap (only ``as_strided`` makes those), a stride of 0 never is (but an empty layout
    has no elements to share)."""
    if 0 in shape:
        return True
    span = itemsize
    for n, stride in sorted(
        ((n, abs(s)) for n, s in zip(shape, strides, strict=True) if n > 1),
        key=lambda axis: axis[1],
    ):
        if stride < span:
            return False
        span += (n - 1) * stride
    return True


def grad_output(value, reduction: str | None, loss_shape: tuple[int, ...]) -> None:
    """A scalar for reduced losses (``reduction`` ``None``: a loss that is always reduced); a
    scalar or an array of the loss's shape for ``"none"``."""
    if value is None or is_number(value):
        return
    array_library("grad_output", value, number_ok=True)
    float_array("grad_output", value)
    size = value.size
    if reduction == "none":
        if tuple(value.shape) not in ((), tuple(loss_shape)):
            raise ValueError(
                f"grad_output must be a scalar or have the loss's shape {tuple(loss_shape)}, "
                f"got {tuple(value.shape)}"
            )
    elif size != 1:
        which = f"for reduction={reduction!r}" if reduction else "(the loss is a scalar)"
        raise ValueError(f"grad_output must be a scalar {which}, got shape {tuple(value.shape)}")


def class_indices(
    xp, labels, num_classes: int, ignore_index: int, target=None, first_row: int = 0
) -> None:
    """Every label is in ``[0, num_classes)`` or equal to ``ignore_index``.

    ``labels`` are the int64 labels; ``target`` the caller's array, for the message, whose
    rows are numbered from ``first_row`` (a block of a larger array's rows). On a GPU the
    check runs there and costs one small device-to-host read.
    """
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        target = labels if target is None else target
        bad_class_index(int(xp.argmax(bad)), target, num_classes, ignore_index, first_row)


def bad_class_index(
    row: int, target, num_classes: int, ignore_index: int, first_row: int = 0
) -> None:
    """Raise for the bad class index of ``target`` at ``row``, found by a kernel (-1: none);
    the message numbers the rows from ``first_row``."""
    if row >= 0:
        raise ValueError(
            f"target holds class index {int(target[row])} at row {first_row + row}, outside "
            f"[0, {num_classes}) and not ignore_index={ignore_index}"
        )


def integer(name: str, value) -> int:
    """A Python or NumPy integer (not a bool), as an ``int``."""
    if type(value) is int:  # the common case first: small calls feel each check
        return value
    if isinstance(value, _BOOLS) or not isinstance(value, _INTEGERS):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def int64(name: str, value) -> int:
    """An integer that fits int64 (the dtype of labels and class numbers in the kernels)."""
    value = integer(name, value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} must fit int64 [-2**63, 2**63 - 1], got {value}")
    return value


def ignore_index(value) -> int:
    """An integer that fits int64, as the labels it is compared with."""
    return int64("ignore_index", value)


def real_number(name: str, value) -> float:
    """A Python or NumPy real number (not a bool), as a ``float``."""
    if type(value) is float:  # the common case first: small calls feel each check
        return value
    if not is_number(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:  # a Python int past float64's range
        raise ValueError(f"{name} must be a real number within float64's range") from None


def z_loss(value) -> float:
    """The z-loss factor: a finite real number >= 0."""
    value = real_number("z_loss", value)
    if not 0.0 <= value < math.inf:  # NaN fails too
        raise ValueError(f"z_loss must be a finite number >= 0, got {value}")
    return value


def softcap(value) -> float:
    """``None`` (no cap, given to kernels as 0) or a finite real number > 0."""
    if value is None:
        return 0.0
    value = real_number("softcap", value)
    if not 0.0 < value < math.inf:  # NaN fails too
        raise ValueError(f"softcap must be None or a finite number > 0, got {value}")
    return value


def cross_entropy_options(index, smoothing, factor, cap) -> tuple[int, float, float, float | None]:
    """``(ignore_index, label_smoothing, z_loss, softcap)`` checked, as the layers above the
    array-level functions check them before passing them on (a custom op's schema, a
    collective's agreement, a Dask graph): ``softcap`` stays ``None`` for no cap, as those
    functions take it."""
    return (
        ignore_index(index),
        label_smoothing(smoothing),
        z_loss(factor),
        None if cap is None else softcap(cap),
    )


def representable(value: float, dtype: np.dtype) -> bool:
    """Whether the float ``dtype`` (float32 or float64) holds ``value`` without overflow: at
    once for anything float32 holds (asking NumPy costs a small call a third of a
    microsecond)."""
    return value <= _FLOAT32_MAX or value <= float(np.finfo(dtype).max)


def saturated(value: float, dtype: np.dtype) -> float:
    """``value`` (>= 0), or inf where ``dtype`` cannot hold it: the number it becomes there,
    without the overflow warning NumPy gives when casting it."""
    return value if representable(value, dtype) else math.inf


def cap_in_range(name: str, softcap: float, dtype: np.dtype) -> None:
    """A softcap (0: none) that ``dtype``, the dtype the logits are computed in, can hold: a
    larger one would become inf there, and ``inf * tanh(z / inf)`` is NaN; a positive one
    that rounds to 0 there would be read as no cap at all."""
    if not representable(softcap, dtype):
        raise ValueError(
            f"{name} must be at most {float(np.finfo(dtype).max):.8g} (the largest "
            f"{np.dtype(dtype)}, the dtype these logits are computed in), got {softcap}"
        )
    if 0.0 < softcap < _FLOAT32_TINIEST and np.dtype(dtype).type(softcap) == 0:
        raise ValueError(
            f"{name} must be at least {float(np.finfo(dtype).smallest_subnormal):.8g} (the "
            f"smallest positive {np.dtype(dtype)}, the dtype these logits are computed in): "
            f"{softcap} rounds to 0 there, which would mean no cap"
        )


def label_smoothing(value) -> float:
    value = real_number("label_smoothing", value)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"label_smoothing must be in [0, 1], got {value}")
    return value


def some_class(name: str, rows: int, classes: int, symbol: str) -> None:
    """Rows need at least one class to take a softmax over (no row: any width)."""
    if classes == 0 and rows > 0:
        raise ValueError(f"{name} must have at least one class ({symbol} >= 1)")


def class_weight(weight, num_classes: int) -> None:
    if weight is None:
        return
    float_array("weight", weight)
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"weight must have shape ({num_classes},), one weight per class, "
            f"got {tuple(weight.shape)}"
        )


def broadcastable(name: str, x, shape: tuple[int, ...]) -> None:
    """``x`` broadcasts to ``shape`` (NumPy rules) without growing it."""
    try:
        ok = np.broadcast_shapes(tuple(x.shape), tuple(shape)) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} of shape {tuple(x.shape)} does not broadcast to {tuple(shape)}")


def axis(value, ndim_: int) -> None:
    if value is None:
        return
    if not isinstance(value, _INTEGERS) or isinstance(value, _BOOLS):
        raise TypeError(f"axis must be None or the integer 0, got {type(value).__name__} {value!r}")
    if value != 0:
        raise ValueError(f"axis must be None or 0 (the batch axis), got {value!r}")
    if ndim_ == 0:
        raise ValueError("axis=0 is out of range for a 0-d array")


class ResolvedTerm(NamedTuple):
    """A validated ``LossTerm``: its kind, its column ranges ``(start, stop)`` of ``pred`` and
    ``target``, its ``only_where`` column (-1 for every row), weight, Huber delta, and a
    cross-entropy term's z-loss factor and softcap (0 for none)."""

    kind: TermKind
    columns: tuple[int, int]
    target_columns: tuple[int, int]
    only_where: int
    weight: float
    delta: float
    z_loss: float
    softcap: float


def _bound(name: str, value, width: int, default: int) -> int:
    """One bound of a column slice, negative ones counted from the end; inside [0, width]."""
    if value is None:
        return default
    if isinstance(value, _BOOLS) or not isinstance(value, _INTEGERS):
        raise TypeError(f"{name} bounds must be integers, got {type(value).__name__} {value!r}")
    resolved = int(value) + width if value < 0 else int(value)
    if not 0 <= resolved <= width:
        raise ValueError(f"{name} bound {value} is outside the {width} columns")
    return resolved


def column_range(name: str, columns, width: int) -> tuple[int, int]:
    """``(start, stop)`` of a step-1, non-empty column slice inside an array ``width`` wide.

    Unlike ``slice.indices`` nothing is clamped: a bound past the columns is a ValueError.
    """
    if not isinstance(columns, slice):
        raise TypeError(f"{name} must be a slice of columns, got {type(columns).__name__}")
    if columns.step is not None and integer(f"{name} step", columns.step) != 1:
        raise ValueError(f"{name} must have step 1, got {columns}")
    start = _bound(name, columns.start, width, 0)
    stop = _bound(name, columns.stop, width, width)
    if stop <= start:
        raise ValueError(f"{name} must select at least one of the {width} columns, got {columns}")
    return start, stop


def loss_terms(terms, pred_width: int, target_width: int) -> list[ResolvedTerm]:
    """Resolve a sequence of ``LossTerm`` to ``ResolvedTerm``s, checking every field.

    A bad field is named as ``terms[k].field``. At most ``MAX_TERMS`` terms (the CUDA
    kernel keeps per-term statistics in a fixed-size local array).
    """
    from ._composite_loss import LossTerm  # the dataclass lives with its public function

    if not isinstance(terms, Sequence) or isinstance(terms, str):
        raise TypeError(
            f"terms must be a sequence (list or tuple) of LossTerm, got {type(terms).__name__}"
        )
    if len(terms) == 0:
        raise ValueError("terms must hold at least one LossTerm")
    if len(terms) > MAX_TERMS:
        raise ValueError(f"terms must hold at most {MAX_TERMS} LossTerms, got {len(terms)}")
    return [_loss_term(k, term, pred_width, target_width, LossTerm) for k, term in enumerate(terms)]


def _loss_term(k: int, term, pred_width: int, target_width: int, loss_term_type) -> ResolvedTerm:
    where = f"terms[{k}]"
    if not isinstance(term, loss_term_type):
        raise TypeError(f"terms must hold LossTerms, but {where} is a {type(term).__name__}")
    if not isinstance(term.kind, str):
        raise TypeError(f"{where}.kind must be a str, got {type(term.kind).__name__}")
    if term.kind not in KIND_NAMES:
        raise ValueError(f"{where}.kind must be one of {', '.join(KIND_NAMES)}, got {term.kind!r}")
    kind = TermKind.from_name(term.kind)
    cols = column_range(f"{where}.columns", term.columns, pred_width)
    tsel = term.columns if term.target_columns is None else term.target_columns
    tcols = column_range(f"{where}.target_columns", tsel, target_width)
    width, twidth = cols[1] - cols[0], tcols[1] - tcols[0]
    cross_entropy = kind == TermKind.SOFTMAX_CROSS_ENTROPY
    if twidth != width and not (cross_entropy and twidth == 1):
        raise ValueError(
            f"{where}.target_columns selects {twidth} columns but {where}.columns selects {width}"
            + (
                " (softmax_cross_entropy takes 1 class-index column or one per class)"
                if cross_entropy
                else ""
            )
        )
    only = term.only_where
    if only is not None:
        only = integer(f"{where}.only_where", only)
        if not 0 <= only < target_width:
            raise ValueError(
                f"{where}.only_where must be a target column in [0, {target_width}), got {only}"
            )
    # comparisons, not math.isfinite: torch.compile(dynamic=True) makes these symbolic floats
    weight = real_number(f"{where}.weight", term.weight)
    if not -math.inf < weight < math.inf:  # NaN fails too
        raise ValueError(f"{where}.weight must be finite, got {weight}")
    delta = real_number(f"{where}.delta", term.delta)
    if not 0 < delta < math.inf:
        raise ValueError(f"{where}.delta must be a finite number > 0, got {delta}")
    z, cap = (
        _term_option(where, "z_loss", term.z_loss),
        _term_option(where, "softcap", term.softcap),
    )
    if (z or cap) and not cross_entropy:
        raise ValueError(f"{where}: z_loss and softcap apply to softmax_cross_entropy terms only")
    only = -1 if only is None else only
    return ResolvedTerm(kind, cols, tcols, only, weight, delta, z, cap)


def _term_option(where: str, name: str, value) -> float:
    """A term's ``z_loss`` or ``softcap``, checked as the loss's own option is, with the
    term's name in the message."""
    try:
        return z_loss(value) if name == "z_loss" else softcap(value)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}.{error}") from None


def class_index_column(xp, column, num_classes: int, name: str, selected=None) -> None:
    """A float target column that holds class indices: whole numbers in ``[0, num_classes)``
    on the rows a term reads (``selected != 0`` where ``selected`` is given).

    On a GPU the check runs there and costs one small device-to-host read.
    """
    bad = (column != xp.floor(column)) | (column < 0) | (column >= num_classes)
    if selected is not None:
        bad &= selected != 0
    if bool(bad.any()):
        row = int(xp.argmax(bad))
        raise ValueError(
            f"{name} holds {float(column[row])} at row {row}: expected a class "
            f"index in [0, {num_classes})"
        )
