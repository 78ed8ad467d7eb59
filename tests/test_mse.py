"""gk.mse against the float64 reference, PyTorch and finite differences."""

import warnings

import numpy as np
import pytest
from _refs import (
    FLOATS,
    assert_all_written,
    assert_close,
    fd_gradient,
    is_0d_array,
    loss_dtype,
    mse,
    poisoned,
    random_floats,
)

import gpukernels as gk

REDUCTIONS = ["mean", "batchmean", "sum", "none"]
SHAPES = [(7,), (3, 4), (2, 3, 4)]


def check(result, pred, target, *, reduction="mean", grad_output=None):
    loss, grad = result
    dtype = pred.dtype
    exp_loss, exp_grad = mse(pred, target, reduction=reduction, grad_output=grad_output)
    assert isinstance(loss, np.ndarray) and isinstance(grad, np.ndarray)
    assert loss.dtype == loss_dtype(dtype)
    assert loss.shape == (pred.shape if reduction == "none" else ())
    assert grad.dtype == dtype and grad.shape == pred.shape
    assert_close(loss, exp_loss, loss_dtype(dtype), what="loss")
    assert_close(grad, exp_grad, dtype, what="grad")
    return loss, grad


def make_case(rng, shape, dtype):
    return random_floats(rng, shape, dtype), random_floats(rng, shape, dtype)


