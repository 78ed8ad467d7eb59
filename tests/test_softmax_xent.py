"""gk.softmax_cross_entropy against the float64 reference, PyTorch and finite differences.

Cases taking ``backend`` run on the CPU kernels and on the CUDA kernels under the simulator,
so they stay tiny (the simulator costs milliseconds per thread); larger and odd sizes and the
property tests run on the CPU backend alone.
"""

import numpy as np
import pytest
from _refs import (
    FLOATS,
    assert_all_written,
    assert_close,
    cross_entropy,
    fd_gradient,
    is_0d_array,
    loss_dtype,
    poisoned,
    random_floats,
    random_labels,
    random_probs,
    torch_cross_entropy_loss,
)

import gpukernels as gk
from cpu_fallback.softmax_xent import BLOCK_ROWS

N, C = 4, 5
REDUCTIONS = ["mean", "sum", "none"]


def labels_case(rng, n, c, dtype, option):
    """Logits, integer labels and keyword arguments for one named option."""
    logits = random_floats(rng, (n, c), dtype)
    labels = random_labels(rng, n, c)
    kw = {}
    if option in ("weight", "all"):
        kw["weight"] = rng.uniform(0.2, 2.0, c).astype(dtype)
    if option in ("smoothing", "all"):
        kw["label_smoothing"] = 0.15
    if option == "ignore":
        labels[1] = -100
    if option == "ignore_class":  # an ignore_index that is also a valid class
        kw["ignore_index"] = 2
        labels[[0, 3]] = 2
    if option == "all":
        kw["ignore_index"] = -1
        labels[2] = -1
    return logits, labels, kw


def grad_output_for(rng, reduction, n, dtype):
    if reduction == "none":
        return rng.uniform(0.5, 2.0, n).astype(loss_dtype(dtype))
    return 0.75


def check(result, logits, target, *, reduction="mean", grad_output=None, **kw):
    """Compare one call's (loss, grad) with the float64 reference; returns them."""
    loss, grad = result
    dtype = logits.dtype
    exp_loss, exp_grad = cross_entropy(
        logits, target, reduction=reduction, grad_output=grad_output, **kw
    )
    assert isinstance(loss, np.ndarray) and isinstance(grad, np.ndarray)
    assert loss.dtype == loss_dtype(dtype)
    assert loss.shape == ((logits.shape[0],) if reduction == "none" else ())
    assert grad.dtype == dtype and grad.shape == logits.shape
    assert_close(loss, exp_loss, loss_dtype(dtype), what="loss")
    assert_close(grad, exp_grad, dtype, what="grad")
    return loss, grad


