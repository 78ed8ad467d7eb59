"""``gpukernels.torch.cross_entropy`` on tensors, forward + backward, against PyTorch's own.

What a PyTorch user calls: a loss with autograd on CPU tensors (CUDA tensors on the GPU),
class-index targets, ``reduction="mean"``. Each variant computes the loss and
``torch.autograd.grad`` of it with respect to the logits:

- ``gpukernels``: ``gpukernels.torch.cross_entropy`` (the fused kernel computes the gradient
  in the forward pass and saves it; backward scales it by the upstream gradient);
- ``torch``: ``torch.nn.functional.cross_entropy`` eager;
- ``torch.compile``: the same compiled (``dynamic=False``, one graph per shape and dtype),
  forward and backward compiled by the check call, before any timing.

In float32 and bfloat16 (the tensors' own dtype; gpukernels returns a float32 loss from
bfloat16 logits, PyTorch a bfloat16 one). The logits are the ``softmax_xent`` draws (standard
normal in float32, rounded to the dtype), and the reference is ``softmax_xent``'s float64
expression of those rounded values.

Byte model as ``softmax_xent``: the logits read once and the gradient written once (2 bytes
an element in bfloat16), the int64 labels read and the float32 per-row losses written.
"""

from __future__ import annotations

from . import softmax_xent
from .baselines import OURS, Variant, torch_or_reason, torch_variants

NAME = "torch_xent"
TITLE = "gpukernels.torch.cross_entropy (tensors, autograd)"
BYTES = "as softmax_xent: logits read once + gradient written once + int64 labels + row losses"
SHAPES = {
    "small": [(64, 10), (1000, 10), (8192, 256)],
    "medium": [(4096, 4096)],
    "large": [(4096, 32768)],
}
SIZES = {"cpu": SHAPES, "cuda": SHAPES}
DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("float32", "bfloat16")}
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
shape_of = softmax_xent.shape_of


def unavailable(dev) -> str:
    """Why this case cannot run here ("" when it can): it needs PyTorch on the backend."""
    torch, why = torch_or_reason(dev.kind)
    if torch is None:
        return why
    try:
        import gpukernels.torch  # noqa: F401
    except ImportError as exc:
        return f"gpukernels.torch cannot be imported ({exc})"
    return ""


def nbytes(shape, dtype: str) -> int:
    """Logits in, gradient out, labels in, per-row losses out."""
    n, c = shape
    row_loss = 8 if dtype == "float64" else 4
    return 2 * n * c * ITEMSIZE[dtype] + n * (8 + row_loss)


def inputs(dev, shape, dtype: str, seed: int) -> tuple:
    """``softmax_xent``'s logits and labels as tensors on the device (the same memory for
    float32; rounded to a fresh tensor for the other dtypes)."""
    import torch

    logits = torch.from_dlpack(dev.normal(shape, "float32", seed))
    labels = torch.from_dlpack(dev.labels(shape[0], shape[1], seed + 7919))
    return logits.to(getattr(torch, dtype)), labels


def reference(dev, tensors) -> tuple:
    """``softmax_xent``'s expression in float64 on the (rounded) logits."""
    logits, labels = tensors
    xp = dev.xp
    return softmax_xent.reference(dev, (xp.from_dlpack(logits.double()), xp.from_dlpack(labels)))


def variants(dev) -> list[Variant]:
    """``gpukernels.torch.cross_entropy``, ``F.cross_entropy`` eager and compiled."""
    torch, why = torch_or_reason(dev.kind)
    if torch is None:
        return [Variant(n, skip=why) for n in (OURS, "torch", "torch.compile")]
    import gpukernels.torch as gkt

    ours = torch_variants(dev.kind, gkt.cross_entropy, compiled=False, name=OURS)
    return ours + torch_variants(dev.kind, torch.nn.functional.cross_entropy, compiled=True)