@pytest.mark.parametrize("with_grad_output", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(backend, reduction, with_grad_output):
    rng = np.random.default_rng(41)
    pred, target = make_case(rng, (3, 4), np.float32)
    kept = pred.copy()
    go = None
    if with_grad_output:
        go = rng.uniform(-2.0, 2.0, (3, 4)).astype(np.float32) if reduction == "none" else -0.5
    result = gk.mse(pred, target, reduction=reduction, grad_output=go)
    check(result, pred, target, reduction=reduction, grad_output=go)
    np.testing.assert_array_equal(pred, kept)


def test_batchmean_divides_by_batch(backend):
    """ "batchmean" divides by pred.shape[0]: C times "mean" for (N, C) inputs."""
    rng = np.random.default_rng(42)
    pred, target = make_case(rng, (2, 5), np.float64)
    mean, grad_mean = gk.mse(pred, target, reduction="mean")
    batchmean, grad_batchmean = gk.mse(pred, target, reduction="batchmean")
    np.testing.assert_allclose(batchmean, 5.0 * mean, rtol=1e-13)
    np.testing.assert_allclose(grad_batchmean, 5.0 * grad_mean, rtol=1e-13)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_shapes_and_dtypes(backend, shape, dtype):
    rng = np.random.default_rng(43)
    pred, target = make_case(rng, shape, dtype)
    for reduction in ("mean", "batchmean"):
        check(gk.mse(pred, target, reduction=reduction), pred, target, reduction=reduction)


def test_scalar_grad_output_with_none(backend):
    rng = np.random.default_rng(44)
    pred, target = make_case(rng, (3, 4), np.float64)
    check(
        gk.mse(pred, target, reduction="none", grad_output=3.0),
        pred,
        target,
        reduction="none",
        grad_output=3.0,
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_out_buffer(backend, reduction):
    rng = np.random.default_rng(45)
    pred, target = make_case(rng, (3, 4), np.float32)
    out = poisoned(pred.shape, pred.dtype)
    result = gk.mse(pred, target, reduction=reduction, out=out)
    assert result[1] is out
    assert_all_written(out)
    check(result, pred, target, reduction=reduction)


def test_out_strided_view(backend):
    """out= a strided view: its elements are written, the memory between them is not."""
    rng = np.random.default_rng(53)
    pred, target = make_case(rng, (3, 4), np.float32)
    buffer = poisoned((3, 8), np.float32)
    out = buffer[:, 1::2]
    result = gk.mse(pred, target, reduction="none", out=out)
    assert result[1] is out
    assert_all_written(out)
    assert np.all(np.isnan(buffer[:, ::2]))
    check(result, pred, target, reduction="none")


@pytest.mark.parametrize("dtype", FLOATS)
def test_out_is_input(backend, dtype):
    rng = np.random.default_rng(46)
    pred, target = make_case(rng, (2, 3, 4), dtype)
    kept = pred.copy()
    loss, grad = gk.mse(pred, target, reduction="batchmean", out=pred)
    assert grad is pred
    check((loss, grad.copy()), kept, target, reduction="batchmean")


@pytest.mark.parametrize("layout", ["strided", "transposed"])
def test_non_contiguous_inputs(backend, layout):
    rng = np.random.default_rng(47)
    if layout == "strided":
        pred = random_floats(rng, (3, 8), np.float32)[:, 1::2]
        target = random_floats(rng, (6, 4), np.float32)[::2]
    else:
        pred = random_floats(rng, (4, 3), np.float32).T
        target = random_floats(rng, (4, 3), np.float32).T
    assert not pred.flags.c_contiguous
    for reduction in ("batchmean", "none"):
        check(gk.mse(pred, target, reduction=reduction), pred, target, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_input(backend, reduction):
    pred = np.ones((0, 3), np.float32)
    loss, grad = gk.mse(pred, pred.copy(), reduction=reduction)
    assert grad.shape == (0, 3)
    assert loss.shape == ((0, 3) if reduction == "none" else ())
    if reduction != "none":
        assert is_0d_array(loss) and loss == 0.0


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_several_tiles(backend, reduction):
    """600 elements: three tiles of partial sums (docs/BACKENDS.md), a ragged last one."""
    rng = np.random.default_rng(52)
    pred, target = make_case(rng, (6, 100), np.float32)
    check(gk.mse(pred, target, reduction=reduction), pred, target, reduction=reduction)


def test_deterministic(backend):
    rng = np.random.default_rng(48)
    shape = (3, 4) if backend == "cudasim" else (513, 129)
    pred, target = make_case(rng, shape, np.float32)
    first = gk.mse(pred, target)
    second = gk.mse(pred, target)
    for a, b in zip(first, second, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch(backend, dtype, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(49)
    pred, target = make_case(rng, (2, 3, 4), dtype)
    go = rng.uniform(0.5, 2.0, pred.shape) if reduction == "none" else 0.3
    loss, grad = gk.mse(pred, target, reduction=reduction, grad_output=go)
    x = torch.tensor(pred.astype(np.float64), requires_grad=True)
    t_loss = torch.nn.functional.mse_loss(
        x, torch.tensor(target.astype(np.float64)), reduction=reduction
    )
    t_loss.backward(torch.as_tensor(np.asarray(go, dtype=np.float64)))
    assert_close(loss, t_loss.detach().numpy(), dtype, what="loss vs torch")
    assert_close(grad, x.grad.numpy(), dtype, what="grad vs torch")


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
def test_gradient_matches_finite_differences(backend, reduction):
    rng = np.random.default_rng(50)
    pred, target = make_case(rng, (2, 3), np.float64)

    def loss_of(x):
        return gk.mse(x, target, reduction=reduction)[0]

    _, grad = gk.mse(pred, target, reduction=reduction)
    np.testing.assert_allclose(grad, fd_gradient(loss_of, pred), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n", [1, 31, 33, 1000, 32769])
@pytest.mark.parametrize("dtype", FLOATS)
def test_sizes_cpu(cpu_backend, n, dtype):
    rng = np.random.default_rng(51)
    pred, target = make_case(rng, (n, 3), dtype)
    for reduction in REDUCTIONS:
        check(gk.mse(pred, target, reduction=reduction), pred, target, reduction=reduction)


def test_float16_gradient_past_its_range_is_inf_without_a_warning(cpu_backend):
    """2 (x - t) = +-240000 rounds to +-inf in float16, as IEEE rounding has it; the CPU's
    float32 stand-in is rounded into the gradient without NumPy's overflow warning."""
    pred = np.array([60000.0, -60000.0, 1.0], np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = gk.mse(pred, -pred, reduction="sum")
    assert grad.tolist() == [np.inf, -np.inf, 4.0]
    assert loss == np.float32(2 * 120000.0**2 + 4.0)
