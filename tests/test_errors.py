"""The Errors section of the contract: TypeError and ValueError, each naming its argument."""

import numpy as np
import pytest

import gpukernels as gk

N, C = 3, 4


def z(shape=(N, C), dtype=np.float32):
    return (
        np.linspace(-1.0, 1.0, int(np.prod(shape)), dtype=np.float64).astype(dtype).reshape(shape)
    )


def labels(n=N):
    return np.arange(n, dtype=np.int64) % C


SEED_TERMS = [gk.LossTerm("bce_with_logits", slice(0, 1)), gk.LossTerm("mse", slice(1, 3))]


# ---- TypeError: not an array ------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: gk.softmax_cross_entropy(z().tolist(), labels()), r"\blogits\b"),
        (lambda: gk.softmax_cross_entropy(z(), labels().tolist()), r"\btarget\b"),
        (lambda: gk.softmax_cross_entropy(z(), labels(), weight=[1.0] * C), r"\bweight\b"),
        (lambda: gk.bce_with_logits(z().tolist(), z()), r"\blogits\b"),
        (lambda: gk.bce_with_logits(z(), z().tolist()), r"\btarget\b"),
        (lambda: gk.bce_with_logits(z(), z(), pos_weight=[1.0] * C), r"\bpos_weight\b"),
        (lambda: gk.mse(z().tolist(), z()), r"\bpred\b"),
        (lambda: gk.mse(z(), z().tolist()), r"\btarget\b"),
        (lambda: gk.composite_loss(z().tolist(), z(), SEED_TERMS), r"\bpred\b"),
        (lambda: gk.composite_loss(z(), z().tolist(), SEED_TERMS), r"\btarget\b"),
        (lambda: gk.sigmoid(z().tolist()), r"\bx\b"),
        (lambda: gk.sigmoid(1.5), r"\bx\b"),
        (lambda: gk.sigmoid_derivative(z().tolist()), r"\bx\b"),
        (lambda: gk.sigmoid_backward(z().tolist(), z()), r"\bgrad_output\b"),
        (lambda: gk.sigmoid_backward(z(), z().tolist()), r"\by\b"),
        (lambda: gk.batch_sum(z().tolist()), r"\bx\b"),
        (lambda: gk.mse(z(), z(), out=z().tolist()), r"\bout\b"),
    ],
)
def test_not_an_array(backend, call, name):
    with pytest.raises(TypeError, match=name):
        call()


# ---- TypeError: unsupported dtype -------------------------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: gk.softmax_cross_entropy(z(dtype=np.int32), labels()), r"\blogits\b"),
        (lambda: gk.softmax_cross_entropy(z(dtype=np.complex64), labels()), r"\blogits\b"),
        (lambda: gk.bce_with_logits(z(dtype=np.int64), z()), r"\blogits\b"),
        (lambda: gk.mse(z(dtype=np.int16), z(dtype=np.int16)), r"\bpred\b"),
        (lambda: gk.mse(z(dtype=bool), z()), r"\bpred\b"),
        (lambda: gk.composite_loss(z(dtype=np.int64), z(), SEED_TERMS), r"\bpred\b"),
        (lambda: gk.sigmoid(z(dtype=np.int64)), r"\bx\b"),
        (lambda: gk.sigmoid_derivative(z(dtype=np.int8)), r"\bx\b"),
        (lambda: gk.sigmoid_backward(z(), z(dtype=np.int32)), r"\by\b"),
        (lambda: gk.batch_sum(z(dtype=np.int64)), r"\bx\b"),
        (lambda: gk.batch_sum(z(dtype=np.complex128)), r"\bx\b"),
    ],
)
def test_unsupported_dtype(backend, call, name):
    with pytest.raises(TypeError, match=name):
        call()


@pytest.mark.parametrize(
    "target, message",
    [
        (np.array([0.0, 1.0, 3.0], np.float32), r"target of shape \(3,\) must hold integer"),
        (np.ones((N, C), np.int64), r"target of shape \(3, 4\) must hold float class prob"),
    ],
    ids=["float_class_indices", "integer_probabilities"],
)
def test_target_of_the_wrong_kind(backend, target, message):
    """(N,) floats or (N, C) integers fit neither form of target: the shape says which form
    was meant, so the dtype is at fault (as PyTorch has it), and the message says so."""
    with pytest.raises(TypeError, match=message):
        gk.softmax_cross_entropy(z(), target)


@pytest.mark.parametrize("name", ["logits", "target", "weight"])
def test_non_native_byte_order_is_named_as_such(backend, name):
    """A big-endian float32 array has a float dtype, only not one the kernels read: the
    message says what to change rather than listing the dtypes it already has."""
    arrays = {"logits": z(), "target": np.full((N, C), 0.25, np.float32), "weight": np.ones(C)}
    arrays[name] = arrays[name].astype(arrays[name].dtype.newbyteorder(">"))
    with pytest.raises(TypeError, match=rf"{name} must be in the machine's byte order, got >f"):
        gk.softmax_cross_entropy(**arrays)


