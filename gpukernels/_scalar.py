"""Scalar maths written once and compiled by both backends.

``cpu_fallback`` wraps these with ``numba.njit`` and ``gpukernels.cuda`` with
``numba.cuda.jit(device=True)``. Each is a leaf (it calls only ``math``), since a jitted
function cannot call a plain Python one. Constants are float32 scalars so that float32
arguments stay float32 and float64 arguments promote them to float64. ``exp`` and ``log1p``
are module globals so that a backend can compile the same source with its own (the CPU
binds its vectorisable ``fast_exp``).

The elementwise losses share one signature, ``(prediction, target, param) -> (loss, slope)``
with ``slope = d loss / d prediction``: the backends' elementwise-loss kernel factories take
any of them. ``param`` is the loss's one per-element parameter (BCE's positive weight,
Huber's delta; unused by the squared error).
"""

from math import exp, log1p

import numpy as np

ZERO = np.float32(0.0)
ONE = np.float32(1.0)
HALF = np.float32(0.5)
TWO = np.float32(2.0)


def sigmoid(x):
    """sigma(x) = 1 / (1 + exp(-x)), from exp(-|x|) so that no exp overflows."""
    e = exp(-abs(x))
    r = ONE / (ONE + e)
    return r if x >= ZERO else e * r


def sigmoid_derivative(x):
    """sigma(x) sigma(-x) = e / (1 + e)^2 with e = exp(-|x|): accurate for every x."""
    e = exp(-abs(x))
    r = ONE / (ONE + e)
    return e * r * r


def bce_with_logits(z, y, pw):
    """Loss and d loss / dz of one logit ``z`` with target ``y`` and positive weight ``pw``.

    loss = (1 - y) z + lw softplus(-z), lw = 1 + (pw - 1) y, softplus(-z) = log1p(e) +
    max(-z, 0) with e = exp(-|z|); d loss / dz = lw sigma(z) - pw y (= sigma(z) - y for
    pw = 1), formed without the cancellation of (1 - y) - lw sigma(-z). ``lw`` is 1 itself
    where ``pw`` is 1 (no positive weight): ``0 * y`` would make an infinite target NaN
    where the unweighted formula, as PyTorch's, gives an infinite loss and slope.
    """
    e = exp(-abs(z))
    r = ONE / (ONE + e)
    sig = r if z >= ZERO else e * r
    lw = ONE if pw == ONE else ONE + (pw - ONE) * y
    loss = (ONE - y) * z + lw * (log1p(e) + max(-z, ZERO))
    return loss, lw * sig - pw * y


def squared_error(p, t, unused):
    """(p - t)^2 and its slope 2 (p - t)."""
    d = p - t
    return d * d, TWO * d


def huber(p, t, delta):
    """Huber loss of d = p - t: d^2 / 2 where |d| <= delta, else delta (|d| - delta / 2);
    slope d, or delta sign(d) outside (``torch.nn.functional.huber_loss``). A NaN d takes
    the first branch, so that loss and slope stay NaN."""
    d = p - t
    a = abs(d)
    if a > delta:
        return delta * (a - HALF * delta), (delta if d > ZERO else -delta)
    return HALF * d * d, d
