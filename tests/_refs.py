"""Float64 NumPy references written from the maths, and the helpers the test modules share.

Nothing here imports ``gpukernels``: every expected value comes from the formulas of the
public contract (``docs/API.md``: PyTorch's semantics) evaluated in float64 (in NumPy, or in
PyTorch for the autograd references of ``torch_cross_entropy_loss``), or, for
``batch_sum``, from the canonical summation order of ``docs/BACKENDS.md`` replayed in NumPy.
"""

import math

import numpy as np

FLOATS = (np.float16, np.float32, np.float64)
TILE = 256  # docs/BACKENDS.md, "The canonical sum"

# (rtol, atol relative to the largest expected magnitude) per storage dtype.
_TOL = {
    np.dtype(np.float16): (2e-3, 2e-3),
    np.dtype(np.float32): (2e-5, 2e-5),
    np.dtype(np.float64): (1e-10, 1e-12),
}


# --------------------------------------------------------------------------------------------
# dtypes and tolerances


def loss_dtype(dtype):
    """Losses are float32 for float16 inputs and keep float32 and float64."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def tolerance(dtype):
    return _TOL[np.dtype(dtype)]


def assert_close(actual, expected, dtype, *, rtol=None, atol=None, what=""):
    """``actual`` against a float64 ``expected`` at the precision of ``dtype``.

    ``atol`` is relative to the largest finite expected magnitude (at least 1 for losses of
    order one); NaNs must sit at the same places.
    """
    base_rtol, base_atol = tolerance(dtype)
    rtol = base_rtol if rtol is None else rtol
    atol = base_atol if atol is None else atol
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = expected[np.isfinite(expected)]
    scale = float(np.max(np.abs(finite))) if finite.size else 1.0
    np.testing.assert_allclose(
        actual.astype(np.float64),
        expected,
        rtol=rtol,
        atol=atol * max(scale, 1e-30),
        equal_nan=True,
        err_msg=what,
    )


def is_0d_array(x):
    return isinstance(x, np.ndarray) and x.shape == ()


# --------------------------------------------------------------------------------------------
# random data: never exact zeros, so an element the library forgot to write cannot pass


def random_floats(rng, shape, dtype=np.float64, scale=3.0):
    """Values of magnitude in [0.1, 1] * scale with random signs (never zero)."""
    magnitude = rng.uniform(0.1, 1.0, size=shape) * scale
    sign = np.where(rng.random(size=shape) < 0.5, -1.0, 1.0)
    return (magnitude * sign).astype(dtype)


def random_labels(rng, n, c, dtype=np.int64):
    return rng.integers(0, c, size=n).astype(dtype)


def random_probs(rng, n, c, dtype=np.float64):
    """Soft targets: rows of a softmax (every entry positive, rows sum to 1)."""
    z = rng.standard_normal((n, c)) * 2.0
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(dtype)


def random_unit(rng, shape, dtype=np.float64):
    """Targets in (0, 1) for BCE, away from 0 and 1."""
    return rng.uniform(0.05, 0.95, size=shape).astype(dtype)


def poisoned(shape, dtype):
    """An ``out=`` buffer full of NaN: any element the library does not write stays NaN."""
    return np.full(shape, np.nan, dtype=dtype)


def assert_all_written(buf, what="out"):
    bad = np.argwhere(np.isnan(np.asarray(buf, dtype=np.float64)))
    assert bad.size == 0, f"{what}: {len(bad)} elements never written, first at {bad[:5].tolist()}"


# --------------------------------------------------------------------------------------------
# finite differences


def fd_gradient(f, x, h=1e-6):
    """Central finite differences of the scalar function ``f`` at float64 ``x``."""
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + h
        up = float(f(x.copy()))
        flat[i] = keep - h
        down = float(f(x.copy()))
        flat[i] = keep
        gflat[i] = (up - down) / (2.0 * h)
    return grad


# --------------------------------------------------------------------------------------------
# references


def _reduce(row_loss, reduction, divisor, grad_output):
    """Reduced loss and the per-element (or per-row) factor of the unscaled gradient."""
    g = 1.0 if grad_output is None else np.asarray(grad_output, dtype=np.float64)
    if reduction == "none":
        return row_loss.copy(), g * np.ones_like(row_loss)
    if reduction == "sum":
        return np.asarray(row_loss.sum()), g * np.ones_like(row_loss)
    # "mean" (and "batchmean" with its own divisor): a mean over nothing is 0, gradient 0
    if divisor == 0:
        return np.asarray(0.0), np.zeros_like(row_loss)
    return np.asarray(row_loss.sum() / divisor), (g / divisor) * np.ones_like(row_loss)


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    if z.shape[-1] == 0:
        return z.copy()
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(z, axis=-1, keepdims=True)
        s = np.sum(np.exp(z - m), axis=-1, keepdims=True)
        return z - m - np.log(s)


def cross_entropy(
    logits,
    target,
    *,
    reduction="mean",
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    grad_output=None,
):
    """``torch.nn.functional.cross_entropy`` (loss and d loss / d logits), float64.

    Each row's loss is ``-sum_c a_c log p_c`` with ``a`` the weighted, smoothed target:
    integer labels ``y``: ``a_c = (1 - eps) w_y [c == y] + (eps / C) w_c`` and the mean
    divides by ``sum_i w_{y_i}`` over the rows that are not ignored; soft targets ``t``:
    ``a_c = w_c ((1 - eps) t_c + eps / C)`` and the mean divides by ``N``. The gradient of
    one row is ``(sum_c a_c) p - a``. Labels outside ``[0, C)`` are not handled here.
    """
    z = np.asarray(logits, dtype=np.float64)
    n, c = z.shape
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    eps = float(label_smoothing)
    target = np.asarray(target)
    a = np.zeros((n, c))
    if target.ndim == 1:
        labels = target.astype(np.int64)
        keep = labels != ignore_index
        rows = np.nonzero(keep)[0]
        assert np.all((labels[rows] >= 0) & (labels[rows] < c)), "reference: label out of range"
        a[rows, labels[rows]] += (1.0 - eps) * w[labels[rows]]
        a[rows] += (eps / c) * w
        divisor = float(np.sum(w[labels[rows]]))
    else:
        t = target.astype(np.float64)
        a = w * ((1.0 - eps) * t + eps / c)
        divisor = float(n)
    logp = log_softmax(z)
    with np.errstate(invalid="ignore"):
        # a_c = 0 contributes nothing, also where log p_c = -inf (a -inf logit)
        row_loss = -np.sum(np.where(a != 0.0, a * logp, 0.0), axis=1)
        p = np.exp(logp)
        row_grad = a.sum(axis=1, keepdims=True) * p - a
    loss, scale = _reduce(row_loss, reduction, divisor, grad_output)
    return loss, row_grad * scale[:, None]


def sigmoid(x):
    """1 / (1 + exp(-x)) in float64, from exp(-|x|) so that nothing overflows."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_derivative(x):
    """sigma(x) (1 - sigma(x)) = exp(-|x|) / (1 + exp(-|x|))^2, in float64."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return e / (1.0 + e) ** 2


def bce_with_logits(
    logits, target, *, reduction="mean", weight=None, pos_weight=None, grad_output=None
):
    """``binary_cross_entropy_with_logits``, float64: per element with ``lw = 1 + (pw - 1) y``,
    ``l = w [(1 - y) z + lw log(1 + exp(-z))]``, ``dl/dz = w [(1 - y) - lw sigmoid(-z)]``.
    ``weight`` and ``pos_weight`` broadcast against the input."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    w = 1.0 if weight is None else np.asarray(weight, dtype=np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    lw = 1.0 + (pw - 1.0) * y
    softplus_neg = np.logaddexp(0.0, -z)
    elem = np.broadcast_to(w * ((1.0 - y) * z + lw * softplus_neg), z.shape)
    d = np.broadcast_to(w * ((1.0 - y) - lw * sigmoid(-z)), z.shape)
    loss, scale = _reduce(elem, reduction, z.size, grad_output)
    return loss, d * scale


