"""The CPU backend's own maths: the vectorisable float32 exp used by the fused CE."""

import numpy as np
import pytest
from numba import njit

from cpu_fallback._math import fast_exp


@njit
def _exp_all(x, y):
    for i in range(x.shape[0]):
        y[i] = fast_exp(x[i])


def _ulp_error(x):
    y = np.empty_like(x)
    _exp_all(x, y)
    truth = np.exp(x.astype(np.float64))
    return np.abs(y - truth) / np.spacing(truth.astype(np.float32)).astype(np.float64)


def test_fast_exp_within_two_ulp_over_its_range():
    x = np.random.default_rng(0).uniform(-86.5, 88.72, 2_000_000).astype(np.float32)
    assert _ulp_error(x).max() <= 2.0


def test_fast_exp_is_exact_where_exp_is_exactly_representable():
    x = np.array([0.0, -0.0], np.float32)
    y = np.empty_like(x)
    _exp_all(x, y)
    assert y.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("x", "expected"),
    [(np.nan, np.nan), (np.inf, np.inf), (-np.inf, 0.0), (-100.0, 0.0), (100.0, np.inf)],
)
def test_fast_exp_special_values(x, expected):
    y = np.empty(1, np.float32)
    _exp_all(np.array([x], np.float32), y)
    np.testing.assert_array_equal(y, np.array([expected], np.float32))


def test_fast_exp_float64_is_libm_exp():
    x = np.random.default_rng(1).uniform(-700, 700, 1000)
    y = np.empty_like(x)
    _exp_all(x, y)
    np.testing.assert_array_equal(y, np.exp(x))
