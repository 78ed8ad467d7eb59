"""Sizes, dtypes and small helpers shared by the op modules."""

from __future__ import annotations

import numpy as np

# Elementwise ops (bce, mse, sigmoid) take 1-D arrays of these lengths.
ELEMENTWISE_SIZES = {
    "cpu": {"small": [(10**4,), (2**20,)], "medium": [(2**24,)]},
    "cuda": {"small": [(2**20,)], "medium": [(2**24,)], "large": [(2**28,)]},
}
DTYPES = {"cpu": ("float32",), "cuda": ("float32", "float16")}


def itemsize(dtype: str) -> int:
    """Bytes per element of ``dtype``."""
    return np.dtype(dtype).itemsize


def acc_dtype(dtype) -> np.dtype:
    """The dtype the maths runs in: float32 for float16 data, else the data's own."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def elementwise_shape(size: tuple[int, ...]) -> tuple[int]:
    """An explicit ``--sizes`` entry as a 1-D length (``NxC`` means ``N*C`` elements)."""
    return (int(np.prod(size)),)
