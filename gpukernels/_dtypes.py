"""The dtype table: every storage dtype the kernels take and the dtype they compute in.

One table for both backends: validation, allocation and the CUDA signatures all read it, so a
dtype is added here once. 16-bit inputs are computed in float32 and rounded once (to nearest
even) when stored; float64 is computed in float64. bfloat16 is ``ml_dtypes.bfloat16`` for
NumPy arrays (``torch.bfloat16`` CPU tensors are viewed as it), present when ml_dtypes is
installed (the ``ml_dtypes`` extra).
"""

from __future__ import annotations

import numpy as np

try:
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # no bfloat16 without ml_dtypes: the table simply lacks it
    BFLOAT16: np.dtype | None = None
else:
    BFLOAT16 = np.dtype(_bfloat16)

FLOAT16, FLOAT32, FLOAT64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)

ACCUMULATION: dict[np.dtype, np.dtype] = {
    FLOAT16: FLOAT32,
    **({BFLOAT16: FLOAT32} if BFLOAT16 is not None else {}),
    FLOAT32: FLOAT32,
    FLOAT64: FLOAT64,
}
STORAGE: tuple[np.dtype, ...] = tuple(ACCUMULATION)
ACCUMULATORS: tuple[np.dtype, ...] = tuple(dict.fromkeys(ACCUMULATION.values()))
# Storage dtypes Numba's CPU target cannot compute in: the CPU kernels widen them to float32
# (bfloat16 from its bits as they read it, float16 in a copy), and NumPy's matmul of them is
# done in float32 (linear cross-entropy).
WIDENED: frozenset[np.dtype] = frozenset(d for d in STORAGE if d.itemsize == 2)
NAMES: str = ", ".join(d.name for d in STORAGE[:-1]) + f" or {STORAGE[-1].name}"


def accumulation_dtype(dtype) -> np.dtype:
    """The dtype a kernel computes ``dtype`` data in (float32, or float64 for float64)."""
    try:
        return ACCUMULATION[dtype]  # an np.dtype: without np.dtype's 0.1 us
    except KeyError:
        return ACCUMULATION[np.dtype(dtype)]


def companion_dtype(dtype: np.dtype, pred_dtype: np.dtype) -> np.dtype:
    """The dtype a kernel reads a second operand (a target) of ``dtype`` in, beside a
    prediction of ``pred_dtype``: the prediction's own dtype when they match, else the
    accumulation dtype. A float32 target of a bfloat16 prediction is never rounded to
    bfloat16 (PyTorch promotes, too)."""
    return pred_dtype if dtype == pred_dtype else accumulation_dtype(pred_dtype)
