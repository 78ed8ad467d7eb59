"""PyTorch: tensors at the array level, and ``gpukernels.torch``'s autograd losses against
``torch.nn.functional`` (loss and ``input.grad``), ``gradcheck``, ``torch.compile`` and a
short training run. CPU tensors here; CUDA tensors in tests/test_gpu.py."""

import warnings
from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import gpukernels as gk  # noqa: E402
import gpukernels.torch as gkt  # noqa: E402

pytestmark = pytest.mark.usefixtures("cpu_backend")

# (rtol, atol) of a result against float64 PyTorch, per input dtype
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def close(got, want, dtype):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)


def ce_case(gen, dtype, n=13, c=7):
    logits = (3 * torch.randn(n, c, generator=gen, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, c, (n,), generator=gen)
    labels[::4] = -100
    weight = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    return logits, labels, weight


# ----------------------------------------------------------------------- array level


def test_tensors_in_tensors_out():
    gen = torch.Generator().manual_seed(0)
    logits, labels, _ = ce_case(gen, torch.float32)
    loss, grad = gk.softmax_cross_entropy(logits, labels)
    assert type(loss) is torch.Tensor and type(grad) is torch.Tensor
    assert loss.shape == () and grad.shape == logits.shape and grad.dtype == torch.float32
    want_loss, want_grad = gk.softmax_cross_entropy(logits.numpy(), labels.numpy())
    np.testing.assert_array_equal(loss.numpy(), want_loss)
    np.testing.assert_array_equal(grad.numpy(), want_grad)
    for result in (gk.sigmoid(logits), gk.batch_sum(logits, axis=0), gk.mse(logits, logits)[1]):
        assert type(result) is torch.Tensor


def test_out_tensor_is_written_in_place_without_a_copy():
    gen = torch.Generator().manual_seed(1)
    logits, labels, _ = ce_case(gen, torch.float32)
    want = gk.softmax_cross_entropy(logits.clone(), labels)[1]
    out = torch.full_like(logits, float("nan"))
    _, grad = gk.softmax_cross_entropy(logits, labels, out=out)
    assert grad is out
    torch.testing.assert_close(out, want)
    pointer = logits.data_ptr()
    _, grad = gk.softmax_cross_entropy(logits, labels, out=logits)
    assert grad is logits and logits.data_ptr() == pointer
    torch.testing.assert_close(logits, want)


def test_bfloat16_out_tensor_is_written_in_place():
    gen = torch.Generator().manual_seed(3)
    logits, labels, _ = ce_case(gen, torch.bfloat16)
    want = gk.softmax_cross_entropy(logits, labels)[1]
    out = torch.full_like(logits, float("nan"))
    pointer = out.data_ptr()
    _, grad = gk.softmax_cross_entropy(logits, labels, out=out)
    assert grad is out and out.data_ptr() == pointer
    assert torch.equal(out.view(torch.int16), want.view(torch.int16))


def test_out_tensor_moves_its_version_on():
    """A backward that saved the old values of a tensor written as ``out`` raises autograd's
    in-place error, as after PyTorch's own ``out=`` functions, rather than using the new ones;
    the version moves on even where the call raises after writing (a bad class index)."""
    x = torch.randn(4, 3, requires_grad=True)
    saved = x * 1.0  # a non-leaf that sin saves for backward
    y = torch.sin(saved).sum()
    with torch.no_grad():
        gk.sigmoid(torch.randn(4, 3), out=saved)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    out = torch.zeros(2, 3)
    version = out._version
    with pytest.raises(ValueError, match="class index"):
        gk.softmax_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 7]), out=out)
    assert out._version > version


def test_out_tensor_that_requires_grad_is_refused_in_grad_mode():
    """As PyTorch refuses ``out=`` arguments that require grad: the write would not be
    recorded. Under ``torch.no_grad()`` it is written (as PyTorch's are)."""
    logits, labels = torch.randn(3, 4), torch.tensor([0, 1, 3])
    for out in (torch.empty(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True) * 2):
        with pytest.raises(ValueError, match="out requires grad"):
            gk.softmax_cross_entropy(logits, labels, out=out)
    x = torch.randn(3, 4, requires_grad=True) * 2
    with pytest.raises(ValueError, match="out requires grad"):
        gk.sigmoid(x, out=x)
    leaf = torch.zeros(3, 4, requires_grad=True)
    with torch.no_grad():
        _, grad = gk.softmax_cross_entropy(logits, labels, out=leaf)
    assert grad is leaf
    torch.testing.assert_close(leaf.detach(), gk.softmax_cross_entropy(logits, labels)[1])


def test_requires_grad_tensors_are_read_without_autograd():
    x = torch.randn(5, 3, requires_grad=True)
    y = gk.sigmoid(x)
    assert not y.requires_grad
    torch.testing.assert_close(y, torch.sigmoid(x.detach()))


def test_mixing_tensors_and_numpy_is_a_type_error():
    with pytest.raises(TypeError, match="target is a numpy.ndarray but pred is a torch.Tensor"):
        gk.mse(torch.ones(3), np.ones(3, np.float32))
    with pytest.raises(TypeError, match="pred is a numpy.ndarray but target is a torch.Tensor"):
        gk.mse(np.ones(3, np.float32), torch.ones(3))


def test_tensor_wrappers_keep_the_signature_and_leave_options_alone():
    import inspect

    from gpukernels._softmax_cross_entropy import softmax_cross_entropy as array_level

    def parameters(fn):
        signature = inspect.signature(fn, follow_wrapped=False)
        return [(p.name, p.kind, p.default) for p in signature.parameters.values()]

    assert parameters(gk.softmax_cross_entropy) == parameters(array_level.__wrapped__)
    logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 4, -100])
    loss = gk.softmax_cross_entropy(logits, target=labels, reduction="sum", weight=None)[0]
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, reduction="sum"))
    # an option is not an array: a tensor there is refused by name, not converted
    with pytest.raises(TypeError, match="z_loss must be a real number, got Tensor"):
        gk.softmax_cross_entropy(logits, labels, z_loss=torch.tensor(1e-4))
    with pytest.raises(TypeError, match="takes 2 positional arguments but 3 were given"):
        gk.softmax_cross_entropy(logits, labels, "sum")


def test_bfloat16_tensors():
    gen = torch.Generator().manual_seed(2)
    logits, labels, _ = ce_case(gen, torch.bfloat16)
    loss, grad = gk.softmax_cross_entropy(logits, labels)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    x = logits.double().requires_grad_()
    want = F.cross_entropy(x, labels)
    want.backward()
    close(loss, want, torch.bfloat16)
    # the gradient is rounded once from float32: within half a bfloat16 ulp of float64
    exact = x.grad.float()
    ulp = torch.where(
        exact == 0, torch.zeros_like(exact), 2.0 ** (torch.floor(torch.log2(exact.abs())) - 7)
    )
    assert ((grad.float() - exact).abs() <= ulp / 2 + 1e-12).all()


def test_cupy_stream_of_a_pytorch_stream():
    """CUDA tensors run on PyTorch's stream, handed to CuPy without a new CUDA stream:
    through the stream protocol where CuPy has ``Stream.from_external`` (CuPy 14, whose
    ``ExternalStream`` warns that it is deprecated), else by handle and device. (Fakes of
    both libraries: this machine has no GPU; tests/test_gpu.py runs the real ones.)"""
    from types import SimpleNamespace

    from gpukernels._tensors import cupy_stream

    made = []

    class TorchStream:
        cuda_stream, device_index = 0x5000, 1

        def __cuda_stream__(self):
            return 0, self.cuda_stream

    def external(ptr, device_id):
        made.append(("ExternalStream", ptr, device_id))

    def from_external(stream):
        made.append(("from_external", stream.__cuda_stream__()[1]))

    cupy_13 = SimpleNamespace(cuda=SimpleNamespace(Stream=object, ExternalStream=external))
    stream_14 = SimpleNamespace(from_external=from_external)
    cupy_14 = SimpleNamespace(cuda=SimpleNamespace(Stream=stream_14, ExternalStream=external))
    cupy_stream(cupy_13, TorchStream())
    cupy_stream(cupy_14, TorchStream())
    assert made == [("ExternalStream", 0x5000, 1), ("from_external", 0x5000)]


# ----------------------------------------------------------------------- autograd losses


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", ["plain", "weighted", "smoothed"])
def test_cross_entropy_matches_torch(dtype, reduction, options):
    gen = torch.Generator().manual_seed(3)
    logits, labels, weight = ce_case(gen, dtype)
    kwargs = {"reduction": reduction}
    if options == "weighted":
        kwargs["weight"] = weight
    if options == "smoothed":
        kwargs["label_smoothing"] = 0.15
    upstream = torch.rand(13, generator=gen, dtype=torch.float64) if reduction == "none" else None
    mine_x = logits.clone().requires_grad_()
    w = kwargs.get("weight")
    mine = gkt.cross_entropy(
        mine_x, labels, **{**kwargs, "weight": None if w is None else w.to(dtype)}
    )
    ref_x = logits.double().requires_grad_()
    ref = F.cross_entropy(ref_x, labels, **kwargs)
    close(mine, ref, dtype)
    if upstream is None:
        mine.backward()
        ref.backward()
    else:
        mine.backward(upstream.to(mine.dtype))
        ref.backward(upstream)
    assert mine_x.grad.dtype == dtype
    close(mine_x.grad, ref_x.grad, dtype)


