"""The Python cost of one small call: softmax cross-entropy on 1000 rows of 10 classes.

At this size the work is a few microseconds; what a caller waits is argument checking,
allocation, dispatch and the launch. Timed on the host clock over batches of calls
(synchronised once per batch), as the median per call; no GB/s.
"""

from __future__ import annotations

from . import softmax_xent
from .baselines import Variant

NAME = "overhead"
TITLE = "overhead per call (CE 1000x10)"
BYTES = "as softmax_xent"
HOST_CLOCK = True
SIZES = {
    kind: {tier: [(1000, 10)] for tier in ("small", "medium", "large")} for kind in ("cpu", "cuda")
}
DTYPES = {"cpu": ("float32",), "cuda": ("float32",)}
inputs = softmax_xent.inputs
nbytes = softmax_xent.nbytes
reference = softmax_xent.reference
shape_of = softmax_xent.shape_of


def variants(dev) -> list[Variant]:
    """gpukernels as a user calls it, the NumPy/CuPy expression and eager PyTorch."""
    keep = {"gpukernels", "gpukernels validate=False", dev.library, "torch"}
    return [v for v in softmax_xent.variants(dev) if v.name in keep]