def mse(pred, target, *, reduction="mean", grad_output=None):
    """Squared error ``(p - t)^2``; "mean" divides by the element count, "batchmean" by
    ``pred.shape[0]``; gradient ``2 (p - t) / divisor``."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    divisor = d.size if reduction == "mean" else (d.shape[0] if d.ndim else 1)
    loss, scale = _reduce(
        d * d, "mean" if reduction == "batchmean" else reduction, divisor, grad_output
    )
    return loss, 2.0 * d * scale


def torch_cross_entropy_loss(
    z, target, *, reduction="mean", weight=None, label_smoothing=0.0, z_loss=0.0, softcap=None
):
    """``softmax_cross_entropy``'s loss written out in PyTorch, for autograd references (the
    caller builds ``z``, a float64 tensor, and calls ``backward``): the logits capped,
    ``cross_entropy`` per row, ``z_loss lse^2`` on the rows taking part, then the reduction;
    a weighted mean divides by those rows' class weights, a mean over no row is 0."""
    import torch

    zc = softcap * torch.tanh(z / softcap) if softcap else z
    probs = target.dtype.is_floating_point
    rows = torch.nn.functional.cross_entropy(
        zc, target, weight=weight, reduction="none", label_smoothing=label_smoothing
    )
    valid = torch.ones(len(z), dtype=torch.bool) if probs else target != -100
    rows = rows + z_loss * torch.logsumexp(zc, -1) ** 2 * valid
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if not valid.any():
        return rows.sum() * 0
    return rows.sum() / (valid.sum() if weight is None or probs else weight[target[valid]].sum())