def test_cross_entropy_with_probabilities():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), -1)
    gkt.cross_entropy(logits, probs, label_smoothing=0.1).backward()
    ref_x = logits.detach().clone().requires_grad_()
    F.cross_entropy(ref_x, probs, label_smoothing=0.1).backward()
    close(logits.grad, ref_x.grad, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target_kind", ["index", "ignored", "probs"])
def test_unbatched_cross_entropy_matches_torch(target_kind, reduction, dtype):
    gen = torch.Generator().manual_seed(12)
    logits = (3 * torch.randn(7, generator=gen, dtype=torch.float64)).to(dtype)
    weight = torch.rand(7, generator=gen, dtype=torch.float64) + 0.5
    target = {
        "index": torch.tensor(4),
        "ignored": torch.tensor(2),
        "probs": torch.softmax(torch.randn(7, generator=gen, dtype=torch.float64), 0),
    }[target_kind]
    kwargs = {"reduction": reduction, "label_smoothing": 0.1}
    if target_kind != "probs":
        kwargs["ignore_index"] = 2
    mine_x = logits.clone().requires_grad_()
    mine_target = target.to(dtype) if target.is_floating_point() else target
    mine = gkt.cross_entropy(mine_x, mine_target, weight.to(dtype), **kwargs)
    ref_x = logits.double().requires_grad_()
    ref = F.cross_entropy(ref_x, target, weight, **kwargs)
    assert mine.shape == ref.shape == ()
    if target_kind == "ignored" and reduction == "mean":
        ref = torch.zeros((), dtype=torch.float64)  # our mean over no row (PyTorch's: NaN)
        ref_x.grad = torch.zeros_like(ref_x)
    else:
        ref.backward(torch.tensor(1.5, dtype=torch.float64))
    close(mine, ref, dtype)
    mine.backward(torch.tensor(1.5, dtype=mine.dtype))
    assert mine_x.grad.shape == (7,) and mine_x.grad.dtype == dtype
    close(mine_x.grad, ref_x.grad, dtype)


def test_unbatched_cross_entropy_module_and_refusals():
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    mine = gkt.CrossEntropyLoss(label_smoothing=0.2)(logits, torch.tensor(3))
    close(
        mine, torch.nn.CrossEntropyLoss(label_smoothing=0.2)(logits, torch.tensor(3)), torch.float64
    )
    with pytest.raises(ValueError, match=r"inplace_backward=True needs a batch .*\(C,\)"):
        gkt.cross_entropy(logits * 1.0, torch.tensor(3), inplace_backward=True)
    with torch.no_grad():  # no backward can follow: nothing is overwritten, nothing refused
        x = logits * 1.0
        close(
            gkt.cross_entropy(x, torch.tensor(3), inplace_backward=True),
            F.cross_entropy(x, torch.tensor(3)),
            torch.float64,
        )
    refusals = [  # (target, error, message): each names the shapes the caller passed
        (torch.tensor([3]), ValueError, r"shape \(5,\) takes .* got shape \(1,\) .*target\[0\]"),
        (torch.rand(4, dtype=torch.float64), ValueError, r"shape \(5,\) .* got shape \(4,\)"),
        (torch.tensor(0.5), TypeError, r"0-d target is a class index .* got torch.float32"),
        (torch.arange(5), TypeError, r"must be a float tensor, got torch.int64"),
    ]
    for bad, error, message in refusals:
        with pytest.raises(error, match=message):
            gkt.cross_entropy(logits, bad)
    for shape in [(), (2, 5, 3)]:
        with pytest.raises(ValueError, match=r"input must be logits \(N, C\) or one unbatched"):
            gkt.cross_entropy(torch.zeros(shape), torch.zeros(shape[:1], dtype=torch.int64))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_elementwise_losses_match_torch(reduction):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    y = torch.rand(4, 6, generator=gen, dtype=torch.float64)
    w, pw = torch.rand(6, dtype=torch.float64) + 0.5, torch.rand(6, dtype=torch.float64) + 0.5
    cases = [
        (
            lambda a: gkt.binary_cross_entropy_with_logits(
                a, y, w, reduction=reduction, pos_weight=pw
            ),
            lambda a: F.binary_cross_entropy_with_logits(
                a, y, w, reduction=reduction, pos_weight=pw
            ),
        ),
        (
            lambda a: gkt.mse_loss(a, y, reduction=reduction),
            lambda a: F.mse_loss(a, y, reduction=reduction),
        ),
        (
            lambda a: gkt.huber_loss(a, y, reduction, 0.3),
            lambda a: F.huber_loss(a, y, reduction=reduction, delta=0.3),
        ),
    ]
    upstream = torch.rand(4, 6, dtype=torch.float64) if reduction == "none" else None
    for mine_fn, ref_fn in cases:
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        mine, ref = mine_fn(a), ref_fn(b)
        close(mine, ref, torch.float64)
        mine.backward(upstream)
        ref.backward(upstream)
        close(a.grad, b.grad, torch.float64)


def test_modules_are_drop_in():
    gen = torch.Generator().manual_seed(6)
    logits, labels, weight = ce_case(gen, torch.float64)
    pairs = [
        (
            gkt.CrossEntropyLoss(weight=weight, label_smoothing=0.1),
            torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1),
            labels,
        ),
        (
            gkt.BCEWithLogitsLoss(pos_weight=weight),
            torch.nn.BCEWithLogitsLoss(pos_weight=weight),
            torch.rand(13, 7, generator=gen, dtype=torch.float64),
        ),
        (gkt.MSELoss(reduction="sum"), torch.nn.MSELoss(reduction="sum"), logits.flip(0)),
        (gkt.HuberLoss(delta=0.5), torch.nn.HuberLoss(delta=0.5), logits.flip(0)),
    ]
    for mine, ref, target in pairs:
        close(mine(logits, target), ref(logits, target), torch.float64)


def test_composite_loss_matches_torch():
    gen = torch.Generator().manual_seed(7)
    pred = torch.randn(9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.cat(
        [torch.randint(0, 2, (9, 1), generator=gen), torch.randn(9, 4, generator=gen)], 1
    ).double()
    terms = [
        gk.LossTerm("bce_with_logits", slice(0, 1)),
        gk.LossTerm("huber", slice(1, 5), only_where=0, delta=0.5, weight=2.0),
    ]
    gkt.composite_loss(pred, target, terms).backward()
    ref_x = pred.detach().clone().requires_grad_()
    rows = target[:, 0] != 0
    ref = F.binary_cross_entropy_with_logits(ref_x[:, 0], target[:, 0]) + 2.0 * F.huber_loss(
        ref_x[rows, 1:5], target[rows, 1:5], delta=0.5
    )
    ref.backward()
    close(pred.grad, ref_x.grad, torch.float64)


def test_gradcheck():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, -100, 4])
    y = torch.rand(4, 5, generator=gen, dtype=torch.float64)
    w = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    for fn in (
        lambda a: gkt.cross_entropy(a, labels, w, label_smoothing=0.2),
        lambda a: gkt.cross_entropy(a, labels, reduction="none"),
        lambda a: gkt.cross_entropy(a, torch.softmax(y, -1)),
        lambda a: gkt.binary_cross_entropy_with_logits(a, y, reduction="sum"),
        lambda a: gkt.mse_loss(a, y, reduction="none"),
        lambda a: gkt.huber_loss(a, y, delta=0.4),
        # in place on a copy (a leaf is refused), a scalar loss (a "none" loss's backward with
        # gradcheck's unit vectors would scale the one gradient several times: refused); an
        # undefined upstream gradient, which gradcheck sends too, gives none for the input
        lambda a: gkt.cross_entropy(a * 1, labels, w, label_smoothing=0.2, inplace_backward=True),
    ):
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_vectorised_jacobian(reduction):
    """jacobian(vectorize=True) runs backward under vmap with a batch of upstream gradients,
    which has no one value to read: the loss must scale by it rather than ask whether it
    is 1 (torch's 'Batching rule not implemented for aten::item' before)."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 2, 3])
    jacobian = torch.autograd.functional.jacobian
    got = jacobian(lambda a: gkt.cross_entropy(a, labels, reduction=reduction), x, vectorize=True)
    want = jacobian(lambda a: F.cross_entropy(a, labels, reduction=reduction), x)
    torch.testing.assert_close(got, want)


def test_second_derivative_raises():
    """A derivative of backward is refused, by name: a second derivative, or a
    Jacobian-vector product by the double-backward trick (``functional.jvp``)."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    loss = gkt.cross_entropy(x, labels)
    with pytest.raises(RuntimeError, match="once differentiable"):
        torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="once differentiable.*jvp"):
        torch.autograd.functional.jvp(lambda a: gkt.cross_entropy(a, labels), x, x)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    for reduction in ("mean", "none"):  # "none" computes its gradients in backward
        loss = gkt.linear_cross_entropy(x, w, labels, reduction=reduction).sum()
        with pytest.raises(RuntimeError, match="once differentiable"):
            torch.autograd.grad(loss, (x, w), create_graph=True)


