"""gk.sigmoid, gk.sigmoid_derivative and gk.sigmoid_backward against float64 truth."""

import numpy as np
import pytest
from _refs import (
    FLOATS,
    assert_all_written,
    assert_close,
    poisoned,
    random_floats,
    sigmoid,
    sigmoid_derivative,
    tolerance,
)

import gpukernels as gk

SHAPES = [(7,), (3, 4), (2, 3, 4)]
# every value has an exact float16 form; the far tails keep float16 results normal
TAILS = {
    np.dtype(np.float16): [-9.5, -7.0, 7.0, 9.5],
    np.dtype(np.float32): [-80.0, -40.0, -20.0, 20.0, 40.0, 80.0],
    np.dtype(np.float64): [-700.0, -300.0, -40.0, 40.0, 300.0, 700.0],
}


def check(actual, expected, x, what):
    """Relative accuracy everywhere, down to the dtype's smallest subnormal."""
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == x.dtype and actual.shape == x.shape, what
    rtol, _ = tolerance(x.dtype)
    tiny = float(np.finfo(x.dtype).smallest_subnormal)
    np.testing.assert_allclose(
        actual.astype(np.float64), expected, rtol=rtol, atol=tiny, err_msg=what
    )


def values(rng, shape, dtype):
    """Random values plus the dtype's tails, which stress the stable formulas."""
    x = random_floats(rng, shape, dtype, scale=8.0).reshape(-1)
    tails = TAILS[np.dtype(dtype)]
    x[: len(tails)] = tails
    return x.reshape(shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid(backend, shape, dtype):
    x = values(np.random.default_rng(61), shape, dtype)
    kept = x.copy()
    check(gk.sigmoid(x), sigmoid(x), x, "sigmoid")
    np.testing.assert_array_equal(x, kept)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_derivative(backend, shape, dtype):
    x = values(np.random.default_rng(62), shape, dtype)
    check(gk.sigmoid_derivative(x), sigmoid_derivative(x), x, "sigmoid_derivative")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_backward(backend, shape, dtype):
    rng = np.random.default_rng(63)
    y = sigmoid(random_floats(rng, shape, np.float64)).astype(dtype)
    g = random_floats(rng, shape, dtype)
    yd = y.astype(np.float64)
    check(gk.sigmoid_backward(g, y), g.astype(np.float64) * yd * (1.0 - yd), y, "sigmoid_backward")


@pytest.mark.parametrize(
    ("grad_dtype", "dtype"),
    [(np.float32, np.float16), (np.float64, np.float16), (np.float64, np.float32)],
)
def test_sigmoid_backward_reads_another_grad_dtype_in_the_computing_dtype(
    backend, grad_dtype, dtype
):
    # 70000 is past float16's range, but its product with y (1 - y) = 0.25 is not: the
    # gradient must not be rounded to y's dtype before the multiplication
    y = np.array([0.5, 0.5, 0.25, 0.875], dtype)
    g = np.array([70000.0, -1.5, 3.0e4, 1.0 / 3.0], grad_dtype)
    yd = y.astype(np.float64)
    expected = g.astype(np.float64) * yd * (1.0 - yd)
    check(gk.sigmoid_backward(g, y), expected, y, "sigmoid_backward")


@pytest.mark.parametrize("x", [20.0, 40.0, 80.0, -20.0, -40.0, -80.0])
def test_sigmoid_derivative_where_one_minus_sigmoid_rounds_to_zero(backend, x):
    """In float32, 1 - sigmoid(20) is already 0; sigmoid(x) sigmoid(-x) is not."""
    xs = np.array([x], dtype=np.float32)
    truth = sigmoid_derivative(xs)[0]
    got = gk.sigmoid_derivative(xs)[0]
    assert got > 0.0
    assert abs(float(got) - truth) <= 6e-7 * truth, (got, truth)


@pytest.mark.parametrize("op", ["sigmoid", "sigmoid_derivative"])
def test_large_inputs_stay_finite(backend, op):
    x = np.array([-1e4, -1e3, -89.0, 89.0, 1e3, 1e4, np.inf, -np.inf], dtype=np.float32)
    got = getattr(gk, op)(x)
    assert np.all(np.isfinite(got)) and np.all(got >= 0.0)
    expected = sigmoid(x) if op == "sigmoid" else sigmoid_derivative(x)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-44)


