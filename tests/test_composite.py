"""gk.composite_loss against the weighted sum of separately computed term means."""

import numpy as np
import pytest
from _refs import (
    FLOATS,
    assert_all_written,
    assert_close,
    bce_with_logits,
    cross_entropy,
    fd_gradient,
    is_0d_array,
    loss_dtype,
    mse,
    poisoned,
    random_floats,
    random_probs,
)

import gpukernels as gk

K = 3  # classes of the seed example's class head


def seed_terms():
    """Seed 000: column 0 objectness logit, 1..4 a box (where an object is), then classes."""
    return [
        gk.LossTerm("bce_with_logits", slice(0, 1)),
        gk.LossTerm("mse", slice(1, 5), weight=5.0, only_where=0),
        gk.LossTerm(
            "softmax_cross_entropy",
            slice(5, 5 + K),
            target_columns=slice(5, 6),
            weight=0.5,
            only_where=0,
        ),
    ]


def seed_data(rng, n, dtype, objects=None):
    """pred (n, 5 + K); target (n, 6): objectness, box, class index (as a float)."""
    pred = random_floats(rng, (n, 5 + K), dtype)
    target = np.empty((n, 6), dtype=dtype)
    target[:, 0] = (np.arange(n) % 2 == 0) if objects is None else objects
    target[:, 1:5] = random_floats(rng, (n, 4), dtype)
    target[:, 5] = rng.integers(0, K, n)
    return pred, target


def reference(pred, target, terms, grad_output=None):
    """The weighted sum of each term's own mean, and the sum of the weighted gradients."""
    p = pred.astype(np.float64)
    t = target.astype(np.float64)
    loss = 0.0
    grad = np.zeros_like(p)
    for term in terms:
        kind, cols, weight, where = term["kind"], term["columns"], term["weight"], term["where"]
        tcols = term.get("target_columns") or cols
        rows = np.arange(len(p)) if where is None else np.nonzero(t[:, where] != 0)[0]
        z, y = p[rows, cols], t[rows, tcols]
        if kind == "softmax_cross_entropy":
            target_slice = y[:, 0].astype(np.int64) if y.shape[1] == 1 else y
            term_loss, term_grad = cross_entropy(z, target_slice)
        elif kind == "bce_with_logits":
            term_loss, term_grad = bce_with_logits(z, y)
        else:
            term_loss, term_grad = mse(z, y)
        loss += weight * float(term_loss)
        grad[rows, cols] += weight * term_grad
    go = 1.0 if grad_output is None else grad_output
    return np.asarray(loss), grad * go


SEED_REF = [
    {"kind": "bce_with_logits", "columns": slice(0, 1), "weight": 1.0, "where": None},
    {"kind": "mse", "columns": slice(1, 5), "weight": 5.0, "where": 0},
    {
        "kind": "softmax_cross_entropy",
        "columns": slice(5, 5 + K),
        "target_columns": slice(5, 6),
        "weight": 0.5,
        "where": 0,
    },
]


def check(result, pred, target, ref_terms, grad_output=None):
    loss, grad = result
    dtype = pred.dtype
    exp_loss, exp_grad = reference(pred, target, ref_terms, grad_output)
    assert is_0d_array(loss) and loss.dtype == loss_dtype(dtype)
    assert isinstance(grad, np.ndarray) and grad.dtype == dtype and grad.shape == pred.shape
    assert_close(loss, exp_loss, loss_dtype(dtype), what="loss")
    assert_close(grad, exp_grad, dtype, what="grad")
    return loss, grad


@pytest.mark.parametrize("dtype", FLOATS)
def test_seed_example_matches_sum_of_term_means(backend, dtype):
    rng = np.random.default_rng(81)
    pred, target = seed_data(rng, 5, dtype)
    kept = pred.copy()
    check(gk.composite_loss(pred, target, seed_terms()), pred, target, SEED_REF)
    np.testing.assert_array_equal(pred, kept)