# ----------------------------------------------------------------------- float16 loss scaling


def test_float16_headroom_is_the_largest_power_of_two_up_to_the_count():
    """The power of two a float16 mean's gradient is computed multiplied by: 2^floor(log2 N),
    at most 2^15; 1 for other reductions and dtypes (a sum's gradients are not small)."""
    from gpukernels._torch_ops import float16_headroom

    x16, x32 = torch.zeros(1, dtype=torch.float16), torch.zeros(1)
    for count, power in (
        (1, 1),
        (2, 2),
        (4095, 2048),
        (4096, 4096),
        (2**15, 2**15),
        (10**6, 2**15),
    ):
        assert float16_headroom(x16, "mean", count) == power, count
    for reduction in ("sum", "none"):
        assert float16_headroom(x16, reduction, 4096) == 1.0
    assert float16_headroom(x32, "mean", 4096) == 1.0


def _float16_case(case, gen):
    """(inputs, our loss, PyTorch's loss) for a float16 mean whose gradients, of the order
    of 1/N, lie in float16's subnormal range or below."""
    if case in ("cross_entropy", "inplace"):
        x = (3 * torch.randn(4096, 64, generator=gen)).half()
        y = torch.randint(0, 64, (4096,), generator=gen)
        inplace = case == "inplace"  # on a copy: the input of the in-place loss is no leaf
        return (
            [x],
            lambda a: gkt.cross_entropy(a.clone(), y, inplace_backward=inplace),
            lambda a: F.cross_entropy(a, y),
        )
    if case == "linear":
        x, w = (torch.randn(shape, generator=gen).half() for shape in ((2048, 16), (64, 16)))
        y = torch.randint(0, 64, (2048,), generator=gen)
        return (
            [x, w],
            lambda a, b: gkt.linear_cross_entropy(a, b, y),
            lambda a, b: F.cross_entropy(a @ b.T, y),
        )
    x = torch.randn(512, 512, generator=gen).half()
    t = (torch.rand if case == "bce" else torch.randn)(512, 512, generator=gen).half()
    ours, theirs = {
        "bce": (gkt.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits),
        "mse": (gkt.mse_loss, F.mse_loss),
        "huber": (gkt.huber_loss, F.huber_loss),
        "composite": (partial(gkt.composite_loss, terms=[gk.LossTerm("mse", slice(0, 512))]),
                      F.mse_loss),
    }[case]  # fmt: skip
    return [x], lambda a: ours(a, t), lambda a: theirs(a, t.double())


@pytest.mark.parametrize(
    "case", ["cross_entropy", "inplace", "bce", "mse", "huber", "composite", "linear"]
)
def test_float16_mean_gradients_survive_a_loss_scale(case):
    """torch.amp.GradScaler multiplies a float16 loss by 2^14 or so, so that the gradients
    of a mean stay clear of float16's underflow. The losses compute the gradient in the
    forward pass, before that scale is known: rounded there as the mean's, most of it would
    be lost (4.8% error on entries of 1e-2 after scaling, most small ones 0). With the
    scale applied in backward to a gradient kept within float16's normal numbers, every
    entry is within about one float16 rounding of float64 maths."""
    scale = 2.0**14
    inputs, mine, ref = _float16_case(case, torch.Generator().manual_seed(5))
    got = [a.clone().requires_grad_() for a in inputs]
    mine(*got).backward(torch.tensor(scale))
    want = [a.double().requires_grad_() for a in inputs]
    ref(*want).backward(torch.tensor(scale, dtype=torch.float64))
    for a, b in zip(got, want, strict=True):
        large = b.grad.abs() > 1e-2
        assert large.float().mean() > 0.01  # enough entries checked at float16's precision
        error = (a.grad.double() - b.grad).abs()
        assert (error[large] / b.grad.abs()[large]).max() < 2**-10
        assert error.max() < 2**-10 * b.grad.abs().max()


def test_float16_mean_keeps_large_weight_gradients_finite():
    """A float16 mean's gradients are computed times a headroom (2^12 here). The weight and
    bias gradients are sums over the rows: times all of it they overflowed float16 where
    PyTorch's are finite (87.5 came out -inf); they keep only what float16 holds. (The input
    gradient, 1/N of a row's, is checked to float16's subnormal spacing.)"""
    gen = torch.Generator().manual_seed(7)
    x = (100 + torch.randn(4096, 4, generator=gen)).half()
    w = (0.01 * torch.randn(8, 4, generator=gen)).half()
    b = torch.zeros(8).half()
    y = torch.randint(0, 2, (4096,), generator=gen)
    got = [a.clone().requires_grad_() for a in (x, w, b)]
    gkt.linear_cross_entropy(got[0], got[1], y, linear_bias=got[2]).backward()
    want = [a.double().requires_grad_() for a in (x, w, b)]
    F.cross_entropy(want[0] @ want[1].T + want[2], y).backward()
    assert want[1].grad.abs().max() > 40  # times 2^12: past float16's 65504
    for a, c in zip(got, want, strict=True):
        assert torch.isfinite(a.grad).all()
        atol = max(2**-9 * c.grad.abs().max(), 2**-24)
        torch.testing.assert_close(a.grad.double(), c.grad, rtol=2**-9, atol=atol)


def test_linear_cross_entropy_computes_gradients_only_for_a_backward(monkeypatch):
    """The gradients (two matrix products a chunk) are computed in the forward pass only
    where its backward uses them: not for ``"none"`` (backward computes them with the
    per-row upstream gradient), nor where no backward can follow. The results are
    PyTorch's either way."""
    from gpukernels import _torch_ops

    asked = []
    core = _torch_ops.headroom_linear_cross_entropy

    def recording(*args, **kwargs):
        asked.append(kwargs["gradients"])
        return core(*args, **kwargs)

    monkeypatch.setattr(_torch_ops, "headroom_linear_cross_entropy", recording)
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 6, (9,), generator=gen)
    want = F.cross_entropy(x @ w.T, y, reduction="none")
    for reduction, grad, expected in [
        ("mean", True, [True]),
        ("none", True, [False, True]),  # forward, then backward
        ("mean", False, [False]),
        ("sum", None, [False]),  # under torch.no_grad()
    ]:
        asked.clear()
        a = x.clone().requires_grad_(bool(grad))
        with torch.set_grad_enabled(grad is not None):
            loss = gkt.linear_cross_entropy(a, w, y, reduction=reduction)
        if grad:
            loss.sum().backward()
            ref = x.clone().requires_grad_()
            F.cross_entropy(ref @ w.T, y, reduction=reduction).sum().backward()
            close(a.grad, ref.grad, torch.float64)
        assert asked == expected
        reduced = {"mean": want.mean(), "sum": want.sum(), "none": want}[reduction]
        close(loss, reduced, torch.float64)
    # an evaluation of a model: every argument it differentiates requires grad
    b = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    params = [t.clone().requires_grad_() for t in (x, w)]
    for mode in (torch.no_grad, torch.inference_mode):
        asked.clear()
        with mode():
            loss = gkt.linear_cross_entropy(*params, y, linear_bias=b)
        assert asked == [False] and not loss.requires_grad
        close(loss, want.mean(), torch.float64)


@pytest.mark.parametrize("case", ["one row of 2^15 taking part", "large weights"])
def test_float16_mean_keeps_large_input_gradients_finite(case):
    """The input gradient of a float16 mean, times the headroom, overflowed where few rows
    take part (a row's gradient is then far more than 1/N of the loss's) or where the
    weights are large: inf where PyTorch's and float64 maths are finite. It keeps only what
    float16 holds, as the weight and bias gradients do."""
    gen = torch.Generator().manual_seed(8)
    if case == "large weights":
        x = torch.full((2, 1), 0.01).half()
        w = torch.tensor([[4e4], [-4e4]]).half()
        y = torch.tensor([1, 1])
    else:
        x = (0.5 * torch.randn(2**15, 16, generator=gen)).half()
        w = (3 * torch.randn(100, 16, generator=gen)).half()
        y = torch.full((2**15,), -100)
        y[0] = 3
    got = [a.clone().requires_grad_() for a in (x, w)]
    gkt.linear_cross_entropy(*got, y).backward()
    want = [a.double().requires_grad_() for a in (x, w)]
    F.cross_entropy(want[0] @ want[1].T, y).backward()
    headroom = min(2 ** (y.shape[0].bit_length() - 1), 2**15)  # float16_headroom's
    assert want[0].grad.abs().max() * headroom > 65504  # times all of it: past float16
    for a, c in zip(got, want, strict=True):
        assert torch.isfinite(a.grad).all()
        atol = max(2**-9 * c.grad.abs().max(), 2**-24)
        torch.testing.assert_close(a.grad.double(), c.grad, rtol=2**-9, atol=atol)


