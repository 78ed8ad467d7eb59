"""bfloat16 (``ml_dtypes.bfloat16`` NumPy arrays) on both backends: loaded as float32, computed
in float32, each gradient element rounded once to nearest even. References are float64 maths
of the same bfloat16 inputs: every gradient element must lie within half a bfloat16 ulp of
it (plus float32's own error), and losses are float32."""

import numpy as np
import pytest
from _refs import bce_with_logits, cross_entropy, huber, mse

import gpukernels as gk

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)


def within_half_ulp(got, exact):
    """Every element of the bfloat16 ``got`` within half an ulp of the float64 ``exact``."""
    assert got.dtype == BF16
    got, exact = got.astype(np.float64), np.asarray(exact, np.float64)
    nan = np.isnan(exact)
    np.testing.assert_array_equal(np.isnan(got), nan)
    got, exact = got[~nan], exact[~nan]
    with np.errstate(divide="ignore"):
        ulp = np.where(exact == 0, 0.0, 2.0 ** (np.floor(np.log2(np.abs(exact))) - 7))
    slack = 1e-6 * np.abs(exact) + 1e-38  # float32's own error on the way
    bad = np.abs(got - exact) > ulp / 2 + slack
    assert not bad.any(), f"{bad.sum()} elements off by more than half an ulp: {got[bad][:5]}"


def loss_close(got, want):
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def bf16(rng, shape, scale=3.0):
    return (scale * rng.standard_normal(shape)).astype(BF16)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy(backend, smoothing):
    rng = np.random.default_rng(91)
    z = bf16(rng, (9, 37))
    y = rng.integers(0, 37, 9)
    y[3] = -100
    weight = rng.uniform(0.5, 2, 37).astype(np.float32)
    loss, grad = gk.softmax_cross_entropy(z, y, weight=weight, label_smoothing=smoothing)
    want_loss, want_grad = cross_entropy(
        z.astype(np.float64), y, weight=weight, label_smoothing=smoothing
    )
    loss_close(loss, want_loss)
    within_half_ulp(grad, want_grad)


@pytest.mark.parametrize("c", [37, 300])
@pytest.mark.parametrize("target_kind", ["labels", "probs"])
def test_softmax_cross_entropy_loss_alone(backend, target_kind, c):
    """``gradient=False`` on bfloat16 logits (widened a block at a time on the CPU, with no
    gradient to round back): the loss of the call with a gradient, bit for bit."""
    rng = np.random.default_rng(92)
    z = bf16(rng, (5, c))
    target = rng.integers(0, c, 5) if target_kind == "labels" else bf16(rng, (5, c)) ** 2
    kw = dict(reduction="none", label_smoothing=0.1, softcap=4.0)
    loss, grad = gk.softmax_cross_entropy(z, target, gradient=False, **kw)
    assert grad is None
    _same_bits_as_float32_rounded(loss, gk.softmax_cross_entropy(z, target, **kw)[0])


def test_true_class_term_is_formed_in_float32(backend):
    """p_y - 1 = -9.1e-5 here: formed in bfloat16, p_y would round to 1 and the gradient of
    the true class to 0."""
    z = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]], BF16)
    _, grad = gk.softmax_cross_entropy(z, np.array([0, 1]), reduction="sum")
    exact = np.exp(0.0) / (np.exp(10.0) + 2.0) * 2  # 1 - p_y
    within_half_ulp(grad[[0, 1], [0, 1]], [-exact, -exact])


def test_soft_targets_of_bfloat16(backend):
    rng = np.random.default_rng(92)
    z = bf16(rng, (5, 11))
    t = rng.dirichlet(np.ones(11), 5).astype(BF16)
    loss, grad = gk.softmax_cross_entropy(z, t, reduction="sum")
    want_loss, want_grad = cross_entropy(
        z.astype(np.float64), t.astype(np.float64), reduction="sum"
    )
    loss_close(loss, want_loss)
    within_half_ulp(grad, want_grad)


def test_elementwise_losses(backend):
    rng = np.random.default_rng(93)
    p, t = bf16(rng, (6, 50)), rng.uniform(0, 1, (6, 50)).astype(BF16)
    p64, t64 = p.astype(np.float64), t.astype(np.float64)
    for mine, ref in (
        (gk.bce_with_logits(p, t), bce_with_logits(p64, t64)),
        (gk.mse(p, t), mse(p64, t64)),
        (gk.huber_loss(p, t, delta=0.5), huber(p64, t64, delta=0.5)),
    ):
        loss_close(mine[0], ref[0])
        within_half_ulp(mine[1], ref[1])