def test_non_native_byte_order_of_an_array_that_must_match_another():
    x, w = np.ones((3, 2), np.float32), np.ones((5, 2), np.float32)
    with pytest.raises(TypeError, match=r"linear_weight must be in the machine's byte order"):
        gk.linear_cross_entropy(x, w.astype(">f4"), labels())
    # where the byte order is not the only difference, the dtypes are named
    with pytest.raises(TypeError, match=r"linear_weight must have the dtype of input \(float64"):
        gk.linear_cross_entropy(x.astype(np.float64), w.astype(">f4"), labels())


def test_bool_target_message_names_both_kinds(backend):
    """A bool target is neither class indices nor probabilities: the message says both are
    accepted, not only floats."""
    with pytest.raises(TypeError, match=r"target must hold integer class indices or float"):
        gk.softmax_cross_entropy(z(), np.ones(N, bool))


@pytest.mark.parametrize("ignore_index", [0, C - 1, C + 5])
def test_ignore_index_with_probabilities(backend, ignore_index):
    """A class to skip means nothing to class probabilities: PyTorch refuses a non-negative
    ignore_index with them, and so do we, rather than silently not ignoring."""
    probs = np.full((N, C), 1.0 / C, np.float32)
    with pytest.raises(ValueError, match=rf"ignore_index={ignore_index} .* probabilit"):
        gk.softmax_cross_entropy(z(), probs, ignore_index=ignore_index)
    gk.softmax_cross_entropy(z(), probs, ignore_index=-1)  # any negative value: unused


# ---- ValueError: dimensions and shapes --------------------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: gk.softmax_cross_entropy(z((N * C,)), labels()), r"\blogits\b"),
        (lambda: gk.softmax_cross_entropy(z((2, N, C)), labels()), r"\blogits\b"),
        (lambda: gk.softmax_cross_entropy(z(), labels().reshape(N, 1, 1)), r"\btarget\b"),
        (lambda: gk.composite_loss(z((N * C,)), z(), SEED_TERMS), r"\bpred\b"),
        (lambda: gk.composite_loss(z(), z((N * C,)), SEED_TERMS), r"\btarget\b"),
    ],
)
def test_wrong_number_of_dimensions(backend, call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: gk.softmax_cross_entropy(z(), labels(N + 1)), r"\btarget\b"),
        (lambda: gk.softmax_cross_entropy(z(), z((N, C + 1))), r"\btarget\b"),
        (lambda: gk.softmax_cross_entropy(z(), z((N + 1, C))), r"\btarget\b"),
        (lambda: gk.softmax_cross_entropy(z(), labels(), weight=z((C + 1,))), r"\bweight\b"),
        (lambda: gk.softmax_cross_entropy(z(), labels(), weight=z((1, C))), r"\bweight\b"),
        (lambda: gk.bce_with_logits(z(), z((N, C + 1))), r"\btarget\b"),
        (lambda: gk.bce_with_logits(z(), z(), weight=z((C + 1,))), r"\bweight\b"),
        (lambda: gk.bce_with_logits(z(), z(), pos_weight=z((C + 1,))), r"\bpos_weight\b"),
        (lambda: gk.mse(z(), z((N + 1, C))), r"\btarget\b"),
        (lambda: gk.mse(z(), z((C, N))), r"\btarget\b"),
        (lambda: gk.composite_loss(z(), z((N + 1, C)), SEED_TERMS), r"\btarget\b"),
        (lambda: gk.sigmoid_backward(z(), z((N, C + 1))), r"\by\b"),
    ],
)
def test_shapes_that_do_not_match(backend, call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: gk.softmax_cross_entropy(z(), labels(), reduction="none", grad_output=z((N + 1,))),
        lambda: gk.mse(z(), z(), reduction="none", grad_output=z((N, C + 1))),
        lambda: gk.bce_with_logits(z(), z(), reduction="none", grad_output=z((N,))),
        lambda: gk.mse(z(), z(), grad_output=z((0,))),
        lambda: gk.softmax_cross_entropy(z(), labels(), reduction="sum", grad_output=z((0,))),
    ],
)
def test_grad_output_of_the_wrong_shape(backend, call):
    with pytest.raises(ValueError, match=r"\bgrad_output\b"):
        call()


