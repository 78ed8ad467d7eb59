"""Bad input that used to crash, hang or give silently wrong answers: each case now raises a
clear TypeError or ValueError naming the argument, or gives the right result."""

import math
import sys
import warnings

import numpy as np
import pytest
from _refs import assert_close, cross_entropy, log_softmax, mse, poisoned

import gpukernels as gk
from gpukernels import _dispatch, _validate
from gpukernels._dtypes import BFLOAT16
from gpukernels._kinds import MAX_TERMS, TermKind

N, C = 3, 4


def z(shape=(N, C), dtype=np.float64):
    return np.linspace(-1.0, 1.0, int(np.prod(shape))).astype(dtype).reshape(shape)


def labels():
    return np.array([0, 1, 3])


class DeviceArray:
    """An array described only by ``__cuda_array_interface__``, at a given address (never
    dereferenced: only the metadata is read)."""

    def __init__(self, pointer, shape, strides=None, typestr="<f4", readonly=False):
        self.shape, self.dtype = shape, np.dtype(typestr)
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (pointer, readonly),
            "strides": strides,
            "version": 3,
        }


# ---- 1. ndarray subclasses ---------------------------------------------------------------------


class MyArray(np.ndarray):
    pass


SUBCLASSES = {
    "matrix": lambda a: np.matrix(a),
    "masked": lambda a: np.ma.masked_array(a, mask=a > 0),
    "subclass": lambda a: a.view(MyArray),
}

# (call taking the argument named `name`, name): the argument is 2-D (N, C) float64
ARGUMENTS = [
    (lambda a: gk.softmax_cross_entropy(a, labels()), "logits"),
    (lambda a: gk.softmax_cross_entropy(z(), a), "target"),
    (lambda a: gk.softmax_cross_entropy(z(), labels(), out=a), "out"),
    (lambda a: gk.bce_with_logits(z(), a), "target"),
    (lambda a: gk.bce_with_logits(z(), z(), weight=a), "weight"),
    (lambda a: gk.bce_with_logits(z(), z(), out=a), "out"),
    (lambda a: gk.mse(a, z()), "pred"),
    (lambda a: gk.mse(z(), z(), reduction="none", grad_output=a), "grad_output"),
    (lambda a: gk.composite_loss(z(), a, [gk.LossTerm("mse", slice(0, 2))]), "target"),
    (lambda a: gk.composite_loss(z(), z(), [gk.LossTerm("mse", slice(0, 2))], out=a), "out"),
    (lambda a: gk.sigmoid(a), "x"),
    (lambda a: gk.sigmoid(z(), out=a), "out"),
    (lambda a: gk.sigmoid_derivative(z(), out=a), "out"),
    (lambda a: gk.sigmoid_backward(a, z()), "grad_output"),
    (lambda a: gk.sigmoid_backward(z(), z(), out=a), "out"),
    (lambda a: gk.batch_sum(a), "x"),
]


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("kind", list(SUBCLASSES))
@pytest.mark.parametrize("call, name", ARGUMENTS)
def test_ndarray_subclasses_are_type_errors(backend, kind, call, name):
    """np.matrix used to be written past its end as out (a segfault or a hang); a masked
    array's mask was silently ignored."""
    value = SUBCLASSES[kind](np.zeros((N, C)) if name == "out" else z())
    with pytest.raises(TypeError, match=rf"\b{name}\b.*subclass"):
        call(value)


def test_masked_array_message_mentions_the_mask(backend):
    with pytest.raises(TypeError, match="mask"):
        gk.mse(z(), np.ma.masked_array(z(), mask=z() > 0))


def test_memmap_works_like_an_ndarray(backend, tmp_path):
    logits = np.memmap(tmp_path / "logits", np.float64, mode="w+", shape=(N, C))
    logits[...] = z()
    out = np.memmap(tmp_path / "out", np.float64, mode="w+", shape=(N, C))
    loss, grad = gk.softmax_cross_entropy(logits, labels(), out=out)
    assert grad is out
    exp_loss, exp_grad = cross_entropy(z(), labels())
    assert_close(loss, exp_loss, np.float64)
    assert_close(np.asarray(out), exp_grad, np.float64)


# ---- 2. out overlapping an input ---------------------------------------------------------------


def test_out_reversed_logits(backend):
    logits = z()
    with pytest.raises(ValueError, match=r"\bout\b.*\blogits\b"):
        gk.softmax_cross_entropy(logits, labels(), out=logits[::-1])


def test_out_shifted_by_a_row(backend):
    buf = np.linspace(-1.0, 1.0, (N + 1) * C).reshape(N + 1, C)
    with pytest.raises(ValueError, match=r"\bout\b.*\blogits\b"):
        gk.softmax_cross_entropy(buf[:-1], labels(), out=buf[1:])
    with pytest.raises(ValueError, match=r"\bout\b.*\blogits\b"):
        gk.bce_with_logits(buf[1:], z(), out=buf[:-1])


def test_out_is_the_target(backend):
    pred, target = z(), z() * 0.5
    terms = [gk.LossTerm("mse", slice(0, C))]
    with pytest.raises(ValueError, match=r"\bout\b.*\btarget\b"):
        gk.composite_loss(pred, target, terms, out=target)
    with pytest.raises(ValueError, match=r"\bout\b.*\btarget\b"):
        gk.mse(pred, target, out=target)
    probs = np.full((N, C), 0.25)
    with pytest.raises(ValueError, match=r"\bout\b.*\btarget\b"):
        gk.softmax_cross_entropy(pred, probs, out=probs)


