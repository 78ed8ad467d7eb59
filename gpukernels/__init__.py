"""gpukernels: fused loss-and-gradient kernels in Numba.

CuPy arrays in run the CUDA kernels and give CuPy arrays out; NumPy arrays run the
multi-threaded ``cpu_fallback`` kernels and give NumPy arrays out. Every loss returns
``(loss, grad)`` from one pass over its input. README.md shows how to use it; docs/API.md is
the contract (every function, argument, dtype and error).

>>> import numpy as np, gpukernels as gk
>>> logits = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
>>> loss, grad = gk.softmax_cross_entropy(logits, np.array([1, 0, 3, 9]))
>>> grad.shape, loss.shape
((4, 10), ())
"""

from ._batch_sum import batch_sum
from ._composite_loss import LossTerm, composite_loss
from ._dispatch import backend, cuda_available
from ._elementwise import sigmoid, sigmoid_backward, sigmoid_derivative
from ._elementwise_losses import bce_with_logits, huber_loss, mse
from ._linear_cross_entropy import linear_cross_entropy
from ._shard import merge_shard_stats, shard_loss_and_grad, shard_stats
from ._softmax_cross_entropy import softmax_cross_entropy

__version__ = "0.1.0"

__all__ = [
    "LossTerm",
    "backend",
    "batch_sum",
    "bce_with_logits",
    "composite_loss",
    "cuda_available",
    "huber_loss",
    "linear_cross_entropy",
    "merge_shard_stats",
    "mse",
    "sigmoid",
    "sigmoid_backward",
    "shard_loss_and_grad",
    "shard_stats",
    "sigmoid_derivative",
    "softmax_cross_entropy",
]
