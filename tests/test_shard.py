"""Class-sharded cross-entropy's local steps (gk.shard_stats, gk.merge_shard_stats,
gk.shard_loss_and_grad): rows split by columns into uneven shards (one a single column, one
empty, some holding no target) give the loss and gradient of the whole rows, against
PyTorch's cross_entropy written out with z-loss and softcap, on both backends."""

import warnings

import numpy as np
import pytest
from _refs import FLOATS, assert_close, loss_dtype, torch_cross_entropy_loss

import gpukernels as gk

torch = pytest.importorskip("torch")
F = torch.nn.functional

SPLITS = [(0, 1), (1, 9), (9, 9), (9, 23)]  # widths 1, 8, 0, 14 of 23 classes


def sharded(z, y, splits=SPLITS, order=None, **options):
    """Stats of every shard, merged (in ``order``), then each shard's loss and gradient."""
    stat_options = {k: options[k] for k in ("label_smoothing", "softcap") if k in options}
    stats = [gk.shard_stats(z[:, a:b], y, class_start=a, **stat_options) for a, b in splits]
    merged = None
    for k in order or range(len(stats)):
        merged = stats[k] if merged is None else gk.merge_shard_stats(merged, stats[k])
    parts = [
        gk.shard_loss_and_grad(
            z[:, a:b], y, merged, class_start=a, num_classes=z.shape[1], **options
        )
        for a, b in splits
    ]
    return parts, merged


def reference(z, y, *, grad_output=None, **options):
    """PyTorch autograd through the definitions (``_refs.torch_cross_entropy_loss``)."""
    x = torch.tensor(z.astype(np.float64), requires_grad=True)
    total = torch_cross_entropy_loss(x, torch.tensor(y), **options)
    up = 1.0 if grad_output is None else torch.tensor(np.asarray(grad_output, np.float64))
    total.backward(up * torch.ones_like(total))
    return total.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_shards_give_the_whole_rows(backend, dtype, reduction):
    rng = np.random.default_rng(111)
    z = (3 * rng.standard_normal((9, 23))).astype(dtype)
    y = rng.integers(0, 23, 9)
    y[[2, 5]] = -100
    go = rng.uniform(0.5, 2, 9) if reduction == "none" else 0.8
    options = dict(reduction=reduction, label_smoothing=0.1, z_loss=1e-3, softcap=5.0)
    parts, _ = sharded(z, y, grad_output=go, **options)
    want_loss, want_grad = reference(z, y, grad_output=go, **options)
    for loss, _ in parts:
        assert loss.dtype == loss_dtype(dtype)
        assert_close(loss, want_loss, dtype, what="loss")
    grad = np.concatenate([g for _, g in parts], axis=1)
    assert grad.dtype == dtype
    assert_close(grad, want_grad, dtype, what="grad")
    whole = gk.softmax_cross_entropy(z, y, grad_output=go, **options)
    assert_close(parts[0][0], whole[0], dtype, what="loss vs softmax_cross_entropy")


def test_merge_order_and_identical_losses(backend):
    """Merging is associative and commutative up to rounding; every shard of one split
    returns the same loss bits."""
    rng = np.random.default_rng(112)
    z = rng.standard_normal((5, 23))
    y = rng.integers(0, 23, 5)
    forward, m1 = sharded(z, y)
    backward, m2 = sharded(z, y, order=[3, 2, 1, 0])
    np.testing.assert_allclose(m1, m2, rtol=1e-13)
    assert all(p[0].tobytes() == forward[0][0].tobytes() for p in forward)
    np.testing.assert_allclose(forward[0][0], backward[0][0], rtol=1e-13)