def test_mse_out_shifted_over_the_target(backend):
    buf = np.linspace(0.0, 1.0, 10)
    with pytest.raises(ValueError, match=r"\bout\b.*\btarget\b"):
        gk.mse(np.linspace(0.5, 1.5, 9), buf[:-1], out=buf[1:])


def test_out_overlapping_weight(backend):
    weight = np.ones((N, C))
    with pytest.raises(ValueError, match=r"\bout\b.*\bweight\b"):
        gk.bce_with_logits(z(), z() * 0 + 0.5, weight=weight, out=weight)
    both = np.ones(N * C + C)
    with pytest.raises(ValueError, match=r"\bout\b.*\bweight\b"):
        gk.softmax_cross_entropy(
            z(), labels(), weight=both[N * C - 1 : N * C - 1 + C], out=both[: N * C].reshape(N, C)
        )


def test_out_overlapping_the_other_sigmoid_backward_input(backend):
    buf = np.linspace(0.1, 0.9, N * C + 1)
    g, y = buf[1:].reshape(N, C), np.full((N, C), 0.5)
    with pytest.raises(ValueError, match=r"\bout\b.*\bgrad_output\b"):
        gk.sigmoid_backward(g, y, out=buf[:-1].reshape(N, C))


def test_batch_sum_out_inside_x(backend):
    x = z()
    with pytest.raises(ValueError, match=r"\bout\b.*\bx\b"):
        gk.batch_sum(x, axis=0, out=x[1])


@pytest.mark.parametrize("layout", ["contiguous", "strided", "transposed"])
def test_out_is_the_input_in_place(backend, layout):
    base = np.linspace(-2.0, 2.0, 2 * N * C).reshape(N, 2 * C)
    logits = {
        "contiguous": np.ascontiguousarray(base[:, :C]),
        "strided": base[:, ::2],
        "transposed": np.ascontiguousarray(base[:, :C].T).T,
    }[layout]
    kept = logits.copy()
    exp_loss, exp_grad = cross_entropy(kept, labels())
    loss, grad = gk.softmax_cross_entropy(logits, labels(), out=logits)
    assert grad is logits
    assert_close(loss, exp_loss, np.float64)
    assert_close(grad, exp_grad, np.float64)
    x = kept.copy()
    s = gk.sigmoid(x, out=x)
    assert s is x
    assert_close(s, 1.0 / (1.0 + np.exp(-kept)), np.float64)


def test_sigmoid_backward_in_place_on_either_input(backend):
    g, y = z() + 2.0, np.full((N, C), 0.25)
    expected = (z() + 2.0) * 0.25 * 0.75
    assert gk.sigmoid_backward(g, y, out=g) is g
    assert_close(g, expected, np.float64)
    g, y = z() + 2.0, np.full((N, C), 0.25)
    assert gk.sigmoid_backward(g, y, out=y) is y
    assert_close(y, expected, np.float64)


def test_disjoint_views_of_one_buffer_are_fine(backend):
    buf = np.linspace(-1.0, 1.0, 2 * N * C).reshape(2 * N, C)
    logits, out = buf[:N], buf[N:]
    kept = logits.copy()
    _, grad = gk.softmax_cross_entropy(logits, labels(), out=out)
    assert grad is out
    assert_close(out, cross_entropy(kept, labels())[1], np.float64)
    np.testing.assert_array_equal(logits, kept)


def _self_overlapping_outs(shape, dtype=np.float64):
    """Writable arrays of ``shape`` whose elements share memory: a row repeated (stride 0),
    and rows that overlap by one element (an ``as_strided`` layout)."""
    item = np.dtype(dtype).itemsize
    buf = np.zeros(int(np.prod(shape)) * 2, dtype)
    strided = np.lib.stride_tricks.as_strided
    repeated = strided(buf, shape, (0, item), writeable=True)
    overlapping = strided(buf, shape, ((shape[1] - 1) * item, item), writeable=True)
    return {"repeated row": repeated, "overlapping rows": overlapping}


@pytest.mark.parametrize("kind", ["repeated row", "overlapping rows"])
@pytest.mark.parametrize(
    "call",
    [
        lambda out: gk.softmax_cross_entropy(z(), labels(), out=out),
        lambda out: gk.mse(z(), z().T.copy().T, out=out),
        lambda out: gk.sigmoid_derivative(z(), out=out),
        lambda out: gk.composite_loss(z(), z(), [gk.LossTerm("mse", slice(0, C))], out=out),
    ],
)
def test_out_whose_elements_share_memory(backend, call, kind):
    """Writes through two elements of one address would leave one of them (or garbage):
    refused, like PyTorch's writes into expanded tensors."""
    with pytest.raises(ValueError, match="out's elements may share memory"):
        call(_self_overlapping_outs((N, C))[kind])


def test_in_place_on_a_self_overlapping_input(backend):
    logits = _self_overlapping_outs((N, C))["repeated row"]
    with pytest.raises(ValueError, match="out's elements"):
        gk.softmax_cross_entropy(logits, labels(), out=logits)


