"""``batch_sum(x, axis=0)``: the deterministic tree sum down each column of an ``(N, M)``
batch (a layer's bias gradient).

Byte model, for ``N x M`` elements of ``s`` bytes: one read, ``N M s`` (the ``M`` sums are
small beside it).
"""

from __future__ import annotations

from . import common, reduce
from .baselines import Variant, jax_variants, ours, torch_variants
from .common import acc_dtype, itemsize

NAME = "column_sum"
TITLE = "batch_sum axis=0"
BYTES = "input read once"
SIZES = {
    "cpu": {"small": [(100, 100), (1024, 1024)], "medium": [(16384, 1024)]},
    "cuda": {"small": [(1024, 1024)], "medium": [(16384, 1024)], "large": [(262144, 1024)]},
}
DTYPES = common.DTYPES
SIZE_DIMS = (2,)
inputs = reduce.inputs


def shape_of(size: tuple[int, ...]) -> tuple[int, int]:
    """An explicit ``--sizes`` entry ``NxM`` as the batch's shape."""
    return (int(size[0]), int(size[1]))


def nbytes(shape, dtype: str) -> int:
    """One read per element."""
    return shape[0] * shape[1] * itemsize(dtype)


def reference(dev, arrays) -> tuple:
    """The float64 column sums."""
    return None, arrays[0].sum(axis=0, dtype=dev.xp.float64)


def _torch_column_sum(x):
    import torch

    return x.sum(0, dtype=torch.float32) if x.dtype == torch.float16 else x.sum(0)


def variants(dev) -> list[Variant]:
    """gpukernels, NumPy/CuPy ``sum(axis=0)`` (float32 accumulation for float16), PyTorch's."""
    import gpukernels as gk

    own = ours(dev.xp, lambda x: (None, gk.batch_sum(x, axis=0)), out=False)
    expr = Variant(
        dev.library, call=lambda a: (None, a[0].sum(axis=0, dtype=acc_dtype(a[0].dtype)))
    )
    torch = torch_variants(dev.kind, _torch_column_sum, backward=False)
    return (
        own
        + [expr]
        + torch
        + jax_variants(dev.kind, lambda jnp, x: jnp.sum(x, axis=0), backward=False)
    )
