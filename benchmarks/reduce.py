"""``batch_sum`` over every element (``axis=None``): the deterministic tree sum.

Byte model, for ``n`` elements of ``s`` bytes: one read, ``n s``.
"""

from __future__ import annotations

from . import common
from .baselines import Variant, jax_variants, ours, torch_or_reason, torch_variants
from .common import acc_dtype, itemsize

NAME = "reduce"
TITLE = "batch_sum"
BYTES = "input read once"
SIZES = {
    "cpu": {"small": [(10**4,), (2**20,)], "medium": [(2**24,)]},
    "cuda": {"small": [(2**20,)], "medium": [(2**24,)], "large": [(2**28,)]},
}
DTYPES = common.DTYPES
shape_of = common.elementwise_shape


def nbytes(shape, dtype: str) -> int:
    """One read per element."""
    return shape[0] * itemsize(dtype)


def inputs(dev, shape, dtype: str, seed: int) -> tuple:
    """Uniform values in [0, 1): a sum far from zero, so its relative error means something."""
    return (dev.uniform(shape, dtype, seed),)


def reference(dev, arrays) -> tuple:
    """The float64 sum."""
    return arrays[0].sum(dtype=dev.xp.float64), None


def _torch_sum(x):
    import torch

    return x.sum(dtype=torch.float32) if x.dtype == torch.float16 else x.sum()


def variants(dev) -> list[Variant]:
    """gpukernels, NumPy/CuPy ``sum`` (float32 accumulation for float16), PyTorch ``sum``."""
    import gpukernels as gk

    xp = dev.xp
    own = ours(xp, lambda x: (gk.batch_sum(x), None), out=False)
    expr = Variant(dev.library, call=lambda a: (a[0].sum(dtype=acc_dtype(a[0].dtype)), None))
    torch, _ = torch_or_reason(dev.kind)
    jax = jax_variants(dev.kind, lambda jnp, x: jnp.sum(x), backward=False)
    return own + [expr] + torch_variants(dev.kind, _torch_sum, backward=False) + jax