def test_distinct_elements_of_strided_layouts():
    """Every layout slicing and transposing make passes; one that repeats or folds back
    on itself does not (strides in bytes, 8-byte items)."""
    base = np.zeros((6, 10))
    for view in (base, base.T, base[::2, 1::3], base[::-1], base[:, ::-2].T, base[:1], base[:0]):
        assert _validate._distinct_elements(view.shape, view.strides, 8)
    assert _validate._distinct_elements((1, 3), (0, 8), 8)  # a stride of a length-1 axis
    assert _validate._distinct_elements((3, 0), (0, 8), 8)  # no elements to share
    assert not _validate._distinct_elements((3, 4), (0, 8), 8)
    assert not _validate._distinct_elements((3, 4), (24, 8), 8)  # rows overlap by one item
    assert not _validate._distinct_elements((3, 4), (4, 32), 8)  # half-item steps


def test_out_self_overlap_of_cuda_arrays():
    with pytest.raises(ValueError, match="out's elements"):
        _validate.out_array(DeviceArray(1 << 20, (3, 4), (0, 4)), (3, 4), np.float32, "cuda")
    _validate.out_array(DeviceArray(1 << 20, (3, 4), (4, 12)), (3, 4), np.float32, "cuda")


def test_overlap_of_cuda_arrays_is_read_from_their_interface():
    """The check reads pointers and strides from ``__cuda_array_interface__`` (CuPy arrays
    go through the same arithmetic): no copy, no synchronisation, O(1)."""
    base = 1 << 20
    x = DeviceArray(base, (3, 4))  # bytes [base, base + 48)
    _validate.out_overlap(DeviceArray(base, (3, 4)), {"x": x}, ("x",))  # x itself
    _validate.out_overlap(DeviceArray(base + 48, (3, 4)), {"x": x})  # right after it
    _validate.out_overlap(DeviceArray(base - 48, (3, 4)), {"x": x})  # right before it
    with pytest.raises(ValueError, match=r"\bout\b.*\bx\b"):
        _validate.out_overlap(DeviceArray(base + 16, (3, 4)), {"x": x}, ("x",))  # a row on
    with pytest.raises(ValueError, match=r"\bout\b.*\bx\b"):  # reversed rows
        _validate.out_overlap(DeviceArray(base + 32, (3, 4), (-16, 4)), {"x": x}, ("x",))
    with pytest.raises(ValueError, match=r"\bout\b.*\bx\b"):  # transposed
        _validate.out_overlap(DeviceArray(base, (4, 3), (4, 16)), {"x": x}, ("x",))
    with pytest.raises(ValueError, match=r"\bout\b.*\bx\b"):  # x itself, but not in place
        _validate.out_overlap(DeviceArray(base, (3, 4)), {"x": x})
    with pytest.raises(ValueError, match=r"\bout\b.*\bx\b"):  # same bytes, another dtype
        _validate.out_overlap(DeviceArray(base, (3, 4), typestr="<i4"), {"x": x}, ("x",))
    _validate.out_overlap(DeviceArray(base, (0, 4)), {"x": x}, ())  # empty: no memory


# ---- 3. read-only out --------------------------------------------------------------------------


def read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("same_as_input", [False, True])
@pytest.mark.parametrize(
    "call",
    [
        lambda x, out: gk.softmax_cross_entropy(x, labels(), out=out),
        lambda x, out: gk.bce_with_logits(x, z() * 0 + 0.5, out=out),
        lambda x, out: gk.mse(x, z() * 0, out=out),
        lambda x, out: gk.composite_loss(x, z(), [gk.LossTerm("mse", slice(0, 2))], out=out),
        lambda x, out: gk.sigmoid(x, out=out),
        lambda x, out: gk.sigmoid_derivative(x, out=out),
        lambda x, out: gk.sigmoid_backward(z(), x, out=out),
    ],
)
def test_read_only_out(backend, call, same_as_input):
    """Used to fail inside Numba with a TypingError (CPU) or write a read-only buffer."""
    x = read_only(z())
    out = x if same_as_input else read_only(np.zeros((N, C)))
    with pytest.raises(TypeError, match=r"\bout\b.*read-only"):
        call(x, out)


def test_read_only_batch_sum_out(backend):
    with pytest.raises(TypeError, match=r"\bout\b.*read-only"):
        gk.batch_sum(z(), axis=0, out=read_only(np.zeros(C)))


def test_read_only_cuda_out(monkeypatch):
    monkeypatch.delenv("GPUKERNELS_BACKEND", raising=False)
    x = DeviceArray(1 << 20, (3, 4))
    with pytest.raises(TypeError, match=r"\bout\b.*read-only"):
        gk.sigmoid(x, out=DeviceArray(1 << 21, (3, 4), readonly=True))


def test_read_only_inputs_are_fine(backend):
    loss, grad = gk.softmax_cross_entropy(read_only(z()), read_only(labels()))
    assert_close(loss, cross_entropy(z(), labels())[0], np.float64)


# ---- 4. labels and options ---------------------------------------------------------------------


def test_uint64_labels_past_int64_are_out_of_range(backend):
    """2**64 - 100 wrapped to int64 is -100, the default ignore_index: the row was skipped."""
    target = np.array([0, 2**64 - 100, 3], np.uint64)
    with pytest.raises(ValueError, match=r"\btarget\b.*18446744073709551516"):
        gk.softmax_cross_entropy(z(), target)
    for order in "<>":  # in either byte order 2**63 would wrap to -2**63, the ignore_index
        target = np.array([0, 2**63, 1], f"{order}u8")
        with pytest.raises(ValueError, match=r"\btarget\b"):
            gk.softmax_cross_entropy(z(), target, ignore_index=-(2**63))
    # nor does one past int64 become int64's largest value, when that is the ignore_index
    target = np.array([0, 2**63, 1], np.uint64)
    with pytest.raises(ValueError, match=r"\btarget\b.*9223372036854775808"):
        gk.softmax_cross_entropy(z(), target, ignore_index=2**63 - 1)