def test_sigmoid_family_and_batch_sum(backend):
    rng = np.random.default_rng(94)
    x = bf16(rng, (300,))
    x64 = x.astype(np.float64)
    s = 1 / (1 + np.exp(-x64))
    within_half_ulp(gk.sigmoid(x), s)
    within_half_ulp(gk.sigmoid_derivative(x), s * (1 - s))
    y = gk.sigmoid(x)
    within_half_ulp(
        gk.sigmoid_backward(x, y), x64 * y.astype(np.float64) * (1 - y.astype(np.float64))
    )
    # a float32 upstream gradient is read as it is, not rounded to bfloat16 first
    g = (np.float32(1) / 3 + rng.standard_normal(300)).astype(np.float32)
    within_half_ulp(
        gk.sigmoid_backward(g, y),
        g.astype(np.float64) * y.astype(np.float64) * (1 - y.astype(np.float64)),
    )
    total = gk.batch_sum(x)
    assert total.dtype == np.float32
    np.testing.assert_allclose(total, x64.sum(), rtol=1e-6)


def test_composite(backend):
    rng = np.random.default_rng(95)
    pred = bf16(rng, (7, 5), 1.0)
    target = np.concatenate([rng.integers(0, 2, (7, 1)), rng.standard_normal((7, 4))], 1)
    target = target.astype(BF16)
    terms = [gk.LossTerm("bce_with_logits", slice(0, 1)), gk.LossTerm("mse", slice(1, 5))]
    loss, grad = gk.composite_loss(pred, target, terms)
    p64, t64 = pred.astype(np.float64), target.astype(np.float64)
    want_bce = bce_with_logits(p64[:, :1], t64[:, :1])
    want_mse = mse(p64[:, 1:], t64[:, 1:])
    loss_close(loss, want_bce[0] + want_mse[0])
    within_half_ulp(grad, np.concatenate([want_bce[1], want_mse[1]], axis=1))


def test_in_place(backend):
    rng = np.random.default_rng(96)
    z = bf16(rng, (4, 9))
    y = np.array([0, 3, 8, 1])
    want = gk.softmax_cross_entropy(z.copy(), y)[1]
    _, grad = gk.softmax_cross_entropy(z, y, out=z)
    assert grad is z
    np.testing.assert_array_equal(z.view(np.uint16), want.view(np.uint16))


def test_a_wider_target_is_not_rounded_to_bfloat16(backend):
    """A float32 target beside a bfloat16 prediction is read in float32 (PyTorch promotes):
    1.001 is not rounded to 1, and a class index 257 not to 256."""
    p = np.array([1.0, 100.0], BF16)
    t = np.array([1.001, 100.3], np.float32)
    loss, _ = gk.mse(p, t, reduction="none")
    np.testing.assert_allclose(loss, (p.astype(np.float64) - t.astype(np.float64)) ** 2, rtol=1e-5)
    pred = np.zeros((1, 300), BF16)
    target = np.array([[257.0]], np.float32)
    term = gk.LossTerm("softmax_cross_entropy", slice(0, 300), slice(0, 1))
    _, grad = gk.composite_loss(pred, target, [term])
    assert np.argmin(grad.astype(np.float32)[0]) == 257


def _widened(args):
    return [
        a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == BF16 else a for a in args
    ]


def _same_bits_as_float32_rounded(got, want):
    """``got`` (bfloat16) holds ``want`` (float32) rounded once to nearest even; NaN where
    it is NaN. A float32 result (a loss) must be equal to the bit."""
    if want.dtype == np.float32 and got.dtype == np.float32:
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        return
    assert got.dtype == BF16
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(
        got[~nan].view(np.uint16), want[~nan].astype(BF16).view(np.uint16)
    )


def _ce_labels(n, c, seed, **options):
    rng = np.random.default_rng(seed)
    z = bf16(rng, (n, c))
    z[1, 2], z[2, :] = np.inf, -np.inf
    z[3, 0] = np.nan
    y = rng.integers(0, c, n)
    y[5::7] = -100
    return gk.softmax_cross_entropy, (z, y), options