@pytest.mark.parametrize("op", ["sigmoid", "sigmoid_derivative", "sigmoid_backward"])
def test_out_buffer(backend, op):
    rng = np.random.default_rng(64)
    x = sigmoid(random_floats(rng, (3, 5), np.float64)).astype(np.float32)
    args = (random_floats(rng, x.shape, np.float32), x) if op == "sigmoid_backward" else (x,)
    expected = getattr(gk, op)(*args)
    out = poisoned(x.shape, x.dtype)
    got = getattr(gk, op)(*args, out=out)
    assert got is out
    assert_all_written(out)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("op", ["sigmoid", "sigmoid_derivative", "sigmoid_backward"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_out_is_input(backend, op, dtype):
    rng = np.random.default_rng(65)
    x = sigmoid(random_floats(rng, (2, 3, 4), np.float64)).astype(dtype)
    g = random_floats(rng, x.shape, dtype)
    args = (g, x) if op == "sigmoid_backward" else (x,)
    expected = getattr(gk, op)(*args)
    got = getattr(gk, op)(*args, out=x)
    assert got is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("layout", ["strided", "transposed"])
def test_non_contiguous_inputs(backend, layout):
    rng = np.random.default_rng(66)
    if layout == "strided":
        x = random_floats(rng, (3, 10), np.float32, scale=10.0)[:, ::2]
        g = random_floats(rng, (6, 5), np.float32)[::2]
    else:
        x = random_floats(rng, (5, 3), np.float32, scale=10.0).T
        g = random_floats(rng, (5, 3), np.float32).T
    assert not x.flags.c_contiguous
    check(gk.sigmoid(x), sigmoid(x), x, "sigmoid")
    check(gk.sigmoid_derivative(x), sigmoid_derivative(x), x, "sigmoid_derivative")
    y = sigmoid(x).astype(np.float32)
    yt = np.asfortranarray(y)
    expected = g.astype(np.float64) * y * (1.0 - y.astype(np.float64))
    check(gk.sigmoid_backward(g, yt), expected, x, "sigmoid_backward")


@pytest.mark.parametrize("op", ["sigmoid", "sigmoid_derivative"])
def test_empty(backend, op):
    got = getattr(gk, op)(np.ones((0, 3), np.float32))
    assert got.shape == (0, 3) and got.dtype == np.float32
    got = gk.sigmoid_backward(np.ones(0, np.float64), np.ones(0, np.float64))
    assert got.shape == (0,) and got.dtype == np.float64


@pytest.mark.parametrize("dtype", FLOATS)
def test_many_elements(backend, dtype):
    """600 elements: more than one block of threads."""
    rng = np.random.default_rng(70)
    x = values(rng, (600,), dtype)
    check(gk.sigmoid(x), sigmoid(x), x, "sigmoid")
    check(gk.sigmoid_derivative(x), sigmoid_derivative(x), x, "sigmoid_derivative")
    g = random_floats(rng, (600,), dtype)
    y = sigmoid(x).astype(dtype)
    yd = y.astype(np.float64)
    check(gk.sigmoid_backward(g, y), g * yd * (1.0 - yd), x, "sigmoid_backward")


def test_derivative_matches_finite_differences_of_sigmoid(backend):
    x = np.array([-30.0, -5.0, -0.7, 0.0, 0.3, 4.0, 12.0])
    h = 1e-6
    fd = (gk.sigmoid(x + h) - gk.sigmoid(x - h)) / (2.0 * h)
    np.testing.assert_allclose(gk.sigmoid_derivative(x), fd, rtol=1e-6, atol=1e-12)


def test_deterministic(backend):
    rng = np.random.default_rng(67)
    x = random_floats(rng, (5, 6) if backend == "cudasim" else (301, 257), np.float32)
    for op in (gk.sigmoid, gk.sigmoid_derivative):
        assert op(x).tobytes() == op(x).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch(backend, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(68)
    x = random_floats(rng, (4, 5), dtype, scale=12.0)
    g = random_floats(rng, x.shape, dtype)
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    ty = torch.sigmoid(t)
    ty.backward(torch.tensor(g.astype(np.float64)))
    assert_close(gk.sigmoid(x), ty.detach().numpy(), dtype, what="sigmoid vs torch")
    # torch's gradient of sigmoid with upstream g is g * sigmoid'(x)
    assert_close(
        g * gk.sigmoid_derivative(x).astype(np.float64),
        t.grad.numpy(),
        dtype,
        what="sigmoid_derivative vs torch",
    )
    y = ty.detach().numpy().astype(dtype)
    expected = torch.ops.aten.sigmoid_backward(
        torch.tensor(g.astype(np.float64)), torch.tensor(y.astype(np.float64))
    )
    assert_close(
        gk.sigmoid_backward(g, y), expected.numpy(), dtype, what="sigmoid_backward vs torch"
    )


@pytest.mark.parametrize("n", [1, 31, 33, 1000, 32769])
@pytest.mark.parametrize("dtype", FLOATS)
def test_sizes_cpu(cpu_backend, n, dtype):
    rng = np.random.default_rng(69)
    x = values(rng, (n,), dtype) if n > 8 else random_floats(rng, (n,), dtype, scale=8.0)
    check(gk.sigmoid(x), sigmoid(x), x, "sigmoid")
    check(gk.sigmoid_derivative(x), sigmoid_derivative(x), x, "sigmoid_derivative")
    y = gk.sigmoid(x)
    g = random_floats(rng, (n,), dtype)
    yd = y.astype(np.float64)
    check(gk.sigmoid_backward(g, y), g * yd * (1.0 - yd), x, "sigmoid_backward")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("op", ["sigmoid", "sigmoid_derivative"])
def test_nan_gives_nan(backend, op, dtype):
    """NaN in, NaN out, as in PyTorch (the CPU's vectorised exp once turned it into 4.4e-39,
    or 0 in float16), in every lane of a vectorised loop."""
    x = np.linspace(-3, 3, 37).astype(dtype)
    x[[0, 5, 36]] = np.nan
    y = getattr(gk, op)(x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