@pytest.mark.parametrize("ignore_index", [-100, 2**63 - 1])
@pytest.mark.parametrize("bad", [2**64 - 100, 2**63, 2**64 - 1])
def test_uint64_labels_past_int64_without_validation(backend, bad, ignore_index):
    target = np.array([0, bad, 3], np.uint64)
    loss, grad = gk.softmax_cross_entropy(z(), target, validate=False, ignore_index=ignore_index)
    assert np.isnan(loss)
    assert np.all(grad[1] == 0.0)
    keep = [0, 2]  # the bad row is left out of the mean's divisor
    _, exp_grad = cross_entropy(z()[keep], np.array([0, 3]))
    assert_close(grad[keep], exp_grad, np.float64)
    row_loss, _ = gk.softmax_cross_entropy(
        z(), target, reduction="none", validate=False, ignore_index=ignore_index
    )
    assert np.isnan(row_loss[1]) and np.all(np.isfinite(row_loss[keep]))


def test_uint64_labels_equal_to_int64s_largest_are_ignored(backend):
    """The clipping keeps a label that is the ignore_index itself ignored."""
    target = np.array([0, 2**63 - 1, 3], np.uint64)
    loss, grad = gk.softmax_cross_entropy(z(), target, ignore_index=2**63 - 1)
    exp_loss, exp_grad = cross_entropy(z()[[0, 2]], np.array([0, 3]))
    assert_close(loss, exp_loss, np.float64)
    assert_close(grad[[0, 2]], exp_grad, np.float64)
    assert np.all(grad[1] == 0.0)


def test_small_uint64_labels_still_work(backend):
    loss, grad = gk.softmax_cross_entropy(z(), labels().astype(np.uint64))
    exp_loss, exp_grad = cross_entropy(z(), labels())
    assert_close(loss, exp_loss, np.float64)
    assert_close(grad, exp_grad, np.float64)


@pytest.mark.parametrize("value", ["a", None, 1.5, True, np.bool_(False), np.float64(-100.0)])
def test_ignore_index_not_an_integer(backend, value):
    with pytest.raises(TypeError, match="ignore_index"):
        gk.softmax_cross_entropy(z(), labels(), ignore_index=value)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70])
def test_ignore_index_outside_int64(backend, value):
    with pytest.raises(ValueError, match="ignore_index"):
        gk.softmax_cross_entropy(z(), labels(), ignore_index=value)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: gk.shard_stats(z(), labels(), class_start=2**63), "class_start"),
        (lambda: gk.shard_stats(z(), labels(), class_start=2**70), "class_start"),
        (
            lambda: gk.shard_loss_and_grad(
                z(), labels(), np.zeros((N, 4)), class_start=2**63, num_classes=2**64
            ),
            "class_start",
        ),
        (
            lambda: gk.shard_loss_and_grad(
                z(), labels(), np.zeros((N, 4)), class_start=0, num_classes=2**64
            ),
            "num_classes",
        ),
    ],
)
def test_class_numbers_outside_int64(backend, call, name):
    with pytest.raises(ValueError, match=f"{name} must fit int64"):
        call()


def test_shard_classes_past_int64(backend):
    """A shard whose classes ``[class_start, class_start + C_s)`` pass int64's largest value:
    the kernels' ``label - class_start`` would wrap (a far negative label found in the
    shard), so it is refused."""
    with pytest.raises(ValueError, match="class_start"):
        gk.shard_stats(z(), np.array([-(2**63), 1, 2]), class_start=2**63 - 1)
    stats = gk.shard_stats(z(), np.array([-(2**63), 1, 2]), class_start=2**63 - 1 - C)
    assert np.all(stats[:, 2] == 0)  # no target in the shard


F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize(
    "call",
    [
        lambda x, cap: gk.softmax_cross_entropy(x, labels(), softcap=cap),
        lambda x, cap: gk.shard_stats(x, labels(), class_start=0, softcap=cap),
        lambda x, cap: gk.linear_cross_entropy(x, z((C, C), x.dtype), labels(), softcap=cap),
    ],
)
def test_softcap_past_the_computing_dtype(backend, call, dtype):
    """A cap float32 cannot hold would become inf in the kernels, and inf * tanh(z / inf)
    NaN: refused for float32 and 16-bit logits (computed in float32); the largest float32
    cap works."""
    x = z((N, C), dtype)
    with pytest.raises(ValueError, match=r"softcap must be at most 3\.4028235e\+38"):
        call(x, 1e39)
    assert np.all(np.isfinite(call(x, F32_MAX)[0]))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize(
    "call",
    [
        lambda x, cap: gk.softmax_cross_entropy(x, labels(), softcap=cap),
        lambda x, cap: gk.shard_loss_and_grad(
            x,
            labels(),
            gk.shard_stats(x, labels(), class_start=0, softcap=cap),
            class_start=0,
            num_classes=C,
            softcap=cap,
        ),
        lambda x, cap: gk.linear_cross_entropy(x, z((C, C), x.dtype), labels(), softcap=cap),
        lambda x, cap: gk.composite_loss(
            x,
            labels()[:, None].astype(x.dtype),
            [gk.LossTerm("softmax_cross_entropy", slice(0, C), slice(0, 1), softcap=cap)],
        ),
    ],
)
def test_softcap_that_rounds_to_zero_in_the_computing_dtype(backend, call, dtype):
    """A positive cap below float32's smallest subnormal rounds to 0 in the kernels, which
    read 0 as no cap: refused (it gave the uncapped loss); the smallest float32 caps every
    logit to about 1.4e-45, so every row's loss is log C."""
    x = z((N, C), dtype)
    with pytest.raises(ValueError, match=r"softcap must be at least 1\.4012985e-45"):
        call(x, 1e-300)
    loss = call(x, 1e-45)[0]
    assert_close(loss, np.log(C), np.float32)


