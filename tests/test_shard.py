"""Class-sharded cross-entropy's local steps (gk.shard_stats, gk.merge_shard_stats,
gk.shard_loss_and_grad): rows split by columns into uneven shards (one a single column, one
empty, some holding no target) give the loss and gradient of the whole rows, against
PyTorch's cross_entropy written out with z-loss and softcap, on both backends."""

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


def test_every_row_ignored(backend):
    z = np.ones((3, 4))
    y = np.full(3, -100)
    (loss, grad), *_ = sharded(z, y, splits=[(0, 2), (2, 4)])[0]
    assert loss == 0 and not grad.any()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 5}, ValueError, "num_classes"),
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


def test_a_class_outside_every_shard_is_an_error():
    z, y = np.zeros((2, 3)), np.array([0, 6])
    with pytest.raises(ValueError, match="class index 6"):
        gk.shard_loss_and_grad(z, y, np.zeros((2, 4)), class_start=0, num_classes=6)
