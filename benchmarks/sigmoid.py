"""The sigmoid derivative ``sigmoid(x) (1 - sigmoid(x))``, elementwise.

Byte model, for ``n`` elements of ``s`` bytes: one read and one write, ``2 n s``.
"""

from __future__ import annotations

from . import common
from .baselines import Variant, jax_variants, ours, torch_variants
from .common import acc_dtype, itemsize

NAME = "sigmoid"
TITLE = "sigmoid derivative"
BYTES = "input read once, output written once"
SIZES = common.ELEMENTWISE_SIZES
DTYPES = common.DTYPES
shape_of = common.elementwise_shape


def nbytes(shape, dtype: str) -> int:
    """One read and one write per element."""
    return 2 * shape[0] * itemsize(dtype)


def inputs(dev, shape, dtype: str, seed: int) -> tuple:
    """``x ~ 4 N(0, 1)``: both tails of the sigmoid are visited."""
    return (4 * dev.normal(shape, dtype, seed),)


def expression(xp, x, acc=None):
    """``s = 1 / (1 + exp(-x))``, ``s (1 - s)``."""
    work = acc_dtype(x.dtype) if acc is None else acc
    s = 1 / (1 + xp.exp(-x.astype(work, copy=False)))
    d = s * (1 - s)
    return None, d if acc is not None else d.astype(x.dtype, copy=False)


def reference(dev, arrays) -> tuple:
    """``exp(-|x|) / (1 + exp(-|x|))^2`` in float64: exact also where ``1 - s`` rounds to 0."""
    xp = dev.xp
    e = xp.exp(-xp.abs(arrays[0].astype(xp.float64)))
    return None, e / (1 + e) ** 2


def _torch_derivative(x):
    s = x.sigmoid()
    return s * (1 - s)


def variants(dev) -> list[Variant]:
    """gpukernels (allocating and ``out=``), the NumPy/CuPy expression, the same expression
    in PyTorch."""
    import gpukernels as gk

    xp = dev.xp
    own = ours(xp, lambda *a, **k: (None, gk.sigmoid_derivative(*a, **k)))
    expr = Variant(dev.library, call=lambda a: expression(xp, *a))
    torch = torch_variants(dev.kind, _torch_derivative, backward=False)
    return own + [expr] + torch + jax_variants(dev.kind, _jax_derivative, backward=False)


def _jax_derivative(jnp, x):
    s = 1 / (1 + jnp.exp(-x))
    return s * (1 - s)