def test_stats_columns(backend):
    z = np.array([[1.0, 3.0, 2.0], [-np.inf, -np.inf, -np.inf]])
    stats = gk.shard_stats(z, np.array([12, 10]), class_start=10)
    np.testing.assert_allclose(stats[0], [3.0, np.exp(-2) + 1 + np.exp(-1), 2.0, 6.0])
    assert stats[1, 0] == -np.inf and stats[1, 1] == 0 and stats[1, 2] == -np.inf
    empty = gk.shard_stats(np.zeros((2, 0)), np.array([0, 1]), class_start=3)
    merged = gk.merge_shard_stats(empty, empty)
    assert (merged[:, 0] == -np.inf).all() and not np.isnan(merged).any()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # simulator
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # simulator
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_logits_give_the_whole_rows(backend, dtype):
    """Without smoothing or z-loss their terms are left out (``0 * inf`` made every row with a
    -inf logit NaN), and ``m - z_y`` keeps ``log S`` beside float32's largest logits; a row of
    -inf is NaN, as PyTorch makes it, on the serial and the parallel CPU paths alike."""
    big = np.finfo(np.float32).max * 0.75
    z = np.array(
        [
            [0.0, -np.inf, 1.0, 2.0, 0.5],  # a -inf logit: a class of probability 0
            [0.5, 1.0, -np.inf, -np.inf, -np.inf],
            [-np.inf, 3.0, -np.inf, -np.inf, -np.inf],  # the target the only finite logit
            [big, big, 0.0, 1.0, 2.0],  # the sum of logits overflows float32
            [-np.inf] * 5,
        ],
        dtype,
    )
    y = np.array([2, 0, 1, 0, 1])
    parts, _ = sharded(z, y, splits=[(0, 2), (2, 2), (2, 5)], reduction="none")
    want_loss, want_grad = reference(z, y, reduction="none")
    for loss, _ in parts:
        np.testing.assert_array_equal(np.isnan(loss), [False] * 4 + [True])
        assert_close(loss[:4], want_loss[:4], dtype, what="loss")
    grad = np.concatenate([g for _, g in parts], axis=1)
    assert np.isnan(grad[4]).all()
    assert_close(grad[:4], want_grad[:4], dtype, what="grad")


def test_merged_logit_sums_past_the_range_are_inf_without_a_warning(cpu_backend):
    """Two shards' logit sums whose total passes float32's range merge to inf (documented:
    a smoothed loss is then -inf), as CuPy's addition gives it: NumPy's overflow warning is
    not passed on."""
    big = np.finfo(np.float32).max * 0.75
    a = gk.shard_stats(np.full((1, 2), big / 2, np.float32), np.array([0]), class_start=0)
    b = gk.shard_stats(np.full((1, 2), big / 2, np.float32), np.array([0]), class_start=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged = gk.merge_shard_stats(a, b)
    assert merged[0, 3] == np.inf and np.isfinite(merged[0, :3]).all()


def test_a_row_of_minus_inf_is_nan_on_both_cpu_paths(cpu_backend, monkeypatch):
    """The serial kernel divides by the row's sum 0 as the parallel one does (NaN, not
    Python's ZeroDivisionError, which it raised): the same bits on both paths."""
    import cpu_fallback

    z = np.array([[-np.inf] * 4, [0.0, 1.0, 2.0, 3.0]])
    y = np.array([1, 2])
    outcomes = []
    for threshold in (0, 1 << 62):  # parallel at every size, then serial at every size
        monkeypatch.setattr(cpu_fallback, "PARALLEL_MIN_WORK", threshold)
        stats = gk.shard_stats(z, y, class_start=0)
        options = dict(class_start=0, num_classes=4, reduction="none")
        outcomes.append(gk.shard_loss_and_grad(z, y, stats, **options))
    (loss, grad), (serial_loss, serial_grad) = outcomes
    assert np.isnan(loss[0]) and np.isnan(grad[0]).all()
    assert np.isfinite(loss[1]) and np.isfinite(grad[1]).all()
    assert loss.tobytes() == serial_loss.tobytes() and grad.tobytes() == serial_grad.tobytes()


def test_every_row_ignored(backend):
    z = np.ones((3, 4))
    y = np.full(3, -100)
    (loss, grad), *_ = sharded(z, y, splits=[(0, 2), (2, 4)])[0]
    assert loss == 0 and not grad.any()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 5}, ValueError, "num_classes"),
        ({"num_classes": None}, TypeError, "num_classes must be an integer"),
        ({"class_start": -1}, ValueError, "class_start"),
        ({"class_start": 1.5}, TypeError, "class_start"),
        ({"softcap": 0.0}, ValueError, "softcap"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    z, y = np.zeros((2, 3)), np.array([0, 1])
    options = {"class_start": 3, "num_classes": 6, **kwargs}
    with pytest.raises(error, match=match):
        gk.shard_loss_and_grad(z, y, np.zeros((2, 4)), **options)


@pytest.mark.parametrize("ignore_index", [-100, 2**63 - 1])
@pytest.mark.parametrize("label", [6, 2**63, 2**64 - 100])
def test_a_class_outside_every_shard_is_an_error(label, ignore_index):
    z, y = np.zeros((2, 3)), np.array([0, label], np.uint64)
    with pytest.raises(ValueError, match=f"class index {label} "):
        gk.shard_loss_and_grad(
            z, y, np.zeros((2, 4)), class_start=0, num_classes=6, ignore_index=ignore_index
        )


def test_merge_names_its_arguments():
    stats = np.zeros((5, 3))
    with pytest.raises(ValueError, match=r"^a and b must be \(N, 4\) shard stats"):
        gk.merge_shard_stats(stats, stats)


def _three_rows():
    rng = np.random.default_rng(12)
    z, y = rng.standard_normal((3, 6)), np.array([0, 4, 5])
    return z, y, gk.shard_stats(z, y, class_start=0)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda z, y, st: gk.merge_shard_stats(st, st[:1]), "b"),
        (lambda z, y, st: gk.shard_loss_and_grad(z, y, np.vstack([st, st[:1]]), **WHOLE), "stats"),
        (lambda z, y, st: gk.shard_loss_and_grad(z, y, st[:, :3], **WHOLE), "stats"),
        (
            lambda z, y, st: gk.shard_stats(z, y, class_start=0, label_smoothing=2.0),
            "label_smoothing",
        ),
        (lambda z, y, st: gk.shard_stats(z, np.array([0, 4, 5, 1]), class_start=0), "target"),
        (lambda z, y, st: gk.shard_stats(z, y[:, None], class_start=0), "target"),
        (
            lambda z, y, st: gk.shard_loss_and_grad(z, y, st, grad_output=np.ones(3), **WHOLE),
            "grad_output",
        ),
        (
            lambda z, y, st: gk.shard_loss_and_grad(
                z, y, st, reduction="none", grad_output=np.ones(2), **WHOLE
            ),
            "grad_output",
        ),
        (
            lambda z, y, st: gk.shard_loss_and_grad(
                z, y, st, out=np.zeros((3, 6), np.float32), **WHOLE
            ),
            "out",
        ),
        (lambda z, y, st: gk.shard_loss_and_grad(z, y, st, out=np.zeros((2, 6)), **WHOLE), "out"),
    ],
)
def test_mismatched_shard_arguments_are_refused(backend, call, name):
    """Stats of other rows or columns, a target of another shape, an upstream gradient or an
    ``out`` that does not fit: each refused, naming the argument (without the checks, the
    kernels read past the stats or broadcast one row's over all)."""
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call(*_three_rows())


