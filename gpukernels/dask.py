r"""Softmax cross-entropy on Dask arrays chunked by rows and columns: ``gpukernels.dask``.

A row of :math:`V` logits split over column chunks :math:`s` needs from each chunk only its
stats (``gk.shard_stats``): the max :math:`m_s`, :math:`S_s = \sum_{c \in s} e^{z_c - m_s}`,
the target's logit if the target falls in the chunk and the sum of the chunk's logits. A tree
reduction over the column chunks of each row block merges them (``gk.merge_shard_stats``),

.. math::
    m = \max(m_a, m_b), \qquad S = S_a e^{m_a - m} + S_b e^{m_b - m},

so that :math:`\mathrm{lse} = m + \log S` of the whole rows reaches every chunk, which then
computes the loss and its own columns of the gradient (``gk.shard_loss_and_grad``). A task
reads one chunk of logits; only ``(rows, 4)`` stats move between tasks.

``"mean"`` divides by the number of non-ignored rows of the whole array (a Dask scalar
computed once from ``target``; a mean over no row is 0 with a zero gradient): the chunks run
as ``"sum"`` with the upstream gradient :math:`1 / \text{count}`, and each row block's loss is
taken from its first column chunk (every column chunk returns the same loss).

Runs on any Dask scheduler; CuPy chunks stay CuPy (every step declares its ``meta``). Needs
Dask: ``pip install gpukernels[dask]``.
"""

from __future__ import annotations

import math

import numpy as np

try:
    import dask.array as da
    from dask.array.utils import meta_from_array
except ImportError as error:
    raise ImportError(
        f"gpukernels.dask needs Dask arrays, which cannot be imported ({error}); "
        "install them with: pip install gpukernels[dask]"
    ) from error

from . import _validate, merge_shard_stats, shard_loss_and_grad, shard_stats
from ._dispatch import accumulation_dtype

__all__ = ["softmax_cross_entropy"]

STATS = 4  # per row: max, sum of exp(z - max), target logit, sum of logits


def softmax_cross_entropy(
    logits,
    target,
    *,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output=None,
    split_every: int | None = None,
):
    r"""The loss and gradient of softmax cross-entropy of a Dask array of logits.

    With :math:`\mathrm{lse}` the log-sum-exp of a whole row (merged from its column
    chunks), :math:`\varepsilon` the smoothing, :math:`\zeta` the z-loss and :math:`V` the
    number of classes, a non-ignored row's loss is

    .. math::
        \ell = (1 - \varepsilon)(\mathrm{lse} - z_y) + \varepsilon\,\mathrm{lse}
        - \tfrac{\varepsilon}{V} \textstyle\sum_c z_c + \zeta\,\mathrm{lse}^2

    and its gradient :math:`(1 + 2\zeta\,\mathrm{lse})\,p_c - (1 - \varepsilon)[c = y] -
    \varepsilon / V` (through the softcap :math:`\kappa \tanh(z / \kappa)` when given), times
    the reduction's scale and ``grad_output``: ``gk.softmax_cross_entropy`` of the whole rows,
    up to float rounding (the merge rescales sums).

    Args:
        logits: ``(N, V)`` dask array (a NumPy or CuPy array is taken as one chunk), chunked
            along rows and/or columns; chunk sizes must be known.
        target: ``(N,)`` integer class indices (dask or NumPy); rechunked like the rows.
        reduction, ignore_index, label_smoothing, z_loss, softcap, grad_output: as for
            ``gk.shard_loss_and_grad``; ``grad_output`` (a number, a 0-d array, or ``(N,)``
            for ``"none"``) may be a dask array.
        split_every: fan-in of the tree reduction of the stats (Dask's default if ``None``).

    Returns:
        ``(loss, grad)``, lazy: the loss 0-d (``(N,)`` with ``"none"``), float32 for 16-bit
        logits; ``grad`` like ``logits``, chunked like it. A class index outside ``[0, V)``
        that is not ``ignore_index`` raises ``ValueError`` when computed.

    >>> import dask.array as da, numpy as np
    >>> import gpukernels.dask as gkd
    >>> logits = da.from_array(np.random.default_rng(0).standard_normal((6, 23)), (3, 10))
    >>> loss, grad = gkd.softmax_cross_entropy(logits, np.array([0, 4, 22, 9, 10, -100]))
    >>> grad.chunks
    ((3, 3), (10, 10, 3))
    >>> float(loss.compute()) > 0
    True
    """
    logits = da.asarray(logits)
    dtype = _validate.float_array("logits", logits)
    _validate.ndim("logits", logits, 2, "an (N, V) array of logits")
    if any(math.isnan(c) for axis in logits.chunks for c in axis):
        raise ValueError("logits has unknown chunk sizes: call logits.compute_chunk_sizes()")
    n, classes = logits.shape
    rows, columns = logits.chunks
    target = _rows(target, "target", n, rows)
    if np.dtype(target.dtype).kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    _validate.reduction(reduction)
    ignore = _validate.ignore_index(ignore_index)
    options = {
        "ignore_index": ignore,
        "label_smoothing": _validate.label_smoothing(label_smoothing),
        "softcap": None if softcap is None else _validate.softcap(softcap),
    }
    acc = accumulation_dtype(dtype)
    meta = logits._meta
    starts = tuple(int(s) for s in np.cumsum((0,) + columns[:-1]))

    stats = da.map_blocks(
        _block_stats,
        logits,
        target[:, None],
        starts=starts,
        **options,
        chunks=(rows, (1,) * len(columns), (STATS,)),
        new_axis=2,
        dtype=acc,
        meta=meta_from_array(meta, 3, dtype=acc),
        token="gk-shard-stats",
    )
    merged = da.reduction(
        stats,
        chunk=_keep,
        combine=_merge_along,
        aggregate=_merge_along,
        axis=1,
        keepdims=False,
        dtype=acc,
        split_every=split_every,
        concatenate=True,
        meta=meta_from_array(meta, 2, dtype=acc),
        name="gk-merge-shard-stats",
    )

    count = (target != ignore).sum()
    divisor = da.maximum(count, 1).astype(acc)  # a mean over no row is 0, its gradient 0
    scale = _scale(grad_output, reduction, n, rows, divisor)
    args = [logits, "ij", target, "i", merged, "ik", da.from_array(np.asarray(starts), 1), "j"]
    if isinstance(scale, da.Array):
        args += [scale, "i" if scale.ndim else ""]
    else:
        args += [scale, None]
    pairs = da.blockwise(
        _block_loss_and_grad,
        "ij",
        *args,
        num_classes=classes,
        reduction="none" if reduction == "none" else "sum",
        z_loss=_validate.z_loss(z_loss),
        **options,
        concatenate=True,
        align_arrays=False,  # aligned already; the class starts hold one number a chunk
        dtype=dtype,
        meta=meta,
        token="gk-shard-loss-and-grad",
    )
    grad = pairs.map_blocks(_second, dtype=dtype, meta=meta, token="gk-shard-grad")
    first = pairs.blocks[:, 0]  # one column chunk's loss per row block: all are equal
    if reduction == "none":
        loss = first.map_blocks(
            _loss_column, chunks=(rows, (1,)), dtype=acc, meta=meta_from_array(meta, 2, acc)
        )
        return loss[:, 0], grad
    parts = first.map_blocks(
        _loss_column,
        chunks=((1,) * len(rows), (1,)),
        dtype=acc,
        meta=meta_from_array(meta, 2, acc),
    )
    loss = parts.sum(dtype=acc, split_every=split_every)
    if reduction == "mean":
        loss = loss / divisor
    return loss, grad


