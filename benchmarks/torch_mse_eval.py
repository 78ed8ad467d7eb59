"""``gpukernels.torch.mse_loss`` in an evaluation step: the loss alone, under
``torch.no_grad()``, against PyTorch's own: time and peak extra memory.

The elementwise losses' counterpart of ``torch_xent_eval``: no backward can follow, so the
fused kernel computes the loss alone (``mse(gradient=False)``: no gradient allocated or
written). ``reduction="mean"``, CPU tensors here and CUDA tensors on a GPU; the ``mse`` draws
(standard normal in float32, rounded to the dtype) as tensors, and the reference is ``mse``'s
float64 expression of the rounded values. Variants, each under ``torch.no_grad()``:

- ``gpukernels``: ``gpukernels.torch.mse_loss``;
- ``torch``: ``torch.nn.functional.mse_loss`` eager;
- ``torch.compile``: the same compiled (``dynamic=False``).

Byte model (the fewest bytes the loss needs): prediction and target read once; nothing the
size of the input written. Memory (``MEMORY``, see ``memory.py``): the peak a call needs
beyond its inputs and the loss.
"""

from __future__ import annotations

from . import common, mse, torch_xent
from .baselines import Variant, eval_variants

NAME = "torch_mse_eval"
TITLE = "gpukernels.torch.mse_loss under torch.no_grad() (the loss alone)"
BYTES = "prediction + target read once; no gradient"
MEMORY = True
# MSE's sizes, less 2^28 on a GPU (each variant's memory is measured in a process of its own)
SIZES = {
    "cpu": common.ELEMENTWISE_SIZES["cpu"],
    "cuda": {"small": [(2**20,)], "medium": [(2**24,)]},
}
DTYPES = {"cpu": ("float32",), "cuda": ("float32", "bfloat16")}
shape_of, unavailable = common.elementwise_shape, torch_xent.unavailable


def nbytes(shape, dtype: str) -> int:
    """Two reads per element."""
    return 2 * shape[0] * torch_xent.ITEMSIZE[dtype]


def inputs(dev, shape, dtype: str, seed: int) -> tuple:
    """``mse``'s prediction and target as tensors on the device, rounded to ``dtype``."""
    import torch

    arrays = mse.inputs(dev, shape, "float32", seed)
    return tuple(torch.from_dlpack(a).to(getattr(torch, dtype)) for a in arrays)


def reference(dev, tensors) -> tuple:
    """``mse``'s expression in float64 on the (rounded) tensors; no gradient."""
    pred, target = (dev.xp.from_dlpack(t.double()) for t in tensors)
    return mse.expression(dev.xp, pred, target, acc=dev.xp.float64)[0], None


def variants(dev) -> list[Variant]:
    """``gpukernels.torch.mse_loss``, ``F.mse_loss`` eager and compiled, all under
    ``torch.no_grad()``."""
    return eval_variants(dev.kind, "mse_loss")
