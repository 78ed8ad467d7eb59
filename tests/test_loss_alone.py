"""``gradient=False`` of the elementwise losses (``bce_with_logits``, ``mse``,
``huber_loss``) and ``composite_loss``: the loss alone, with the bits of the call that
computes the gradient, and matching the float64 maths; no gradient allocated or written.
(``softmax_cross_entropy``'s is tested beside its other cases, in test_softmax_xent.py.)"""

import numpy as np
import pytest
from _refs import (
    FLOATS,
    assert_close,
    bce_with_logits,
    cross_entropy,
    huber,
    loss_dtype,
    mse,
    random_floats,
)

import gpukernels as gk


def _bce_case(rng, shape, dtype):
    """Logits, probabilities, and a weight and a per-class positive weight."""
    weights = {
        "weight": rng.uniform(0.5, 2.0, shape).astype(dtype),
        "pos_weight": rng.uniform(0.5, 3.0, shape[-1:]).astype(dtype),
    }
    return random_floats(rng, shape, dtype), rng.uniform(0, 1, shape).astype(dtype), weights


def _regression_case(rng, shape, dtype):
    return random_floats(rng, shape, dtype), random_floats(rng, shape, dtype), {}


LOSSES = {  # name: (function, options, float64 reference, case)
    "bce_with_logits": (gk.bce_with_logits, {}, bce_with_logits, _bce_case),
    "mse": (gk.mse, {}, mse, _regression_case),
    "huber_loss": (gk.huber_loss, {"delta": 0.5}, huber, _regression_case),
}


def loss_alone(name, x, t, **kw):
    """The loss alone, after checking that no gradient came back."""
    function, options, _, _ = LOSSES[name]
    loss, grad = function(x, t, gradient=False, **options, **kw)
    assert grad is None
    return loss


def same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.ravel(a).view(np.uint8), np.ravel(b).view(np.uint8))


@pytest.mark.parametrize("shape", [(1,), (33,), (31, 33)])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_alone(backend, name, reduction, dtype, shape):
    """The loss of the call with a gradient, bit for bit, and the float64 maths."""
    function, options, reference, case = LOSSES[name]
    x, t, kw = case(np.random.default_rng(len(shape) * 1000 + shape[0]), shape, dtype)
    loss = loss_alone(name, x, t, reduction=reduction, **kw)
    same_bits(loss, function(x, t, reduction=reduction, **options, **kw)[0])
    want, _ = reference(x, t, reduction=reduction, **options, **kw)
    assert_close(loss, want, loss_dtype(dtype), what="loss")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the simulator's
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_alone_of_extreme_and_non_finite_values(backend, name):
    """NaN and infinite predictions and huge values give the losses the call with a
    gradient gives them."""
    function, options, _, case = LOSSES[name]
    x, t, kw = case(np.random.default_rng(5), (40,), np.float32)
    x[:6] = [np.nan, np.inf, -np.inf, 3e38, -3e38, 0.0]
    for reduction in ("none", "sum"):
        loss = loss_alone(name, x, t, reduction=reduction, **kw)
        same_bits(loss, function(x, t, reduction=reduction, **options, **kw)[0])


def test_loss_alone_of_bfloat16(backend):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for name, (function, options, reference, case) in LOSSES.items():
        x, t, kw = case(np.random.default_rng(6), (7, 33), np.float32)
        x, t = x.astype(ml_dtypes.bfloat16), t.astype(ml_dtypes.bfloat16)
        loss = loss_alone(name, x, t, **kw)
        same_bits(loss, function(x, t, **options, **kw)[0])
        assert_close(loss, reference(x, t, **options, **kw)[0], np.float32, what=name)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_alone_reads_read_only_inputs_and_refuses_out(backend, name):
    """Nothing is written: read-only inputs are fine. An ``out`` beside ``gradient=False``
    (nothing would be written into it) is a ``ValueError``, a ``gradient`` that is not a bool
    a ``TypeError``, an upstream gradient is checked as with a gradient."""
    function, options, _, case = LOSSES[name]
    x, t, kw = case(np.random.default_rng(7), (3, 4), np.float32)
    x.flags.writeable = False
    assert loss_alone(name, x, t, **kw) == function(x, t, **options, **kw)[0]
    with pytest.raises(ValueError, match="out: gradient=False computes no gradient"):
        function(x, t, gradient=False, out=np.empty((3, 4), np.float32), **options, **kw)
    with pytest.raises(TypeError, match="gradient must be True or False"):
        function(x, t, gradient=1, **options, **kw)
    with pytest.raises(ValueError, match="grad_output"):
        function(x, t, gradient=False, reduction="none", grad_output=np.ones(5), **options, **kw)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_alone_of_nothing(backend, name, reduction):
    _, _, _, case = LOSSES[name]
    x, t, kw = case(np.random.default_rng(8), (0, 3), np.float32)
    loss = loss_alone(name, x, t, reduction=reduction, **kw)
    assert loss.shape == ((0, 3) if reduction == "none" else ()) and np.all(loss == 0)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_alone_allocates_no_gradient(cpu_backend, name):
    """The reduced loss alone costs no buffer like the input: a call allocates less than a
    tenth of its bytes, where the call with a gradient allocates them all."""
    tracemalloc = pytest.importorskip("tracemalloc")
    function, options, _, case = LOSSES[name]
    x, t, kw = case(np.random.default_rng(9), (256, 512), np.float32)

    def peak(**more):
        function(x, t, **options, **kw, **more)  # compiled before tracing
        tracemalloc.start()
        try:
            function(x, t, **options, **kw, **more)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(gradient=False) < x.nbytes / 10 < x.nbytes <= peak()


