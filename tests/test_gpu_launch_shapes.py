"""Every CUDA kernel on the simulator with the launch shapes a GPU really uses
(``GPU_POLICY``: 512-thread softmax rows, 256-thread blocks of short rows, 128-thread tiles,
32 x 8 column blocks), at sizes the simulator affords (~5 ms per simulated thread).

The rest of the suite runs the simulator's small policy; here the GPU's block sizes meet the
same references, and the canonical sums must give the same bits under both policies.
"""

import dataclasses

import numpy as np
import pytest
from test_cuda_launchers import (
    MEAN,
    NONE,
    acc_of,
    canonical_total,
    close,
    composite_reference,
    poisoned,
    softmax_labels_reference,
)

from gpukernels._kinds import TermKind
from gpukernels._ops import OPS
from gpukernels.cuda import _cuda

pytestmark = [
    pytest.mark.skipif(not _cuda.SIMULATOR, reason="simulator launch-shape tests"),
    pytest.mark.slow,
]

reduce, softmax_xent, huber, sigmoid, composite = (
    OPS[name].module("cuda") for name in ("reduce", "softmax_xent", "huber", "sigmoid", "composite")
)


@pytest.fixture
def gpu_policy(monkeypatch):
    for field in dataclasses.fields(_cuda.GPU_POLICY):
        monkeypatch.setattr(_cuda.POLICY, field.name, getattr(_cuda.GPU_POLICY, field.name))
    return _cuda.GPU_POLICY


@pytest.mark.parametrize(
    ("n", "c", "cached"),
    [(2, 4100, True), (40, 10, True), (1, 12_500, False)],
    ids=["512-thread rows", "64 rows a block", "row past 48 KB"],
)
def test_softmax_xent_labels(gpu_policy, n, c, cached):
    tx, ry, cache, _ = _cuda.row_shape(c, 4)
    assert cache == cached and (tx == 512 or ry > 1)
    rng = np.random.default_rng(c)
    z = (3 * rng.standard_normal((n, c))).astype(np.float32)
    y = rng.integers(0, c, n)
    w = rng.uniform(0.5, 2.0, c).astype(np.float32)
    g = np.ones(1, np.float32)
    grad, loss = poisoned(z.shape, np.float32), poisoned(n, np.float32)
    total, bad = poisoned(1, np.float32), np.full(1, -7)
    args = (-100, 0.1, 0.0, 0.0, MEAN)
    softmax_xent.softmax_xent_labels(z, y, w, g, grad, loss, total, bad, *args)
    divisor = canonical_total(w[y], np.float32)
    want_loss, want_grad = softmax_labels_reference(z, y, w, g / divisor, -100, 0.1)
    close(loss, want_loss, np.float32, scale=10)
    close(grad, want_grad, np.float32)
    assert total[0] == canonical_total(loss, np.float32) / divisor and bad[0] == -1


def test_softmax_xent_probs(gpu_policy):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((2, 3000)).astype(np.float32)
    t = rng.dirichlet(np.ones(3000), 2).astype(np.float32)
    grad, loss = poisoned(z.shape, np.float32), poisoned(2, np.float32)
    w = np.empty(0, np.float32)
    g = np.ones(1, np.float32)
    total = poisoned(1, np.float32)  # z-loss and softcap:
    softmax_xent.softmax_xent_probs(z, t, w, g, grad, loss, total, 0.0, 0.01, 2.0, NONE)
    z64 = 2.0 * np.tanh(z.astype(np.float64) / 2.0)
    lse = np.log(np.exp(z64).sum(1, keepdims=True))
    close(loss, (t * (lse - z64)).sum(1) + 0.01 * lse[:, 0] ** 2, np.float32, scale=10)
    slope = 1 - (z64 / 2.0) ** 2
    close(grad, ((1 + 0.02 * lse) * np.exp(z64 - lse) - t) * slope, np.float32)