# ----------------------------------------------------------------------- in place


def test_inplace_backward_writes_the_gradient_over_the_input():
    gen = torch.Generator().manual_seed(9)
    base = torch.randn(6, 5, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    logits = base * 2.0  # not a leaf: its memory may be reused
    pointer = logits.data_ptr()
    loss = gkt.cross_entropy(logits, labels, inplace_backward=True)
    loss.backward(torch.tensor(3.0))
    ref_x = base.detach().clone().requires_grad_()
    (3.0 * F.cross_entropy(ref_x * 2.0, labels)).backward()
    close(base.grad, ref_x.grad, torch.float32)
    assert logits.data_ptr() == pointer


def test_inplace_backward_misuse_raises():
    labels = torch.tensor([0, 1, 2])
    leaf = torch.randn(3, 4, requires_grad=True)
    base = (2 * leaf).detach().requires_grad_() * 1.0  # a non-leaf that owns its memory
    for refused, owner, why in (
        (leaf, leaf, "leaf"),  # a parameter cannot be overwritten
        (base[:, :3], base, "view"),  # nor a slice, a transpose, an expanded row...
        (base.t()[:3], base, "view"),
        (base[0].expand(3, 4), base, "view"),
    ):
        kept = owner.detach().clone()
        with pytest.raises(RuntimeError, match=why):
            gkt.cross_entropy(refused, labels, inplace_backward=True)
        assert torch.equal(owner.detach(), kept)  # refused before anything was written
    x = torch.randn(3, 4, requires_grad=True)
    logits = x.exp()  # exp saves its output for backward
    loss = gkt.cross_entropy(logits, labels, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_backward_input_used_after_the_call_raises():
    """After the call the input holds the gradient: a use of it later in the graph would
    have read the gradient as logits, and its own gradient would be lost, so backward
    refuses (whichever side of a sum the loss is on)."""
    labels = torch.tensor([0, 1, 2])
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64)
    for loss_first in (True, False):
        z = x @ w
        if loss_first:
            total = gkt.cross_entropy(z, labels, inplace_backward=True) + (z**2).sum()
        else:
            ce = gkt.cross_entropy(z, labels, inplace_backward=True)
            total = (z**2).sum() + ce
        with pytest.raises(RuntimeError, match="used again after the call"):
            total.backward()
    z = x @ w
    loss = gkt.cross_entropy(z, labels, inplace_backward=True)
    _ = z.argmax(1)  # read without a gradient: backward is fine
    loss.backward()
    ref = w.detach().clone().requires_grad_()
    F.cross_entropy(x @ ref, labels).backward()
    close(w.grad, ref.grad, torch.float64)


def test_inplace_backward_refuses_an_input_that_retains_its_gradient():
    z = torch.randn(3, 4, requires_grad=True) * 1.0
    z.retain_grad()
    kept = z.detach().clone()
    with pytest.raises(RuntimeError, match="retain_grad"):
        gkt.cross_entropy(z, torch.tensor([0, 1, 2]), inplace_backward=True)
    assert torch.equal(z.detach(), kept)  # refused before anything was written


def test_inplace_backward_error_after_the_pass_moves_the_version_on():
    """A class index out of range is found in the pass that overwrote the input: the
    ValueError leaves the input's version moved on, so autograd refuses a graph that had
    saved the logits before (else its gradient would silently use the overwritten ones)."""
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 4, dtype=torch.float64) @ w
    saved = (z**2).sum()  # pow saves z
    version = z._version
    with pytest.raises(ValueError, match="class index 7"):
        gkt.cross_entropy(z, torch.tensor([0, 1, 7]), inplace_backward=True)
    assert z._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()


@pytest.mark.parametrize("pieces", [1, 2], ids=["clone", "cat"])
@pytest.mark.parametrize(
    "upstreams, refused",
    [([1.0, 2.0], None), ([1.0, 1.0], None), ([3.0, 1.0], "retain_graph"), ([1, 1, 1], "inplace")],
)
def test_inplace_backward_twice_through_one_graph(upstreams, refused, pieces):
    """``retain_graph=True`` where the gradient reaches the leaves unchanged (``clone``,
    ``cat``): the first backward hands the gradient in input's memory to autograd, which
    keeps it as the leaves' ``.grad`` (or views of it). A later backward scales a new
    tensor and the leaves get PyTorch's gradients (before, it scaled that memory again: the
    gradient already given changed). Refused: one after a backward that scaled the memory
    (the unscaled gradient is gone), and, by autograd, one after the kept memory was
    accumulated into (its version moved on)."""
    x = torch.randn(4, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 4])

    def leaf_gradients(loss_fn, backwards):
        leaves = [p.clone().requires_grad_() for p in x.chunk(pieces)]
        loss = loss_fn(leaves[0].clone() if pieces == 1 else torch.cat(leaves), labels)
        for u in backwards:
            (u * loss).backward(retain_graph=True)
        return torch.cat([leaf.grad for leaf in leaves])

    ours = partial(gkt.cross_entropy, inplace_backward=True)
    if refused is None:
        want = leaf_gradients(F.cross_entropy, upstreams)
        close(leaf_gradients(ours, upstreams), want, torch.float64)
    else:
        with pytest.raises(RuntimeError, match=refused):
            leaf_gradients(ours, upstreams)


def test_inplace_backward_twice_without_aliasing():
    """Where nothing keeps the handed-out memory (``x * 1.0``: its backward makes a new
    tensor), backward runs again and again with an upstream gradient of 1."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    want = torch.autograd.grad(F.cross_entropy(x, labels), x)[0]
    loss = gkt.cross_entropy(x * 1.0, labels, inplace_backward=True)
    for _ in range(3):
        x.grad = None
        loss.backward(retain_graph=True)
        close(x.grad, want, torch.float64)


def test_inplace_backward_refuses_a_second_derivative_before_writing():
    """``create_graph=True`` is refused before backward scales the gradient in place, and
    counts as no backward: the one after it runs."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    want = torch.autograd.grad(3 * F.cross_entropy(x, labels), x)[0]
    tripled = 3 * gkt.cross_entropy(x * 1.0, labels, inplace_backward=True)
    with pytest.raises(RuntimeError, match="once differentiable"):
        torch.autograd.grad(tripled, x, create_graph=True)
    tripled.backward()
    close(x.grad, want, torch.float64)


# ----------------------------------------------------------------------- torch.compile


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(backend):
    gen = torch.Generator().manual_seed(10)
    layer = torch.nn.Linear(8, 5).double()
    x = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (16,), generator=gen)
    y = torch.rand(16, 5, generator=gen, dtype=torch.float64)

    def step(inputs):
        logits = layer(inputs)
        ce = gkt.cross_entropy(logits * 1.0, labels, label_smoothing=0.1, inplace_backward=True)
        return ce + gkt.mse_loss(logits, y)

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    loss = compiled(x)
    loss.backward()
    got = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    logits = layer(x)
    want = F.cross_entropy(logits, labels, label_smoothing=0.1) + F.mse_loss(logits, y)
    want.backward()
    close(loss, want, torch.float64)
    for g, p in zip(got, layer.parameters(), strict=True):
        close(g, p.grad, torch.float64)