def test_softcap_past_float32_is_fine_in_float64(backend):
    loss, grad = gk.softmax_cross_entropy(z(), labels(), softcap=1e39)
    assert_close(loss, cross_entropy(z(), labels())[0], np.float64)


def test_composite_term_softcap_past_float32(backend):
    x = z((N, C), np.float32)
    term = gk.LossTerm("softmax_cross_entropy", slice(0, C), slice(0, 1), softcap=1e39)
    with pytest.raises(ValueError, match=r"terms\[0\]\.softcap must be at most"):
        gk.composite_loss(x, labels()[:, None].astype(np.float32), [term])


def test_huber_delta_past_the_computing_dtype(backend):
    """delta 1e300 on float32 is infinite there: every difference is quadratic, without a
    warning of the cast."""
    pred, target = z(dtype=np.float32), z(dtype=np.float32)[::-1].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = gk.huber_loss(pred, target, delta=1e300)
    d = pred.astype(np.float64) - target
    assert_close(loss, np.mean(d * d / 2), np.float32)
    assert_close(grad, d / d.size, np.float32)


@pytest.mark.parametrize("axis", [0.0, np.float64(0.0), True, "0"])
def test_batch_sum_axis_not_an_integer(backend, axis):
    with pytest.raises(TypeError, match="axis must be None or the integer 0"):
        gk.batch_sum(z(), axis=axis)


def test_composite_grad_output_message(backend):
    with pytest.raises(ValueError, match=r"scalar \(the loss is a scalar\)"):
        gk.composite_loss(z(), z(), [gk.LossTerm("mse", slice(0, C))], grad_output=np.ones(N))


@pytest.mark.parametrize(
    "call",
    [
        lambda big: gk.softmax_cross_entropy(z(), labels(), label_smoothing=big),
        lambda big: gk.softmax_cross_entropy(z(), labels(), z_loss=big),
        lambda big: gk.softmax_cross_entropy(z(), labels(), softcap=big),
        lambda big: gk.softmax_cross_entropy(z(), labels(), grad_output=big),
        lambda big: gk.huber_loss(z(), z(), delta=big),
        lambda big: gk.mse(z(), z(), grad_output=big),
    ],
    ids=["label_smoothing", "z_loss", "softcap", "grad_output", "delta", "mse_grad_output"],
)
def test_python_int_past_float64(backend, call):
    """10**400 is a Python int no float holds: a ValueError by name, not an
    OverflowError from float()."""
    with pytest.raises(ValueError, match="within float64's range"):
        call(10**400)


def test_ignore_index_numpy_integer(backend):
    target = labels()
    target[1] = 7
    loss, _ = gk.softmax_cross_entropy(z(), target, ignore_index=np.int32(7))
    assert_close(loss, cross_entropy(z(), target, ignore_index=7)[0], np.float64)


@pytest.mark.parametrize("value", ["0.1", None, [0.1], True])
def test_label_smoothing_not_a_number(backend, value):
    with pytest.raises(TypeError, match="label_smoothing"):
        gk.softmax_cross_entropy(z(), labels(), label_smoothing=value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_label_smoothing_not_finite(backend, value):
    with pytest.raises(ValueError, match="label_smoothing"):
        gk.softmax_cross_entropy(z(), labels(), label_smoothing=value)


def test_label_smoothing_numpy_float(backend):
    loss, _ = gk.softmax_cross_entropy(z(), labels(), label_smoothing=np.float32(0.25))
    exp = cross_entropy(z(), labels(), label_smoothing=float(np.float32(0.25)))[0]
    assert_close(loss, exp, np.float64)


def _bad_label_calls():
    """Calls taking ``validate``, each on a target whose row 1 holds class index C (out of
    range): (call of validate, name)."""
    bad = labels()
    bad[1] = C
    column = bad[:, None].astype(np.float64)
    term = gk.LossTerm("softmax_cross_entropy", slice(0, C), slice(0, 1))
    return [
        lambda v: gk.softmax_cross_entropy(z(), bad, validate=v),
        lambda v: gk.linear_cross_entropy(z(), z((C, C)), bad, validate=v),
        lambda v: gk.composite_loss(z(), column, [term], validate=v),
    ]


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None, [], np.float64(1.0)])
@pytest.mark.parametrize("k", range(3))
def test_validate_must_be_a_bool(backend, k, value):
    """Read for its truth, ``validate="no"`` would validate and ``validate=[]`` would not."""
    with pytest.raises(TypeError, match=r"validate must be True or False, got"):
        _bad_label_calls()[k](value)


@pytest.mark.parametrize("k", range(3))
def test_validate_takes_numpy_bools(backend, k):
    call = _bad_label_calls()[k]
    with pytest.raises(ValueError, match="row 1"):
        call(np.bool_(True))
    call(np.bool_(False))  # unchecked: the bad row's loss is not defined, but nothing raises


