"""Argument checks, in one place, run before dispatch so both backends raise the same errors.

Every message names the argument and says what was expected. ``TypeError`` is for what an
argument *is* (not an array, a wrong dtype, a foreign array library); ``ValueError`` for what
it *holds* (shapes, dimensions, option values, class indices).
"""

from __future__ import annotations

import numpy as np

from ._dtypes import NAMES as FLOAT_NAMES
from ._dtypes import STORAGE as FLOAT_DTYPES
from ._kinds import NAMES as KIND_NAMES
from ._kinds import TermKind

REDUCTIONS = ("mean", "sum", "none")
SCALAR_ALLOWED = frozenset({"grad_output"})


def array_library(name: str, x) -> str:
    """``"numpy"`` for a NumPy array, ``"cuda"`` for a CUDA array; TypeError otherwise."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if hasattr(x, "__cuda_array_interface__"):
        return "cuda"
    raise TypeError(f"{name} must be a NumPy array or a CUDA array (CuPy), got {type(x).__name__}")


def common_library(arrays: dict[str, object]) -> str:
    """The one array library of the named arrays (``None`` values are skipped).

    Mixing NumPy and CUDA arrays, or CUDA arrays on different devices, is a TypeError.
    Arguments named in ``SCALAR_ALLOWED`` may also be plain numbers, which are skipped.
    """
    first_name, first_lib, first_device = None, None, None
    for name, x in arrays.items():
        if x is None or (name in SCALAR_ALLOWED and isinstance(x, int | float | np.number)):
            continue
        lib = array_library(name, x)
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
    return first_lib


def device_id(x) -> int | None:
    device = getattr(x, "device", None)
    return getattr(device, "id", None)


def float_array(name: str, x) -> np.dtype:
    """The dtype of ``x``, which must be float16, float32 or float64."""
    dtype = np.dtype(x.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype {FLOAT_NAMES}, got {dtype}")
    return dtype


def ndim(name: str, x, expected: int, what: str) -> None:
    if x.ndim != expected:
        raise ValueError(f"{name} must be {what} ({expected}-D), got shape {tuple(x.shape)}")


def same_shape(name: str, x, other_name: str, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the shape of {other_name} {tuple(shape)}, got {tuple(x.shape)}"
        )


def reduction(value: str, allowed: tuple[str, ...] = REDUCTIONS) -> None:
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


def grad_output(value, reduction: str, loss_shape: tuple[int, ...]) -> None:
    """A scalar for reduced losses; a scalar or an array of the loss's shape for ``"none"``."""
    if value is None or isinstance(value, int | float | np.number):
        return
    array_library("grad_output", value)
    float_array("grad_output", value)
    size = int(np.prod(value.shape))
    if reduction == "none":
        if tuple(value.shape) not in ((), tuple(loss_shape)):
            raise ValueError(
                f"grad_output must be a scalar or have the loss's shape {tuple(loss_shape)}, "
                f"got {tuple(value.shape)}"
            )
    elif size != 1:
        raise ValueError(
            f"grad_output must be a scalar for reduction={reduction!r}, got shape "
            f"{tuple(value.shape)}"
        )


def class_indices(xp, labels, num_classes: int, ignore_index: int) -> None:
    """Every label is in ``[0, num_classes)`` or equal to ``ignore_index``.

    On a GPU the check runs there and costs one small device-to-host read.
    """
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        first = int(xp.argmax(bad))
        raise ValueError(
            f"target holds class index {int(labels[first])} at row {first}, outside "
            f"[0, {num_classes}) and not ignore_index={ignore_index}"
        )


def positive_number(name: str, value) -> None:
    """``value`` is a real number (not a bool), finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def label_smoothing(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {value}")


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
    if value != 0 or isinstance(value, bool):
        raise ValueError(f"axis must be None or 0 (the batch axis), got {value!r}")
    if ndim_ == 0:
        raise ValueError("axis=0 is out of range for a 0-d array")


def column_range(name: str, columns, width: int) -> tuple[int, int]:
    """``(start, stop)`` of a step-1, non-empty column slice of an array ``width`` wide."""
    if not isinstance(columns, slice):
        raise TypeError(f"{name} must be a slice of columns, got {type(columns).__name__}")
    start, stop, step = columns.indices(width)
    if step != 1 or stop <= start:
        raise ValueError(
            f"{name} must select at least one column with step 1 out of {width}, got {columns}"
        )
    return start, stop


def loss_terms(terms, pred_width: int, target_width: int) -> list[tuple]:
    """Resolve ``LossTerm``s to ``(kind_code, cols, tcols, only_where, weight)`` tuples."""
    if len(terms) == 0:
        raise ValueError("terms must hold at least one LossTerm")
    resolved = []
    for k, term in enumerate(terms):
        where = f"terms[{k}]"
        if term.kind not in KIND_NAMES:
            raise ValueError(
                f"{where}.kind must be one of {', '.join(KIND_NAMES)}, got {term.kind!r}"
            )
        cols = column_range(f"{where}.columns", term.columns, pred_width)
        tsel = term.columns if term.target_columns is None else term.target_columns
        tcols = column_range(f"{where}.target_columns", tsel, target_width)
        width, twidth = cols[1] - cols[0], tcols[1] - tcols[0]
        one_index_column = term.kind == "softmax_cross_entropy" and twidth == 1 and width > 1
        if twidth != width and not one_index_column:
            raise ValueError(
                f"{where}.target_columns selects {twidth} columns but columns selects {width}"
                + (
                    " (softmax_cross_entropy takes 1 class-index column or one per class)"
                    if term.kind == "softmax_cross_entropy"
                    else ""
                )
            )
        only = term.only_where
        if only is not None and not (isinstance(only, int) and 0 <= only < target_width):
            raise ValueError(
                f"{where}.only_where must be a target column in [0, {target_width}), got {only!r}"
            )
        resolved.append(
            (
                TermKind.from_name(term.kind),
                cols,
                tcols,
                -1 if only is None else only,
                float(term.weight),
                float(term.delta),
            )
        )
    return resolved


def class_index_column(xp, column, num_classes: int, name: str) -> None:
    """A float target column that holds class indices: whole numbers in ``[0, num_classes)``."""
    bad = (column != xp.floor(column)) | (column < 0) | (column >= num_classes)
    if bool(bad.any()):
        row = int(xp.argmax(bad))
        raise ValueError(
            f"{name} holds {float(column[row])} at row {row}: expected a class "
            f"index in [0, {num_classes})"
        )
