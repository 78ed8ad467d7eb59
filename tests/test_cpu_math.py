"""The CPU backend's own maths: the vectorisable float32 exp, log and log1p of the kernels, and
the integer keys of their row max."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from cpu_fallback._math import fast_exp, fast_log, fast_log1p, key_value, order_key
from cpu_fallback.softmax_xent import _row_max


def _mapped(fn, out_dtype=None):
    """``x -> y`` with ``y[i] = fn(x[i])``, in one compiled loop (as the kernels call it);
    ``y`` has ``out_dtype``, or ``x``'s."""

    @njit
    def loop(x, y):
        for i in range(x.shape[0]):
            y[i] = fn(x[i])

    def apply(x):
        y = np.empty(x.shape, out_dtype or x.dtype)
        loop(x, y)
        return y

    return apply


_exp, _log, _log1p = _mapped(fast_exp), _mapped(fast_log), _mapped(fast_log1p)


def _ulp_error(y, truth):
    """``|y - truth|`` in units of the float32 spacing at ``truth``."""
    return np.abs(y - truth) / np.spacing(np.abs(truth).astype(np.float32)).astype(np.float64)


def test_fast_exp_within_two_ulp_over_its_range():
    x = np.random.default_rng(0).uniform(-86.5, 88.72, 2_000_000).astype(np.float32)
    assert _ulp_error(_exp(x), np.exp(x.astype(np.float64))).max() <= 2.0


def test_fast_exp_is_exact_where_exp_is_exactly_representable():
    x = np.array([0.0, -0.0], np.float32)
    y = _exp(x)
    assert y.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("x", "expected"),
    [(np.nan, np.nan), (np.inf, np.inf), (-np.inf, 0.0), (-110.0, 0.0), (100.0, np.inf)],
)
def test_fast_exp_special_values(x, expected):
    y = _exp(np.array([x], np.float32))
    np.testing.assert_array_equal(y, np.array([expected], np.float32))


def test_fast_exp_float64_is_libm_exp():
    x = np.random.default_rng(1).uniform(-700, 700, 1000)
    y = _exp(x)
    # libm's exp, not np.exp: NumPy 2.4 has its own SIMD exp that differs in the last bit
    np.testing.assert_array_equal(y, [math.exp(v) for v in x])


def test_fast_log1p_within_two_ulp_on_zero_to_one():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(0, 1, 1_000_000), 10.0 ** rng.uniform(-30, 0, 100_000)])
    x = np.concatenate([x, [0.0, 1.0, 1e-38, 2**-24, 0.41421357]]).astype(np.float32)
    y = _log1p(x)
    truth = np.log1p(x.astype(np.float64))
    assert _ulp_error(y, truth)[truth > 0].max() <= 2.0
    assert y[x == 0].tolist() == [0.0]


def test_fast_exp_rounds_into_the_subnormals():
    x = np.random.default_rng(3).uniform(-103.9, -86.5, 200_000).astype(np.float32)
    y = _exp(x)
    truth = np.exp(x.astype(np.float64))
    spacing = float(np.finfo(np.float32).smallest_subnormal)
    assert (
        np.abs(y - truth).max()
        <= np.maximum(2 * np.spacing(truth.astype(np.float32)), spacing).max()
    )


def test_fast_log_within_two_ulp_over_the_floats():
    rng = np.random.default_rng(5)
    wide = np.exp2(rng.uniform(-149, 128, 1_000_000)).astype(np.float32)  # subnormals too
    near_one = rng.uniform(0.5, 2.0, 1_000_000).astype(np.float32)  # log x near 0
    x = np.concatenate([wide, near_one, np.float32([1.0, 2.0, 0.5, 1.4142135, 1.4142137])])
    x = x[(x > 0) & np.isfinite(x)]
    assert _ulp_error(_log(x), np.log(x.astype(np.float64))).max() <= 2.0


def test_fast_log_special_values():
    x = np.array([1.0, 0.0, -0.0, -1.0, np.inf, -np.inf, np.nan], np.float32)
    y = _log(x)
    np.testing.assert_array_equal(
        y, np.float32([0.0, -np.inf, -np.inf, np.nan, np.inf, np.nan, np.nan])
    )


