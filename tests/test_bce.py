"""gk.bce_with_logits against the float64 reference, PyTorch and finite differences."""

import numpy as np
import pytest
from _refs import (
    FLOATS,
    assert_all_written,
    assert_close,
    bce_with_logits,
    fd_gradient,
    is_0d_array,
    loss_dtype,
    poisoned,
    random_floats,
    random_unit,
)

import gpukernels as gk

REDUCTIONS = ["mean", "sum", "none"]
SHAPES = [(7,), (3, 4), (2, 3, 4)]


def make_case(rng, shape, dtype, option):
    """Logits, targets and keyword arguments for one named option."""
    z = random_floats(rng, shape, dtype)
    y = random_unit(rng, shape, dtype)
    kw = {}
    if option in ("weight_full", "both"):
        kw["weight"] = rng.uniform(0.2, 2.0, shape).astype(dtype)
    if option == "weight_last":  # broadcast along the last axis
        kw["weight"] = rng.uniform(0.2, 2.0, shape[-1:]).astype(dtype)
    if option in ("pos_weight", "both"):
        kw["pos_weight"] = rng.uniform(0.5, 3.0, shape[-1:]).astype(dtype)
    if option == "hard":
        y = (rng.random(shape) < 0.5).astype(dtype)
    return z, y, kw


def check(result, z, y, *, reduction="mean", grad_output=None, **kw):
    loss, grad = result
    dtype = z.dtype
    exp_loss, exp_grad = bce_with_logits(z, y, reduction=reduction, grad_output=grad_output, **kw)
    assert isinstance(loss, np.ndarray) and isinstance(grad, np.ndarray)
    assert loss.dtype == loss_dtype(dtype)
    assert loss.shape == (z.shape if reduction == "none" else ())
    assert grad.dtype == dtype and grad.shape == z.shape
    assert_close(loss, exp_loss, loss_dtype(dtype), what="loss")
    assert_close(grad, exp_grad, dtype, what="grad")
    return loss, grad


def grad_output_for(rng, reduction, shape, dtype):
    if reduction == "none":
        return rng.uniform(0.5, 2.0, shape).astype(loss_dtype(dtype))
    return 1.25