EVALUATION_CASES = [
    (gkt.cross_entropy, F.cross_entropy, "labels"),
    (gkt.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, "probs"),
    (gkt.mse_loss, F.mse_loss, "probs"),
    (gkt.huber_loss, F.huber_loss, "probs"),
    (gkt.MSELoss(reduction="sum"), torch.nn.MSELoss(reduction="sum"), "probs"),
    (
        lambda x, y: gkt.linear_cross_entropy(x, torch.eye(5, dtype=x.dtype), y),
        F.cross_entropy,
        "labels",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("ours, theirs, target", EVALUATION_CASES)
def test_compile_fullgraph_without_grad(ours, theirs, target):
    """An evaluation step compiled whole: inputs that require no grad, and the same under
    ``no_grad`` (the autograd functions are then traced as plain calls)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 4, 1, 2, 3, 0]) if target == "labels" else torch.rand(6, 5).double()
    step = torch.compile(ours, fullgraph=True, backend="aot_eager")
    close(step(x, y), theirs(x, y), torch.float64)
    with torch.no_grad():
        close(step(x.requires_grad_(), y), theirs(x, y), torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "ours, theirs, kind",
    [(gkt.cross_entropy, F.cross_entropy, "labels"), (gkt.mse_loss, F.mse_loss, "values")],
)
def test_compile_float16_mean_with_a_dynamic_batch(ours, theirs, kind):
    """A float16 mean keeps its gradient times a power of two of the batch size: a batch
    marked dynamic compiles (one graph per power of two), not specialised to its size."""
    step = torch.compile(lambda x, y: ours(x, y), fullgraph=True, backend="aot_eager")
    for n in (8, 13, 600):
        gen = torch.Generator().manual_seed(n)
        x = torch.randn(n, 5, generator=gen).half().requires_grad_()
        y = torch.randint(0, 5, (n,), generator=gen) if kind == "labels" else torch.randn(n, 5)
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(y, 0)
        loss = step(x, y.half() if kind == "values" else y)
        loss.backward()
        ref = x.detach().double().requires_grad_()
        want = theirs(ref, y.double() if kind == "values" else y)
        want.backward()
        close(loss, want, torch.float16)
        close(x.grad, ref.grad, torch.float16)


@pytest.mark.slow
def test_compile_composite_loss_with_dynamic_shapes():
    """``dynamic=True`` makes the terms' floats symbolic: their checks still trace."""
    terms = [
        gk.LossTerm("mse", slice(0, 2), weight=0.5),
        gk.LossTerm("huber", slice(2, 4), delta=0.5),
    ]
    step = torch.compile(lambda p, t: gkt.composite_loss(p, t, terms), fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(12)
    for n in (6, 9):
        pred = torch.randn(n, 4, generator=gen, dtype=torch.float64, requires_grad=True)
        target = torch.randn(n, 4, generator=gen, dtype=torch.float64)
        step(pred, target).backward()
        ref = pred.detach().clone().requires_grad_()
        want = 0.5 * F.mse_loss(ref[:, :2], target[:, :2]) + F.huber_loss(
            ref[:, 2:], target[:, 2:], delta=0.5
        )
        want.backward()
        close(pred.grad, ref.grad, torch.float64)


@pytest.mark.slow
def test_compile_with_legacy_reduction_arguments():
    """``size_average`` / ``reduce`` inside a compiled function: no graph break (PyTorch's
    deprecation warning is given in eager calls only)."""
    x = torch.randn(5, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0])
    step = torch.compile(
        lambda z: gkt.cross_entropy(z, labels, size_average=False),
        fullgraph=True,
        backend="aot_eager",
    )
    close(step(x), F.cross_entropy(x, labels, reduction="sum"), torch.float64)


# ----------------------------------------------------------------------- tracing


def _loss_cases():
    """(our loss, PyTorch's, a target maker): every tensor a function takes as its own
    argument (targets, class weights, positive weights), so a trace must see each one."""
    w = torch.rand(5, dtype=torch.float64) + 0.5
    pw = torch.rand(5, dtype=torch.float64) + 0.5
    head = torch.randn(5, 5, dtype=torch.float64)
    terms = [gk.LossTerm("mse", slice(0, 2)), gk.LossTerm("huber", slice(2, 5), delta=0.5)]
    labels = lambda g: torch.randint(0, 5, (6,), generator=g)  # noqa: E731
    values = lambda g: torch.rand(6, 5, generator=g, dtype=torch.float64)  # noqa: E731
    return [
        (
            lambda x, y: gkt.cross_entropy(x, y, w, label_smoothing=0.1),
            lambda x, y: F.cross_entropy(x, y, w, label_smoothing=0.1),
            labels,
        ),
        (
            lambda x, y: gkt.binary_cross_entropy_with_logits(x, y, w, pos_weight=pw),
            lambda x, y: F.binary_cross_entropy_with_logits(x, y, w, pos_weight=pw),
            values,
        ),
        (
            lambda x, y: gkt.cross_entropy(1 * x, y, w, inplace_backward=True),
            lambda x, y: F.cross_entropy(x, y, w),
            labels,
        ),  # (traced as inplace_backward=False: the JIT cannot record the in-place function)
        (gkt.mse_loss, F.mse_loss, values),
        (gkt.HuberLoss(delta=0.5), torch.nn.HuberLoss(delta=0.5), values),
        (
            lambda x, y: gkt.composite_loss(x, y, terms),
            lambda x, y: (
                F.mse_loss(x[:, :2], y[:, :2]) + F.huber_loss(x[:, 2:], y[:, 2:], delta=0.5)
            ),
            values,
        ),
        (
            lambda x, y: gkt.linear_cross_entropy(x, head, y, weight=w),
            lambda x, y: F.cross_entropy(x @ head.T, y, w),
            labels,
        ),
    ]


def _grad_and_loss(loss_fn, x, y):
    x = x.clone().requires_grad_()
    loss = loss_fn(x, y)
    loss.backward()
    return loss, x.grad


@pytest.mark.parametrize("case", range(len(_loss_cases())))
def test_jit_trace_records_the_losses(case):
    """``torch.jit.trace`` records each loss with its tensors as inputs of the graph (none
    read as NumPy arrays and kept as constants, which PyTorch warns of): the traced
    function, called on other inputs, gives PyTorch's loss and gradient. (The composite
    loss's column layout is read from the widths, which the trace keeps, with a warning.)"""
    ours, theirs, target = _loss_cases()[case]
    gen = torch.Generator().manual_seed(40 + case)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*numpy", torch.jit.TracerWarning)
        traced = torch.jit.trace(ours, (x, target(gen)))
    x, y = 3 * torch.randn(6, 5, generator=gen, dtype=torch.float64), target(gen)
    loss, grad = _grad_and_loss(traced, x, y)
    want_loss, want_grad = _grad_and_loss(theirs, x, y)
    close(loss, want_loss, torch.float64)
    close(grad, want_grad, torch.float64)


class _Head(torch.nn.Module):
    """A model whose forward calls the losses as a user's would: a module of ours, and
    functions through the package (``gkt.cross_entropy``) and imported by name."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3).double()
        self.ce = gkt.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))

    def forward(self, x, labels, values):
        z = self.linear(x)
        return self.ce(z, labels) + gkt.mse_loss(z, values) + mse_loss_by_name(z, values)


mse_loss_by_name = gkt.mse_loss


def test_fx_symbolic_trace_keeps_the_losses_as_calls():
    """``torch.fx.symbolic_trace`` records each loss as one call (they take ``Proxy``
    arguments through ``__torch_function__``, as ``torch.nn.functional``'s do), and the
    traced module gives the model's loss and gradients."""
    model = _Head()
    graph_module = torch.fx.symbolic_trace(model)
    called = [n.target for n in graph_module.graph.nodes if n.op == "call_function"]
    assert called.count(gkt.cross_entropy) == 1 and called.count(gkt.mse_loss) == 2
    gen = torch.Generator().manual_seed(46)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (7,), generator=gen)
    values = torch.randn(7, 3, generator=gen, dtype=torch.float64)

    def loss_and_grads(module):
        model.zero_grad()
        loss = module(x, labels, values)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    def theirs(x, labels, values):
        z = model.linear(x)
        return F.cross_entropy(z, labels, model.ce.weight) + 2 * F.mse_loss(z, values)

    want = loss_and_grads(theirs)
    for got in (loss_and_grads(graph_module), loss_and_grads(model)):
        for g, w in zip(got, want, strict=True):
            close(g, w, torch.float64)

    class Sharded(torch.nn.Module):  # recorded only: running it needs a process group
        def forward(self, shard, labels):
            return gkt.vocab_parallel_cross_entropy(shard, labels, reduction="sum")

    graph = torch.fx.symbolic_trace(Sharded()).graph
    called = [n.target.__name__ for n in graph.nodes if n.op == "call_function"]
    assert called == ["vocab_parallel_cross_entropy"]


def test_fake_tensors_get_the_fake_implementations():
    """Under ``FakeTensorMode`` (shape propagation) the losses answer from the custom ops'
    fake implementations: the shapes and dtypes of real calls, gradients included."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    calls = [
        lambda x, n: gkt.cross_entropy(x, torch.zeros(n, dtype=torch.long), reduction="none"),
        lambda x, n: gkt.cross_entropy(
            x.clone(), torch.zeros(n, dtype=torch.long), inplace_backward=True
        ),
        lambda x, n: gkt.mse_loss(x, torch.zeros(n, 5, dtype=x.dtype)),
        lambda x, n: gkt.linear_cross_entropy(
            x, torch.zeros(3, 5, dtype=x.dtype), torch.zeros(n, dtype=torch.long)
        ),
    ]
    for dtype in (torch.float32, torch.bfloat16):
        for call in calls:
            real_x = torch.zeros(4, 5, dtype=dtype, requires_grad=True)
            want = call(real_x, 4)
            want.sum().backward()
            with FakeTensorMode():
                x = torch.empty(4, 5, dtype=dtype, requires_grad=True)
                got = call(x, 4)
                got.sum().backward()
            assert (got.shape, got.dtype) == (want.shape, want.dtype)
            assert (x.grad.shape, x.grad.dtype) == (real_x.grad.shape, real_x.grad.dtype)


class _Logged(torch.Tensor):
    """A tensor subclass that notes the functions called on it (``__torch_function__``)."""

    calls: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_torch_function_subclasses_see_the_call():
    """A ``__torch_function__`` override sees the loss called (a positional or a keyword
    tensor), and its default gives the loss of the plain tensors."""
    gen = torch.Generator().manual_seed(47)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (5,), generator=gen)
    weight = torch.rand(4, generator=gen, dtype=torch.float64)
    _Logged.calls.clear()
    loss = gkt.cross_entropy(x.as_subclass(_Logged), labels)
    assert _Logged.calls[0] is gkt.cross_entropy and type(loss) is _Logged
    close(loss.as_subclass(torch.Tensor), F.cross_entropy(x, labels), torch.float64)
    _Logged.calls.clear()
    loss = gkt.cross_entropy(x, labels, weight=weight.as_subclass(_Logged))
    assert _Logged.calls[0] is gkt.cross_entropy
    close(loss.as_subclass(torch.Tensor), F.cross_entropy(x, labels, weight), torch.float64)


# ----------------------------------------------------------------------- training


def test_training_follows_the_same_loss_curve():
    """A small classifier trained for 40 SGD steps with our loss and with PyTorch's, from
    the same start: the two loss curves agree step by step, and the loss falls."""

    def train(loss_fn):
        torch.manual_seed(11)
        model = torch.nn.Sequential(
            torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        gen = torch.Generator().manual_seed(12)
        centres = torch.randn(4, 10, generator=gen) * 2
        curve = []
        for _ in range(40):
            labels = torch.randint(0, 4, (64,), generator=gen)
            x = centres[labels] + torch.randn(64, 10, generator=gen)
            opt.zero_grad()
            loss = loss_fn(model(x), labels)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        return np.array(curve)

    mine = train(lambda z, y: gkt.cross_entropy(z, y, label_smoothing=0.05))
    ref = train(lambda z, y: F.cross_entropy(z, y, label_smoothing=0.05))
    np.testing.assert_allclose(mine, ref, rtol=1e-4)
    assert mine[-5:].mean() < 0.5 * mine[:5].mean()


def test_cross_entropy_z_loss_and_softcap():
    gen = torch.Generator().manual_seed(13)
    logits, labels, weight = ce_case(gen, torch.float64)
    x = logits.clone().requires_grad_()
    gkt.cross_entropy(x, labels, weight, z_loss=1e-3, softcap=2.5).backward()
    ref_x = logits.clone().requires_grad_()
    capped = 2.5 * torch.tanh(ref_x / 2.5)
    rows = F.cross_entropy(capped, labels, weight, reduction="none")
    valid = labels != -100
    rows = rows + 1e-3 * torch.logsumexp(capped, -1) ** 2 * valid
    (rows.sum() / weight[labels[valid]].sum()).backward()
    close(x.grad, ref_x.grad, torch.float64)
    module = gkt.CrossEntropyLoss(weight, z_loss=1e-3, softcap=2.5)
    close(module(logits, labels), rows.sum() / weight[labels[valid]].sum(), torch.float64)


def test_backend_of_a_tensor_and_unsupported_devices():
    assert gk.backend(torch.ones(2)) == "cpu"
    meta = torch.empty(3, device="meta")
    with pytest.raises(TypeError, match="meta"):
        gk.sigmoid(meta)
    with pytest.raises(TypeError, match="meta"):
        gk.backend(meta)
    with pytest.raises(TypeError, match="meta"):  # beside a CPU tensor
        gk.mse(torch.ones(3), meta)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: torch.zeros(3, 4).to(torch.float8_e4m3fn), "unsupported ScalarType"),
        (lambda: torch.zeros(3, 4).to_sparse(), "Sparse layout"),
        (lambda: torch.zeros(3, 4)._neg_view(), "negative bit"),
    ],
    ids=["float8", "sparse", "lazy negation"],
)
def test_tensors_without_an_array_view_are_a_type_error_by_name(make, reason):
    """A tensor NumPy cannot view in place: PyTorch's reason, under the argument's name, and
    a TypeError whatever PyTorch raised (a RuntimeError for a lazy negation)."""
    labels = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match=rf"^logits: this .* cannot be read in place.*{reason}"):
        gk.softmax_cross_entropy(make(), labels)


def test_targets_that_require_grad_are_refused():
    """PyTorch differentiates its losses' targets; ours do not, so rather than leave such a
    target silently without a gradient they refuse it."""
    x = torch.randn(3, 4, requires_grad=True)
    t = torch.rand(3, 4, requires_grad=True)
    for call in (
        lambda: gkt.mse_loss(x, t),
        lambda: gkt.huber_loss(x, t),
        lambda: gkt.binary_cross_entropy_with_logits(x, t),
        lambda: gkt.cross_entropy(x, torch.softmax(t, -1)),
    ):
        with pytest.raises(RuntimeError, match="target"):
            call()
    gkt.mse_loss(x, t.detach()).backward()  # detached: fine
    weights = torch.rand(4, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"\bweight\b"):
        gkt.cross_entropy(x, torch.tensor([0, 1, 2]), weights)
    with pytest.raises(RuntimeError, match=r"\bpos_weight\b"):
        gkt.binary_cross_entropy_with_logits(x, t.detach(), pos_weight=weights)


def test_arguments_are_refused_by_name():
    """Arrays (and anything else) where a loss takes a tensor, and a class weight that
    requires grad, which no loss differentiates."""
    x, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    array, y = x.numpy(), torch.rand(3, 4)
    for call, name in (
        (lambda: gkt.cross_entropy(array, labels), "input"),
        (lambda: gkt.CrossEntropyLoss()(None, labels), "input"),
        (lambda: gkt.binary_cross_entropy_with_logits(array, y), "input"),
        (lambda: gkt.mse_loss(array, y), "input"),
        (lambda: gkt.huber_loss([1.0], y), "input"),
        (lambda: gkt.composite_loss(array, y, [gk.LossTerm("mse", slice(0, 4))]), "pred"),
        (lambda: gkt.linear_cross_entropy(array, x, labels), "input"),
        (lambda: gkt.linear_cross_entropy(x, array, labels), "linear_weight"),
        (lambda: gkt.cross_entropy(x, labels.numpy()), "target"),
        (lambda: gkt.mse_loss(x, array), "target"),
        (lambda: gkt.composite_loss(x, array, [gk.LossTerm("mse", slice(0, 4))]), "target"),
        (lambda: gkt.cross_entropy(x, labels, [1.0] * 4), "weight"),
        (lambda: gkt.binary_cross_entropy_with_logits(x, y, pos_weight=array[0]), "pos_weight"),
        (lambda: gkt.linear_cross_entropy(x, x, labels, linear_bias=[0.0] * 3), "linear_bias"),
        (lambda: gkt.linear_cross_entropy(x, x, labels, weight=array[0]), "weight"),
    ):
        with pytest.raises(TypeError, match=f"^{name} must be a torch.Tensor"):
            call()
    term = [gk.LossTerm("mse", slice(0, 1))]
    for pred, target, name in ((x[0, 0], y, "pred"), (x, y[0, 0], "target")):  # 0-d
        with pytest.raises(ValueError, match=f"^{name} must be an .* batch"):
            gkt.composite_loss(pred, target, term)
    weight = torch.ones(4, requires_grad=True)
    with pytest.raises(RuntimeError, match="weight"):
        gkt.linear_cross_entropy(x, torch.randn(4, 4), labels, weight=weight)


def test_pytorch_positions_and_deprecated_reductions():
    """Positional calls as PyTorch takes them, its deprecated ``size_average`` and ``reduce``
    slots included, give PyTorch's loss (the deprecated arguments with its warning, at the
    caller's line)."""
    gen = torch.Generator().manual_seed(12)
    x, labels, weight = ce_case(gen, torch.float64)
    y = torch.rand(13, 7, generator=gen, dtype=torch.float64)
    threes = torch.where(labels < 0, 3, labels)  # ignored as ignore_index=3
    flags = (None, False, True)
    legacy = [(a, b) for a in flags for b in flags if (a, b) != (None, None)] + [(0, 1)]
    cases = [
        (gkt.cross_entropy, F.cross_entropy, (threes, weight, None, 3)),
        (gkt.cross_entropy, F.cross_entropy, (labels, None, None, -100, None, "sum", 0.2)),
        (
            gkt.binary_cross_entropy_with_logits,
            F.binary_cross_entropy_with_logits,
            (y, None, None, None, "sum", weight),
        ),  # fmt: skip
        (gkt.mse_loss, F.mse_loss, (y, None, None, "none")),
    ]
    for mine, ref, args in cases:
        close(mine(x, *args), ref(x, *args), torch.float64)
    for size_average, reduce in legacy:
        with pytest.warns(UserWarning, match="deprecated") as function_warning:
            got = gkt.cross_entropy(x, labels, None, size_average, -100, reduce)
        with pytest.warns(UserWarning, match="deprecated") as module_warning:
            module = gkt.MSELoss(size_average, reduce)
        # the warnings name the caller's line, as PyTorch's do
        assert function_warning[0].filename == module_warning[0].filename == __file__
        for module_class in (gkt.CrossEntropyLoss, gkt.BCEWithLogitsLoss):
            with pytest.warns(UserWarning, match="deprecated") as warning:
                module_class(size_average=size_average, reduce=reduce)
            assert warning[0].filename == __file__, module_class
        with pytest.warns(UserWarning):
            want = F.cross_entropy(x, labels, None, size_average, -100, reduce)
        with pytest.warns(UserWarning):
            ref_module = torch.nn.MSELoss(size_average, reduce)
        close(got, want, torch.float64)
        assert module.reduction == ref_module.reduction
        close(module(x, y), ref_module(x, y), torch.float64)
    with pytest.raises(TypeError, match="size_average must be None, a bool or an integer"):
        gkt.mse_loss(x, y, "sum")  # reduction in the place of size_average
    modules = [
        (gkt.CrossEntropyLoss(weight, None, 3), torch.nn.CrossEntropyLoss(weight, None, 3), threes),
        (
            gkt.BCEWithLogitsLoss(None, None, None, "sum", weight),
            torch.nn.BCEWithLogitsLoss(None, None, None, "sum", weight),
            y,
        ),  # fmt: skip
    ]
    for mine, ref, target in modules:
        close(mine(x, target), ref(x, target), torch.float64)


NO_BACKWARD = {  # mode: the context of the call, and whether its input requires grad
    "no_grad": (torch.no_grad, True),
    "inference_mode": (torch.inference_mode, True),
    "input_without_grad": (torch.enable_grad, False),
}


def loss_and_peak(loss):
    """``loss()`` and the peak bytes it allocated (tracemalloc), after two calls that
    compile it and do every lazy set-up."""
    tracemalloc = pytest.importorskip("tracemalloc")
    for _ in range(2):
        loss()
    tracemalloc.start()
    try:
        return loss(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def without_and_with_backward(loss_of, x, mode: str):
    """``loss_of(x)`` where no backward can follow (``mode`` of :data:`NO_BACKWARD`), and
    of a copy of ``x`` requiring grad: the two losses, checked to have the same bits, and
    the peak bytes each call allocated."""
    context, requires_grad = NO_BACKWARD[mode]
    with context():
        x.requires_grad_(requires_grad)
        loss, alone = loss_and_peak(lambda: loss_of(x))
    assert not loss.requires_grad
    differentiated = x.detach().clone().requires_grad_()
    want, kept = loss_and_peak(lambda: loss_of(differentiated))
    assert want.requires_grad
    assert torch.equal(loss, want.detach())
    return loss, alone, kept


@pytest.mark.parametrize("target_kind", ["labels", "probs"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", list(NO_BACKWARD))
def test_cross_entropy_without_backward_computes_the_loss_alone(mode, dtype, target_kind):
    """Where no backward can follow, ``cross_entropy`` computes the loss alone: the loss of
    a call that keeps the gradient, bit for bit (and PyTorch's), with no ``(N, C)``
    gradient allocated, where the differentiated call allocates one."""
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(1024, 512, generator=gen).to(dtype)
    if target_kind == "labels":
        target = torch.randint(0, 512, (1024,), generator=gen)
    else:
        target = torch.softmax(torch.randn(1024, 512, generator=gen), 1).to(dtype)
    loss, alone, kept = without_and_with_backward(
        lambda logits: gkt.cross_entropy(logits, target, label_smoothing=0.1), x, mode
    )
    close(
        loss,
        F.cross_entropy(
            x.double(), target.double() if target_kind == "probs" else target, label_smoothing=0.1
        ),
        torch.float32,
    )
    assert alone < x.nbytes / 4 < x.nbytes <= kept


ELEMENTWISE = {  # name: (ours, PyTorch's, keyword options)
    "bce": (gkt.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, {}),
    "mse": (gkt.mse_loss, F.mse_loss, {}),
    "huber": (gkt.huber_loss, F.huber_loss, {"delta": 0.5}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", list(NO_BACKWARD))
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_losses_without_backward_compute_the_loss_alone(name, mode, dtype):
    """As for cross_entropy: where no backward can follow, the loss alone, with the bits of
    the call that keeps the gradient (a float16 mean's headroom included) and PyTorch's
    value, and no gradient like the input allocated."""
    ours, theirs, options = ELEMENTWISE[name]
    gen = torch.Generator().manual_seed(32)
    x = (2 * torch.randn(512, 256, generator=gen)).to(dtype)
    target = torch.rand(512, 256, generator=gen).to(dtype)
    loss, alone, kept = without_and_with_backward(
        lambda pred: ours(pred, target, **options), x, mode
    )
    close(loss, theirs(x.double(), target.double(), **options), torch.float32)
    if dtype is not torch.float16:  # (the CPU kernels read float16 from float32 copies)
        assert alone < x.nbytes / 4 < x.nbytes <= kept


@pytest.mark.parametrize("mode", ["no_grad", "input_without_grad"])
def test_composite_loss_without_backward_computes_the_loss_alone(mode):
    """The same for composite_loss: the loss of the call that keeps the gradient, bit for
    bit, with no gradient like pred allocated."""
    gen = torch.Generator().manual_seed(33)
    pred = torch.randn(8192, 8, generator=gen)
    target = torch.rand(8192, 6, generator=gen)
    target[:, 0] = target[:, 0] > 0.5
    target[:, 5] = torch.randint(0, 3, (8192,), generator=gen)
    terms = [
        gk.LossTerm("bce_with_logits", slice(0, 1)),
        gk.LossTerm("mse", slice(1, 5), only_where=0),
        gk.LossTerm("softmax_cross_entropy", slice(5, 8), slice(5, 6), only_where=0),
    ]
    _, alone, kept = without_and_with_backward(
        lambda x: gkt.composite_loss(x, target, terms), pred, mode
    )
    assert alone + pred.nbytes / 2 < kept


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("name", ["cross_entropy", "bce", "mse", "huber", "composite"])
def test_forward_mode_ad_is_refused_not_dropped(name, grad_mode):
    """A dual input, target or weight of forward-mode AD (not requiring grad) is refused by
    the autograd function (no jvp), in grad mode or not: the loss alone would have dropped
    its tangent and returned a loss whose derivative is silently 0."""
    from torch.autograd import forward_ad

    x, y = torch.randn(6, 3), torch.rand(6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = {
        "cross_entropy": lambda d: gkt.cross_entropy(d, labels),
        "bce": lambda d: gkt.binary_cross_entropy_with_logits(d, y),
        "mse": lambda d: gkt.mse_loss(d, y),
        "huber": lambda d: gkt.huber_loss(d, y),
        "composite": lambda d: gkt.composite_loss(d, y, [gk.LossTerm("mse", slice(0, 3))]),
    }[name]
    with torch.set_grad_enabled(grad_mode), forward_ad.dual_level():
        dual = forward_ad.make_dual(x, torch.ones_like(x))
        with pytest.raises(NotImplementedError, match="jvp"):
            loss(dual)
        if name != "cross_entropy":  # a dual target, whose tangent the loss depends on too
            y = forward_ad.make_dual(y, torch.ones_like(y))
            with pytest.raises(NotImplementedError, match="jvp"):
                loss(x)
        labels_weight = forward_ad.make_dual(torch.ones(3), torch.ones(3))
        with pytest.raises(NotImplementedError, match="jvp"):  # a dual class weight
            gkt.cross_entropy(x, labels, weight=labels_weight)


def test_inplace_backward_leaves_logits_alone_without_autograd():
    logits = torch.randn(4, 5)
    kept = logits.clone()
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        loss = gkt.cross_entropy(logits, labels, inplace_backward=True)
    torch.testing.assert_close(logits, kept)
    torch.testing.assert_close(loss, F.cross_entropy(kept, labels))
    gkt.CrossEntropyLoss(inplace_backward=True)(logits, labels)  # no requires_grad: the same
    torch.testing.assert_close(logits, kept)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda x: gkt.cross_entropy(x, torch.rand(3, 5)), "logits"),
        (lambda x: gkt.cross_entropy(x[:, :0], torch.tensor([0, 1, 2])), "logits"),
        (lambda x: gkt.CrossEntropyLoss()(x.half(), torch.rand(3, 5).half()), "logits"),
        (lambda x: gkt.cross_entropy(x, torch.tensor([0, 1])), "logits"),
        (lambda x: gkt.binary_cross_entropy_with_logits(x, x[:2]), "logits"),
        (lambda x: gkt.mse_loss(x, x[:2]), "pred"),
        (lambda x: gkt.HuberLoss()(x, x[:2]), "pred"),
    ],
)
def test_array_level_name_of_the_input_is_explained(call, name):
    """The array-level checks call the input ``logits`` or ``pred``; a torch user passed
    ``input``, and the error says so."""
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=rf"\b{name}\b") as raised:
        call(x)
    assert raised.value.__notes__ == [f"({name}: the loss's input)"]


W16, MSE_TERM = torch.ones(3, 1).half(), gk.LossTerm("mse", slice(0, 1))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda x: gkt.linear_cross_entropy(x, torch.ones(3, 1), torch.tensor(0)), "input"),
        (lambda x: gkt.LinearCrossEntropyLoss()(x.half(), W16, torch.tensor(0)), "input"),
        (lambda x: gkt.composite_loss(x.half(), x.half(), [MSE_TERM]), "pred"),
    ],
)
def test_a_0d_input_is_a_value_error(call, name):
    """A 0-d input is refused by its shape check, naming it (the float16 mean's headroom,
    which counts the rows, read its first dimension before and raised IndexError)."""
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call(torch.tensor(1.0))


def test_inplace_names_of_the_input_are_explained():
    """With ``inplace_backward=True`` the gradient's buffer (``out`` at the array level) is
    the input too."""
    logits = torch.randn(4, 10, requires_grad=True) * 1
    with pytest.raises(ValueError, match="out overlaps target") as raised:
        gkt.cross_entropy(logits, logits.detach(), inplace_backward=True)
    assert raised.value.__notes__ == ["(logits and out: the loss's input)"]


def test_errors_not_naming_the_input_get_no_note():
    with pytest.raises(ValueError, match="class index 9") as raised:
        gkt.cross_entropy(torch.randn(2, 3), torch.tensor([0, 9]))
    assert not hasattr(raised.value, "__notes__")


CLASS_INDEX_TERMS = [gk.LossTerm("softmax_cross_entropy", slice(0, 4), slice(0, 1))]


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda x, y, v: gkt.cross_entropy(x, y, validate=v), "validate"),
        (lambda x, y, v: gkt.CrossEntropyLoss(validate=v)(x, y), "validate"),
        (lambda x, y, v: gkt.cross_entropy(x, y, inplace_backward=v), "inplace_backward"),
        (lambda x, y, v: gkt.linear_cross_entropy(x, x, y, validate=v), "validate"),
        (
            lambda x, y, v: gkt.composite_loss(
                x, y[:, None].double(), CLASS_INDEX_TERMS, validate=v
            ),
            "validate",
        ),
    ],
)
@pytest.mark.parametrize("value", ["no", 0, 1, []])
def test_yes_no_options_must_be_bools(call, name, value):
    """Read for its truth, ``validate="no"`` would check and ``inplace_backward=[]`` would
    not overwrite: anything but a bool (or None where that means the default) is refused."""
    x = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(TypeError, match=rf"{name} must be True or False, got"):
        call(x[:], y, value)