# ---- 5. None or a number where an array is expected ---------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: gk.sigmoid_backward(2.0, z()), "grad_output"),
        (lambda: gk.sigmoid_backward(None, z()), "grad_output"),
        (lambda: gk.sigmoid_backward(z(), 0.5), "y"),
        (lambda: gk.mse(None, z()), "pred"),
        (lambda: gk.mse(z(), None), "target"),
        (lambda: gk.mse(z(), 0.0), "target"),
        (lambda: gk.softmax_cross_entropy(z(), None), "target"),
        (lambda: gk.softmax_cross_entropy(None, labels()), "logits"),
        (lambda: gk.softmax_cross_entropy(z(), 1), "target"),
        (lambda: gk.softmax_cross_entropy(z(), labels(), weight=2.0), "weight"),
        (lambda: gk.bce_with_logits(z(), 0.5), "target"),
        (lambda: gk.bce_with_logits(z(), z(), pos_weight=2.0), "pos_weight"),
        (lambda: gk.composite_loss(None, z(), [gk.LossTerm("mse", slice(0, 2))]), "pred"),
        (lambda: gk.composite_loss(z(), None, [gk.LossTerm("mse", slice(0, 2))]), "target"),
        (lambda: gk.sigmoid(None), "x"),
        (lambda: gk.batch_sum(None), "x"),
        (lambda: gk.batch_sum(3.0), "x"),
        (lambda: gk.mse(z(), z(), out=1.0), "out"),
        (lambda: gk.mse(z(), z(), grad_output="1"), "grad_output"),
        (lambda: gk.mse(z(), z(), grad_output=True), "grad_output"),
    ],
)
def test_none_or_number_for_an_array(backend, call, name):
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        call()


def test_grad_output_may_be_a_number(backend):
    loss, grad = gk.mse(z(), z() * 0, grad_output=np.float32(2.0))
    exp_loss, exp_grad = mse(z(), z() * 0, grad_output=2.0)
    assert_close(grad, exp_grad, np.float64)
    if BFLOAT16 is not None:  # ml_dtypes' scalar is no np.floating, but a number all the same
        loss, grad = gk.mse(z(), z() * 0, grad_output=BFLOAT16.type(2.0))
        assert_close(grad, exp_grad, np.float64)
        options = {"label_smoothing": BFLOAT16.type(0.5), "grad_output": BFLOAT16.type(2.0)}
        got = gk.softmax_cross_entropy(z(), np.array([0, 1, 2]), **options)
        options = {"label_smoothing": 0.5, "grad_output": 2.0}
        want = gk.softmax_cross_entropy(z(), np.array([0, 1, 2]), **options)
        assert got[0] == want[0] and np.array_equal(got[1], want[1])


def test_cuda_array_without_cupy(monkeypatch):
    """Used to be a ModuleNotFoundError from deep inside the dispatcher."""
    monkeypatch.delenv("GPUKERNELS_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    _dispatch.array_module.cache_clear()
    x = DeviceArray(1 << 20, (3, 4))
    try:
        with pytest.raises(TypeError, match=r"\bpred\b.*CuPy"):
            gk.mse(x, DeviceArray(1 << 21, (3, 4)))
        with pytest.raises(TypeError, match=r"\bx\b.*CuPy"):
            gk.sigmoid(x)
    finally:
        _dispatch.array_module.cache_clear()


# ---- 6. weighted mean over zero weight -------------------------------------------------------


def torch_cross_entropy(logits, target, **options):
    torch = pytest.importorskip("torch")
    x = torch.tensor(logits, requires_grad=True)
    if "weight" in options:
        options["weight"] = torch.tensor(options["weight"])
    loss = torch.nn.functional.cross_entropy(x, torch.tensor(target), **options)
    loss.backward()
    return loss.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize(
    "target", [[0, 1, 1], [0, -100, 1], [1, 1, -100]], ids=["all", "one_ignored", "last_ignored"]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_mean_over_zero_weight_is_nan_as_in_torch(backend, target, smoothing, dtype):
    """Used to divide by 1 and give a finite loss and gradient; PyTorch gives 0/0."""
    weight = np.array([0.0, 0.0, 1.0, 2.0], dtype)
    target = np.array(target)
    options = {"weight": weight, "label_smoothing": smoothing}
    loss, grad = gk.softmax_cross_entropy(z(dtype=dtype), target, **options)
    t_loss, t_grad = torch_cross_entropy(z(dtype=dtype), target, **options)
    assert np.isnan(t_loss) and np.isnan(loss)
    assert loss.dtype == dtype and loss.shape == ()
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(t_grad))
    np.testing.assert_array_equal(grad[~np.isnan(t_grad)], t_grad[~np.isnan(t_grad)])
    assert np.all(grad[target == -100] == 0.0)


def test_weighted_mean_over_no_row_stays_zero(backend):
    """Every row ignored (or an empty batch): 0 with a zero gradient, PyTorch's NaN aside."""
    weight = np.array([0.0, 0.0, 1.0, 2.0])
    out = poisoned((N, C), np.float64)
    loss, grad = gk.softmax_cross_entropy(z(), np.full(N, -100), weight=weight, out=out)
    assert loss == 0.0 and np.all(grad == 0.0)
    loss, grad = gk.softmax_cross_entropy(np.ones((0, C)), np.ones(0, np.int64), weight=weight)
    assert loss == 0.0 and grad.shape == (0, C)


def test_weighted_mean_with_weight_still_divides_by_the_weight_sum(backend):
    weight = np.array([0.0, 0.5, 1.0, 2.0])
    target = np.array([0, 1, 3])
    loss, grad = gk.softmax_cross_entropy(z(), target, weight=weight)
    exp_loss, exp_grad = torch_cross_entropy(z(), target, weight=weight)
    assert_close(loss, exp_loss, np.float64)
    assert_close(grad, exp_grad, np.float64)


def test_weighted_mean_out_of_range_rows_only(backend):
    """validate=False, every row out of range: nothing takes part (divisor 1), the loss is
    NaN from the rows' own NaN losses and the gradient zero."""
    weight = np.array([0.0, 0.5, 1.0, 2.0])
    loss, grad = gk.softmax_cross_entropy(z(), np.array([9, -3, 4]), weight=weight, validate=False)
    assert np.isnan(loss) and np.all(grad == 0.0)


# ---- 7. LossTerm and composite_loss ------------------------------------------------------------


def box_data():
    pred = np.array([[2.0, 0.1, 0.2, 0.3, 0.4], [-1.0, 0.5, 0.0, 0.0, 0.0], [0.5, 1, 1, 1, 1]])
    target = np.array(
        [[1.0, 0.0, 0.2, 0.3, 0.5], [0.0, 0.7, 0.0, 0.0, 0.0], [1.0, 0.3] + [0.3] * 3]
    )
    return pred, target


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 1.0, "0"])
def test_only_where_must_be_an_integer(backend, value):
    """only_where=True used to select rows through NumPy's boolean indexing (loss 0.152 where
    only_where=1 gives 0.911)."""
    pred, target = box_data()
    with pytest.raises(TypeError, match=r"terms\[1\]\.only_where"):
        gk.composite_loss(
            pred,
            target,
            [gk.LossTerm("mse", slice(0, 1)), gk.LossTerm("mse", slice(1, 5), only_where=value)],
        )


