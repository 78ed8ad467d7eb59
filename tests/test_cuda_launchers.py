"""The CUDA launchers of ``gpukernels`` on Numba's simulator, called directly with NumPy arrays.

Sizes are tiny (the simulator costs ~5 ms per simulated thread) but cover what a GPU launch
meets: rows longer than a block, several rows a block with a partial last block, odd sizes,
strided inputs and the grid-stride loops. Every output is poisoned with NaN first and must be
fully written. References are float64 NumPy written here; canonical tile sums must match a
NumPy emulation of docs/BACKENDS.md bit for bit for two threads-per-block.
"""

import sys

import numpy as np
import pytest

from gpukernels._kinds import TermKind
from gpukernels._ops import OPS
from gpukernels.cuda import _cuda

pytestmark = pytest.mark.skipif(not _cuda.SIMULATOR, reason="launcher tests run on the simulator")

reduce, softmax_xent, bce, mse, huber, sigmoid, composite = (
    OPS[name].module("cuda")
    for name in ("reduce", "softmax_xent", "bce", "mse", "huber", "sigmoid", "composite")
)

TILE = 256
DTYPES = [np.float16, np.float32, np.float64]
TOL = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-12}  # relative to the row's scale


def acc_of(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def poisoned(shape, dtype):
    return np.full(shape, np.nan, dtype)


def canonical_tiles(values, acc):
    """docs/BACKENDS.md: per tile of TILE values (zero padded), s[i] += s[i + h], h = 128..1."""
    v = np.asarray(values).astype(acc)
    s = np.zeros((-(-v.size // TILE), TILE), acc)
    s.reshape(-1)[: v.size] = v
    h = TILE // 2
    while h:
        s[:, :h] = s[:, :h] + s[:, h : 2 * h]
        h //= 2
    return s[:, 0]


def canonical_total(values, acc):
    """docs/BACKENDS.md: tile sums folded again until one value is left."""
    v = canonical_tiles(values, acc)
    while v.size > 1:
        v = canonical_tiles(v, acc)
    return v[0]


NONE, SUM, MEAN = 0, 1, 2  # gpukernels._kinds.Reduction


def close(got, want, dtype, scale=1.0):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype] * scale)


@pytest.fixture
def tile_threads(monkeypatch, request):
    monkeypatch.setattr(_cuda.POLICY, "tile_threads", request.param)
    return request.param


# ---------------------------------------------------------------- canonical tile sums


@pytest.mark.parametrize("tile_threads", [16, 4], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_totals_are_canonical(dtype, tile_threads):
    """One launch: tile sums, each group of 256 folded by the block that finishes it, then the
    last block folds the groups' sums (two levels past 65536)."""
    rng = np.random.default_rng(1)
    base = (rng.standard_normal(70_000) * 10.0 ** rng.integers(-3, 4, 70_000)).astype(dtype)
    accs = [acc_of(dtype)] + ([np.float64] if dtype != np.float64 else [])
    sizes = (base[:1], base[:256], base[:700], base[:2100:3])  # the last one strided, 3 tiles
    two_levels = tile_threads == 16 and dtype == np.float32  # the simulator's slowest case
    # 257 tiles: a second group of one tile, which holds one value
    past = base[: TILE * TILE + 1]
    for x in sizes + ((past,) if two_levels else ()):
        for acc in accs[:1] if x is past else accs:
            out = poisoned(1, acc)
            reduce.total(x, out, poisoned(-(-x.size // TILE), acc))
            np.testing.assert_array_equal(out[0], canonical_total(x, acc))
            assert not _cuda.tickets().any()  # every counter back to 0 for the next launch


@pytest.mark.parametrize("block", [(4, 4), (2, 8)])
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_column_totals_are_canonical(monkeypatch, dtype, block):
    monkeypatch.setattr(_cuda.POLICY, "column_block", block)
    x = np.random.default_rng(2).standard_normal((600, 11)).astype(dtype)[::2, ::2]  # strided
    acc = acc_of(dtype)
    out = poisoned(x.shape[1], acc)
    reduce.column_totals(x, out, poisoned((2, x.shape[1]), acc))
    want = [canonical_total(x[:, j], acc) for j in range(x.shape[1])]
    np.testing.assert_array_equal(out, want)
    assert not _cuda.tickets().any()


def test_column_totals_fold_groups_of_tiles(monkeypatch):
    """Past 65536 rows (two groups of 256 row tiles) and two column blocks: each group of a
    column block folded by the block that finishes it, then the groups' sums by the last
    block; every counter back to 0."""
    monkeypatch.setattr(_cuda.POLICY, "column_block", (2, 4))
    x = np.random.default_rng(3).standard_normal((TILE * TILE + 300, 3)).astype(np.float32)
    out = poisoned(3, np.float32)
    reduce.column_totals(x, out, poisoned((-(-x.shape[0] // TILE), 3), np.float32))
    np.testing.assert_array_equal(out, [canonical_total(x[:, j], np.float32) for j in range(3)])
    assert not _cuda.tickets().any()


def test_tickets_per_stream_and_per_thread(monkeypatch):
    """The host side of the counters, as on a GPU (with a stand-in CuPy: CI has none): one
    array a stream, the same for every call on it; another for another stream; on the
    per-thread default stream one a host thread; grown at least twofold, zeroed."""
    import threading
    from types import SimpleNamespace

    stream = SimpleNamespace(ptr=7)
    cupy = SimpleNamespace(
        zeros=np.zeros,
        cuda=SimpleNamespace(
            get_current_stream=lambda: stream, runtime=SimpleNamespace(getDevice=lambda: 0)
        ),
    )
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(_cuda, "SIMULATOR", False)
    monkeypatch.setattr(_cuda, "_TICKETS", {})
    monkeypatch.setattr(_cuda, "_PER_THREAD", threading.local())
    first = _cuda.tickets()
    assert first is _cuda.tickets(10) and not first.any()
    grown = _cuda.tickets(first.shape[0] + 1)
    assert grown.shape[0] >= 2 * first.shape[0] and not grown.any()
    stream.ptr = 8
    assert _cuda.tickets() is not grown
    stream.ptr = 2  # cudaStreamPerThread
    mine, theirs = _cuda.tickets(), []
    thread = threading.Thread(target=lambda: theirs.append(_cuda.tickets()))
    thread.start()
    thread.join()
    assert mine is _cuda.tickets() and theirs[0] is not mine


# ---------------------------------------------------------------- softmax cross-entropy


def softmax_labels_reference(z, y, w, g, ignore_index, eps):
    z = z.astype(np.float64)
    n, c = z.shape
    w = np.ones(c) if w.size == 0 else w.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    p = np.exp(z - lse)
    loss, grad = np.zeros(n), np.zeros_like(z)
    for i in range(n):
        if y[i] == ignore_index:
            continue
        if not 0 <= y[i] < c:
            loss[i] = np.nan
            continue
        a = eps / c * w
        a[y[i]] += (1 - eps) * w[y[i]]
        loss[i] = (1 - eps) * w[y[i]] * (lse[i, 0] - z[i, y[i]])
        if eps > 0:  # only then: 0 * (lse - -inf) would be NaN
            loss[i] += eps / c * (w * (lse[i] - z[i])).sum()
        grad[i] = g[i if g.size > 1 else 0] * (a.sum() * p[i] - a)
    return loss, grad


def run_labels(z, y, w, g, eps, ignore_index=-100, grad=None, reduction=NONE):
    """The per-row losses and the gradient (and with a reduction, the loss and the first
    bad row)."""
    acc = acc_of(z.dtype)
    grad = poisoned(z.shape, z.dtype) if grad is None else grad
    rows, loss, bad = poisoned(z.shape[0], acc), poisoned(1, acc), np.full(1, -7)
    softmax_xent.softmax_xent_labels(
        z, y, w, g, grad, rows, loss, bad, ignore_index, eps, 0.0, 0.0, reduction
    )
    return (rows, grad) if reduction == NONE else (rows, grad, loss[0], bad[0])


# (C, smoothing, class weights, per-row upstream gradient): C = 1, several rows a block with
# a partial last block (C = 6), rows longer than the block (C = 300)
LABEL_CASES = [(1, 0.0, False, False), (6, 0.2, True, True), (300, 0.1, True, False)]


@pytest.mark.parametrize("case", LABEL_CASES, ids=lambda c: f"C{c[0]}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_labels(dtype, case):
    c, eps, weighted, per_row = case
    rng = np.random.default_rng(c)
    n = 7
    acc = acc_of(dtype)
    z = (4 * rng.standard_normal((n, c))).astype(dtype)
    y = rng.integers(0, c, n)
    y[1], y[4] = -100, c + 2  # ignored, out of range
    w = rng.uniform(0.5, 2, c).astype(acc) if weighted else np.empty(0, acc)
    g = rng.uniform(0.5, 2, n if per_row else 1).astype(acc)
    loss, grad = run_labels(z, y, w, g, eps)
    want_loss, want_grad = softmax_labels_reference(z, y, w, g, -100, eps)
    close(loss, want_loss, dtype, scale=10)
    close(grad, want_grad, dtype)
    assert np.all(grad[[1, 4]] == 0) and loss[1] == 0 and np.isnan(loss[4])


@pytest.mark.parametrize(
    ("weighted", "tile_threads"), [(False, 16), (True, 4)], indirect=["tile_threads"]
)
def test_softmax_xent_labels_reduced(weighted, tile_threads):
    """The launcher's mean: the divisor (the canonical sum of the rows' class weights) found
    on the device, the gradient scaled by it, the loss the canonical sum of the row losses
    over it, and the first bad label reported, past one tile of rows."""
    rng = np.random.default_rng(9)
    n, c = 300, 3
    z = rng.standard_normal((n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    y[[5, 290]], y[7] = c, -100  # two bad labels (the first is reported), one ignored
    w = rng.uniform(0.5, 2, c).astype(np.float32) if weighted else np.empty(0, np.float32)
    g = np.full(1, 3.0, np.float32)
    rows, grad, loss, bad = run_labels(z, y, w, g, 0.0, reduction=MEAN)

    def divisor():
        class_w = (w if weighted else np.ones(c))[np.clip(y, 0, c - 1)]
        return canonical_total(np.where((y >= 0) & (y < c), class_w, 0), np.float32)

    want_rows, want_grad = softmax_labels_reference(z, y, w, g / divisor(), -100, 0.0)
    close(grad, want_grad, np.float32)
    close(rows, want_rows, np.float32, scale=10)
    assert bad == 5 and np.isnan(loss)  # a bad row's NaN reaches the loss
    y[[5, 290]] = 0
    rows, grad, loss, bad = run_labels(z, y, w, g, 0.0, reduction=MEAN)
    assert bad == -1 and loss == canonical_total(rows, np.float32) / divisor()
    _, _, total, _ = run_labels(z, y, w, g, 0.0, reduction=SUM)
    assert total == canonical_total(rows, np.float32)
    y[:] = -100  # no row: the mean is 0 with a zero gradient
    _, grad, loss, bad = run_labels(z, y, w, g, 0.0, reduction=MEAN)
    assert loss == 0 and not grad.any() and bad == -1


def test_softmax_xent_rereads_rows_that_do_not_fit(monkeypatch):
    """Without room in shared memory the gradient pass re-reads the logits: same bits."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((3, 300)).astype(np.float32)
    y, w, g = np.array([5, 299, 0]), rng.uniform(0.5, 2, 300).astype(np.float32), np.ones(1, "f4")
    t = rng.dirichlet(np.ones(300), 3)
    cached = run_labels(z, y, w, g, 0.1)
    cached_p = poisoned(3, np.float32), poisoned(z.shape, np.float32)
    probs_args = (poisoned(1, np.float32), 0.1, 0.0, 0.0, NONE)
    softmax_xent.softmax_xent_probs(z, t, w, g, cached_p[1], cached_p[0], *probs_args)
    monkeypatch.setattr(_cuda.POLICY, "shared_bytes", 0)
    assert not _cuda.row_shape(300, 4)[2]
    reread = run_labels(z, y, w, g, 0.1)
    reread_p = poisoned(3, np.float32), poisoned(z.shape, np.float32)
    softmax_xent.softmax_xent_probs(z, t, w, g, reread_p[1], reread_p[0], *probs_args)
    for a, b in zip(cached + cached_p, reread + reread_p, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's NaN warnings in the simulator
def test_softmax_xent_non_finite_logits():
    z = np.zeros((5, 7), np.float32) + np.arange(7, dtype=np.float32)
    z[0, 2] = np.nan
    z[1, 3] = np.inf
    z[2, 0] = -np.inf  # a class of probability 0
    z[3, :] = -np.inf
    z[3, 4] = 1.0  # every class but the label has probability 0
    y = np.array([1, 1, 1, 4, 6])
    loss, grad = run_labels(z, y, np.empty(0, "f4"), np.ones(1, "f4"), 0.0)
    assert np.isnan(loss[:2]).all() and np.isnan(grad[:2]).all()
    want_loss, want_grad = softmax_labels_reference(z[2:], y[2:], np.empty(0), np.ones(1), -100, 0)
    close(loss[2:], want_loss, np.float32, scale=10)
    close(grad[2:], want_grad, np.float32)
    assert grad[2, 0] == 0 and loss[3] == 0 and (grad[3] == 0).all()


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "reread"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_softmax_xent_gradient_in_place(monkeypatch, dtype, cached):
    """In place: a thread reads a batch of its columns before writing them, never another's."""
    if not cached:  # pass 2 re-reads the logits it is overwriting
        monkeypatch.setattr(_cuda.POLICY, "shared_bytes", 0)
    rng = np.random.default_rng(4)
    z = (3 * rng.standard_normal((5, 40))).astype(dtype)
    y, w, g = rng.integers(0, 40, 5), np.empty(0, "f4"), np.full(1, 0.5, "f4")
    loss, grad = run_labels(z, y, w, g, 0.1)
    same = z.copy()
    loss_in_place, _ = run_labels(same, y, w, g, 0.1, grad=same)
    np.testing.assert_array_equal(same, grad)
    np.testing.assert_array_equal(loss_in_place, loss)


@pytest.mark.parametrize("case", [(5, 0.1, True), (300, 0.0, False)], ids=["C5", "C300"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_probs(dtype, case):
    c, eps, weighted = case
    rng = np.random.default_rng(c + 1)
    n, acc = 5, acc_of(dtype)
    z = (3 * rng.standard_normal((n, c))).astype(dtype)
    t = rng.dirichlet(np.ones(c), n)  # float64 targets whatever the logits' dtype
    w = rng.uniform(0.5, 2, c).astype(acc) if weighted else np.empty(0, acc)
    g = rng.uniform(0.5, 2, n).astype(acc)
    grad, loss = poisoned(z.shape, dtype), poisoned(n, acc)
    total = poisoned(1, acc)
    softmax_xent.softmax_xent_probs(
        z, t, w, g[:1], poisoned(z.shape, dtype), loss, total, eps, 0, 0, MEAN
    )
    assert total[0] == canonical_total(loss, acc) / acc(n)
    softmax_xent.softmax_xent_probs(z, t, w, g, grad, loss, total, eps, 0.0, 0.0, NONE)
    z64 = z.astype(np.float64)
    lse = np.log(np.exp(z64 - z64.max(1, keepdims=True)).sum(1, keepdims=True)) + z64.max(
        1, keepdims=True
    )
    a = (np.ones(c) if w.size == 0 else w.astype(np.float64)) * (t * (1 - eps) + eps / c)
    close(loss, (a * (lse - z64)).sum(1), dtype, scale=10)
    close(grad, g[:, None] * (a.sum(1, keepdims=True) * np.exp(z64 - lse) - a), dtype)


def test_label_row_weights():
    y = np.array([0, 3, -100, 7, -1, 2])
    w = np.array([0.5, 1.5, 2.5, 3.5], np.float32)
    out = poisoned(6, np.float32)
    softmax_xent.label_row_weights(y, w, out, -100, 4)
    np.testing.assert_array_equal(out, [0.5, 3.5, 0, 0, 0, 2.5])
    softmax_xent.label_row_weights(y, np.empty(0, "f4"), out, -100, 4)
    np.testing.assert_array_equal(out, [1, 1, 0, 0, 0, 1])


# ---------------------------------------------------------------- elementwise losses


def bce_reference(z, y, w, pw):
    z, y = z.astype(np.float64), y.astype(np.float64)
    lw = 1 + (pw - 1) * y
    loss = w * ((1 - y) * z + lw * (np.log1p(np.exp(-np.abs(z))) + np.maximum(-z, 0)))
    return loss, w * (lw / (1 + np.exp(-z)) - pw * y)


@pytest.mark.parametrize("tile_threads", [16, 4], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits(dtype, tile_threads):
    rng = np.random.default_rng(5)
    n, acc = 600, acc_of(dtype)
    z = (rng.standard_normal(n) * 8).astype(dtype)
    z[:2] = [60, -60]  # stable far out
    y = rng.uniform(0, 1, n).astype(dtype)
    w, pw, g = (rng.uniform(0.5, 2, k).astype(acc) for k in (n, 7, n))
    grad, losses = poisoned(n, dtype), poisoned(n, acc)
    bce.loss_and_grad(z, y, w, pw, g, grad, losses, NONE, 1)
    want_loss, want_grad = bce_reference(z, y, w, np.tile(pw, n)[:n])
    close(losses, want_loss, dtype, scale=10)
    close(grad, g * want_grad, dtype)
    partial, grad2 = poisoned(3, acc), poisoned(n, dtype)
    bce.loss_and_grad(z, y, w, pw, g, grad2, partial, SUM, 1)
    assert partial[0] == canonical_total(losses, acc)
    np.testing.assert_array_equal(grad2, grad)
    none, same = np.empty(0, acc), z.copy()  # no weights, no factor, gradient over z
    bce.loss_and_grad(same, y, none, none, none, same, poisoned(3, acc), SUM, 1)
    close(same, bce_reference(z, y, 1.0, 1.0)[1], dtype)


@pytest.mark.parametrize("tile_threads", [16, 4], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse(dtype, tile_threads):
    rng = np.random.default_rng(6)
    n, acc = 520, acc_of(dtype)
    p, t = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    g = np.full(1, 0.25, acc)
    grad, losses = poisoned(n, dtype), poisoned(n, acc)
    none = np.empty(0, acc)
    mse.loss_and_grad(p, t, none, none, g, grad, losses, NONE, 1)
    d = p.astype(np.float64) - t.astype(np.float64)
    close(losses, d * d, dtype, scale=10)
    close(grad, 0.5 * d, dtype)
    partial = poisoned(3, acc)
    in_place = p.copy()
    mse.loss_and_grad(in_place, t, none, none, g * 520, in_place, partial, MEAN, 520)
    assert partial[0] == canonical_total(losses, acc) / acc(520)
    np.testing.assert_array_equal(in_place, grad)  # u / divisor: 0.25 again


@pytest.mark.parametrize("tile_threads", [16, 4], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_huber(dtype, tile_threads):
    rng = np.random.default_rng(8)
    n, acc, delta = 530, acc_of(dtype), 0.75
    p, t = ((2 * rng.standard_normal(n)).astype(dtype) for _ in range(2))
    g, w = (rng.uniform(0.5, 2, n).astype(acc) for _ in range(2))
    grad, losses = poisoned(n, dtype), poisoned(n, acc)
    huber.loss_and_grad(p, t, w, np.full(1, delta, acc), g, grad, losses, NONE, 1)
    d = p.astype(np.float64) - t.astype(np.float64)
    quadratic = np.abs(d) <= delta
    assert 0 < quadratic.sum() < n  # both branches
    want = np.where(quadratic, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))
    close(losses, w * want, dtype, scale=10)
    close(grad, g * w * np.clip(d, -delta, delta), dtype)
    partial = poisoned(3, acc)
    huber.loss_and_grad(p, t, w, np.full(1, delta, acc), g, grad, partial, SUM, 1)
    assert partial[0] == canonical_total(losses, acc)


# ---------------------------------------------------------------- sigmoid


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # np.exp(1e4) in the reference
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_kernels(dtype):
    x = np.concatenate([[-1e4, -60, -30, -1, 0, 1, 30, 60, 1e4], np.linspace(-8, 8, 40)])
    x = x.astype(dtype)
    x64 = x.astype(np.float64)
    s, s_neg = 1 / (1 + np.exp(-x64)), 1 / (1 + np.exp(x64))
    y = poisoned(x.size, dtype)
    sigmoid.sigmoid(x, y)
    close(y, s, dtype)
    sigmoid.sigmoid_derivative(x, y)
    tiny = np.finfo(dtype).tiny
    # relative accuracy wherever the derivative is a normal number of the dtype
    normal = s * s_neg > tiny
    np.testing.assert_allclose(y[normal], (s * s_neg)[normal], rtol=4 * np.finfo(dtype).eps)
    g = np.linspace(-2, 2, x.size).astype(dtype)
    saved = s.astype(dtype)
    out = poisoned(x.size, dtype)
    sigmoid.sigmoid_backward(g, saved, out)
    s64 = saved.astype(np.float64)
    close(out, g.astype(np.float64) * s64 * (1 - s64), dtype)
    same = x.copy()
    sigmoid.sigmoid(same, same)  # in place
    close(same, s, dtype)


# ---------------------------------------------------------------- composite


def composite_reference(pred, target, kinds, cols, tcols, only_where, scale, param):
    """Row losses and gradient of docs/BACKENDS.md's composite launcher, in float64."""
    z, t = pred.astype(np.float64), target.astype(np.float64)
    n, k_terms = z.shape[0], len(kinds)
    loss, grad = np.zeros((n, k_terms)), np.zeros_like(z)
    for k in range(k_terms):
        (p0, p1), (t0, t1) = cols[k], tcols[k]
        for i in range(n):
            if only_where[k] >= 0 and t[i, only_where[k]] == 0:
                continue
            zi, ti = z[i, p0:p1], t[i, t0:t1]
            d = zi - ti if kinds[k] != TermKind.SOFTMAX_CROSS_ENTROPY else None
            if kinds[k] == TermKind.SOFTMAX_CROSS_ENTROPY:
                lse = zi.max() + np.log(np.exp(zi - zi.max()).sum())
                p = np.exp(zi - lse)
                if t1 - t0 == 1:
                    y = ti[0]
                    if not (0 <= y < p1 - p0 and y == int(y)):
                        loss[i, k] = np.nan
                        continue
                    loss[i, k] = lse - zi[int(y)]
                    g = p.copy()
                    g[int(y)] -= 1
                else:
                    loss[i, k] = (ti * (lse - zi)).sum()
                    g = ti.sum() * p - ti
            elif kinds[k] == TermKind.BCE_WITH_LOGITS:
                loss[i, k] = (np.maximum(zi, 0) - zi * ti + np.log1p(np.exp(-np.abs(zi)))).sum()
                g = 1 / (1 + np.exp(-zi)) - ti
            elif kinds[k] == TermKind.MSE:
                loss[i, k] = (d**2).sum()
                g = 2 * d
            else:
                delta, a = float(param[k, 0]), np.abs(d)
                loss[i, k] = np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta)).sum()
                g = np.clip(d, -delta, delta)
            grad[i, p0:p1] += scale[k] * g
    return loss, grad


@pytest.mark.parametrize("dtype", DTYPES)
def test_composite(dtype):
    rng = np.random.default_rng(7)
    n, acc = 9, acc_of(dtype)
    pred = (2 * rng.standard_normal((n, 12))).astype(dtype)  # column 11: read by no term
    target = np.zeros((n, 9))
    target[:, 0] = rng.integers(0, 2, n)  # objectness
    target[:, 1:5] = rng.standard_normal((n, 4))  # box
    target[:, 5] = rng.integers(0, 3, n)  # class index
    target[2, 5] = 3  # out of range: NaN loss, zero gradient
    target[4, 5] = 1.5  # not a whole number: the same
    target[:, 6:9] = rng.dirichlet(np.ones(3), n)  # class probabilities
    target = target.astype(dtype)
    xent, bce_, mse_, huber_ = TermKind
    kinds = np.array([bce_, mse_, xent, xent, mse_, huber_], np.int64)
    cols = np.array([[0, 1], [1, 5], [5, 8], [8, 11], [0, 2], [1, 5]])  # overlapping terms
    tcols = np.array([[0, 1], [1, 5], [5, 6], [6, 9], [3, 5], [1, 5]])
    only_where = np.array([-1, 0, 0, -1, -1, 0])
    scale = np.array([1.0, 0.5, 2.0, 0.25, 1.5, 0.75], acc)
    param = np.zeros((6, 3), acc)  # (delta, z-loss, softcap) per term
    param[:, 0] = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5]
    args = (kinds, cols, tcols, only_where, scale, param)
    grad, loss = poisoned(pred.shape, dtype), poisoned((n, 6), acc)
    composite.composite(pred, target, *args, grad, loss)
    want_loss, want_grad = composite_reference(pred, target, *args)
    close(loss, want_loss, dtype, scale=10)
    selected = target[:, 0] != 0
    assert np.isnan(loss[2, 2]) == bool(selected[2])
    assert np.isnan(loss[4, 2]) == bool(selected[4])
    close(grad, want_grad, dtype)
    assert (grad[:, 11] == 0).all()
    same = pred.copy()  # the gradient written over the predictions
    composite.composite(same, target, *args, same, loss)
    np.testing.assert_array_equal(same, grad)
