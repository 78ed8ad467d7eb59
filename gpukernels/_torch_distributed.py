r"""Vocabulary-parallel softmax cross-entropy for ``torch.distributed``.

Rank :math:`r` of a process group of :math:`W` ranks holds the columns
:math:`[r C_s, (r + 1) C_s)` of every row of logits (a vocabulary-parallel output layer, as in
Megatron-LM); every rank holds the same rows and the same global class indices. Per row each
rank computes its shard's stats (``gk.shard_stats``): the max :math:`m_r`,
:math:`S_r = \sum_{c \in r} e^{z_c - m_r}`, the target's logit if the target falls in the
shard (else 0) and the sum of the shard's logits. One ``all_gather`` of these ``(N, 4)``
stats lets every rank merge them in rank order (``gk.merge_shard_stats``):

.. math::
    m = \max(m_a, m_b), \qquad S = S_a e^{m_a - m} + S_b e^{m_b - m},

the other two columns summed. From :math:`\mathrm{lse} = m + \log S` of the whole rows each
rank computes the loss (the same on every rank) and its own columns of the gradient
(``gk.shard_loss_and_grad``). Logits are never gathered.

Before that exchange, an ``all_gather`` of ten integers checks that no rank refused its
arguments and that the ranks agree on the rows, the shard width, the dtype, the options and
(by a digest) the target (a mismatch would abort gloo's exchange, place the shards' classes
wrongly or give each rank its own loss): a second latency, on a few bytes.

Why one all-gather of the stats rather than an all-reduce MAX followed by an all-reduce SUM
(Megatron's way): one collective instead of two, and the merge is then the library's own,
in the same order on every rank, so every rank gets the same bits and the result does not
depend on the collective's summation order (which NCCL chooses by topology). It moves
:math:`4 W N` numbers to every rank instead of :math:`2 \cdot 4 N`: small beside the
:math:`N C_s` logits of a shard for any practical :math:`W`.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from . import _validate, merge_shard_stats, shard_loss_and_grad, shard_stats
from ._torch_ops import (
    as_grad_output,
    fit_to_float16,
    float16_headroom,
    no_gradient_for,
    overridable,
    scaled_by_kept,
    tensors,
)

__all__ = ["vocab_parallel_cross_entropy"]

Tensor = torch.Tensor


def _merged_stats(stats: Tensor, group) -> Tensor:
    """Every rank's ``(N, 4)`` stats, gathered and merged in rank order."""
    world = dist.get_world_size(group)
    stats = stats.contiguous()
    gathered = [torch.empty_like(stats) for _ in range(world)]
    dist.all_gather(gathered, stats, group=group)
    return functools.reduce(merge_shard_stats, gathered)


_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_REDUCTIONS = ("mean", "sum", "none")
_AGREED = ("rows", "shard width", "dtype", "reduction", "ignore_index", "label_smoothing")
_AGREED += ("z_loss", "softcap", "target")


def _checked(options: dict) -> dict:
    """The options, checked with the library's messages."""
    _validate.reduction(options["reduction"])
    ignore, smoothing, factor, cap = _validate.cross_entropy_options(
        options["ignore_index"], options["label_smoothing"], options["z_loss"], options["softcap"]
    )
    return {
        "reduction": options["reduction"],
        "ignore_index": ignore,
        "label_smoothing": smoothing,
        "z_loss": factor,
        "softcap": cap,
    }


