"""gk.linear_cross_entropy and gpukernels.torch.linear_cross_entropy against PyTorch autograd
through ``input @ W.T + b`` and ``torch.nn.functional``'s cross-entropy (and PyTorch 2.13's
own ``linear_cross_entropy``), at every chunk size."""

import numpy as np
import pytest
from _refs import FLOATS, assert_close, loss_dtype, torch_cross_entropy_loss

import gpukernels as gk

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_linear_cross_entropy(x, w, y, linear_bias=None, **options):
    """PyTorch's fused ``F.linear_cross_entropy`` (2.13 on); before it (the GPU image's
    2.11), the layer and the loss it fuses."""
    if hasattr(F, "linear_cross_entropy"):
        return F.linear_cross_entropy(x, w, y, linear_bias=linear_bias, **options)
    return F.cross_entropy(F.linear(x, w, linear_bias), y, **options)


def case(rng, dtype, n=19, h=6, v=13):
    x = rng.standard_normal((n, h)).astype(dtype)
    w = (rng.standard_normal((v, h)) / 2).astype(dtype)
    b = rng.standard_normal(v).astype(dtype)
    y = rng.integers(0, v, n)
    y[::4] = -100
    return x, w, b, y


def reference(
    x,
    w,
    b,
    y,
    *,
    reduction="mean",
    weight=None,
    smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    grad_output=None,
):
    """Loss and gradients by PyTorch autograd in float64, through the definitions."""
    xt, wt = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w))
    bt = None if b is None else torch.tensor(b.astype(np.float64), requires_grad=True)
    z = xt @ wt.T + (0 if bt is None else bt)
    cw = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    options = dict(label_smoothing=smoothing, z_loss=z_loss, softcap=softcap)
    total = torch_cross_entropy_loss(z, torch.tensor(y), reduction=reduction, weight=cw, **options)
    up = 1.0 if grad_output is None else torch.tensor(np.asarray(grad_output, np.float64))
    total.backward(up * torch.ones_like(total))
    grads = [xt.grad.numpy(), wt.grad.numpy(), None if bt is None else bt.grad.numpy()]
    return [total.detach().numpy(), *grads]


def check(got, want, dtype):
    loss, *grads = got
    assert loss.dtype == loss_dtype(dtype)
    assert_close(loss, want[0], dtype, what="loss")
    for name, g, e in zip(("input", "weight", "bias"), grads, want[1:], strict=True):
        if e is None:
            assert g is None
            continue
        assert g.dtype == dtype and g.shape == e.shape
        rtol, atol = {np.float16: (3e-3, 3e-3)}.get(dtype, (None, None))
        assert_close(g, e, dtype, rtol=rtol, atol=atol, what=name)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_matches_autograd(backend, dtype, reduction, chunk_size):
    rng = np.random.default_rng(101)
    x, w, b, y = case(rng, dtype)
    go = rng.uniform(0.5, 2.0, len(y)) if reduction == "none" else 0.7
    weight = rng.uniform(0.5, 2.0, w.shape[0]).astype(dtype)
    options = dict(reduction=reduction, label_smoothing=0.1, z_loss=1e-3, softcap=4.0)
    got = gk.linear_cross_entropy(
        x, w, y, linear_bias=b, weight=weight, grad_output=go, chunk_size=chunk_size, **options
    )
    want = reference(
        x,
        w,
        b,
        y,
        reduction=reduction,
        weight=weight,
        smoothing=0.1,
        z_loss=1e-3,
        softcap=4.0,
        grad_output=go,
    )
    check(got, want, dtype)