def test_only_where_numpy_integer(backend):
    pred, target = box_data()
    terms = [gk.LossTerm("mse", slice(1, 5), only_where=np.int64(0))]
    loss, _ = gk.composite_loss(pred, target, terms)
    rows = [0, 2]
    assert_close(loss, mse(pred[rows, 1:5], target[rows, 1:5])[0], np.float64)


@pytest.mark.parametrize(
    "field, columns",
    [
        ("columns", slice(3, 9)),
        ("columns", slice(-7, 2)),
        ("columns", slice(6, None)),
        ("columns", slice(2, 2)),
        ("columns", slice(3, 1)),
        ("columns", slice(0, 4, 2)),
        ("target_columns", slice(3, 9)),
        ("target_columns", slice(-6, -2)),
    ],
)
def test_column_slices_past_the_columns(backend, field, columns):
    """slice.indices used to clamp slice(3, 9) of 5 columns to slice(3, 5) silently."""
    pred, target = box_data()
    term = (
        gk.LossTerm("mse", columns)
        if field == "columns"
        else gk.LossTerm("mse", slice(1, 5), target_columns=columns)
    )
    with pytest.raises(ValueError, match=rf"terms\[1\]\.{field}"):
        gk.composite_loss(pred, target, [gk.LossTerm("mse", slice(0, 1)), term])


@pytest.mark.parametrize("columns", [slice(1.0, 3), slice(True, 3), slice("1", 3), (1, 3)])
def test_column_slices_of_the_wrong_type(backend, columns):
    pred, target = box_data()
    with pytest.raises(TypeError, match=r"terms\[0\]\.columns"):
        gk.composite_loss(pred, target, [gk.LossTerm("mse", columns)])


def test_negative_slice_bounds_inside_the_columns(backend):
    pred, target = box_data()
    expected = gk.composite_loss(pred, target, [gk.LossTerm("mse", slice(1, 5))])
    for columns in (slice(-4, None), slice(-4, 5), slice(1, None), slice(-4, 5, 1)):
        result = gk.composite_loss(pred, target, [gk.LossTerm("mse", columns)])
        np.testing.assert_array_equal(result[0], expected[0])
        np.testing.assert_array_equal(result[1], expected[1])


@pytest.mark.parametrize(
    "terms",
    [
        gk.LossTerm("mse", slice(0, 2)),
        {"kind": "mse", "columns": slice(0, 2)},
        [gk.LossTerm("mse", slice(0, 2)), ("mse", slice(0, 2))],
        "mse",
        None,
    ],
    ids=["one_term", "dict", "tuple_in_list", "str", "none"],
)
def test_terms_not_a_sequence_of_loss_terms(backend, terms):
    pred, target = box_data()
    with pytest.raises(TypeError, match=r"\bterms\b"):
        gk.composite_loss(pred, target, terms)


@pytest.mark.parametrize("weight", ["1", None, True, [1.0]])
def test_term_weight_not_a_number(backend, weight):
    pred, target = box_data()
    with pytest.raises(TypeError, match=r"terms\[0\]\.weight"):
        gk.composite_loss(pred, target, [gk.LossTerm("mse", slice(0, 2), weight=weight)])


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf])
def test_term_weight_not_finite(backend, weight):
    pred, target = box_data()
    with pytest.raises(ValueError, match=r"terms\[0\]\.weight"):
        gk.composite_loss(pred, target, [gk.LossTerm("mse", slice(0, 2), weight=weight)])


def test_term_kind_not_a_string(backend):
    pred, target = box_data()
    with pytest.raises(TypeError, match=r"terms\[0\]\.kind"):
        gk.composite_loss(pred, target, [gk.LossTerm(2, slice(0, 2))])