def _exchange_device(group) -> torch.device:
    """Where ``group``'s collectives take tensors: this process's current GPU for NCCL, else
    the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# SplitMix64's finaliser (Steele, Lea and Flood 2014): its multipliers as int64 (wrapping)
_MIX_A, _MIX_B = -4658895280553007687, -7723592293110705685
_GOLDEN = -7046029254386353131  # 2^64 / phi, odd: spreads the rows' positions


def _xor_shifted(x: Tensor, shift: int) -> Tensor:
    """``x ^ (x >>> shift)`` of int64 ``x``: a logical shift (the sign bit not copied)."""
    return x ^ ((x >> shift) & ((1 << (64 - shift)) - 1))


def _mixed(x: Tensor) -> Tensor:
    """SplitMix64's finaliser of int64 ``x``, elementwise: every input bit moves every output
    bit (products wrapping)."""
    return _xor_shifted(_xor_shifted(_xor_shifted(x, 30) * _MIX_A, 27) * _MIX_B, 31)


def _target_digest(target: Tensor) -> Tensor:
    """An int64 digest of the class indices, on their device (no read): the wrapping sum
    over rows of a 64-bit hash of (row, class index). Ranks with other targets would each
    compute their own loss and gradient silently; a digest that differs tells them apart.
    (A position-weighted sum, the digest before, let ``[4, 0]`` and ``[0, 2]`` agree.) Two
    different targets agree with a chance of about 2^-64."""
    labels = target.to(torch.int64).reshape(-1)
    rows = torch.arange(1, labels.numel() + 1, device=labels.device, dtype=torch.int64)
    return _mixed(_mixed(rows * _GOLDEN) ^ labels).sum()


def _check_agreement(z: Tensor | None, target: Tensor | None, options: dict | None, group) -> None:
    """One ``all_gather`` of ten integers, before the stats': whether this rank refused its
    arguments (``options`` None), else its rows, shard width, dtype, options (the floats'
    bits) and a digest of ``target``. Where another rank refused its arguments, or the ranks
    disagree, every rank but a refusing one raises ``ValueError`` here (a refusing one
    raises its own error after), so none is left waiting in the next exchange: gloo aborts
    the process where the stats' sizes differ, and unequal widths would place the shards'
    classes wrongly."""
    device = _exchange_device(group)  # not z's: a refused z may be on any device
    if options is None:
        local = torch.tensor([1] + [-1] * len(_AGREED), dtype=torch.int64, device=device)
    else:
        floats = (options["label_smoothing"], options["z_loss"], options["softcap"] or 0.0)
        mine = [
            0,
            *z.shape,
            _DTYPES.index(z.dtype) if z.dtype in _DTYPES else -1,  # else refused already
            _REDUCTIONS.index(options["reduction"]),
            options["ignore_index"],
            # + 0.0: -0.0 and 0.0 are the same option
            *torch.tensor(floats, dtype=torch.float64).add(0.0).view(torch.int64).tolist(),
        ]
        digest = _target_digest(target).to(device).reshape(1)
        local = torch.cat([torch.tensor(mine, dtype=torch.int64, device=device), digest])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    ranks = torch.stack(gathered).tolist()  # one read from the device
    refused = [rank for rank, row in enumerate(ranks) if row[0]]
    if refused:
        if options is None:
            return
        raise ValueError(
            f"vocab_parallel_cross_entropy: rank {refused[0]} of the group refused its "
            "arguments (its own error says why), so every rank stops here"
        )
    for rank, row in enumerate(ranks):
        differ = [
            _AGREED[k] for k, (a, b) in enumerate(zip(ranks[0][1:], row[1:], strict=True)) if a != b
        ]
        if differ:
            raise ValueError(
                f"vocab_parallel_cross_entropy: rank {rank} of the group disagrees with rank 0 "
                f"on {', '.join(differ)}: every rank must pass logits of the same rows, shard "
                "width and dtype, the same target and the same options"
            )


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and this shard's gradient; backward scales the gradient."""

    @staticmethod
    def forward(ctx, logits_shard, target, group, options):
        rank = dist.get_rank(group)
        if rank < 0:
            raise ValueError(
                "vocab_parallel_cross_entropy: this process is not a member of group (call it "
                "on the group's ranks only)"
            )
        z = logits_shard.detach()
        try:  # whatever this rank refuses, the others learn of in the agreement check
            no_gradient_for("target", target)
            options = _checked(options)
            _validate.ndim("logits_shard", z, 2, "an (N, C_s) block of logit columns")
            _validate.some_class("logits_shard", *z.shape, "C_s")
            start = rank * z.shape[1]
            stats = shard_stats(
                z,
                target,
                class_start=start,
                ignore_index=options["ignore_index"],
                label_smoothing=options["label_smoothing"],
                softcap=options["softcap"],
            )
        except (TypeError, ValueError, RuntimeError) as error:
            _check_agreement(z, target, None, group)
            raise error
        _check_agreement(z, target, options, group)
        merged = _merged_stats(stats, group)
        headroom = float16_headroom(z, options["reduction"], z.shape[0])
        loss, grad = shard_loss_and_grad(
            z if headroom == 1.0 else z.float(),  # a float16 mean: fitted below
            target,
            merged,
            class_start=start,
            num_classes=dist.get_world_size(group) * z.shape[1],
            grad_output=as_grad_output(headroom),
            **options,
        )
        kept = None
        if headroom != 1.0:
            grad, kept = fit_to_float16(grad, headroom)
        ctx.save_for_backward(grad, kept)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return scaled_by_kept(*ctx.saved_tensors, grad_loss), None, None, None


