"""Binary cross-entropy with logits, loss and gradient, ``reduction="mean"``.

Byte model, for ``n`` elements of ``s`` bytes: logits and targets read once, the gradient
written once: ``3 n s`` (the per-tile loss partials, ``n / 64`` bytes, are left out).
"""

from __future__ import annotations

from . import common
from .baselines import Variant, loss_variants
from .common import acc_dtype, itemsize

NAME = "bce"
TITLE = "BCE with logits"
BYTES = "logits + targets read once, gradient written once"
SIZES = common.ELEMENTWISE_SIZES
DTYPES = common.DTYPES
shape_of = common.elementwise_shape


def nbytes(shape, dtype: str) -> int:
    """Two reads and one write per element."""
    return 3 * shape[0] * itemsize(dtype)


def inputs(dev, shape, dtype: str, seed: int) -> tuple:
    """Logits ~ 2 N(0, 1) (some saturate the sigmoid) and targets uniform in [0, 1)."""
    return 2 * dev.normal(shape, dtype, seed), dev.uniform(shape, dtype, seed + 7919)


def expression(xp, z, y, acc=None):
    """``loss = mean(max(z, 0) - z y + log1p(exp(-|z|)))``, ``grad = (sigmoid(z) - y) / n``."""
    work = acc_dtype(z.dtype) if acc is None else acc
    zw, yw = z.astype(work, copy=False), y.astype(work, copy=False)
    loss = (xp.maximum(zw, 0) - zw * yw + xp.log1p(xp.exp(-xp.abs(zw)))).mean()
    grad = (1 / (1 + xp.exp(-zw)) - yw) * (1.0 / z.size)
    return loss, grad if acc is not None else grad.astype(z.dtype, copy=False)


def reference(dev, arrays) -> tuple:
    """The expression in float64."""
    return expression(dev.xp, *arrays, acc=dev.xp.float64)


def variants(dev) -> list[Variant]:
    """gpukernels (allocating and ``out=``), the NumPy/CuPy expression, PyTorch's
    ``binary_cross_entropy_with_logits`` forward + backward."""
    import gpukernels as gk

    torch_name = "binary_cross_entropy_with_logits"
    return loss_variants(dev, gk.bce_with_logits, torch_name, expression, jax_loss)


def jax_loss(jnp, z, y):
    """``mean(max(z, 0) - z y + log1p(exp(-|z|)))`` for ``jax.value_and_grad``."""
    return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))