def _rows(x, name: str, n: int, rows: tuple[int, ...]):
    """``x`` as an ``(N,)`` dask array chunked like the logits' rows."""
    x = da.asarray(x)
    _validate.same_shape(name, x, "the rows of logits", (n,))
    return x.rechunk((rows,))


def _scale(grad_output, reduction: str, n: int, rows, divisor):
    """The upstream gradient each chunk gets: ``grad_output`` (over the global count of
    non-ignored rows for ``"mean"``), as a number or a dask array (0-d, or rows for
    ``"none"``)."""
    if grad_output is not None and not _validate.is_number(grad_output):
        grad_output = da.asarray(grad_output)
        _validate.float_array("grad_output", grad_output)
        if reduction == "none" and grad_output.ndim:
            return _rows(grad_output, "grad_output", n, rows)
        if grad_output.size != 1:
            raise ValueError(
                f"grad_output must be a scalar for reduction={reduction!r}, got shape "
                f"{tuple(grad_output.shape)}"
            )
        grad_output = grad_output.reshape(())
    if reduction != "mean":
        return grad_output
    return (1.0 if grad_output is None else grad_output) / divisor


# ---------------------------------------------------------------------- tasks (one chunk each)


def _like(x, z):
    """``x`` (labels, a scale) in the array library of the chunk ``z``: a NumPy target may
    sit beside CuPy logits."""
    if x is None or _validate.is_number(x) or type(x) is type(z):
        return x
    if isinstance(z, np.ndarray):
        return x.get() if hasattr(x, "get") else np.asarray(x)
    return np.asarray(x, like=z)  # NEP 35: CuPy's asarray


def _block_stats(z, target, *, starts, block_id, **options):
    labels = _like(target[:, 0], z)
    stats = shard_stats(z, labels, class_start=starts[block_id[1]], **options)
    return stats[:, None, :]


def _keep(stats, axis=None, keepdims=True, **_):
    return stats


def _merge_along(stats, axis=None, keepdims=True, **_):
    """The ``(n, k, 4)`` stats of ``k`` neighbouring column chunks, merged left to right."""
    merged = stats[:, 0]
    for k in range(1, stats.shape[1]):
        merged = merge_shard_stats(merged, stats[:, k])
    return merged[:, None] if keepdims else merged


def _block_loss_and_grad(z, target, stats, start, scale, **options):
    return shard_loss_and_grad(
        z,
        _like(target, z),
        stats,
        class_start=int(start[0]),
        grad_output=_like(scale, z),
        **options,
    )


def _second(pair):
    return pair[1]


def _loss_column(pair):
    """A row block's loss as a column: ``(n, 1)``, or ``(1, 1)`` for a reduced loss."""
    return pair[0].reshape(-1, 1)