def test_matches_separate_library_calls(backend):
    """The same numbers as calling each public loss on its slice and adding them up."""
    rng = np.random.default_rng(82)
    pred, target = seed_data(rng, 4, np.float64)
    loss, grad = gk.composite_loss(pred, target, seed_terms())
    sel = target[:, 0] != 0
    l_obj, g_obj = gk.bce_with_logits(pred[:, 0:1], target[:, 0:1])
    l_box, g_box = gk.mse(pred[sel, 1:5], target[sel, 1:5])
    l_cls, g_cls = gk.softmax_cross_entropy(pred[sel, 5:], target[sel, 5].astype(np.int64))
    np.testing.assert_allclose(loss, l_obj + 5.0 * l_box + 0.5 * l_cls, rtol=1e-12)
    expected = np.zeros_like(pred)
    expected[:, 0:1] = g_obj
    expected[sel, 1:5] = 5.0 * g_box
    expected[sel, 5:] = 0.5 * g_cls
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("kind", "value"), [("mse", np.inf), ("huber", -np.inf), ("bce_with_logits", np.inf)]
)
def test_an_infinite_first_column_gives_the_single_losss_inf(backend, kind, value):
    """A term's loss is inf, as the single loss's, whatever column holds the infinity (the
    CPU's row sum started from 0 * z[0], NaN for an infinite first column)."""
    pred, target = np.array([[value, 1.0, 2.0], [0.0, 1.0, 2.0]]), np.zeros((2, 3))
    single = {"mse": gk.mse, "huber": gk.huber_loss, "bce_with_logits": gk.bce_with_logits}
    want, want_grad = single[kind](pred, target)  # a term is its loss's mean
    assert np.isposinf(want)
    for columns in (slice(0, 3), slice(None, None, -1)):
        loss, grad = gk.composite_loss(
            pred[:, columns].copy(), target, [gk.LossTerm(kind, slice(0, 3))]
        )
        assert np.isposinf(loss)
        np.testing.assert_allclose(grad, want_grad[:, columns], rtol=1e-15)


@pytest.mark.filterwarnings("error")
def test_a_huber_delta_past_float32_is_inf_without_a_warning(backend):
    """A Huber term's delta of 1e300 in float32 is inf there (every difference quadratic),
    as huber_loss takes it, without NumPy's overflow warning from the term table."""
    rng = np.random.default_rng(84)
    pred, target = (random_floats(rng, (3, 4), np.float32) for _ in range(2))
    loss, grad = gk.composite_loss(pred, target, [gk.LossTerm("huber", slice(0, 4), delta=1e300)])
    want, want_grad = gk.huber_loss(pred, target, delta=1e300)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6)


def test_probability_slice_and_grad_output(backend):
    rng = np.random.default_rng(83)
    n = 4
    pred = random_floats(rng, (n, 6), np.float32)
    target = np.concatenate(
        [random_floats(rng, (n, 2), np.float32), random_probs(rng, n, 4, np.float32)], axis=1
    )
    terms = [
        gk.LossTerm("softmax_cross_entropy", slice(2, 6), weight=2.0),
        gk.LossTerm("mse", slice(0, 2), weight=0.25),
    ]
    ref = [
        {"kind": "softmax_cross_entropy", "columns": slice(2, 6), "weight": 2.0, "where": None},
        {"kind": "mse", "columns": slice(0, 2), "weight": 0.25, "where": None},
    ]
    result = gk.composite_loss(pred, target, terms, grad_output=-1.5)
    check(result, pred, target, ref, grad_output=-1.5)


def test_sum_rule_and_unread_columns(backend):
    """Overlapping terms add their gradients; a column no term reads gets exactly 0."""
    rng = np.random.default_rng(84)
    pred = random_floats(rng, (4, 5), np.float64)
    target = rng.uniform(0.05, 0.95, (4, 5))
    terms = [
        gk.LossTerm("mse", slice(0, 3)),
        gk.LossTerm("mse", slice(0, 3), weight=2.0),
        gk.LossTerm("bce_with_logits", slice(1, 4), target_columns=slice(2, 5), weight=0.5),
    ]
    ref = [
        {"kind": "mse", "columns": slice(0, 3), "weight": 1.0, "where": None},
        {"kind": "mse", "columns": slice(0, 3), "weight": 2.0, "where": None},
        {
            "kind": "bce_with_logits",
            "columns": slice(1, 4),
            "target_columns": slice(2, 5),
            "weight": 0.5,
            "where": None,
        },
    ]
    out = poisoned(pred.shape, pred.dtype)
    loss, grad = check(gk.composite_loss(pred, target, terms, out=out), pred, target, ref)
    assert grad is out
    assert_all_written(out)
    assert np.all(grad[:, 4] == 0.0)
    _, single = gk.composite_loss(pred, target, [gk.LossTerm("mse", slice(0, 3), weight=3.0)])
    np.testing.assert_allclose(grad[:, 0], single[:, 0], rtol=1e-12)