def test_label_row_weights(gpu_policy):
    y = np.random.default_rng(4).integers(-1, 5, 300)
    w = np.arange(1.0, 6.0, dtype=np.float32)
    out = poisoned(300, np.float32)
    softmax_xent.label_row_weights(y, w, out, -1, 5)
    np.testing.assert_array_equal(out, np.where(y >= 0, w[np.maximum(y, 0)], 0))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_canonical_sums(gpu_policy, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(600).astype(dtype)
    acc = acc_of(dtype)
    out = poisoned(1, acc)
    reduce.total(x, out, poisoned(3, acc))
    assert out[0] == canonical_total(x, acc)
    m = rng.standard_normal((300, 40)).astype(dtype)
    columns = poisoned(40, acc)
    reduce.column_totals(m, columns, poisoned((2, 40), acc))
    np.testing.assert_array_equal(columns, [canonical_total(m[:, j], acc) for j in range(40)])


def test_elementwise_loss(gpu_policy):
    rng = np.random.default_rng(6)
    p, t = (2 * rng.standard_normal(300)).astype(np.float32), np.zeros(300, np.float32)
    none, delta = np.empty(0, np.float32), np.full(1, 0.5, np.float32)
    grad, losses = poisoned(300, np.float32), poisoned(300, np.float32)
    huber.loss_and_grad(p, t, none, delta, none, grad, losses, NONE, 1)
    d = p.astype(np.float64)
    want = np.where(np.abs(d) <= 0.5, 0.5 * d * d, 0.5 * (np.abs(d) - 0.25))
    close(losses, want, np.float32, scale=10)
    close(grad, np.clip(d, -0.5, 0.5), np.float32)
    partial = poisoned(2, np.float32)
    huber.loss_and_grad(p, t, none, delta, none, grad, partial, MEAN, 300)
    assert partial[0] == canonical_total(losses, np.float32) / np.float32(300)


def test_sigmoid(gpu_policy):
    x = np.linspace(-20, 20, 300)
    y = poisoned(300, np.float64)
    sigmoid.sigmoid_derivative(x, y)
    s = 1 / (1 + np.exp(-x))
    close(y, s * (1 - s), np.float64)


def test_composite(gpu_policy):
    rng = np.random.default_rng(7)
    n = 20
    pred = rng.standard_normal((n, 6)).astype(np.float32)
    target = np.concatenate([rng.integers(0, 2, (n, 1)), rng.standard_normal((n, 4))], 1)
    target = np.concatenate([target, rng.integers(0, 2, (n, 1))], 1).astype(np.float32)
    kinds = np.array([TermKind.BCE_WITH_LOGITS, TermKind.HUBER, TermKind.SOFTMAX_CROSS_ENTROPY])
    cols = np.array([[0, 1], [1, 5], [4, 6]])
    tcols = np.array([[0, 1], [1, 5], [5, 6]])
    only_where = np.array([-1, 0, -1])
    scale = np.array([1.0, 0.5, 2.0], np.float32)
    param = np.zeros((3, 3), np.float32)  # (delta, z-loss, softcap) per term
    param[:, 0] = [1.0, 0.3, 1.0]
    args = (kinds.astype(np.int64), cols, tcols, only_where, scale, param)
    grad, loss = poisoned(pred.shape, np.float32), poisoned((n, 3), np.float32)
    composite.composite(pred, target, *args, grad, loss)
    want_loss, want_grad = composite_reference(pred, target, *args)
    close(loss, want_loss, np.float32, scale=10)
    close(grad, want_grad, np.float32)


def test_shard_steps(gpu_policy):
    """A shard of 4100 columns (512-thread rows) and one of 7 (several rows a block)."""
    shard = OPS["shard"].module("cuda")
    rng = np.random.default_rng(8)
    z = (2 * rng.standard_normal((3, 4107))).astype(np.float32)
    y = np.array([5, 4100, -100])
    halves = [(0, 4100), (4100, 4107)]
    stats = []
    for a, b in halves:
        out = poisoned((3, 4), np.float32)
        shard.shard_stats(np.ascontiguousarray(z[:, a:b]), y, out, a, 0.0)
        stats.append(out)
    m = np.maximum(stats[0][:, 0], stats[1][:, 0])
    s = sum(st[:, 1] * np.exp(st[:, 0] - m) for st in stats)
    z64 = z.astype(np.float64)
    close(m, z64.max(1), np.float32)
    close(s, np.exp(z64 - z64.max(1, keepdims=True)).sum(1), np.float32, scale=10)
    merged = np.stack([m, s, stats[0][:, 2] + stats[1][:, 2], stats[0][:, 3] + stats[1][:, 3]], 1)
    lse = np.log(np.exp(z64).sum(1))
    for a, b in halves:
        grad, loss = poisoned((3, b - a), np.float32), poisoned(3, np.float32)
        g = np.full(1, 0.5, np.float32)
        args = (merged.astype(np.float32), g, grad, loss, a, 4107, -100, 0.0, 0.0, 0.0)
        shard.shard_loss_and_grad(np.ascontiguousarray(z[:, a:b]), y, *args)
        want = np.exp(z64[:, a:b] - lse[:, None]) * 0.5
        for row, label in enumerate(y):
            if label == -100:
                want[row] = 0
            elif a <= label < b:
                want[row, label - a] -= 0.5
        close(grad, want, np.float32)
        close(loss[:2], lse[:2] - z64[[0, 1], y[:2]], np.float32, scale=10)
        assert loss[2] == 0