def huber(pred, target, *, delta=1.0, reduction="mean", grad_output=None):
    """Huber loss of ``d = p - t``: ``d^2 / 2`` where ``|d| <= delta``, else
    ``delta (|d| - delta / 2)``; gradient ``clip(d, -delta, delta) / divisor``."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    a = np.abs(d)
    with np.errstate(invalid="ignore"):
        elementwise = np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    loss, scale = _reduce(elementwise, reduction, d.size, grad_output)
    return loss, np.clip(d, -delta, delta) * scale


# --------------------------------------------------------------------------------------------
# the canonical sum of docs/BACKENDS.md, replayed exactly in the accumulation dtype


def acc_dtype(dtype):
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _fold_tiles(v):
    """One level along axis 0: tree sums of TILE consecutive rows, halving order."""
    n = v.shape[0]
    tiles = -(-n // TILE)
    s = np.zeros((tiles * TILE,) + v.shape[1:], dtype=v.dtype)
    s[:n] = v
    s = s.reshape((tiles, TILE) + v.shape[1:])
    h = TILE // 2
    while h >= 1:
        s[:, :h] = s[:, :h] + s[:, h : 2 * h]
        h //= 2
    return s[:, 0].copy()


def canonical_sum(x):
    """The canonical sum of the C-order sequence of ``x``'s values (a 0-d ``acc`` array)."""
    x = np.asarray(x)
    v = x.reshape(-1).astype(acc_dtype(x.dtype))
    if v.size == 0:
        return np.zeros((), dtype=v.dtype)
    v = _fold_tiles(v)  # at least once: one value is a tile too (-0 + 0 is +0)
    while v.shape[0] > 1:
        v = _fold_tiles(v)
    return v.reshape(())


def canonical_sum_axis0(x):
    """The canonical sum over axis 0 of every column of ``x`` (shape ``x.shape[1:]``)."""
    x = np.asarray(x)
    v = x.reshape(x.shape[0], -1).astype(acc_dtype(x.dtype))
    if v.shape[0] == 0:
        return np.zeros(x.shape[1:], dtype=v.dtype)
    v = _fold_tiles(v)
    while v.shape[0] > 1:
        v = _fold_tiles(v)
    return v.reshape(x.shape[1:])


def fsum(x):
    return math.fsum(np.asarray(x, dtype=np.float64).reshape(-1).tolist())