# ---- ValueError: unknown names, ranges ---------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: gk.softmax_cross_entropy(z(), labels(), reduction="avg"),
        lambda: gk.softmax_cross_entropy(z(), labels(), reduction="batchmean"),
        lambda: gk.bce_with_logits(z(), z(), reduction="Mean"),
        lambda: gk.mse(z(), z(), reduction="elementwise_mean"),
    ],
)
def test_unknown_reduction(backend, call):
    with pytest.raises(ValueError, match="reduction"):
        call()


@pytest.mark.parametrize("value", [np.array("mean"), ["mean"], None, 1])
@pytest.mark.parametrize(
    "call",
    [
        lambda r: gk.softmax_cross_entropy(z(), labels(), reduction=r),
        lambda r: gk.mse(z(), z(), reduction=r),
        lambda r: gk.linear_cross_entropy(z(), z((C, C)), labels(), reduction=r),
        lambda r: gk.shard_loss_and_grad(
            z(), labels(), gk.shard_stats(z(), labels(), class_start=0), class_start=0,
            num_classes=C, reduction=r,
        ),
    ],
)  # fmt: skip
def test_reduction_that_is_not_a_string(backend, call, value):
    """A reduction must be a ``str`` (NumPy's ``str_`` too): an array of one gave an
    unhashable-type error here and was taken elsewhere."""
    with pytest.raises(TypeError, match="reduction must be a str"):
        call(value)
    assert call(np.str_("sum"))[0] == call("sum")[0]


def test_unknown_kind(backend):
    with pytest.raises(ValueError, match="kind"):
        gk.composite_loss(z(), z(), [gk.LossTerm("hinge", slice(0, 2))])


@pytest.mark.parametrize("axis", [1, 2, -3])
def test_axis_out_of_range(backend, axis):
    with pytest.raises(ValueError, match="axis"):
        gk.batch_sum(z((N, C)) if axis != 1 else z((N,)), axis=axis)


@pytest.mark.parametrize("bad", [C, C + 7, -1, -101])
def test_class_index_out_of_range(backend, bad):
    target = labels()
    target[1] = bad
    with pytest.raises(ValueError, match=r"\btarget\b"):
        gk.softmax_cross_entropy(z(), target)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_class_index_error_names_the_first_bad_row(backend, reduction):
    """Every row from 5 on is out of range (row 2 ignored): the message names row 5, the
    first, though each thread or task of the scan meets several."""
    n = 300  # more than a tile of rows
    target = np.full(n, C, np.int64)
    target[:5] = [0, 1, -100, 3, 2]
    with pytest.raises(ValueError, match=r"class index 4 at row 5,"):
        gk.softmax_cross_entropy(z((n, C)), target, reduction=reduction)


def test_class_index_out_of_range_in_composite(backend):
    target = z((N, 2))
    target[:, 1] = [0, C, 1]
    terms = [gk.LossTerm("softmax_cross_entropy", slice(0, C), target_columns=slice(1, 2))]
    with pytest.raises(ValueError, match=r"\btarget\b"):
        gk.composite_loss(z(), target, terms)


def test_ignore_index_is_not_out_of_range(backend):
    target = labels()
    target[1] = -7
    gk.softmax_cross_entropy(z(), target, ignore_index=-7)


@pytest.mark.parametrize("smoothing", [-0.1, 1.01, 2.0])
def test_label_smoothing_outside_unit_interval(backend, smoothing):
    with pytest.raises(ValueError, match="label_smoothing"):
        gk.softmax_cross_entropy(z(), labels(), label_smoothing=smoothing)


# ---- ValueError: out of the wrong shape or dtype -----------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda out: gk.softmax_cross_entropy(z(), labels(), out=out),
        lambda out: gk.bce_with_logits(z(), z(), out=out),
        lambda out: gk.mse(z(), z(), out=out),
        lambda out: gk.composite_loss(z(), z(), SEED_TERMS, out=out),
        lambda out: gk.sigmoid(z(), out=out),
        lambda out: gk.sigmoid_derivative(z(), out=out),
        lambda out: gk.sigmoid_backward(z(), z(), out=out),
    ],
)
@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_out_of_the_wrong_shape_or_dtype(backend, call, bad):
    out = np.zeros((N, C + 1), np.float32) if bad == "shape" else np.zeros((N, C), np.float64)
    with pytest.raises(ValueError, match=r"\bout\b"):
        call(out)


@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_batch_sum_out_of_the_wrong_shape_or_dtype(backend, bad):
    out = np.zeros((C + 1,), np.float32) if bad == "shape" else np.zeros((C,), np.float64)
    with pytest.raises(ValueError, match=r"\bout\b"):
        gk.batch_sum(z(), axis=0, out=out)
    out = np.zeros((1,), np.float32) if bad == "shape" else np.zeros((), np.float16)
    with pytest.raises(ValueError, match=r"\bout\b"):
        gk.batch_sum(z(dtype=np.float16), out=out)