def composite_case(rng, n, dtype):
    """Seed 000's head: an objectness logit, a box where there is an object (MSE), three
    classes as a class index there (cross-entropy with a z-loss and a softcap), and a Huber
    term on the box again."""
    pred = random_floats(rng, (n, 8), dtype)
    target = random_floats(rng, (n, 6), dtype)
    target[:, 0] = rng.integers(0, 2, n)
    target[:, 5] = rng.integers(0, 3, n)
    terms = [
        gk.LossTerm("bce_with_logits", slice(0, 1)),
        gk.LossTerm("mse", slice(1, 5), weight=5.0, only_where=0),
        gk.LossTerm(
            "softmax_cross_entropy",
            slice(5, 8),
            slice(5, 6),
            weight=0.5,
            only_where=0,
            z_loss=1e-2,
            softcap=2.0,
        ),
        gk.LossTerm("huber", slice(1, 5), delta=0.5),
    ]
    return pred, target, terms


def composite_reference(pred, target):
    """composite_case's loss in float64, the z-loss and the softcap written out; a term over
    no row adds 0."""
    p, t = pred.astype(np.float64), target.astype(np.float64)
    rows = t[:, 0] != 0
    loss = bce_with_logits(p[:, :1], t[:, :1])[0] + huber(p[:, 1:5], t[:, 1:5], delta=0.5)[0]
    if rows.any():
        z = 2.0 * np.tanh(p[rows, 5:8] / 2.0)
        xent = cross_entropy(z, t[rows, 5].astype(np.int64), reduction="none")[0]
        z_loss = 1e-2 * np.logaddexp.reduce(z, axis=1) ** 2
        loss += 5.0 * mse(p[rows, 1:5], t[rows, 1:5])[0] + 0.5 * np.mean(xent + z_loss)
    return loss


def composite_alone(pred, target, terms):
    loss, grad = gk.composite_loss(pred, target, terms, gradient=False)
    assert grad is None
    same_bits(loss, gk.composite_loss(pred, target, terms)[0])
    return loss


@pytest.mark.parametrize("n", [1, 33, 300])
@pytest.mark.parametrize("dtype", FLOATS)
def test_composite_loss_alone(backend, dtype, n):
    """The bits of the call with a gradient and the float64 maths; a NaN in a term's column
    makes the loss NaN as with the gradient."""
    pred, target, terms = composite_case(np.random.default_rng(n), n, dtype)
    loss = composite_alone(pred, target, terms)
    assert_close(loss, composite_reference(pred, target), loss_dtype(dtype), what="loss")
    pred[0, 2] = np.nan  # read by the Huber term on every row
    assert np.isnan(composite_alone(pred, target, terms))


def test_composite_loss_alone_of_bfloat16_read_only_and_empty(backend):
    """bfloat16, read-only inputs, no rows; an ``out`` beside ``gradient=False`` refused."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    pred, target, terms = composite_case(np.random.default_rng(3), 9, np.float32)
    pred = pred.astype(ml_dtypes.bfloat16)
    pred.flags.writeable = False
    composite_alone(pred, target, terms)
    assert composite_alone(pred[:0], target[:0], terms) == 0
    with pytest.raises(ValueError, match="out: gradient=False computes no gradient"):
        gk.composite_loss(pred, target, terms, gradient=False, out=np.empty_like(pred))


def test_composite_loss_alone_allocates_no_gradient(cpu_backend):
    tracemalloc = pytest.importorskip("tracemalloc")
    pred, target, terms = composite_case(np.random.default_rng(4), 8192, np.float32)

    def peak(**more):
        gk.composite_loss(pred, target, terms, **more)  # compiled before tracing
        tracemalloc.start()
        try:
            gk.composite_loss(pred, target, terms, **more)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # both allocate the (N, terms) row losses (half of pred's bytes here); the call with a
    # gradient allocates pred's bytes more
    assert peak(gradient=False) + pred.nbytes / 2 < peak()