CASES = {
    "CE short rows": _ce_labels(1000, 33, 1),
    "CE short rows, capped, smoothed, weighted": _ce_labels(
        777,
        10,
        2,
        softcap=5.0,
        label_smoothing=0.1,
        weight=np.linspace(0.5, 2, 10, dtype=np.float32),
    ),
    "CE long rows, z-loss, per row": _ce_labels(90, 700, 3, z_loss=1e-3, reduction="none"),
    "CE long rows, capped": _ce_labels(70, 300, 4, softcap=20.0, reduction="sum"),
    "CE probabilities": (
        gk.softmax_cross_entropy,
        (
            bf16(np.random.default_rng(5), (300, 40)),
            np.random.default_rng(6).dirichlet(np.ones(40), 300).astype(BF16),
        ),
        {"softcap": 4.0},
    ),
    "BCE": (
        gk.bce_with_logits,
        (
            bf16(np.random.default_rng(7), (70001,)),
            np.random.default_rng(8).uniform(0, 1, 70001).astype(BF16),
        ),
        {},
    ),
    "Huber, float32 target": (
        gk.huber_loss,
        (
            bf16(np.random.default_rng(9), (33, 1000)),
            np.random.default_rng(10).standard_normal((33, 1000)).astype(np.float32),
        ),
        {"reduction": "none"},
    ),
    "sigmoid derivative": (gk.sigmoid_derivative, (bf16(np.random.default_rng(11), (70001,)),), {}),
    "sigmoid backward": (
        gk.sigmoid_backward,
        (
            bf16(np.random.default_rng(12), (257, 31)),
            np.random.default_rng(13).uniform(0, 1, (257, 31)).astype(BF16),
        ),
        {},
    ),
    "batch_sum": (gk.batch_sum, (bf16(np.random.default_rng(14), (70001,)),), {}),
    "batch_sum columns": (
        gk.batch_sum,
        (bf16(np.random.default_rng(15), (1000, 70))[::2, 3:],),
        {"axis": 0},
    ),
    "composite": (
        gk.composite_loss,
        (
            bf16(np.random.default_rng(16), (500, 12)),
            np.concatenate(
                [
                    np.random.default_rng(17).integers(0, 8, (500, 1)),
                    np.random.default_rng(18).standard_normal((500, 4)),
                ],
                1,
            ).astype(BF16),
            [
                gk.LossTerm("softmax_cross_entropy", slice(0, 8), slice(0, 1), softcap=3.0),
                gk.LossTerm("mse", slice(8, 12), slice(1, 5)),
            ],
        ),
        {},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bits_are_the_float32_results_rounded_once(cpu_backend, case):
    """At sizes that take the CPU's row blocks, parallel tasks, long rows and the softcap,
    with inf and NaN logits: every bfloat16 result has the bits of the same call on the
    float32 widening of the inputs, rounded once, and every float32 result equals it."""
    fn, args, options = CASES[case]
    got, want = fn(*args, **options), fn(*_widened(args), **options)
    for g, w in zip(*((r,) if isinstance(r, np.ndarray) else r for r in (got, want)), strict=True):
        _same_bits_as_float32_rounded(g, w)


def test_sharded_bits_are_the_float32_results_rounded_once(cpu_backend):
    rng = np.random.default_rng(19)
    z, y = bf16(rng, (200, 64)), rng.integers(0, 128, 200)
    options = {"class_start": 64, "softcap": 6.0}
    stats = gk.shard_stats(z, y, **options)
    _same_bits_as_float32_rounded(stats, gk.shard_stats(z.astype(np.float32), y, **options))
    got = gk.shard_loss_and_grad(z, y, stats, num_classes=128, z_loss=1e-3, **options)
    want = gk.shard_loss_and_grad(
        z.astype(np.float32), y, stats, num_classes=128, z_loss=1e-3, **options
    )
    for g, w in zip(got, want, strict=True):
        _same_bits_as_float32_rounded(g, w)


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "bce_with_logits", "sigmoid"])
def test_no_float32_copies(cpu_backend, op):
    """bfloat16 data reaches the CPU kernels as its bits: a call allocates its gradient and
    small arrays, not float32 copies of its inputs or outputs (twice the input's bytes
    each)."""
    tracemalloc = pytest.importorskip("tracemalloc")
    rng = np.random.default_rng(20)
    z = bf16(rng, (4096, 256))
    args = {
        "softmax_cross_entropy": (z, rng.integers(0, 256, 4096)),
        "bce_with_logits": (z, z),
        "sigmoid": (z,),
    }[op]
    fn = getattr(gk, op)
    fn(*args)  # compiled before tracing
    tracemalloc.start()
    try:
        fn(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * z.nbytes, f"{peak} bytes allocated for a {z.nbytes}-byte input"


def test_wider_class_probabilities_are_read_in_float32(cpu_backend):
    """float64 class probabilities beside float32 or bfloat16 logits are read in float32,
    the computing dtype (as on CUDA): the same bits as float32 probabilities."""
    rng = np.random.default_rng(21)
    t = rng.dirichlet(np.ones(7), 5)
    for z in (bf16(rng, (5, 7)), rng.standard_normal((5, 7)).astype(np.float32)):
        got = gk.softmax_cross_entropy(z, t, reduction="none")
        want = gk.softmax_cross_entropy(z, t.astype(np.float32), reduction="none")
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8))
