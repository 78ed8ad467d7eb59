"""gk.huber_loss against the float64 reference, PyTorch and finite differences."""

import numpy as np
import pytest
from _refs import (
    FLOATS,
    assert_all_written,
    assert_close,
    fd_gradient,
    huber,
    loss_dtype,
    poisoned,
    random_floats,
)

import gpukernels as gk

REDUCTIONS = ["mean", "sum", "none"]


def check(result, pred, target, *, delta=1.0, reduction="mean", grad_output=None):
    loss, grad = result
    dtype = pred.dtype
    want_loss, want_grad = huber(
        pred, target, delta=delta, reduction=reduction, grad_output=grad_output
    )
    assert type(loss) is np.ndarray and type(grad) is np.ndarray
    assert loss.dtype == loss_dtype(dtype)
    assert loss.shape == (pred.shape if reduction == "none" else ())
    assert grad.dtype == dtype and grad.shape == pred.shape
    assert_close(loss, want_loss, loss_dtype(dtype), what="loss")
    assert_close(grad, want_grad, dtype, what="grad")


def make_case(rng, shape, dtype):
    return random_floats(rng, shape, dtype), random_floats(rng, shape, dtype)


@pytest.mark.parametrize("delta", [0.2, 1.0, 5.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_matches_reference(backend, dtype, reduction, delta):
    rng = np.random.default_rng(61)
    pred, target = make_case(rng, (5, 7), dtype)
    kept = pred.copy()
    go = rng.uniform(-2, 2, pred.shape) if reduction == "none" else -0.5
    result = gk.huber_loss(pred, target, delta=delta, reduction=reduction, grad_output=go)
    check(result, pred, target, delta=delta, reduction=reduction, grad_output=go)
    np.testing.assert_array_equal(pred, kept)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch(backend, dtype, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(62)
    pred, target = make_case(rng, (3, 11), dtype)
    go = rng.uniform(0.5, 2.0, pred.shape) if reduction == "none" else 0.3
    loss, grad = gk.huber_loss(pred, target, delta=0.7, reduction=reduction, grad_output=go)
    x = torch.tensor(pred.astype(np.float64), requires_grad=True)
    t = torch.tensor(target.astype(np.float64))
    want = torch.nn.functional.huber_loss(x, t, reduction=reduction, delta=0.7)
    want.backward(torch.as_tensor(np.asarray(go, np.float64)))
    assert_close(loss, want.detach().numpy(), dtype, what="loss vs torch")
    assert_close(grad, x.grad.numpy(), dtype, what="grad vs torch")


def test_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(63)
    pred, target = make_case(rng, (3, 4), np.float64)
    _, grad = gk.huber_loss(pred, target, delta=1.5)
    fd = fd_gradient(lambda x: gk.huber_loss(x, target, delta=1.5)[0], pred)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_out_and_in_place(backend):
    rng = np.random.default_rng(64)
    pred, target = make_case(rng, (4, 6), np.float32)
    out = poisoned(pred.shape, np.float32)
    result = gk.huber_loss(pred, target, out=out)
    assert result[1] is out
    assert_all_written(out)
    check(result, pred, target)
    kept = pred.copy()
    loss, grad = gk.huber_loss(pred, target, out=pred)
    assert grad is pred
    check((loss, grad.copy()), kept, target)


def test_non_finite(backend):
    """NaN stays NaN in the loss and its gradient; an infinite error is linear: the loss is
    inf and the gradient +-delta, as in PyTorch."""
    pred = np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)
    loss, grad = gk.huber_loss(pred, np.zeros(4, np.float32), delta=2.0, reduction="none")
    np.testing.assert_array_equal(loss, [np.nan, np.inf, np.inf, 0.125])
    np.testing.assert_array_equal(grad, [np.nan, 2.0, -2.0, 0.5])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty(backend, reduction):
    pred = np.ones((0, 3), np.float32)
    loss, grad = gk.huber_loss(pred, pred.copy(), reduction=reduction)
    assert grad.shape == (0, 3) and loss.shape == ((0, 3) if reduction == "none" else ())
    if reduction != "none":
        assert loss == 0.0


@pytest.mark.parametrize("delta", [0.0, -1.0, np.nan, np.inf])
def test_bad_delta(delta):
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="delta"):
        gk.huber_loss(x, x, delta=delta)


@pytest.mark.parametrize("delta", ["1", None, True])
def test_delta_must_be_a_number(delta):
    x = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="delta"):
        gk.huber_loss(x, x, delta=delta)


@pytest.mark.parametrize("n", [1, 31, 33, 1000, 32769])
@pytest.mark.parametrize("dtype", FLOATS)
def test_sizes_cpu(cpu_backend, n, dtype):
    rng = np.random.default_rng(65)
    pred, target = make_case(rng, (n,), dtype)
    for reduction in REDUCTIONS:
        result = gk.huber_loss(pred, target, delta=1.2, reduction=reduction)
        check(result, pred, target, delta=1.2, reduction=reduction)