def test_only_where_selects_rows(backend):
    """Rows whose only_where column is not 0 (negative and fractional values too) take part,
    and count in the term's mean."""
    rng = np.random.default_rng(85)
    pred, target = seed_data(rng, 6, np.float32, objects=[0.0, 1.0, 0.0, -1.0, 1.0, 0.5])
    out = poisoned(pred.shape, pred.dtype)
    _, grad = check(gk.composite_loss(pred, target, seed_terms(), out=out), pred, target, SEED_REF)
    assert_all_written(out)
    assert np.all(grad[[0, 2], 1:] == 0.0)
    assert np.all(grad[[1, 3, 4, 5], 1:] != 0.0)


@pytest.mark.parametrize(
    "pred_dtype, target_dtype", [(np.float32, np.float64), (np.float64, np.float32)]
)
def test_target_of_another_float_dtype(backend, pred_dtype, target_dtype):
    """A target of another float dtype is read as it is: the results of the same values
    in pred's dtype, where they fit it."""
    rng = np.random.default_rng(87)
    pred, target = seed_data(rng, 9, pred_dtype)
    target = target.astype(target_dtype)
    check(gk.composite_loss(pred, target, seed_terms()), pred, target, SEED_REF)


def test_only_where_empty_selection_gives_zero(backend):
    rng = np.random.default_rng(86)
    pred, target = seed_data(rng, 4, np.float32, objects=0.0)
    out = poisoned(pred.shape, pred.dtype)
    loss, grad = gk.composite_loss(pred, target, seed_terms(), out=out)
    assert_all_written(out)
    assert np.all(grad[:, 1:] == 0.0)
    # only the objectness term is left
    exp_loss, exp_grad = bce_with_logits(pred[:, 0:1], target[:, 0:1])
    assert_close(loss, exp_loss, np.float32)
    assert_close(grad[:, 0:1], exp_grad, np.float32)


def test_empty_batch(backend):
    pred = np.ones((0, 5 + K), np.float32)
    target = np.ones((0, 6), np.float32)
    loss, grad = gk.composite_loss(pred, target, seed_terms())
    assert is_0d_array(loss) and loss == 0.0
    assert grad.shape == pred.shape


@pytest.mark.parametrize("dtype", FLOATS)
def test_out_is_input(backend, dtype):
    rng = np.random.default_rng(87)
    pred, target = seed_data(rng, 4, dtype)
    kept = pred.copy()
    loss, grad = gk.composite_loss(pred, target, seed_terms(), out=pred)
    assert grad is pred
    check((loss, grad.copy()), kept, target, SEED_REF)


def test_non_contiguous_inputs(backend):
    rng = np.random.default_rng(88)
    big_pred, big_target = seed_data(rng, 8, np.float32)
    pred, target = big_pred[::2], big_target[::2]
    assert not pred.flags.c_contiguous
    check(gk.composite_loss(pred, target, seed_terms()), pred, target, SEED_REF)
    pred_t = np.asfortranarray(pred)
    check(gk.composite_loss(pred_t, target, seed_terms()), pred_t, target, SEED_REF)


def test_deterministic(backend):
    rng = np.random.default_rng(89)
    pred, target = seed_data(rng, 4 if backend == "cudasim" else 1000, np.float32)
    first = gk.composite_loss(pred, target, seed_terms())
    second = gk.composite_loss(pred, target, seed_terms())
    for a, b in zip(first, second, strict=True):
        assert a.tobytes() == b.tobytes()


def test_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(90)
    pred, target = seed_data(rng, 2, np.float64, objects=[1.0, 0.0])

    def loss_of(x):
        return gk.composite_loss(x, target, seed_terms())[0]

    _, grad = gk.composite_loss(pred, target, seed_terms())
    np.testing.assert_allclose(grad, fd_gradient(loss_of, pred), rtol=1e-6, atol=1e-9)


def test_matches_torch(backend):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    rng = np.random.default_rng(91)
    pred, target = seed_data(rng, 5, np.float64)
    loss, grad = gk.composite_loss(pred, target, seed_terms(), grad_output=0.5)
    x = torch.tensor(pred, requires_grad=True)
    t = torch.tensor(target)
    sel = t[:, 0] != 0
    t_loss = (
        functional.binary_cross_entropy_with_logits(x[:, 0:1], t[:, 0:1])
        + 5.0 * functional.mse_loss(x[sel, 1:5], t[sel, 1:5])
        + 0.5 * functional.cross_entropy(x[sel, 5:], t[sel, 5].long())
    )
    t_loss.backward(torch.tensor(0.5, dtype=torch.float64))
    assert_close(loss, t_loss.detach().numpy(), np.float64)
    assert_close(grad, x.grad.numpy(), np.float64)