def test_fast_log_float64_is_libm_log():
    x = np.exp(np.random.default_rng(6).uniform(-700, 700, 1000))
    y = _log(x)
    np.testing.assert_array_equal(y, [math.log(v) for v in x])


def _special_floats(dtype):
    """Signed zeros, infinities, subnormals, the extremes, NaNs of both signs and random
    values of ``dtype``."""
    info = np.finfo(dtype)
    values = [0.0, -0.0, np.inf, -np.inf, info.max, -info.max, info.tiny, -info.tiny]
    values += [info.smallest_subnormal, -info.smallest_subnormal, 1.0, -1.0]
    x = np.array(values + [np.nan, -np.nan], dtype)
    return np.concatenate([x, np.random.default_rng(5).standard_normal(200).astype(dtype) * 1e3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_order_keys_sort_as_ieee_total_order(dtype):
    x = _special_floats(dtype)
    int_type = np.dtype(np.dtype(dtype).str.replace("f", "i"))
    keys = _mapped(order_key, int_type)(x)
    # the reference order: (NaN sign class, value, sign bit) for numbers; -NaN first, +NaN last
    sign = np.signbit(x)
    nan = np.isnan(x)
    rank = np.where(nan, np.where(sign, -1, 1), 0)
    reference = np.lexsort((~sign, np.where(nan, 0, x), rank))
    np.testing.assert_array_equal(np.sort(keys), keys[reference])
    # and the key round-trips to the same bits, NaN payloads included
    back = _mapped(key_value, dtype)(keys)
    np.testing.assert_array_equal(back.view(keys.dtype), x.view(keys.dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("length", [1, 7, 31, 33, 256, 1000])
def test_row_max_is_numpys_max_and_prefers_positive_zero(dtype, length):
    rows = np.random.default_rng(length).standard_normal((20, length)).astype(dtype)
    rows[3] = -0.0
    rows[4, : length // 2] = -0.0  # the -0 first: a scan keeping its first max keeps it
    rows[4, length // 2 :] = 0.0
    rows[5, -1] = np.inf
    rows[6] = -np.inf
    for row in rows:
        assert _row_max(row) == row.max()
    assert not np.signbit(_row_max(rows[4]))  # +0 > -0 whichever comes first
    assert np.signbit(_row_max(rows[3]))


def lane_order_sum(x, lanes):
    """The order ``lane_sum`` documents, written out: ``lanes`` running sums over the whole
    blocks, the rest added to lane 0 in turn, the lanes folded as a halving tree."""
    acc = np.zeros(lanes, x.dtype)
    whole = len(x) - len(x) % lanes
    for c in range(whole):
        acc[c % lanes] += x[c]
    for c in range(whole, len(x)):
        acc[0] += x[c]
    while len(acc) > 1:
        acc = acc[: len(acc) // 2] + acc[len(acc) // 2 :]
    return acc[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 31, 32, 33, 100, 1000, 32769])
def test_lane_sum_has_its_documented_order(dtype, n):
    from cpu_fallback.reduce import LANE_VECTORS, LANES, lane_sum

    rng = np.random.default_rng(n)  # magnitudes over a few decades: the order shows
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-5, 5, n))).astype(dtype)
    got = njit(lambda a: lane_sum(a))(x)
    assert dtype(got) == lane_order_sum(x, LANE_VECTORS * LANES)
    np.testing.assert_allclose(got, x.astype(np.float64).sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 31, 33, 1000, 32769])
@pytest.mark.parametrize("strided", [False, True])
def test_pair_sums_have_lane_sums_order(dtype, n, strided):
    """The soft-target and smoothing sums of a row, ``sum_c a_c`` and ``sum_c a_c (m - z_c)``
    with ``a_c = w_c (keep t_c + eps_c)`` (``t``: the targets, or none; ``w``: the class
    weights, or none), each in ``lane_sum``'s order, contiguous or strided rows alike."""
    from cpu_fallback.reduce import LANE_VECTORS, LANES
    from cpu_fallback.softmax_xent import _soft_sums, _weight_and_gap_sums

    lanes = LANE_VECTORS * LANES
    rng = np.random.default_rng(n)
    z, t, w = (rng.standard_normal((3, n)) * np.exp(rng.uniform(-5, 5, (3, n)))).astype(dtype)
    t, w = np.abs(t), np.abs(w)
    m, keep, eps_c = z.max(), dtype(0.9), dtype(0.1 / n)
    if strided:
        z, t, w = (np.repeat(a, 3)[::3] for a in (z, t, w))
    none = w[:0]
    for weights, a in ((w, (keep * t + eps_c) * w), (none, keep * t + eps_c)):
        got = _soft_sums(z, t, weights, m, keep, eps_c)
        assert got == (lane_order_sum(a, lanes), lane_order_sum(a * (m - z), lanes))
    for weights, a in ((w, w), (none, np.ones(n, dtype))):
        got = _weight_and_gap_sums(z, weights, m)
        assert got == (lane_order_sum(a, lanes), lane_order_sum(a * (m - z), lanes))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [1, 10, 37, 128, 129, 1000])
def test_label_rows_sum_their_exponentials_in_the_documented_order(monkeypatch, dtype, c):
    """The class-index path's sum of a row's ``e_c = exp(z_c - m)``, seen in its loss
    ``(m - z_y) + log s`` and gradient ``(1 / s) e_c`` (``"none"``, no smoothing, weights or
    z-loss): rows of at most ``FOLD_MAX`` classes left to right (folded four rows at a time,
    plus a tail), longer ones in ``lane_sum``'s order. Exponentials spread over (0, 1], so
    that another order shows in the bits of some rows. Serial, so that the rows go in one
    block (the parallel path's tasks may take fewer than four rows each: same bits,
    tests/test_cpu_paths.py)."""
    import cpu_fallback
    import gpukernels as gk
    from cpu_fallback.reduce import LANE_VECTORS, LANES
    from cpu_fallback.softmax_xent import FOLD_MAX

    monkeypatch.setattr(cpu_fallback, "PARALLEL_MIN_WORK", 1 << 62)
    rng = np.random.default_rng(c)
    n = 43  # folds of four rows and a tail of three
    z = (rng.standard_normal((n, c)) * 4).astype(dtype)
    y = rng.integers(0, c, n)
    loss, grad = gk.softmax_cross_entropy(z, y, reduction="none")
    for i in range(n):
        m = z[i].max()
        e = _exp(z[i] - m)
        if c <= FOLD_MAX:
            s = e[0]
            for v in e[1:]:
                s = dtype(s + v)
        else:
            s = lane_order_sum(e, LANE_VECTORS * LANES)
        assert loss[i] == (m - z[i, y[i]]) + _log(np.array([s]))[0], f"row {i}"
        others = np.arange(c) != y[i]
        np.testing.assert_array_equal(grad[i, others], (dtype(1) / s) * e[others])


_SAME_BITS_SCRIPT = """
import hashlib, numpy as np, gpukernels as gk
rng = np.random.default_rng(0)
digest = hashlib.sha1()
for n, c, dtype in ((16, 37, np.float64), (300, 129, np.float32)):
    x = rng.standard_normal((n, c)).astype(dtype) * 3
    t = rng.random((n, c)).astype(dtype)
    y = rng.integers(0, c, n)
    for target, options in ((t, {}), (y, {"label_smoothing": 0.1})):
        loss, grad = gk.softmax_cross_entropy(x, target, **options)
        digest.update(np.asarray(loss).tobytes() + grad.tobytes())
print(digest.hexdigest())
"""


@pytest.mark.slow
def test_same_bits_compiled_and_loaded_from_the_cache(tmp_path):
    """A process that compiles the kernels and one that loads them from Numba's cache give
    the same bits (with fast-math reassociation they did not: the soft-target sums)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    run = [sys.executable, "-c", _SAME_BITS_SCRIPT]
    cold, warm = (
        subprocess.run(run, env=env, capture_output=True, text=True, timeout=600, check=True)
        for _ in range(2)
    )
    assert any(tmp_path.rglob("*.nbi")), "nothing was cached: the test compares nothing"
    assert cold.stdout.strip() == warm.stdout.strip()