@torch.compiler.disable  # collectives and the array-level kernels: run eagerly (a graph break)
@overridable
def vocab_parallel_cross_entropy(
    logits_shard: Tensor,
    target: Tensor,
    *,
    group=None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    r"""Softmax cross-entropy of rows whose classes are split over the ranks of ``group``.

    With :math:`\mathrm{lse}` the log-sum-exp of a whole row, :math:`\varepsilon` the
    smoothing, :math:`\zeta` the z-loss and :math:`V = W C_s` the number of classes, a
    non-ignored row's loss is

    .. math::
        (1 - \varepsilon)(\mathrm{lse} - z_y) + \varepsilon\,\mathrm{lse}
        - \tfrac{\varepsilon}{V} \textstyle\sum_c z_c + \zeta\,\mathrm{lse}^2,

    reduced like ``torch.nn.functional.cross_entropy`` (a mean over no row is 0 with a zero
    gradient); the gradient of this rank's columns is
    :math:`(1 + 2\zeta\,\mathrm{lse})\,p_c - (1 - \varepsilon)[c = y] - \varepsilon / V`
    (through the softcap :math:`\kappa \tanh(z / \kappa)` when given), computed in the
    forward pass and scaled by the upstream gradient in backward. A collective: every rank of
    ``group`` must call it with the same ``target``, options, rows, shard width and dtype;
    a first ``all_gather`` of ten integers checks them (``target`` by a digest: a
    ``ValueError`` on every rank where they differ, or where one rank refuses its
    arguments: that one raises its own error), and a process outside ``group`` is refused.
    ``torch.compile`` does not trace it: it runs eagerly, a graph break.

    Args:
        logits_shard: ``(N, C_s)`` columns ``[r C_s, (r + 1) C_s)`` of the logits on rank
            ``r`` of ``group`` (CPU tensors with gloo, CUDA tensors with NCCL).
        target: ``(N,)`` global class indices, the same on every rank.
        group: the process group (the default group if ``None``).
        reduction, ignore_index, label_smoothing, z_loss, softcap: as for
            ``torch.nn.functional.cross_entropy`` and ``gk.shard_loss_and_grad``.

    Returns:
        The loss of the whole rows: 0-d, or ``(N,)`` with ``"none"`` (float32 for 16-bit
        logits), the same on every rank; differentiable once with respect to
        ``logits_shard``.

    Example (two processes, each running)::

        dist.init_process_group("gloo")
        z = torch.randn(8, 2 * 50, generator=torch.Generator().manual_seed(0))
        y = torch.randint(0, 100, (8,), generator=torch.Generator().manual_seed(1))
        r = dist.get_rank()
        shard = z[:, 50 * r : 50 * (r + 1)].requires_grad_()
        loss = vocab_parallel_cross_entropy(shard, y)
        loss.backward()  # shard.grad: this rank's columns of the whole rows' gradient
    """
    if not (isinstance(logits_shard, Tensor) and isinstance(target, Tensor)):
        if dist.is_initialized() and dist.get_rank(group) >= 0:  # the others learn of it
            _check_agreement(None, None, None, group)
        tensors(logits_shard=logits_shard, target=target)
    if not dist.is_initialized():
        raise ValueError(
            "vocab_parallel_cross_entropy is a collective of group, and torch.distributed has "
            "no process group: call torch.distributed.init_process_group first"
        )
    options = {
        "reduction": reduction,
        "ignore_index": ignore_index,
        "label_smoothing": label_smoothing,
        "z_loss": z_loss,
        "softcap": softcap,
    }
    return _VocabParallelCrossEntropy.apply(logits_shard, target, group, options)
