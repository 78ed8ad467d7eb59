"""Fused softmax cross-entropy, loss and gradient, class-index targets, ``reduction="mean"``.

Byte model, for ``N`` rows of ``C`` classes of ``s`` bytes: the logits read once (``N C s``),
the gradient written once (``N C s``), the int64 labels read (``8 N``) and the per-row losses
written in the accumulation dtype (``4 N``; ``8 N`` for float64). That is the least any
implementation must move; the NumPy/CuPy expression and PyTorch's forward + backward make
several passes over the logits and so move more.
"""

from __future__ import annotations

from .baselines import Variant, jax_variants, ours, torch_or_reason, torch_variants
from .common import acc_dtype, itemsize

NAME = "softmax_xent"
TITLE = "softmax cross-entropy"
BYTES = "logits read once + gradient written once + int64 labels + per-row losses"
SIZES = {
    "cpu": {
        "small": [(64, 10), (1000, 10), (8192, 256)],
        "medium": [(4096, 4096)],
        "large": [(4096, 32768)],
    },
    "cuda": {
        "small": [(4096, 256), (4096, 4096)],
        "medium": [(8192, 32768)],
        "large": [(4096, 131072), (2048, 262144)],
    },
}
DTYPES = {"cpu": ("float32",), "cuda": ("float32", "float16")}


def shape_of(size: tuple[int, ...]) -> tuple[int, int]:
    """``NxC`` as is; a plain count ``n`` as 4096 rows of ``n / 4096`` classes."""
    if len(size) == 2:
        return size
    n = size[0]
    return (4096, max(1, n // 4096)) if n >= 4096 else (1, n)


def nbytes(shape, dtype: str) -> int:
    """Logits in, gradient out, labels in, per-row losses out."""
    n, c = shape
    row_loss = 8 if dtype == "float64" else 4
    return 2 * n * c * itemsize(dtype) + n * (8 + row_loss)


def inputs(dev, shape, dtype: str, seed: int) -> tuple:
    """Standard normal logits and uniform random class indices."""
    return dev.normal(shape, dtype, seed), dev.labels(shape[0], shape[1], seed + 7919)


def expression(xp, logits, labels, acc=None):
    """Softmax cross-entropy written as array expressions: the baseline and the reference.

    ``loss = mean_i(log sum_c exp(z_ic - m_i) + m_i - z_i,y_i)``,
    ``grad = (softmax(z) - onehot(y)) / N``. Runs in ``acc`` (float32 for float16 data
    unless given) and returns the gradient in the logits' dtype, or in ``acc`` when given.
    """
    work = acc_dtype(logits.dtype) if acc is None else acc
    z = logits.astype(work, copy=False)
    n = z.shape[0]
    rows = xp.arange(n)
    m = z.max(axis=1, keepdims=True)
    p = z - m
    xp.exp(p, out=p)
    s = p.sum(axis=1, keepdims=True)
    p /= s
    loss = (xp.log(s[:, 0]) + m[:, 0] - z[rows, labels]).mean()
    p[rows, labels] -= 1
    p *= 1.0 / n
    return loss, p if acc is not None else p.astype(logits.dtype, copy=False)


def reference(dev, arrays) -> tuple:
    """The expression in float64."""
    return expression(dev.xp, *arrays, acc=dev.xp.float64)


def _liger(kind: str) -> list[Variant]:
    """Liger-Kernel's Triton cross-entropy, on CUDA only and only if importable.

    Liger writes the gradient over its input, so it gets a copy of the logits.
    """
    if kind != "cuda":
        return []
    torch, why = torch_or_reason(kind)
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except Exception:
        return [Variant("liger", skip=why or "Liger-Kernel is not installed")]

    def prepare(arrays):
        x = torch.from_dlpack(arrays[0]).clone().requires_grad_(True)
        return x, torch.from_dlpack(arrays[1])

    def call(args):
        loss = liger_cross_entropy(*args)
        (grad,) = torch.autograd.grad(loss, args[0])
        return loss.detach(), grad

    return [Variant("liger", call=call, prepare=prepare)]


def variants(dev) -> list[Variant]:
    """gpukernels (allocating, ``out=``, and on CUDA without the label check), the
    NumPy/CuPy expression, PyTorch's ``F.cross_entropy`` forward + backward (eager and, on
    CUDA, compiled), and Liger-Kernel where it is installed."""
    import gpukernels as gk

    xp = dev.xp
    found = ours(xp, gk.softmax_cross_entropy)
    if dev.kind == "cuda":
        unchecked = ours(xp, gk.softmax_cross_entropy, out=False, validate=False)[0]
        found.append(Variant("gpukernels validate=False", call=unchecked.call))
    found.append(Variant(dev.library, call=lambda a: expression(xp, *a)))
    torch, _ = torch_or_reason(dev.kind)
    fn = torch.nn.functional.cross_entropy if torch else None
    jax = jax_variants(dev.kind, jax_loss)
    return found + torch_variants(dev.kind, fn) + jax + _liger(dev.kind)


def jax_loss(jnp, logits, labels):
    """The mean cross-entropy for ``jax.value_and_grad``: ``logsumexp(z) - z_y``."""
    m = jnp.max(logits, axis=1, keepdims=True)
    lse = jnp.log(jnp.sum(jnp.exp(logits - m), axis=1)) + m[:, 0]
    return jnp.mean(lse - jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0])
