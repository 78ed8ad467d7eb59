"""The dtype table: every storage dtype the kernels take and the dtype they compute in.

One table for both backends: validation, allocation and the CUDA signatures all read it, so a
dtype is added here once. 16-bit inputs are computed in float32 and rounded once when stored;
float64 is computed in float64.
"""

from __future__ import annotations

import numpy as np

ACCUMULATION: dict[np.dtype, np.dtype] = {
    np.dtype(np.float16): np.dtype(np.float32),
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float64),
}
STORAGE: tuple[np.dtype, ...] = tuple(ACCUMULATION)
ACCUMULATORS: tuple[np.dtype, ...] = tuple(dict.fromkeys(ACCUMULATION.values()))
NAMES: str = ", ".join(d.name for d in STORAGE[:-1]) + f" or {STORAGE[-1].name}"


def accumulation_dtype(dtype) -> np.dtype:
    """The dtype a kernel computes ``dtype`` data in (float32, or float64 for float64)."""
    return ACCUMULATION[np.dtype(dtype)]
