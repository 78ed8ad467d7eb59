r"""Softmax cross-entropy on Dask arrays chunked by rows and columns: ``gpukernels.dask``.

A row of :math:`V` logits split over column chunks :math:`s` needs from each chunk only its
stats (``gk.shard_stats``): the max :math:`m_s`, :math:`S_s = \sum_{c \in s} e^{z_c - m_s}`,
the target's logit if the target falls in the chunk and the sum of the chunk's logits. A tree
reduction over the column chunks of each row block merges them (``gk.merge_shard_stats``),

.. math::
    m = \max(m_a, m_b), \qquad S = S_a e^{m_a - m} + S_b e^{m_b - m},

so that :math:`\mathrm{lse} = m + \log S` of the whole rows reaches every chunk, which then
computes its own columns of the gradient (``gk.shard_loss_and_grad``). A task reads at most
one chunk of logits; only ``(rows, 4)`` stats move between tasks.

The loss of a row is the same on every shard and needs only the merged stats (its target
logit and sum of logits are in them): each row block's loss is counted once, by
``gk.shard_loss_and_grad`` on an empty shard of the block's rows, a task that reads no logits
and does not wait for the gradient. ``"mean"`` divides by the number of non-ignored rows of
the whole array (a Dask scalar computed once from ``target``; a mean over no row is 0 with a
zero gradient): the chunks run as ``"sum"`` with the upstream gradient
:math:`1 / \text{count}`.

Runs on any Dask scheduler; CuPy chunks stay CuPy (every step declares its ``meta``). Needs
Dask: ``pip install gpukernels[dask]``.
"""

from __future__ import annotations