WHOLE = {"class_start": 0, "num_classes": 6}


def test_shard_out_and_stats_dtype(backend):
    """``out=`` receives the gradient (here the logits themselves, in place), and float32
    stats beside float64 logits are read in float64, as the float64 stats would be."""
    z, y, st = _three_rows()
    want_loss, want_grad = gk.shard_loss_and_grad(z, y, st, **WHOLE)
    work = z.copy()
    loss, grad = gk.shard_loss_and_grad(work, y, st, out=work, **WHOLE)
    assert grad is work and np.array_equal(work, want_grad) and loss == want_loss
    wide = gk.shard_loss_and_grad(z, y, st.astype(np.float32).astype(np.float64), **WHOLE)
    narrow = gk.shard_loss_and_grad(z, y, st.astype(np.float32), **WHOLE)
    assert narrow[0] == wide[0] and np.array_equal(narrow[1], wide[1])


def test_mean_with_a_class_as_ignore_index(backend):
    """A non-negative ``ignore_index`` (a padding class 0): the mean counts the rows whose
    target is not it (PyTorch's divisor)."""
    z, y, _ = _three_rows()
    y = np.array([0, 4, 0])
    stats = gk.shard_stats(z, y, class_start=0, ignore_index=0)
    loss, grad = gk.shard_loss_and_grad(z, y, stats, ignore_index=0, **WHOLE)
    want_loss, want_grad = gk.softmax_cross_entropy(z, y, ignore_index=0)
    assert_close(loss, want_loss, np.float64, what="loss")
    assert_close(grad, want_grad, np.float64, what="grad")