def test_no_bias_and_chunks_agree(backend):
    rng = np.random.default_rng(102)
    x, w, _, y = case(rng, np.float64)
    results = [gk.linear_cross_entropy(x, w, y, chunk_size=c) for c in (1, 2, 5, None)]
    check(results[0], reference(x, w, None, y), np.float64)
    for other in results[1:]:
        for a, e in zip(other[:3], results[0][:3], strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class weights"])
def test_every_row_ignored_and_empty(backend, weighted):
    """A mean over no row is 0 with zero gradients, with class weights too (their sum over
    no row is 0: 0 / 0 would be NaN)."""
    rng = np.random.default_rng(103)
    x, w, b, _ = case(rng, np.float32)
    weight = rng.uniform(0.5, 2.0, w.shape[0]).astype(np.float32) if weighted else None
    y = np.full(len(x), -100)
    loss, gx, gw, gb = gk.linear_cross_entropy(x, w, y, linear_bias=b, weight=weight)
    assert loss == 0 and not gx.any() and not gw.any() and not gb.any()
    loss, gx, gw, gb = gk.linear_cross_entropy(x[:0], w, y[:0], linear_bias=b, weight=weight)
    assert loss == 0 and gx.shape == (0, 6) and not gw.any()


def test_matches_torch_linear_cross_entropy(cpu_backend):
    """PyTorch's own fused linear cross-entropy (no z-loss or softcap there)."""
    rng = np.random.default_rng(104)
    x, w, b, y = case(rng, np.float32)
    loss, gx, gw, gb = gk.linear_cross_entropy(x, w, y, linear_bias=b, label_smoothing=0.2)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ref = torch_linear_cross_entropy(xt, wt, torch.tensor(y), linear_bias=bt, label_smoothing=0.2)
    ref.backward()
    for got, want in ((loss, ref.detach()), (gx, xt.grad), (gw, wt.grad), (gb, bt.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": True}, TypeError, "chunk_size"),
        ({"linear_bias": np.zeros(4, np.float32)}, ValueError, "linear_bias"),
        ({"linear_bias": np.zeros(5, np.float64)}, TypeError, "linear_bias"),
        ({"z_loss": -1.0}, ValueError, "z_loss"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    x, w = np.ones((3, 2), np.float32), np.ones((5, 2), np.float32)
    with pytest.raises(error, match=match):
        gk.linear_cross_entropy(x, w, np.array([0, 1, 2]), **kwargs)


@pytest.mark.parametrize("rows", [0, 3], ids=["no rows", "every row ignored"])
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"label_smoothing": 5.0}, ValueError),
        ({"label_smoothing": "0.1"}, TypeError),
        ({"z_loss": float("nan")}, ValueError),
        ({"z_loss": "1e-4"}, TypeError),
    ],
)
def test_options_are_checked_when_no_row_takes_part(rows, kwargs, error):
    """No chunk reaches the kernel then: the options are checked before the chunks."""
    x, w = np.ones((rows, 2), np.float32), np.ones((5, 2), np.float32)
    with pytest.raises(error, match=next(iter(kwargs))):
        gk.linear_cross_entropy(x, w, np.full(rows, -100), **kwargs)