def test_at_most_max_terms(backend):
    """17 terms used to run on the CPU and fail in the CUDA launcher."""
    assert MAX_TERMS == 16
    pred, target = box_data()
    term = gk.LossTerm("mse", slice(0, 2), weight=0.5)
    loss, _ = gk.composite_loss(pred, target, [term] * MAX_TERMS)
    assert_close(loss, MAX_TERMS * 0.5 * mse(pred[:, :2], target[:, :2])[0], np.float64)
    with pytest.raises(ValueError, match=r"\bterms\b.*16"):
        gk.composite_loss(pred, target, [term] * (MAX_TERMS + 1))


def test_huber_terms_pass_validation():
    terms = [
        gk.LossTerm("huber", slice(1, 5), weight=2.0, only_where=0, delta=0.5),
        gk.LossTerm("softmax_cross_entropy", slice(0, 3), target_columns=slice(4, 5)),
        gk.LossTerm("bce_with_logits", slice(-2, None), target_columns=slice(0, 2)),
    ]
    resolved = _validate.loss_terms(terms, 5, 5)
    assert resolved == [
        _validate.ResolvedTerm(TermKind.HUBER, (1, 5), (1, 5), 0, 2.0, 0.5, 0.0, 0.0),
        _validate.ResolvedTerm(
            TermKind.SOFTMAX_CROSS_ENTROPY, (0, 3), (4, 5), -1, 1.0, 1.0, 0.0, 0.0
        ),
        _validate.ResolvedTerm(TermKind.BCE_WITH_LOGITS, (3, 5), (0, 2), -1, 1.0, 1.0, 0.0, 0.0),
    ]
    assert isinstance(resolved[0].kind, TermKind)
    assert all(type(v) is int for term in resolved for v in (*term.columns, term.only_where))


@pytest.mark.parametrize("delta", [0.0, -1.0, math.nan, math.inf])
def test_huber_delta_out_of_range(delta):
    with pytest.raises(ValueError, match=r"terms\[0\]\.delta"):
        _validate.loss_terms([gk.LossTerm("huber", slice(0, 2), delta=delta)], 5, 5)


@pytest.mark.parametrize("delta", ["1", None, True])
def test_huber_delta_not_a_number(delta):
    with pytest.raises(TypeError, match=r"terms\[0\]\.delta"):
        _validate.loss_terms([gk.LossTerm("huber", slice(0, 2), delta=delta)], 5, 5)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5])
def test_one_column_softmax_term_with_a_probability(backend, t):
    """softmax of one logit is 1: the loss t * (lse - z) = 0 and the gradient t p - t = 0,
    whatever the target (it used to be checked as a class index in [0, 1))."""
    pred, target = box_data()
    target[:, 0] = t
    terms = [
        gk.LossTerm("softmax_cross_entropy", slice(0, 1), weight=3.0),
        gk.LossTerm("mse", slice(1, 3)),
    ]
    loss, grad = gk.composite_loss(pred, target, terms)
    exp_loss, exp_grad = mse(pred[:, 1:3], target[:, 1:3])
    assert_close(loss, exp_loss, np.float64)
    assert np.all(grad[:, 0] == 0.0)
    assert_close(grad[:, 1:3], exp_grad, np.float64)
    assert np.all(grad[:, 3:] == 0.0)


def test_class_index_column_checked_only_where_the_term_reads(backend):
    """Rows that only_where leaves out may hold anything in the class column."""
    pred, target = box_data()
    target[1, 4] = -1.0  # row 1 has target[:, 0] == 0
    target[[0, 2], 4] = [2.0, 0.0]
    terms = [gk.LossTerm("softmax_cross_entropy", slice(1, 4), slice(4, 5), only_where=0)]
    loss, grad = gk.composite_loss(pred, target, terms)
    exp_loss, exp_grad = cross_entropy(pred[[0, 2], 1:4], np.array([2, 0]))
    assert_close(loss, exp_loss, np.float64)
    assert_close(grad[[0, 2], 1:4], exp_grad, np.float64)
    target[0, 4] = 3.0
    with pytest.raises(ValueError, match=r"\btarget\b.*terms\[0\]"):
        gk.composite_loss(pred, target, terms)


# ---- 8. composite_loss(validate=False) ---------------------------------------------------------


def test_composite_without_validation_reads_nothing_back(backend, monkeypatch):
    pred, target = box_data()
    target[:, 4] = [2.0, 5.0, 1.0]  # row 1: no class of a 3-wide term
    terms = [
        gk.LossTerm("softmax_cross_entropy", slice(1, 4), slice(4, 5)),
        gk.LossTerm("bce_with_logits", slice(0, 1)),
    ]
    with pytest.raises(ValueError, match=r"\btarget\b"):
        gk.composite_loss(pred, target, terms)

    def fail(*args, **kwargs):
        raise AssertionError("validate=False must not check (nor read back) class indices")

    monkeypatch.setattr(_validate, "class_index_column", fail)
    out = poisoned(pred.shape, pred.dtype)
    loss, grad = gk.composite_loss(pred, target, terms, validate=False, out=out)
    assert np.isnan(loss)
    assert np.all(grad[1, 1:4] == 0.0)
    # the other rows: their own gradient, the mean still over the term's N rows
    rows = [0, 2]
    logp = log_softmax(pred[rows, 1:4])
    expected = np.exp(logp)
    expected[[0, 1], [2, 1]] -= 1.0
    assert_close(grad[rows, 1:4], expected / N, np.float64)
    sig = 1.0 / (1.0 + np.exp(-pred[:, 0]))
    assert_close(grad[:, 0], (sig - target[:, 0]) / N, np.float64)