@pytest.mark.parametrize("n", [1, 31, 33, 1000])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_sizes_cpu(cpu_backend, n, dtype):
    rng = np.random.default_rng(92)
    pred, target = seed_data(rng, n, dtype)
    check(gk.composite_loss(pred, target, seed_terms()), pred, target, SEED_REF)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huber_box_term_matches_torch(backend, dtype):
    """The localisation loss of seed 000: BCE on the objectness logit, a Huber box loss on
    the rows that hold an object, a class term on them too; against PyTorch's losses."""
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    rng = np.random.default_rng(81)
    n = 13
    pred = rng.standard_normal((n, 8)).astype(dtype)
    target = np.concatenate(
        [rng.integers(0, 2, (n, 1)), 2 * rng.standard_normal((n, 4)), rng.integers(0, 3, (n, 1))],
        axis=1,
    ).astype(dtype)
    terms = [
        gk.LossTerm("bce_with_logits", slice(0, 1)),
        gk.LossTerm("huber", slice(1, 5), weight=2.0, only_where=0, delta=0.5),
        gk.LossTerm("softmax_cross_entropy", slice(5, 8), slice(5, 6), only_where=0),
    ]
    loss, grad = gk.composite_loss(pred, target, terms)
    x = torch.tensor(pred.astype(np.float64), requires_grad=True)
    t = torch.tensor(target.astype(np.float64))
    rows = t[:, 0] != 0
    want = (
        f.binary_cross_entropy_with_logits(x[:, 0], t[:, 0])
        + 2.0 * f.huber_loss(x[rows, 1:5], t[rows, 1:5], delta=0.5)
        + f.cross_entropy(x[rows, 5:8], t[rows, 5].long())
    )
    want.backward()
    assert_close(loss, want.item(), dtype, what="loss vs torch")
    assert_close(grad, x.grad.numpy(), dtype, what="grad vs torch")


@pytest.mark.parametrize("targets", ["index", "probabilities"])
def test_cross_entropy_term_with_z_loss_and_softcap(backend, targets):
    """A class term with z-loss and a softcap, against PyTorch autograd through the
    definitions on the rows the term selects."""
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    rng = np.random.default_rng(82)
    n = 9
    pred = (4 * rng.standard_normal((n, 5))).astype(np.float64)
    flags = rng.integers(0, 2, (n, 1))
    if targets == "index":
        target = np.concatenate([flags, rng.integers(0, 4, (n, 1))], 1).astype(np.float64)
        term = gk.LossTerm(
            "softmax_cross_entropy",
            slice(1, 5),
            slice(1, 2),
            only_where=0,
            z_loss=0.01,
            softcap=3.0,
        )
    else:
        probs = rng.dirichlet(np.ones(4), n)
        target = np.concatenate([flags, probs], 1)
        term = gk.LossTerm(
            "softmax_cross_entropy", slice(1, 5), only_where=0, z_loss=0.01, softcap=3.0
        )
    loss, grad = gk.composite_loss(pred, target, [term])
    x = torch.tensor(pred, requires_grad=True)
    rows = torch.tensor(flags[:, 0] != 0)
    capped = 3.0 * torch.tanh(x[rows, 1:5] / 3.0)
    t = torch.tensor(target[rows.numpy()])
    labels = t[:, 1].long() if targets == "index" else t[:, 1:5]
    per_row = f.cross_entropy(capped, labels, reduction="none")
    want = (per_row + 0.01 * torch.logsumexp(capped, -1) ** 2).mean()
    want.backward()
    assert_close(loss, want.item(), np.float64, what="loss")
    assert_close(grad, x.grad.numpy(), np.float64, what="grad")


@pytest.mark.parametrize(
    "step, error",
    [(2, ValueError), (-1, ValueError), (1.0, TypeError), (True, TypeError), ("1", TypeError)],
)
def test_columns_step_must_be_the_integer_1(step, error):
    """A column slice steps by 1, an integer as its bounds are (a float 1.0 was taken)."""
    pred = np.zeros((2, 6))
    with pytest.raises(error, match=r"terms\[0\]\.columns.* step"):
        gk.composite_loss(pred, pred, [gk.LossTerm("mse", slice(0, 6, step))])
    loss, _ = gk.composite_loss(pred, pred + 1, [gk.LossTerm("mse", slice(0, 6, 1))])
    assert loss == 1.0


