"""Mean squared error, loss and gradient, ``reduction="mean"``.

Byte model, for ``n`` elements of ``s`` bytes: prediction and target read once, the gradient
written once: ``3 n s`` (the per-tile loss partials, ``n / 64`` bytes, are left out).
"""

from __future__ import annotations

from . import common
from .baselines import Variant, loss_variants
from .common import acc_dtype, itemsize

NAME = "mse"
TITLE = "MSE"
BYTES = "prediction + target read once, gradient written once"
SIZES = common.ELEMENTWISE_SIZES
DTYPES = common.DTYPES
shape_of = common.elementwise_shape


def nbytes(shape, dtype: str) -> int:
    """Two reads and one write per element."""
    return 3 * shape[0] * itemsize(dtype)


def inputs(dev, shape, dtype: str, seed: int) -> tuple:
    """Prediction and target, both standard normal."""
    return dev.normal(shape, dtype, seed), dev.normal(shape, dtype, seed + 7919)


def expression(xp, pred, target, acc=None):
    """``loss = mean((p - t)^2)``, ``grad = 2 (p - t) / n``."""
    work = acc_dtype(pred.dtype) if acc is None else acc
    d = pred.astype(work) - target.astype(work, copy=False)
    loss = (d * d).mean()
    d *= 2.0 / pred.size
    return loss, d if acc is not None else d.astype(pred.dtype, copy=False)


def reference(dev, arrays) -> tuple:
    """The expression in float64."""
    return expression(dev.xp, *arrays, acc=dev.xp.float64)


def variants(dev) -> list[Variant]:
    """gpukernels (allocating and ``out=``), the NumPy/CuPy expression, PyTorch's
    ``mse_loss`` forward + backward."""
    import gpukernels as gk

    return loss_variants(dev, gk.mse, "mse_loss", expression, jax_loss)


def jax_loss(jnp, pred, target):
    """``mean((p - t)^2)`` for ``jax.value_and_grad``."""
    return jnp.mean((pred - target) ** 2)
