"""Huber loss (PyTorch's ``huber_loss``), loss and gradient, ``delta=1``, ``reduction="mean"``.

Byte model, for ``n`` elements of ``s`` bytes: prediction and target read once, the gradient
written once: ``3 n s`` (the per-tile loss partials, ``n / 64`` bytes, are left out).
"""

from __future__ import annotations

from . import common
from .baselines import Variant, loss_variants
from .common import acc_dtype, itemsize

NAME = "huber"
TITLE = "Huber loss"
BYTES = "prediction + target read once, gradient written once"
SIZES = common.ELEMENTWISE_SIZES
DTYPES = common.DTYPES
DELTA = 1.0
shape_of = common.elementwise_shape


def nbytes(shape, dtype: str) -> int:
    """Two reads and one write per element."""
    return 3 * shape[0] * itemsize(dtype)


def inputs(dev, shape, dtype: str, seed: int) -> tuple:
    """Prediction and target, both standard normal: ``|p - t|`` falls on either side of
    ``delta = 1`` (about half each), so both branches of the loss are timed."""
    return dev.normal(shape, dtype, seed), dev.normal(shape, dtype, seed + 7919)


def expression(xp, pred, target, acc=None):
    """With ``d = p - t``: ``loss = mean(0.5 d^2 if |d| <= delta else delta (|d| - delta/2))``,
    ``grad = clip(d, -delta, delta) / n``."""
    work = acc_dtype(pred.dtype) if acc is None else acc
    d = pred.astype(work) - target.astype(work, copy=False)
    a = xp.abs(d)
    loss = xp.where(a <= DELTA, 0.5 * d * d, DELTA * (a - 0.5 * DELTA)).mean()
    grad = xp.clip(d, -DELTA, DELTA)
    grad *= 1.0 / pred.size
    return loss, grad if acc is not None else grad.astype(pred.dtype, copy=False)


def reference(dev, arrays) -> tuple:
    """The expression in float64."""
    return expression(dev.xp, *arrays, acc=dev.xp.float64)


def variants(dev) -> list[Variant]:
    """gpukernels (allocating and ``out=``), the NumPy/CuPy expression, PyTorch's
    ``huber_loss`` forward + backward."""
    import gpukernels as gk

    return loss_variants(dev, gk.huber_loss, "huber_loss", expression, jax_loss)


def jax_loss(jnp, pred, target):
    """The Huber loss's mean for ``jax.value_and_grad``."""
    a = jnp.abs(pred - target)
    return jnp.mean(jnp.where(a <= DELTA, 0.5 * a * a, DELTA * (a - 0.5 * DELTA)))