def test_z_loss_and_softcap_only_on_cross_entropy_terms():
    pred, target = np.zeros((2, 3)), np.zeros((2, 3))
    with pytest.raises(ValueError, match="terms\\[0\\]"):
        gk.composite_loss(pred, target, [gk.LossTerm("mse", slice(0, 3), z_loss=0.1)])
    with pytest.raises(ValueError, match="terms\\[0\\].softcap"):
        gk.composite_loss(
            pred, target, [gk.LossTerm("softmax_cross_entropy", slice(0, 3), softcap=-1.0)]
        )


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_class_index_left_out_gets_a_zero_gradient_under_a_cap(backend):
    """A class index outside the term's columns: a NaN loss and a zero gradient, without
    going through the cap (0 times the cap's slope of a NaN logit would be NaN)."""
    pred = np.array([[np.nan, 0.0, 1.0], [0.5, 0.0, 1.0]], np.float32)
    target = np.array([[7.0], [2.0]], np.float32)
    term = gk.LossTerm("softmax_cross_entropy", slice(0, 3), slice(0, 1), softcap=3.0)
    loss, grad = gk.composite_loss(pred, target, [term], validate=False)
    assert np.isnan(loss)
    assert np.all(grad[0] == 0) and np.isfinite(grad[1]).all()


@pytest.mark.parametrize("target_kind", ["labels", "probs"])
@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("c", [5, 20, 128, 300])
def test_cross_entropy_term_has_the_single_losss_bits(cpu_backend, c, softcap, target_kind):
    """A lone CE term's row gradients (class indices or probabilities) are the single CE's
    (``"none"``) to the bit, times the term's factor 1/N: the same kernel arithmetic in the
    same order, whichever path the row length takes."""
    rng = np.random.default_rng(83 + c)
    n = 37
    pred = random_floats(rng, (n, c), np.float32)
    if target_kind == "labels":
        target = rng.integers(0, c, n)
        columns, term_target = slice(0, 1), target[:, None].astype(np.float32)
    else:
        target = random_probs(rng, n, c, np.float32)
        columns, term_target = slice(0, c), target
    term = gk.LossTerm("softmax_cross_entropy", slice(0, c), columns, softcap=softcap)
    loss, grad = gk.composite_loss(pred, term_target, [term])
    row_loss, row_grad = gk.softmax_cross_entropy(pred, target, reduction="none", softcap=softcap)
    assert_close(loss, row_loss.astype(np.float64).mean(), np.float32, what="loss")
    assert grad.tobytes() == ((np.float32(1) / np.float32(n)) * row_grad).tobytes()


def test_term_tables_kept_per_stream():
    """The device tables of a layout are made, and kept, once per CuPy stream (nothing orders
    another stream's kernels after their copy), and on the per-thread default stream once
    per host thread: checked with a stand-in CuPy (CI has none)."""
    import threading
    from types import ModuleType, SimpleNamespace

    from gpukernels import _composite_loss

    stream = SimpleNamespace(ptr=7)
    cupy = ModuleType("cupy")  # a module: hashable, as the cache's key needs
    cupy.asarray, cupy.cuda = np.asarray, SimpleNamespace(get_current_stream=lambda: stream)
    layout = ((0, (0, 1), (0, 1), -1, (1.0, 0.0, 0.0)),)

    def tables():
        return _composite_loss._term_table(
            cupy, layout, np.float32, 0, _composite_loss._stream_of(cupy)
        )

    first = tables()
    assert tables() is first
    stream.ptr = 8
    second = tables()
    assert second is not first and tables() is second
    stream.ptr = 2  # cudaStreamPerThread: one handle, a stream in each thread
    mine, theirs = tables(), []
    thread = threading.Thread(target=lambda: theirs.append(tables()))
    thread.start()
    thread.join()
    assert mine is tables() and theirs[0] is not mine and mine is not second
    assert _composite_loss._stream_of(np) is None


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_fractional_class_index(backend):
    """A class-index column must hold whole numbers: 1.5 is refused with ``validate=True``,
    and with ``validate=False`` its row's loss is NaN and its gradient 0, as an index out of
    range (not class 1)."""
    pred = np.array([[0.5, 0.0, 1.0], [0.5, 0.0, 1.0]], np.float32)
    target = np.array([[1.5], [2.0]], np.float32)
    term = gk.LossTerm("softmax_cross_entropy", slice(0, 3), slice(0, 1))
    with pytest.raises(ValueError, match=r"\btarget\b"):
        gk.composite_loss(pred, target, [term])
    loss, grad = gk.composite_loss(pred, target, [term], validate=False)
    assert np.isnan(loss)
    assert np.all(grad[0] == 0)
    p = np.exp(pred[1].astype(np.float64))
    p /= p.sum()
    np.testing.assert_allclose(grad[1], (p - [0, 0, 1]) / 2, rtol=1e-6)  # a mean over 2 rows