def test_export_with_a_dynamic_batch():
    """torch.export records the losses as their custom ops, with a dynamic batch: the
    exported program gives the eager loss on a batch of another size (documented: it
    cannot be differentiated)."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 5)
            self.loss = gkt.CrossEntropyLoss(label_smoothing=0.1)

        def forward(self, h, labels):
            logits = self.layer(h)
            return self.loss(logits, labels) + gkt.mse_loss(logits, torch.ones_like(logits))

    gen = torch.Generator().manual_seed(15)
    model, batch = Model(), torch.export.Dim("batch")
    h, labels = torch.randn(8, 3, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    exported = torch.export.export(model, (h, labels), dynamic_shapes=({0: batch}, {0: batch}))
    h, labels = torch.randn(13, 3, generator=gen), torch.randint(0, 5, (13,), generator=gen)
    logits = model.layer(h).detach()
    want = F.cross_entropy(logits, labels, label_smoothing=0.1) + F.mse_loss(logits, logits * 0 + 1)
    close(exported.module()(h, labels).detach(), want, torch.float32)


def test_vmap_is_refused_by_name():
    """A torch.func transform (vmap) over the loss alone, whose tensors have no storage to
    read, is a TypeError that says these transforms are not supported."""
    x, labels = torch.randn(5, 3, 4), torch.randint(0, 4, (5, 3))
    with torch.no_grad(), pytest.raises(TypeError, match="torch.func transforms"):
        torch.vmap(gkt.cross_entropy)(x, labels)


def test_custom_ops_pass_opcheck():
    """torch.library.opcheck: schemas, fake (meta) kernels and the real ones agree, for
    contiguous and transposed inputs."""
    gen = torch.Generator().manual_seed(14)
    z = torch.randn(6, 5, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    y = torch.rand(5, 6, generator=gen).t()
    from gpukernels._torch_ops import layout_of

    ops = torch.ops.gpukernels
    terms = [gk.LossTerm("mse", slice(0, 2)), gk.LossTerm("bce_with_logits", slice(2, 5))]
    composite = layout_of(terms, 5, 5)
    for args in (
        (ops.cross_entropy, (z, labels, None, -100, "mean", 0.1, 0.0, None, True, True, 1.0)),
        (
            ops.cross_entropy,
            (z.t().contiguous().t(), labels, None, -100, "none", 0.0, 1e-3, 2.0, True, True, 1.0),
        ),
        (
            ops.cross_entropy,
            (z.half(), labels, None, -100, "mean", 0.0, 0.0, None, True, True, 4.0),
        ),
        (ops.cross_entropy, (z, labels, None, -100, "sum", 0.0, 0.0, None, True, False, 1.0)),
        (ops.mse, (y, y.contiguous() * 2, "none", True, 1.0)),
        (ops.mse, (y, y.contiguous() * 2, "mean", False, 1.0)),
        (ops.huber, (y, y * 0, "sum", 0.5, True, 2.0)),
        (ops.huber, (y, y * 0, "none", 0.5, False, 1.0)),
        (ops.bce_with_logits, (z, torch.rand(6, 5, generator=gen), None, None, "mean", True, 8.0)),
        (ops.bce_with_logits, (z, torch.rand(6, 5, generator=gen), None, None, "sum", False, 1.0)),
        (ops.composite, (z, torch.rand(6, 5, generator=gen), *composite, True, True, 2.0)),
        (ops.composite, (z, torch.rand(6, 5, generator=gen), *composite, True, False, 1.0)),
    ):
        torch.library.opcheck(*args)


@pytest.mark.slow
def test_compile_with_transposed_inputs():
    w = torch.randn(5, 6, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    step = torch.compile(
        lambda a: (
            gkt.cross_entropy((a * 1.5).t(), labels, reduction="none").sum()
            + gkt.mse_loss(a.t(), torch.zeros(6, 5))
        ),
        fullgraph=True,
    )
    step(w).backward()
    ref = w.detach().clone().requires_grad_()
    (
        F.cross_entropy((ref * 1.5).t(), labels, reduction="none").sum()
        + F.mse_loss(ref.t(), torch.zeros(6, 5))
    ).backward()
    torch.testing.assert_close(w.grad, ref.grad)


@pytest.mark.parametrize("case", ["z_loss", "weights", "only_where"])
def test_float16_mean_over_few_rows_keeps_its_gradient_finite(case):
    """A float16 mean computes its gradient times a headroom of up to 2^15 rows. Where the
    mean's divisor is far below the row count (one row taking part among 2^15, a term's
    ``only_where``) and the row's gradient above 1 (a z-loss, class weights, a residual of
    2, smoothing over heavy classes), that product passed float16's range: inf. The headroom
    is now fitted to float16:
    PyTorch's float64 gradient, rounded to float16."""
    n = 1 << 15
    z = torch.zeros(n, 8, dtype=torch.float64)
    z[0] = torch.arange(20.0, 12.0, -1.0)
    y = torch.full((n,), -100)
    y[0] = 3
    if case == "only_where":
        target = torch.zeros(n, 8, dtype=torch.float64)
        target[0, :2] = torch.tensor([1.0, 2.0])
        terms = [gk.LossTerm("mse", slice(1, 2), target_columns=slice(1, 2), only_where=0)]

        def ours(x):
            return gkt.composite_loss(x, target.half(), terms)

        def theirs(x):
            return (x[0, 1] - 2.0) ** 2
    else:
        # smoothing spreads the heavy classes' weights over the row of a light one
        weight = torch.full((8,), 1000.0, dtype=torch.float64)
        weight[3] = 1.0
        zeta, weight, eps = (0.1, None, 0.0) if case == "z_loss" else (0.0, weight, 0.5)

        def ours(x):
            w = None if weight is None else weight.half()
            return gkt.cross_entropy(x, y, weight=w, label_smoothing=eps, z_loss=zeta)

        def theirs(x):
            loss = F.cross_entropy(x, y, weight=weight, label_smoothing=eps)
            return loss + zeta * torch.logsumexp(x[:1], 1).square().mean()

    x = z.half().requires_grad_()
    ours(x).backward()
    ref = z.clone().requires_grad_()
    theirs(ref).backward()
    assert torch.isfinite(x.grad).all()
    close(x.grad, ref.grad.half(), torch.float16)
