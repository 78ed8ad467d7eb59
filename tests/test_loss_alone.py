"""``gradient=False`` of the elementwise losses (``bce_with_logits``, ``mse``,
``huber_loss``): the loss alone, with the bits of the call that computes the gradient, and
matching the float64 maths; no gradient allocated or written. (``softmax_cross_entropy``'s
is tested beside its other cases, in test_softmax_xent.py.)"""

import numpy as np
import pytest
from _refs import FLOATS, assert_close, bce_with_logits, huber, loss_dtype, mse, random_floats

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
