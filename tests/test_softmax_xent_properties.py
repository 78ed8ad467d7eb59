"""Property tests of gk.softmax_cross_entropy (hypothesis, CPU backend, small sizes)."""

import numpy as np
from _refs import assert_close, cross_entropy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpukernels as gk

PROPERTY = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def rows_and_classes():
    return st.tuples(st.integers(1, 5), st.integers(2, 9))


def logits_strategy(n, c, bound):
    finite = st.floats(-bound, bound, allow_nan=False, allow_infinity=False)
    return st.lists(finite, min_size=n * c, max_size=n * c).map(
        lambda v: np.array(v, dtype=np.float64).reshape(n, c)
    )


@PROPERTY
@given(data=st.data(), shape=rows_and_classes(), shift=st.floats(-1e3, 1e3))
def test_property_shift_invariance(cpu_backend, data, shape, shift):
    n, c = shape
    logits = data.draw(logits_strategy(n, c, 30.0))
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    loss, grad = gk.softmax_cross_entropy(logits, labels, label_smoothing=0.1)
    loss2, grad2 = gk.softmax_cross_entropy(logits + shift, labels, label_smoothing=0.1)
    np.testing.assert_allclose(loss2, loss, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(grad2, grad, rtol=1e-9, atol=1e-9)


@PROPERTY
@given(data=st.data(), shape=rows_and_classes(), smoothing=st.floats(0.0, 1.0))
def test_property_gradient_rows_sum_to_zero(cpu_backend, data, shape, smoothing):
    n, c = shape
    logits = data.draw(logits_strategy(n, c, 50.0))
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    weight = np.array(data.draw(st.lists(st.floats(0.1, 5.0), min_size=c, max_size=c)))
    _, grad = gk.softmax_cross_entropy(
        logits, labels, reduction="sum", weight=weight, label_smoothing=smoothing
    )
    scale = max(1.0, float(np.abs(grad).max()))
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12 * c * scale)


@PROPERTY
@given(
    data=st.data(),
    shape=rows_and_classes(),
    value=st.floats(-1e4, 1e4),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_property_equal_logits_give_log_c(cpu_backend, data, shape, value, dtype):
    n, c = shape
    logits = np.full((n, c), value, dtype=dtype)
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    loss, grad = gk.softmax_cross_entropy(logits, labels)
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(loss, np.log(c), rtol=rtol)
    _, exp_grad = cross_entropy(logits, labels)
    assert_close(grad, exp_grad, dtype)


@PROPERTY
@given(data=st.data(), shape=rows_and_classes())
def test_property_extreme_logits_stay_finite(cpu_backend, data, shape):
    n, c = shape
    logits = data.draw(logits_strategy(n, c, 1e4)).astype(np.float32)
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    loss, grad = gk.softmax_cross_entropy(logits, labels, label_smoothing=0.05)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    exp_loss, exp_grad = cross_entropy(logits, labels, label_smoothing=0.05)
    assert_close(loss, exp_loss, np.float32)
    assert_close(grad, exp_grad, np.float32)