@pytest.mark.parametrize(
    "option", ["plain", "hard", "weight_full", "weight_last", "pos_weight", "both"]
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(backend, reduction, option):
    rng = np.random.default_rng(21)
    z, y, kw = make_case(rng, (3, 4), np.float32, option)
    kept = z.copy()
    go = grad_output_for(rng, reduction, z.shape, np.float32) if option == "both" else None
    result = gk.bce_with_logits(z, y, reduction=reduction, grad_output=go, **kw)
    check(result, z, y, reduction=reduction, grad_output=go, **kw)
    np.testing.assert_array_equal(z, kept)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_shapes_and_dtypes(backend, shape, dtype):
    rng = np.random.default_rng(22)
    z, y, kw = make_case(rng, shape, dtype, "both")
    check(gk.bce_with_logits(z, y, **kw), z, y, **kw)


def test_weight_broadcast_over_rows(backend):
    """A (N, 1) weight scales whole rows, as PyTorch broadcasting does."""
    rng = np.random.default_rng(23)
    z, y, _ = make_case(rng, (3, 4), np.float64, "plain")
    weight = rng.uniform(0.2, 2.0, (3, 1))
    check(
        gk.bce_with_logits(z, y, weight=weight, reduction="sum"),
        z,
        y,
        weight=weight,
        reduction="sum",
    )


def test_grad_output_per_element(backend):
    rng = np.random.default_rng(24)
    z, y, kw = make_case(rng, (3, 4), np.float64, "pos_weight")
    go = rng.uniform(-2.0, 2.0, (3, 4))
    go[1, 2] = 0.0
    _, grad = check(
        gk.bce_with_logits(z, y, reduction="none", grad_output=go, **kw),
        z,
        y,
        reduction="none",
        grad_output=go,
        **kw,
    )
    assert grad[1, 2] == 0.0


def test_out_buffer(backend):
    rng = np.random.default_rng(25)
    z, y, kw = make_case(rng, (3, 4), np.float32, "both")
    out = poisoned(z.shape, z.dtype)
    result = gk.bce_with_logits(z, y, out=out, **kw)
    assert result[1] is out
    assert_all_written(out)
    check(result, z, y, **kw)


@pytest.mark.parametrize("dtype", FLOATS)
def test_out_is_input(backend, dtype):
    rng = np.random.default_rng(26)
    z, y, kw = make_case(rng, (2, 3, 4), dtype, "both")
    kept = z.copy()
    loss, grad = gk.bce_with_logits(z, y, out=z, **kw)
    assert grad is z
    check((loss, grad.copy()), kept, y, **kw)


@pytest.mark.parametrize("layout", ["strided", "transposed"])
def test_non_contiguous_inputs(backend, layout):
    rng = np.random.default_rng(27)
    if layout == "strided":
        z = random_floats(rng, (3, 8), np.float32)[:, ::2]
        y = random_unit(rng, (6, 4), np.float32)[::2]
    else:
        z = random_floats(rng, (4, 3), np.float32).T
        y = random_unit(rng, (4, 3), np.float32).T
    assert not z.flags.c_contiguous
    pw = rng.uniform(0.5, 3.0, 8).astype(np.float32)[::2]
    check(
        gk.bce_with_logits(z, y, pos_weight=pw, reduction="none"),
        z,
        y,
        pos_weight=pw,
        reduction="none",
    )


@pytest.mark.parametrize("pw_shape", [(), (1,), (4,), (1, 4), (3, 1), (3, 4), (1, 1, 4)])
def test_pos_weight_broadcasts_against_the_logits(backend, pw_shape):
    """As in PyTorch, pos_weight may take any shape that broadcasts to the logits': per
    class (the last axis), per row, or per element."""
    rng = np.random.default_rng(28)
    z, y = random_floats(rng, (2, 3, 4), np.float32), random_unit(rng, (2, 3, 4), np.float32)
    pw = rng.uniform(0.5, 3.0, pw_shape).astype(np.float32)
    for reduction in REDUCTIONS:
        check(
            gk.bce_with_logits(z, y, pos_weight=pw, reduction=reduction),
            z,
            y,
            pos_weight=pw,
            reduction=reduction,
        )


def test_pos_weight_that_would_grow_the_logits(backend):
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"pos_weight of shape \(2, 3, 4\)"):
        gk.bce_with_logits(z, z, pos_weight=np.ones((2, 3, 4), np.float32))
    z = np.zeros((), np.float32)  # PyTorch refuses (1,) for a 0-d input too
    with pytest.raises(ValueError, match=r"pos_weight of shape \(1,\) does not broadcast to \(\)"):
        gk.bce_with_logits(z, z, pos_weight=np.ones(1, np.float32))