def test_bad_shapes_and_labels():
    x, w = np.ones((3, 2), np.float32), np.ones((5, 2), np.float32)
    with pytest.raises(TypeError, match="linear_weight"):
        gk.linear_cross_entropy(x, w.astype(np.float64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="linear_weight"):
        gk.linear_cross_entropy(x, np.ones((5, 3), np.float32), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="target"):
        gk.linear_cross_entropy(x, w, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="class index 5"):
        gk.linear_cross_entropy(x, w, np.array([0, 5, 2]))
    past_int64 = np.array([0, 2**63, 2], np.uint64)
    with pytest.raises(ValueError, match="class index 9223372036854775808"):
        gk.linear_cross_entropy(x, w, past_int64, ignore_index=2**63 - 1)


# ----------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_function_matches_pytorch(cpu_backend, reduction):
    import gpukernels.torch as gkt

    gen = torch.Generator().manual_seed(105)
    x = torch.randn(17, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(23, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(23, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 23, (17,), generator=gen)
    y[::3] = -100
    mine = gkt.linear_cross_entropy(x, w, y, linear_bias=b, reduction=reduction, chunk_size=4)
    up = torch.rand_like(mine)
    mine.backward(up)
    got = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    ref = torch_linear_cross_entropy(x, w, y, linear_bias=b, reduction=reduction)
    ref.backward(up)
    torch.testing.assert_close(mine, ref)
    for g, t in zip(got, (x, w, b), strict=True):
        torch.testing.assert_close(g, t.grad)
    assert torch.autograd.gradcheck(
        lambda a, m: gkt.linear_cross_entropy(a, m, y, reduction="none", chunk_size=5),
        (x.detach().requires_grad_(), w.detach().requires_grad_()),
    )


@pytest.mark.slow
def test_torch_module_and_compile(cpu_backend):
    import gpukernels.torch as gkt

    gen = torch.Generator().manual_seed(106)
    x = torch.randn(12, 8, generator=gen, requires_grad=True)
    w = torch.randn(9, 8, generator=gen, requires_grad=True)
    y = torch.randint(0, 9, (12,), generator=gen)
    loss_fn = gkt.LinearCrossEntropyLoss(label_smoothing=0.1, chunk_size=5)
    compiled = torch.compile(lambda a, m: loss_fn(a, m, y), fullgraph=True, backend="aot_eager")
    compiled(x, w).backward()
    ref_x, ref_w = (t.detach().clone().requires_grad_() for t in (x, w))
    F.cross_entropy(ref_x @ ref_w.T, y, label_smoothing=0.1).backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, ref_w.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_validate(cpu_backend, reduction):
    """On CPU tensors the class indices are checked by default; validate=False skips the
    check as at the array level: the bad row gets a zero gradient and a NaN loss."""
    import gpukernels.torch as gkt

    gen = torch.Generator().manual_seed(108)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 7, 2, 4])
    with pytest.raises(ValueError, match="class index 7 at row 1"):
        gkt.linear_cross_entropy(x, w, y, reduction=reduction)
    with pytest.raises(ValueError, match="class index 7 at row 1"):
        gkt.LinearCrossEntropyLoss(reduction=reduction)(x, w, y)
    loss = gkt.LinearCrossEntropyLoss(reduction=reduction, validate=False)(x, w, y)
    loss.sum().backward()
    assert torch.isnan(loss).any()
    assert torch.all(x.grad[1] == 0)
    ref = x.detach().clone().requires_grad_()
    keep = [0, 2, 3]  # the other rows: their loss and gradient as PyTorch's
    total = F.cross_entropy(ref[keep] @ w.T, y[keep], reduction="sum")
    (total / (3 if reduction == "mean" else 1)).backward()
    torch.testing.assert_close(x.grad[keep], ref.grad[keep])
    if reduction == "none":
        torch.testing.assert_close(
            loss[keep], F.cross_entropy(ref[keep] @ w.T, y[keep], reduction="none")
        )


def test_tensors_at_the_array_level(cpu_backend):
    x, w = torch.randn(5, 3), torch.randn(7, 3)
    loss, gx, gw, gb = gk.linear_cross_entropy(x, w, torch.tensor([0, 1, 2, 3, 6]))
    assert all(type(t) is torch.Tensor for t in (loss, gx, gw)) and gb is None


def test_peak_memory_stays_within_a_chunk(cpu_backend):
    """2048 rows x 32768 classes: the full float32 logits would take 256 MiB (and as much
    again for their gradient). In chunks of 256 rows the call's peak beyond its inputs and
    outputs stays under 64 MiB (NumPy reports its allocations to tracemalloc)."""
    import tracemalloc

    rng = np.random.default_rng(107)
    n, h, v = 2048, 32, 32768
    x = rng.standard_normal((n, h)).astype(np.float32)
    w = (rng.standard_normal((v, h)) / 8).astype(np.float32)
    y = rng.integers(0, v, n)
    gk.linear_cross_entropy(x[:8], w, y[:8], chunk_size=4)  # compile outside the measurement
    outputs = x.nbytes + w.nbytes  # grad_input and grad_linear_weight
    tracemalloc.start()
    try:
        result = gk.linear_cross_entropy(x, w, y, chunk_size=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    extra = peak - outputs
    assert extra < 64 * 2**20, f"peak beyond the outputs: {extra / 2**20:.1f} MiB"
    assert np.isfinite(result[0]) and result[2].shape == (v, h)