import contextlib
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
from ._dispatch import accumulation_dtype, array_module
from ._softmax_cross_entropy import int64_labels

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
        split_every: fan-in of the tree reduction of the stats (Dask's default if ``None``),
            an integer >= 2.

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
    logits = _as_dask("logits", logits)
    dtype = _validate.float_array("logits", logits)
    _validate.ndim("logits", logits, 2, "an (N, V) array of logits")
    if any(math.isnan(c) for axis in logits.chunks for c in axis):
        raise ValueError("logits has unknown chunk sizes: call logits.compute_chunk_sizes()")
    n, classes = logits.shape
    _validate.some_class("logits", n, classes, "V")
    rows = logits.chunks[0]
    target = _rows(target, "target", n, rows)
    _validate.integer_labels("target", target)
    _validate.reduction(reduction)
    ignore, smoothing, factor, cap = _validate.cross_entropy_options(
        ignore_index, label_smoothing, z_loss, softcap
    )
    options = {"ignore_index": ignore, "label_smoothing": smoothing, "softcap": cap}
    acc = accumulation_dtype(dtype)
    _validate.cap_in_range("softcap", options["softcap"] or 0.0, acc)
    split_every = _validate.fan_in("split_every", split_every)
    if split_every is not None:  # more than every chunk at once merges them all the same
        split_every = min(split_every, max(2, *map(len, logits.chunks)))
    merged = _merged_stats(logits, target, options, split_every)
    count = (target != ignore).sum()
    divisor = da.maximum(count, 1).astype(acc)  # a mean over no row is 0, its gradient 0
    per_chunk = dict(options, reduction="none" if reduction == "none" else "sum")
    per_chunk.update(num_classes=classes, z_loss=factor)
    scale = _scale(grad_output, reduction, n, rows, divisor)
    grad = _gradient(logits, target, merged, scale, per_chunk)
    loss = _row_block_losses(target, merged, dtype, per_chunk, logits._meta)
    if reduction != "none":
        loss = loss.sum(dtype=acc, split_every=split_every)
    if reduction == "mean":
        loss = loss / divisor
    return loss, grad


def _merged_stats(logits, target, options: dict, split_every):
    """The ``(N, 4)`` stats of the whole rows: each chunk's, merged along the row blocks by
    a tree reduction, chunked like the rows."""
    rows, columns = logits.chunks
    acc, meta = accumulation_dtype(logits.dtype), logits._meta
    stats = da.map_blocks(
        _block_stats,
        logits,
        target[:, None],
        starts=_chunk_starts(columns),
        **options,
        chunks=(rows, (1,) * len(columns), (STATS,)),
        new_axis=2,
        dtype=acc,
        meta=meta_from_array(meta, 3, dtype=acc),
        token="gk-shard-stats",
    )
    return da.reduction(
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


def _gradient(logits, target, merged, scale, options: dict):
    """Each chunk's columns of the gradient, from its row block's merged stats."""
    rows, columns = logits.chunks
    args = [logits, "ij", target, "i", merged, "ik", _starts(columns), "j", _starts(rows), "i"]
    if isinstance(scale, da.Array):
        args += [scale, "i" if scale.ndim else ""]
    else:
        args += [scale, None]
    return da.blockwise(
        _block_gradient,
        "ij",
        *args,
        **options,
        concatenate=True,
        align_arrays=False,  # aligned already; the starts hold one number a chunk
        dtype=logits.dtype,
        meta=logits._meta,
        token="gk-shard-grad",
    )


def _row_block_losses(target, merged, dtype, options: dict, meta):
    """Each row block's loss (``(n,)`` per block for ``"none"``, else one number): the loss
    of an empty shard of the block's rows, which needs the merged stats and no logits."""
    acc = accumulation_dtype(dtype)
    rows = target.chunks[0]
    reduced = options["reduction"] != "none"
    return da.blockwise(
        _block_loss,
        "i",
        target,
        "i",
        merged,
        "ik",
        _starts(rows),
        "i",
        logits_dtype=dtype,
        **options,
        concatenate=True,
        align_arrays=False,  # aligned already; the row starts hold one number a block
        adjust_chunks={"i": (1,) * len(rows)} if reduced else None,
        dtype=acc,
        meta=meta_from_array(meta, 1, dtype=acc),
        token="gk-shard-loss",
    )


def _chunk_starts(chunks: tuple[int, ...]) -> tuple[int, ...]:
    """The first index of each chunk along an axis chunked as ``chunks``."""
    return tuple(int(s) for s in np.cumsum((0,) + chunks[:-1]))


def _starts(chunks: tuple[int, ...]):
    """:func:`_chunk_starts` as a dask array of one number a chunk, for ``blockwise``."""
    return da.from_array(np.asarray(_chunk_starts(chunks)), 1)


def _as_dask(name: str, x, or_number: bool = False):
    """``x`` as a dask array: itself, or a NumPy or CUDA array as one chunk (anything else, a
    list say, is a ``TypeError``, as everywhere in the library; its message names a real
    number too where ``or_number`` says the argument may be one)."""
    if isinstance(x, da.Array):
        return x
    if not (isinstance(x, np.ndarray) or hasattr(x, "__cuda_array_interface__")):
        number = "a real number, " if or_number else ""
        raise TypeError(
            f"{name} must be {number}a dask array, or a NumPy or CUDA array taken as one "
            f"chunk; got {type(x).__name__}"
        )
    _validate.array_library(name, x)  # a NumPy subclass is refused as elsewhere
    return da.asarray(x)


def _rows(x, name: str, n: int, rows: tuple[int, ...]):
    """``x`` as an ``(N,)`` dask array chunked like the logits' rows."""
    x = _as_dask(name, x)
    _validate.same_shape(name, x, "the rows of logits", (n,))
    return x.rechunk((rows,))


def _scale(grad_output, reduction: str, n: int, rows, divisor):
    """The upstream gradient each chunk gets: ``grad_output`` (over the global count of
    non-ignored rows for ``"mean"``), as a number or a dask array (0-d, or rows for
    ``"none"``)."""
    if _validate.is_number(grad_output):  # one past float64's range is a ValueError here
        grad_output = _validate.real_number("grad_output", grad_output)
    elif grad_output is not None:
        grad_output = _as_dask("grad_output", grad_output, or_number=True)
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


def _block_gradient(z, target, stats, start, first_row, scale, **options):
    labels = _like(target, z)
    with _rows_numbered_from(first_row, labels, options):
        _, grad = shard_loss_and_grad(
            z,
            labels,
            stats,
            class_start=int(start[0]),
            grad_output=_like(scale, z),
            **options,
        )
    return grad


def _block_loss(target, stats, first_row, *, logits_dtype, **options):
    empty = np.empty_like(stats, shape=(stats.shape[0], 0), dtype=logits_dtype)
    labels = _like(target, stats)
    with _rows_numbered_from(first_row, labels, options):
        loss, _ = shard_loss_and_grad(empty, labels, stats, class_start=0, **options)
    return loss if options["reduction"] == "none" else loss.reshape(1)


@contextlib.contextmanager
def _rows_numbered_from(first_row, labels, options: dict):
    """A row block's task, whose ``shard_loss_and_grad`` numbers a bad class index's row
    within the block: on its ``ValueError`` the labels are checked again with the rows
    numbered from the block's first row (``first_row[0]``), which raises the error numbered
    in the whole array. Only a failing task checks twice."""
    try:
        yield
    except ValueError as error:
        xp = array_module(_validate.array_library("target", labels))
        try:
            _validate.class_indices(
                xp,
                int64_labels(xp, labels, options["ignore_index"]),
                options["num_classes"],
                options["ignore_index"],
                labels,
                int(first_row[0]),
            )
        except ValueError as renumbered:
            raise renumbered from error
        raise