def test_pos_weight_of_a_0d_input(backend):
    z, y = np.array(0.3, np.float32), np.array(0.8, np.float32)
    pw = np.array(2.5, np.float32)
    for reduction in REDUCTIONS:
        check(
            gk.bce_with_logits(z, y, pos_weight=pw, reduction=reduction),
            z,
            y,
            pos_weight=pw,
            reduction=reduction,
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_input(backend, reduction):
    z = np.ones((0, 4), np.float32)
    loss, grad = gk.bce_with_logits(z, z.copy(), reduction=reduction)
    assert grad.shape == (0, 4)
    assert loss.shape == ((0, 4) if reduction == "none" else ())
    if reduction != "none":
        assert is_0d_array(loss) and loss == 0.0


@pytest.mark.parametrize("dtype", FLOATS)
def test_large_logits_stable(backend, dtype):
    z = np.array([[1e4, -1e4, 100.0, -100.0], [40.0, -40.0, 17.0, -17.0]], dtype=dtype)
    y = np.array([[0.0, 1.0, 0.25, 0.75], [1.0, 0.0, 0.5, 0.5]], dtype=dtype)
    pw = np.array([2.0, 0.5, 1.5, 1.0], dtype=dtype)
    loss, grad = gk.bce_with_logits(z, y, pos_weight=pw, reduction="none")
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    check((loss, grad), z, y, pos_weight=pw, reduction="none")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_several_tiles(backend, reduction):
    """600 elements: three tiles of partial sums (docs/BACKENDS.md), a ragged last one."""
    rng = np.random.default_rng(32)
    z, y, kw = make_case(rng, (20, 30), np.float32, "both")
    check(gk.bce_with_logits(z, y, reduction=reduction, **kw), z, y, reduction=reduction, **kw)


def test_deterministic(backend):
    rng = np.random.default_rng(28)
    shape = (3, 4) if backend == "cudasim" else (301, 257)
    z, y, kw = make_case(rng, shape, np.float32, "both")
    first = gk.bce_with_logits(z, y, **kw)
    second = gk.bce_with_logits(z, y, **kw)
    for a, b in zip(first, second, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch(backend, dtype, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(29)
    z, y, kw = make_case(rng, (2, 3, 4), dtype, "both")
    go = grad_output_for(rng, reduction, z.shape, dtype)
    loss, grad = gk.bce_with_logits(z, y, reduction=reduction, grad_output=go, **kw)
    x = torch.tensor(z.astype(np.float64), requires_grad=True)
    tkw = {k: torch.tensor(v.astype(np.float64)) for k, v in kw.items()}
    t_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        x, torch.tensor(y.astype(np.float64)), reduction=reduction, **tkw
    )
    t_loss.backward(torch.as_tensor(np.asarray(go, dtype=np.float64)))
    assert_close(loss, t_loss.detach().numpy(), dtype, what="loss vs torch")
    assert_close(grad, x.grad.numpy(), dtype, what="grad vs torch")


def test_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(30)
    z, y, kw = make_case(rng, (2, 3), np.float64, "both")

    def loss_of(x):
        return gk.bce_with_logits(x, y, **kw)[0]

    _, grad = gk.bce_with_logits(z, y, **kw)
    np.testing.assert_allclose(grad, fd_gradient(loss_of, z), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n", [1, 31, 33, 1000, 32769])
@pytest.mark.parametrize("dtype", FLOATS)
def test_sizes_cpu(cpu_backend, n, dtype):
    rng = np.random.default_rng(31)
    z, y, kw = make_case(rng, (n,), dtype, "both")
    for reduction in REDUCTIONS:
        check(gk.bce_with_logits(z, y, reduction=reduction, **kw), z, y, reduction=reduction, **kw)


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_logit_gives_nan(backend, dtype):
    """A NaN logit makes its loss and gradient NaN (PyTorch), and only its own."""
    z = np.linspace(-4, 4, 21).astype(dtype)
    z[[0, 7]] = np.nan
    y = np.full(21, 0.25, dtype)
    loss, grad = gk.bce_with_logits(z, y, reduction="none")
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(z))
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(z))


@pytest.mark.parametrize("dtype", FLOATS)
def test_infinite_target_without_pos_weight(backend, dtype):
    """Without ``pos_weight`` an infinite target gives the unweighted formula's infinite loss
    and slope (PyTorch's), not the NaN of ``(pos_weight - 1) * y = 0 * inf``."""
    z = np.array([3.0, -3.0, 2.0, 0.5], dtype)
    y = np.array([np.inf, np.inf, -np.inf, 0.25], dtype)
    z64, y64 = z.astype(np.float64), y.astype(np.float64)
    with np.errstate(invalid="ignore"):
        expected_loss = (1 - y64) * z64 + np.logaddexp(0, -z64)
        expected_grad = 1 / (1 + np.exp(-z64)) - y64
    loss, grad = gk.bce_with_logits(z, y, reduction="none")
    np.testing.assert_array_equal(np.isinf(loss), [True, True, True, False])
    np.testing.assert_array_equal(np.sign(loss[:3]), np.sign(expected_loss[:3]))
    np.testing.assert_array_equal(grad[:3], expected_grad[:3].astype(dtype))
    assert_close(loss[3:], expected_loss[3:], loss_dtype(dtype), what="loss")