@pytest.mark.parametrize(
    "option", ["plain", "weight", "smoothing", "ignore", "ignore_class", "all"]
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_labels_match_reference(backend, reduction, option):
    rng = np.random.default_rng(1)
    logits, labels, kw = labels_case(rng, N, C, np.float32, option)
    kept = logits.copy()
    go = grad_output_for(rng, reduction, N, np.float32) if option == "all" else None
    result = gk.softmax_cross_entropy(logits, labels, reduction=reduction, grad_output=go, **kw)
    check(result, logits, labels, reduction=reduction, grad_output=go, **kw)
    np.testing.assert_array_equal(logits, kept)  # no out=: the input is left alone


@pytest.mark.parametrize("dtype", FLOATS)
def test_labels_dtypes(backend, dtype):
    rng = np.random.default_rng(2)
    logits, labels, kw = labels_case(rng, N, C, dtype, "all")
    result = gk.softmax_cross_entropy(logits, labels.astype(np.int32), grad_output=1.5, **kw)
    check(result, logits, labels, grad_output=1.5, **kw)


@pytest.mark.parametrize("option", ["plain", "weight_smoothing", "one_hot"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probs_match_reference(backend, reduction, option):
    rng = np.random.default_rng(3)
    logits = random_floats(rng, (N, C), np.float32)
    if option == "one_hot":
        probs = np.eye(C, dtype=np.float32)[random_labels(rng, N, C)]
    else:
        probs = random_probs(rng, N, C, np.float32)
    kw = {}
    if option == "weight_smoothing":
        kw = {"weight": rng.uniform(0.2, 2.0, C).astype(np.float32), "label_smoothing": 0.2}
    go = grad_output_for(rng, reduction, N, np.float32)
    result = gk.softmax_cross_entropy(logits, probs, reduction=reduction, grad_output=go, **kw)
    check(result, logits, probs, reduction=reduction, grad_output=go, **kw)


@pytest.mark.parametrize(
    "dtype, target_dtype",
    [(np.float16, np.float32), (np.float32, np.float64), (np.float64, np.float16)],
)
def test_probs_dtypes(backend, dtype, target_dtype):
    """Soft targets may be any float dtype, whatever the logits' dtype."""
    rng = np.random.default_rng(4)
    logits = random_floats(rng, (N, C), dtype)
    probs = random_probs(rng, N, C, target_dtype)
    weight = rng.uniform(0.2, 2.0, C).astype(dtype)
    result = gk.softmax_cross_entropy(logits, probs, weight=weight, label_smoothing=0.1)
    check(result, logits, probs, weight=weight, label_smoothing=0.1)


@pytest.mark.parametrize("target_kind", ["labels", "probs"])
def test_grad_output_per_row(backend, target_kind):
    """With "none", an upstream gradient per row scales that row's gradient."""
    rng = np.random.default_rng(5)
    logits = random_floats(rng, (N, C), np.float64)
    target = random_labels(rng, N, C) if target_kind == "labels" else random_probs(rng, N, C)
    go = np.array([0.5, -2.0, 0.0, 3.0])
    result = gk.softmax_cross_entropy(logits, target, reduction="none", grad_output=go)
    _, grad = check(result, logits, target, reduction="none", grad_output=go)
    assert np.all(grad[2] == 0.0)


@pytest.mark.parametrize("target_kind", ["labels", "probs"])
def test_out_buffer(backend, target_kind):
    rng = np.random.default_rng(6)
    logits, labels, kw = labels_case(rng, N, C, np.float32, "all")
    target = labels if target_kind == "labels" else random_probs(rng, N, C, np.float32)
    if target_kind == "probs":
        kw.pop("ignore_index")
    out = poisoned((N, C), np.float32)
    result = gk.softmax_cross_entropy(logits, target, out=out, **kw)
    assert result[1] is out
    assert_all_written(out)
    check(result, logits, target, **kw)


def test_out_strided_view(backend):
    """out= a strided view: its elements are written, the memory between them is not."""
    rng = np.random.default_rng(18)
    logits, labels, kw = labels_case(rng, N, C, np.float32, "all")
    buffer = poisoned((N, 2 * C), np.float32)
    out = buffer[:, ::2]
    result = gk.softmax_cross_entropy(logits, labels, out=out, **kw)
    assert result[1] is out
    assert_all_written(out)
    assert np.all(np.isnan(buffer[:, 1::2]))
    check(result, logits, labels, **kw)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("target_kind", ["labels", "probs"])
def test_out_is_input(backend, dtype, target_kind):
    """In-place gradient: the logits' memory receives the gradient, and the loss is right."""
    rng = np.random.default_rng(7)
    logits, labels, kw = labels_case(rng, N, C, dtype, "all")
    target = labels if target_kind == "labels" else random_probs(rng, N, C, dtype)
    if target_kind == "probs":
        kw.pop("ignore_index")
    kept = logits.copy()
    loss, grad = gk.softmax_cross_entropy(logits, target, out=logits, **kw)
    assert grad is logits
    check((loss, grad.copy()), kept, target, **kw)


@pytest.mark.parametrize("layout", ["column_slice", "transposed", "probs_transposed"])
def test_non_contiguous_inputs(backend, layout):
    rng = np.random.default_rng(8)
    if layout == "column_slice":
        logits = random_floats(rng, (N, 2 * C), np.float32)[:, ::2]
        target = random_labels(rng, 2 * N, C)[::2]
    elif layout == "transposed":
        logits = random_floats(rng, (C, N), np.float32).T
        target = random_labels(rng, N, C)
    else:
        logits = random_floats(rng, (N, C + 3), np.float32)[:, 1 : C + 1]
        target = random_probs(rng, C, N, np.float32).T
    assert not logits.flags.c_contiguous
    weight = rng.uniform(0.2, 2.0, 2 * C).astype(np.float32)[::2]
    result = gk.softmax_cross_entropy(logits, target, weight=weight, label_smoothing=0.05)
    check(result, logits, target, weight=weight, label_smoothing=0.05)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["labels", "probs"])
def test_empty_batch(backend, reduction, target_kind):
    """A mean over nothing is 0, never NaN (the one departure from PyTorch)."""
    logits = np.ones((0, C), np.float32)
    target = np.zeros(0, np.int64) if target_kind == "labels" else np.ones((0, C), np.float32)
    loss, grad = gk.softmax_cross_entropy(logits, target, reduction=reduction)
    assert grad.shape == (0, C) and grad.dtype == np.float32
    assert loss.shape == ((0,) if reduction == "none" else ())
    if reduction != "none":
        assert is_0d_array(loss) and loss == 0.0


@pytest.mark.parametrize("weighted", [False, True])
def test_all_rows_ignored(backend, weighted):
    rng = np.random.default_rng(9)
    logits = random_floats(rng, (N, C), np.float32)
    labels = np.full(N, -100, np.int64)
    weight = rng.uniform(0.2, 2.0, C).astype(np.float32) if weighted else None
    out = poisoned((N, C), np.float32)
    loss, grad = gk.softmax_cross_entropy(
        logits, labels, weight=weight, label_smoothing=0.1, out=out
    )
    assert is_0d_array(loss) and loss == 0.0 and not np.isnan(loss)
    assert np.all(grad == 0.0)
    loss, grad = gk.softmax_cross_entropy(logits, labels, reduction="sum")
    assert loss == 0.0 and np.all(grad == 0.0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_non_finite_logit_poisons_only_its_row(backend, bad, reduction):
    rng = np.random.default_rng(10)
    logits = random_floats(rng, (N, C), np.float32)
    labels = random_labels(rng, N, C)
    clean = logits.copy()
    logits[2, (labels[2] + 1) % C] = bad
    loss, grad = gk.softmax_cross_entropy(logits, labels, reduction=reduction)
    exp_loss, exp_grad = cross_entropy(clean, labels, reduction=reduction)
    assert np.all(np.isnan(grad[2])), grad[2]
    others = [0, 1, 3]
    assert_close(grad[others], exp_grad[others], np.float32)
    if reduction == "mean":
        assert np.isnan(loss)
    else:
        assert np.isnan(loss[2])
        assert_close(loss[others], exp_loss[others], np.float32)


def test_negative_infinite_logit_is_probability_zero(backend):
    rng = np.random.default_rng(11)
    logits = random_floats(rng, (N, C), np.float32)
    labels = np.array([0, 1, 2, 3])
    logits[0, 4] = -np.inf
    logits[1, [0, 2, 3, 4]] = -np.inf  # only the true class is left: p_y = 1, loss 0
    loss, grad = gk.softmax_cross_entropy(logits, labels, reduction="none")
    check((loss, grad), logits, labels, reduction="none")
    assert grad[0, 4] == 0.0
    assert loss[1] == 0.0 and np.all(grad[1] == 0.0)


@pytest.mark.parametrize("dtype", FLOATS)
def test_extreme_logits_stay_finite(backend, dtype):
    logits = np.array(
        [
            [1e4, -1e4, 0.5, 3.0, -3.0],
            [-1e4, -1e4, -1e4, -1e4, 1e4],
            [1e4, 1e4, -1e4, 2.0, 1.0],
            [-1e4, 2.0, 1e4, -1e4, 0.0],
        ],
        dtype=dtype,
    )
    labels = np.array([1, 4, 0, 3])
    loss, grad = gk.softmax_cross_entropy(logits, labels, label_smoothing=0.1)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    check((loss, grad), logits, labels, label_smoothing=0.1)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_validate_false_out_of_range_label(backend, reduction):
    """No error; that row gets zero gradient, leaves the mean's divisor, and the loss is NaN."""
    rng = np.random.default_rng(12)
    logits = random_floats(rng, (N, C), np.float32)
    labels = random_labels(rng, N, C)
    weight = rng.uniform(0.2, 2.0, C).astype(np.float32)
    labels[1], labels[3] = C, -5
    out = poisoned((N, C), np.float32)
    loss, grad = gk.softmax_cross_entropy(
        logits, labels, reduction=reduction, weight=weight, validate=False, out=out
    )
    assert_all_written(out)
    assert np.all(grad[[1, 3]] == 0.0)
    as_ignored = np.where((labels < 0) | (labels >= C), -100, labels)
    exp_loss, exp_grad = cross_entropy(logits, as_ignored, reduction=reduction, weight=weight)
    assert_close(grad, exp_grad, np.float32)
    if reduction == "none":
        assert np.isnan(loss[1]) and np.isnan(loss[3])
        assert_close(loss[[0, 2]], exp_loss[[0, 2]], np.float32)
    else:
        assert np.isnan(loss)


@pytest.mark.parametrize("n, c", [(5, 33), (3, 257), (6, 300)])
def test_wider_rows(backend, n, c):
    """Rows longer than a warp or a block of threads, at sizes the simulator can afford."""
    rng = np.random.default_rng(17)
    logits = random_floats(rng, (n, c), np.float32)
    labels = random_labels(rng, n, c)
    labels[n // 2] = -100
    kw = {"weight": rng.uniform(0.2, 2.0, c).astype(np.float32), "label_smoothing": 0.1}
    for reduction in ("mean", "none"):
        result = gk.softmax_cross_entropy(logits, labels, reduction=reduction, **kw)
        check(result, logits, labels, reduction=reduction, **kw)
    probs = random_probs(rng, n, c, np.float32)
    check(gk.softmax_cross_entropy(logits, probs, **kw), logits, probs, **kw)


def test_deterministic(backend):
    rng = np.random.default_rng(13)
    n, c = (N, C) if backend == "cudasim" else (517, 999)
    logits, labels, kw = labels_case(rng, n, c, np.float32, "all")
    first = gk.softmax_cross_entropy(logits, labels, **kw)
    second = gk.softmax_cross_entropy(logits, labels, **kw)
    for a, b in zip(first, second, strict=True):
        assert a.tobytes() == b.tobytes()


def torch_cross_entropy(logits, target, reduction, grad_output, **kw):
    """PyTorch's loss and autograd gradient, in float64 on the same values."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(logits.astype(np.float64), requires_grad=True)
    t = torch.tensor(target.astype(np.int64 if target.ndim == 1 else np.float64))
    if "weight" in kw:
        kw = dict(kw, weight=torch.tensor(kw["weight"].astype(np.float64)))
    loss = torch.nn.functional.cross_entropy(x, t, reduction=reduction, **kw)
    loss.backward(torch.as_tensor(np.asarray(grad_output, dtype=np.float64)))
    return loss.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["labels", "probs"])
def test_matches_torch(backend, dtype, reduction, target_kind):
    pytest.importorskip("torch")
    rng = np.random.default_rng(14)
    logits, labels, kw = labels_case(rng, N, C, dtype, "all")
    target = labels
    if target_kind == "probs":
        target = random_probs(rng, N, C, dtype)
        kw.pop("ignore_index")
    go = grad_output_for(rng, reduction, N, dtype)
    loss, grad = gk.softmax_cross_entropy(logits, target, reduction=reduction, grad_output=go, **kw)
    t_loss, t_grad = torch_cross_entropy(logits, target, reduction, go, **kw)
    assert_close(loss, t_loss, dtype, what="loss vs torch")
    assert_close(grad, t_grad, dtype, what="grad vs torch")


@pytest.mark.parametrize("target_kind", ["labels", "probs"])
def test_gradient_matches_finite_differences(backend, target_kind):
    """d(loss)/d(logits) of the library's own loss, float64, weighted and smoothed."""
    rng = np.random.default_rng(15)
    n, c = 2, 3
    logits = random_floats(rng, (n, c), np.float64)
    target = random_labels(rng, n, c) if target_kind == "labels" else random_probs(rng, n, c)
    kw = {"weight": rng.uniform(0.5, 2.0, c), "label_smoothing": 0.2}

    def loss_of(x):
        return gk.softmax_cross_entropy(x, target, **kw)[0]

    _, grad = gk.softmax_cross_entropy(logits, target, **kw)
    np.testing.assert_allclose(grad, fd_gradient(loss_of, logits), rtol=1e-6, atol=1e-9)


# ---- CPU backend only: odd and large sizes, properties ---------------------------------------


@pytest.mark.parametrize(
    "n, c",
    [(1, 1), (3, 1), (1, 31), (31, 33), (33, 1000), (1000, 31), (2, 32769), (1, 131_079)],
)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_sizes_cpu(cpu_backend, n, c, dtype):
    rng = np.random.default_rng(16)
    logits = random_floats(rng, (n, c), dtype)
    labels = random_labels(rng, n, c)
    weight = rng.uniform(0.2, 2.0, c).astype(dtype)
    # float32 sums of C terms: allow for the row length in the relative error
    rtol = 2e-3 if dtype == np.float16 else 2e-5 + 2e-7 * np.sqrt(c)
    for reduction in ("mean", "none"):
        loss, grad = gk.softmax_cross_entropy(
            logits, labels, reduction=reduction, weight=weight, label_smoothing=0.1
        )
        exp_loss, exp_grad = cross_entropy(
            logits, labels, reduction=reduction, weight=weight, label_smoothing=0.1
        )
        assert_close(loss, exp_loss, np.float32, rtol=rtol, what="loss")
        assert_close(grad, exp_grad, dtype, rtol=rtol, atol=min(rtol, 2e-3), what="grad")
    probs = random_probs(rng, n, c, np.float32)
    loss, grad = gk.softmax_cross_entropy(logits, probs)
    exp_loss, exp_grad = cross_entropy(logits, probs)
    assert_close(loss, exp_loss, np.float32, rtol=rtol, what="loss")
    assert_close(grad, exp_grad, dtype, rtol=rtol, atol=min(rtol, 2e-3), what="grad")


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_large_logits_keep_their_precision(backend, smoothing):
    """The row loss is (m - z_y) + log s: with logits of magnitude 3e4, lse - z_y would be
    rounded at the magnitude of m (0.69336 instead of log 2 = 0.693147)."""
    torch = pytest.importorskip("torch")
    z = np.array([[3e4, 3e4, -3e4], [-2e4, 1e4 + 0.5, 1e4]], np.float32)
    y = np.array([0, 2])
    loss, _ = gk.softmax_cross_entropy(z, y, reduction="none", label_smoothing=smoothing)
    want = torch.nn.functional.cross_entropy(
        torch.tensor(z, dtype=torch.float64),
        torch.tensor(y),
        reduction="none",
        label_smoothing=smoothing,
    ).numpy()
    np.testing.assert_allclose(loss, want, rtol=2e-7)


def test_infinite_weight_of_an_unused_class(backend):
    """Without smoothing a class weight enters only its own rows: an inf or NaN weight of a
    class no row uses leaves every gradient finite, as in PyTorch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(71)
    z = rng.standard_normal((4, 5)).astype(np.float32)
    y = np.array([0, 1, 3, 1])
    for bad in (np.inf, np.nan):
        w = np.array([1.0, 2.0, bad, 0.5, 1.5], np.float32)
        loss, grad = gk.softmax_cross_entropy(z, y, weight=w)
        x = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        want = torch.nn.functional.cross_entropy(
            x, torch.tensor(y), weight=torch.tensor(w).double()
        )
        want.backward()
        assert np.isfinite(grad).all() and np.isfinite(loss)
        np.testing.assert_allclose(loss, want.item(), rtol=1e-6)
        np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-5, atol=1e-7)


def zloss_softcap_reference(torch, z, target, *, reduction, weight, smoothing, z_loss, softcap):
    """PyTorch autograd through the definitions (``_refs.torch_cross_entropy_loss``)."""
    x = torch.tensor(z.astype(np.float64), requires_grad=True)
    probs = target.dtype.kind == "f"
    t = torch.tensor(target.astype(np.float64) if probs else target)
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    options = dict(label_smoothing=smoothing, z_loss=z_loss, softcap=softcap)
    total = torch_cross_entropy_loss(x, t, reduction=reduction, weight=w, **options)
    total.backward(torch.ones_like(total))
    return total.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("targets", ["labels", "probabilities"])
def test_z_loss_and_softcap(backend, dtype, reduction, targets):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(72)
    z = (6 * rng.standard_normal((7, 11))).astype(dtype)
    if targets == "labels":
        target = rng.integers(0, 11, 7)
        target[3] = -100
    else:
        target = rng.dirichlet(np.ones(11), 7).astype(dtype)
    weight = rng.uniform(0.5, 2.0, 11).astype(dtype)
    options = dict(reduction=reduction, weight=weight, smoothing=0.1, z_loss=1e-2, softcap=5.0)
    loss, grad = gk.softmax_cross_entropy(
        z,
        target,
        reduction=reduction,
        weight=weight,
        label_smoothing=0.1,
        z_loss=1e-2,
        softcap=5.0,
    )
    want_loss, want_grad = zloss_softcap_reference(torch, z, target, **options)
    assert_close(loss, want_loss, dtype, what="loss")
    assert_close(grad, want_grad, dtype, what="grad")


def test_softcap_caps_infinite_logits(backend):
    """+inf caps to softcap: a finite row, whose capped class gets no gradient (tanh' = 0)."""
    z = np.array([[np.inf, 0.0, 1.0], [np.nan, 0.0, 1.0]], np.float32)
    loss, grad = gk.softmax_cross_entropy(z, np.array([1, 1]), reduction="none", softcap=3.0)
    capped = np.array([3.0, 0.0, 3.0 * np.tanh(1 / 3.0)])
    want = np.log(np.exp(capped).sum()) - capped[1]
    np.testing.assert_allclose(loss[0], want, rtol=1e-6)
    assert grad[0, 0] == 0 and np.isfinite(grad[0]).all()
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all()


@pytest.mark.parametrize("c", [5, 300])
def test_ignored_rows_loss_does_not_depend_on_the_upstream_gradient(backend, c):
    """An ignored row's loss is 0 and an out-of-range one's NaN, whatever ``grad_output``
    (an inf there would otherwise turn 0 into NaN)."""
    rng = np.random.default_rng(74)
    z = random_floats(rng, (3, c), np.float32)
    labels = np.array([-100, 1, c + 4])
    upstream = np.array([np.inf, 1.0, -2.0], np.float32)
    loss, grad = gk.softmax_cross_entropy(
        z, labels, reduction="none", grad_output=upstream, validate=False
    )
    assert loss[0] == 0 and np.isfinite(loss[1]) and np.isnan(loss[2])
    assert np.all(grad[[0, 2]] == 0)
    total, _ = gk.softmax_cross_entropy(z[:2], labels[:2], reduction="sum", grad_output=np.inf)
    assert total == gk.softmax_cross_entropy(z[1:2], labels[1:2], reduction="sum")[0]


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_rows_left_out_get_a_zero_gradient_whatever_their_logits(backend, softcap):
    """An ignored row and a row with an out-of-range label are written 0 without reading
    their logits, with a cap too (0 times the cap's slope of a NaN would be NaN)."""
    z = np.array([[np.nan, 0.0, 1.0], [np.inf, 2.0, 1.0], [0.5, 0.0, 1.0]], np.float32)
    labels = np.array([-100, 7, 2])
    out = poisoned(z.shape, np.float32)
    loss, grad = gk.softmax_cross_entropy(
        z, labels, reduction="none", softcap=softcap, out=out, validate=False
    )
    assert loss[0] == 0 and np.isnan(loss[1])
    assert np.all(grad[:2] == 0) and np.isfinite(grad[2]).all()


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("c", [1, 2, 10, 100, 128, 129])
@pytest.mark.parametrize("n", [3, BLOCK_ROWS, BLOCK_ROWS + 3, 2 * BLOCK_ROWS + 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_row_blocks_cpu(cpu_backend, n, c, reduction, softcap):
    """Rows go in blocks of up to BLOCK_ROWS (fewer for long rows), rows of up to 128 classes folded
    four at a time: whole and partial blocks and groups, both kinds of row, with every
    option, against PyTorch's maths."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(73 + n + c)
    z = (4 * rng.standard_normal((n, c))).astype(np.float32)
    labels = rng.integers(0, c, n)
    labels[::5] = -100
    weight = rng.uniform(0.5, 2.0, c).astype(np.float32)
    upstream = grad_output_for(rng, reduction, n, np.float32)
    kw = dict(reduction=reduction, weight=weight, label_smoothing=0.1, softcap=softcap)
    out = poisoned((n, c), np.float32)
    loss, grad = gk.softmax_cross_entropy(
        z, labels, **kw, z_loss=1e-2, grad_output=upstream, out=out
    )
    options = dict(reduction=reduction, weight=weight, smoothing=0.1, softcap=softcap)
    want_loss, want_grad = zloss_softcap_reference(torch, z, labels, **options, z_loss=1e-2)
    want_grad *= np.asarray(upstream)[:, None] if reduction == "none" else upstream
    assert_all_written(grad)
    assert_close(loss, want_loss, np.float32, what="loss")
    assert_close(grad, want_grad, np.float32, what="grad")
    plain = gk.softmax_cross_entropy(z, labels, reduction=reduction)
    check(plain, z, labels, reduction=reduction)


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("z_loss", -1e-4, ValueError),
        ("z_loss", float("nan"), ValueError),
        ("z_loss", "0.1", TypeError),
        ("softcap", 0.0, ValueError),
        ("softcap", -2.0, ValueError),
        ("softcap", float("inf"), ValueError),
        ("softcap", True, TypeError),
    ],
)
def test_bad_z_loss_and_softcap(option, value, error):
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(error, match=option):
        gk.softmax_cross_entropy(z, np.array([0, 1]), **{option: value})


# ----------------------------------------------------------------------- the loss alone

LOSS_ALONE_OPTIONS = {
    "plain": {},
    "weighted": dict(weight=np.array([0.5, 2.0, 1.0, 0.25, 3.0]), label_smoothing=0.2),
    "z_loss_softcap": dict(z_loss=1e-2, softcap=2.5),
}


def _loss_alone_case(rng, target_kind, c, dtype, option):
    """Logits, a target with an ignored row and keyword arguments for ``option`` (a
    ``(C,)`` weight is tiled to ``c`` classes)."""
    n = 5
    z = random_floats(rng, (n, c), dtype)
    kw = dict(LOSS_ALONE_OPTIONS[option])
    if "weight" in kw:
        kw["weight"] = np.resize(kw["weight"], c).astype(dtype)
    if target_kind == "labels":
        target = random_labels(rng, n, c)
        target[2] = -100
    else:
        target = random_probs(rng, n, c, np.float32)
    return z, target, kw


@pytest.mark.parametrize("option", list(LOSS_ALONE_OPTIONS))
@pytest.mark.parametrize("c", [5, 300])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("target_kind", ["labels", "probs"])
def test_loss_alone(backend, target_kind, reduction, dtype, c, option):
    """``gradient=False``: no gradient (``None``), and the loss the call with a gradient
    gives, bit for bit, which matches the float64 maths (short rows and long ones, every
    reduction, weights and smoothing, z-loss and softcap)."""
    rng = np.random.default_rng(90 + c)
    z, target, kw = _loss_alone_case(rng, target_kind, c, dtype, option)
    loss, grad = gk.softmax_cross_entropy(z, target, reduction=reduction, gradient=False, **kw)
    assert grad is None
    want, _ = gk.softmax_cross_entropy(z, target, reduction=reduction, **kw)
    assert loss.dtype == want.dtype and loss.shape == want.shape
    np.testing.assert_array_equal(loss.reshape(-1).view(np.uint8), want.reshape(-1).view(np.uint8))
    if option == "z_loss_softcap":
        return  # the float64 maths below have neither; test_z_loss_and_softcap checks them
    exp_loss, _ = cross_entropy(z, target, reduction=reduction, **kw)
    assert_close(loss, exp_loss, loss_dtype(dtype), what="loss")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("c", [5, 300])
def test_loss_alone_keeps_the_row_rules(backend, c):
    """The loss alone follows the rules of the loss: a NaN logit makes its row NaN, an
    ignored row is 0, an out-of-range class index NaN (``validate=False``) or a
    ``ValueError`` (``validate=True``)."""
    rng = np.random.default_rng(91)
    z = random_floats(rng, (4, c), np.float32)
    z[1, 3] = np.nan
    labels = np.array([0, 1, -100, c])
    loss, grad = gk.softmax_cross_entropy(
        z, labels, reduction="none", validate=False, gradient=False
    )
    assert grad is None
    assert np.isfinite(loss[0]) and np.isnan(loss[1]) and loss[2] == 0 and np.isnan(loss[3])
    with pytest.raises(ValueError, match="row 3"):
        gk.softmax_cross_entropy(z, labels, gradient=False)


@pytest.mark.parametrize("target_kind", ["labels", "probs"])
def test_loss_alone_reads_read_only_logits_and_refuses_out(backend, target_kind):
    """The loss alone writes nothing: read-only logits are fine; an ``out`` array beside
    ``gradient=False`` (nothing would be written into it) is refused, as is a ``gradient``
    that is not a bool."""
    rng = np.random.default_rng(92)
    z = random_floats(rng, (3, 4), np.float32)
    z.flags.writeable = False
    target = random_labels(rng, 3, 4) if target_kind == "labels" else random_probs(rng, 3, 4)
    loss, _ = gk.softmax_cross_entropy(z, target, gradient=False)
    assert loss == gk.softmax_cross_entropy(z, target)[0]
    with pytest.raises(ValueError, match="out"):
        gk.softmax_cross_entropy(z, target, gradient=False, out=np.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="gradient"):
        gk.softmax_cross_entropy(z, target, gradient="no")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_alone_of_an_empty_batch(backend, reduction):
    loss, grad = gk.softmax_cross_entropy(
        np.zeros((0, 3), np.float32), np.zeros(0, np.int64), reduction=reduction, gradient=False
    )
    assert grad is None and loss.shape == ((0,) if reduction == "none" else ())
    assert np.all(loss == 0)


@pytest.mark.parametrize("target_kind", ["labels", "probs"])
def test_loss_alone_allocates_no_gradient(cpu_backend, target_kind):
    """The loss alone costs no ``(N, C)`` buffer: a call allocates less than a tenth of the
    logits' bytes, where the call with a gradient allocates them all."""
    tracemalloc = pytest.importorskip("tracemalloc")
    rng = np.random.default_rng(93)
    z = random_floats(rng, (1024, 512), np.float32)
    target = random_labels(rng, 1024, 512)
    if target_kind == "probs":
        target = random_probs(rng, 1024, 512, np.float32)

    def peak(**kw):
        gk.softmax_cross_entropy(z, target, **kw)  # compiled before tracing
        tracemalloc.start()
        try:
            gk.softmax_cross_entropy(z, target, **kw)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(gradient=False) < z.nbytes / 10 < z.nbytes <= peak()
