"""``gpukernels.torch.cross_entropy`` in an evaluation step: the loss alone, under
``torch.no_grad()``, against PyTorch's own: time and peak extra memory.

What a validation loop calls: no backward can follow, so the fused kernel computes the loss
alone (``softmax_cross_entropy(gradient=False)``: no ``(N, C)`` gradient allocated or
written). Class-index targets, ``reduction="mean"``, CPU tensors here and CUDA tensors on a
GPU, float32 and bfloat16; inputs and the reference as ``torch_xent`` (the loss of its
float64 expression). Variants, each under ``torch.no_grad()``:

- ``gpukernels``: ``gpukernels.torch.cross_entropy``;
- ``torch``: ``torch.nn.functional.cross_entropy`` eager (its ``log_softmax`` makes an
  ``(N, C)`` temporary);
- ``torch.compile``: the same compiled (``dynamic=False``).

Byte model (the fewest bytes the loss needs): the logits read once, the int64 labels read
and the float32 per-row losses written; nothing the size of the logits written. Memory
(``MEMORY``, see ``memory.py``): the peak a call needs beyond its inputs and the loss.
"""

from __future__ import annotations

from . import torch_xent
from .baselines import Variant, eval_variants

NAME = "torch_xent_eval"
TITLE = "gpukernels.torch.cross_entropy under torch.no_grad() (the loss alone)"
BYTES = "logits read once + int64 labels + row losses; no gradient"
MEMORY = True
SIZES = torch_xent.SIZES
DTYPES = torch_xent.DTYPES
shape_of, unavailable, inputs = torch_xent.shape_of, torch_xent.unavailable, torch_xent.inputs


def nbytes(shape, dtype: str) -> int:
    """Logits in, labels in, per-row losses out."""
    n, c = shape
    row_loss = 8 if dtype == "float64" else 4
    return n * c * torch_xent.ITEMSIZE[dtype] + n * (8 + row_loss)


def reference(dev, tensors) -> tuple:
    """``torch_xent``'s float64 loss; no gradient."""
    return torch_xent.reference(dev, tensors)[0], None


def variants(dev) -> list[Variant]:
    """``gpukernels.torch.cross_entropy``, ``F.cross_entropy`` eager and compiled, all under
    ``torch.no_grad()``."""
    return eval_variants(dev.kind, "cross_entropy")
