"""gk.batch_sum: the canonical summation order of docs/BACKENDS.md, to the bit, on both
backends; accuracy against math.fsum; the fused losses' sums agree with it."""

import numpy as np
import pytest
from _refs import (
    FLOATS,
    assert_all_written,
    canonical_sum,
    canonical_sum_axis0,
    fsum,
    is_0d_array,
    poisoned,
    random_floats,
)

import cpu_fallback
import gpukernels as gk
from cpu_fallback import reduce as reduce_kernels


def sum_dtype(dtype):
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def assert_bits(actual, expected):
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes(), (actual, expected)


def sizes(backend):
    # more than one tile (256) and more than one level (65536) where the backend is fast
    if backend == "cudasim":
        return [1, 7, 256, 300]
    return [1, 31, 33, 256, 257, 1000, 32769, 65536 + 300]


@pytest.mark.parametrize("dtype", FLOATS)
def test_axis_none_is_canonical(backend, dtype):
    rng = np.random.default_rng(71)
    for n in sizes(backend):
        x = random_floats(rng, n, dtype, scale=100.0)
        got = gk.batch_sum(x)
        assert is_0d_array(got) and got.dtype == sum_dtype(dtype)
        assert_bits(got, canonical_sum(x))


@pytest.mark.parametrize("dtype", FLOATS)
def test_axis_none_multidimensional(backend, dtype):
    """Every element of an (N, ...) array, in C order."""
    rng = np.random.default_rng(72)
    shape = (3, 5, 20) if backend == "cudasim" else (7, 33, 41)
    x = random_floats(rng, shape, dtype)
    assert_bits(gk.batch_sum(x), canonical_sum(x))


@pytest.mark.parametrize("dtype", FLOATS)
def test_axis0_is_canonical(backend, dtype):
    rng = np.random.default_rng(73)
    shapes = [(1, 3), (6, 5), (300, 2)] if backend == "cudasim" else [(1, 3), (1000, 33), (257, 7)]
    for shape in shapes:
        x = random_floats(rng, shape, dtype, scale=100.0)
        got = gk.batch_sum(x, axis=0)
        assert got.shape == shape[1:] and got.dtype == sum_dtype(dtype)
        assert_bits(got, canonical_sum_axis0(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axis0_signed_zeros_levels_and_blocks(backend, dtype):
    """A column of -0 sums to -0 only when no padding zero is added (256^k rows); a column
    of mixed zeros to +0; rows past two tile levels, columns past the CPU kernel's block."""
    rng = np.random.default_rng(76)
    shapes = [(256, 3), (257, 3), (5, 3), (1, 3)]
    if backend != "cudasim":
        shapes += [(512, 3), (65536 + 300, 3), (300, 1030)]
    for shape in shapes:
        x = random_floats(rng, shape, dtype, scale=100.0)
        x[:, 0] = -0.0
        x[:, 1] = np.where(rng.random(shape[0]) < 0.9, -0.0, 0.0)
        got = gk.batch_sum(x, axis=0)
        expected = canonical_sum_axis0(x)
        assert_bits(got, expected)
        assert np.signbit(expected[0]) == (shape[0] in (256, 65536)), shape


def test_axis0_every_tile_height(backend):
    """Each count of rows in a tile starts the halving tree at its own level (the CPU kernel
    skips the levels where every subtree is absent): every height from 1 to 257, with
    signed zeros in column 0, to the bit."""
    rng = np.random.default_rng(84)
    heights = [1, 2, 3, 17, 128, 129] if backend == "cudasim" else range(1, 258)
    for rows in heights:
        x = random_floats(rng, (rows, 3), np.float32, scale=100.0)
        x[:, 0] = np.where(rng.random(rows) < 0.9, -0.0, 0.0)
        assert_bits(gk.batch_sum(x, axis=0), canonical_sum_axis0(x))


def test_axis0_trailing_dimensions(backend):
    rng = np.random.default_rng(74)
    x = random_floats(rng, (5, 2, 3), np.float32)
    got = gk.batch_sum(x, axis=0)
    assert got.shape == (2, 3)
    assert_bits(got, canonical_sum_axis0(x))


def test_strided_vector_is_canonical(backend):
    """A 1-D view with a stride keeps its own element order."""
    rng = np.random.default_rng(75)
    x = random_floats(rng, 601, np.float32)[::2]
    assert_bits(gk.batch_sum(x), canonical_sum(x))


@pytest.mark.parametrize("layout", ["strided", "transposed"])
def test_non_contiguous(backend, layout):
    rng = np.random.default_rng(76)
    if layout == "strided":
        x = random_floats(rng, (10, 9), np.float64)[::2, 1::2]
    else:
        x = random_floats(rng, (4, 6), np.float64).T
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(gk.batch_sum(x), fsum(x), rtol=1e-14)
    np.testing.assert_allclose(gk.batch_sum(x, axis=0), x.sum(axis=0), rtol=1e-14)


def test_empty(backend):
    got = gk.batch_sum(np.ones(0, np.float32))
    assert is_0d_array(got) and got == 0.0
    got = gk.batch_sum(np.ones((0, 3), np.float16), axis=0)
    assert got.shape == (3,) and got.dtype == np.float32 and np.all(got == 0.0)


@pytest.mark.parametrize("axis", [None, 0])
def test_out_buffer(backend, axis):
    rng = np.random.default_rng(77)
    x = random_floats(rng, (6, 4), np.float16)
    out = poisoned((() if axis is None else (4,)), np.float32)
    got = gk.batch_sum(x, axis=axis, out=out)
    assert got is out
    assert_all_written(out)
    expected = canonical_sum(x) if axis is None else canonical_sum_axis0(x)
    assert_bits(got, expected)


def test_deterministic(backend):
    rng = np.random.default_rng(78)
    x = random_floats(rng, (6, 50) if backend == "cudasim" else (3001, 333), np.float32)
    for axis in (None, 0):
        assert gk.batch_sum(x, axis=axis).tobytes() == gk.batch_sum(x, axis=axis).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_loss_sums_are_canonical(backend, dtype):
    """The fused losses emit their partials in the canonical order (docs/BACKENDS.md):
    reduction="sum" equals batch_sum of the same losses with reduction="none"."""
    rng = np.random.default_rng(79)
    shape = (4, 5) if backend == "cudasim" else (300, 7)
    z = random_floats(rng, shape, dtype)
    t = rng.uniform(0.05, 0.95, shape).astype(dtype)
    for fn in (gk.mse, gk.bce_with_logits):
        per_element, _ = fn(z, t, reduction="none")
        total, _ = fn(z, t, reduction="sum")
        assert_bits(total, gk.batch_sum(per_element))
    labels = rng.integers(0, shape[1], shape[0])
    per_row, _ = gk.softmax_cross_entropy(z, labels, reduction="none")
    total, _ = gk.softmax_cross_entropy(z, labels, reduction="sum")
    assert_bits(total, gk.batch_sum(per_row))


@pytest.mark.slow
def test_ten_million_float32_accuracy(cpu_backend):
    rng = np.random.default_rng(80)
    x = rng.uniform(0.0, 1.0, 10_000_000).astype(np.float32)
    got = gk.batch_sum(x)
    assert got.dtype == np.float32
    exact = fsum(x)
    assert abs(float(got) - exact) / exact < 2e-6
    assert_bits(got, canonical_sum(x))


def test_float16_accumulates_in_float32(cpu_backend):
    """70000 ones: a float16 accumulator would overflow (float16 ends at 65504)."""
    got = gk.batch_sum(np.ones(70_000, np.float16))
    assert got.dtype == np.float32 and got == 70_000.0
    got = gk.batch_sum(np.ones((70_000, 2), np.float16), axis=0)
    assert got.dtype == np.float32 and np.all(got == 70_000.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "min_work, kernels",
    [(1 << 62, ("serial_total", "serial_column_totals")), (0, ("total", "column_totals"))],
    ids=["serial", "parallel"],
)
def test_numpy_sums_agree_with_the_general_path(cpu_backend, monkeypatch, dtype, min_work, kernels):
    """float32/float64 NumPy sums on the CPU take a direct path
    (``cpu_fallback.reduce.numpy_sum``): one compiled call on the calling thread below
    ``PARALLEL_MIN_WORK``, the parallel launchers above it. With ``out=`` the general path
    runs, here in parallel (conftest.py). Same bits, special values in some columns,
    read-only inputs."""

    def direct(x, axis=None):
        ran = []
        with monkeypatch.context() as m:
            m.setattr(cpu_fallback, "PARALLEL_MIN_WORK", min_work)
            for name in kernels:
                compiled = getattr(reduce_kernels, name)
                m.setattr(reduce_kernels, name, lambda *a, c=compiled: (ran.append(c), c(*a)))
            result = gk.batch_sum(x, axis=axis)
        assert len(ran) == 1, "the direct path did not run"
        return result

    rng = np.random.default_rng(85)
    special = np.array([-0.0, np.inf, -np.inf, np.nan, 3e38], dtype)
    for shape in [(), (0,), (1,), (31,), (4096, 8), (257, 33), (32769,), (33, 7, 5)]:
        x = np.array(random_floats(rng, shape, dtype, scale=1e3))
        if x.ndim == 2:  # a few columns NaN, inf or huge; the others plain
            x.ravel()[rng.choice(x.size, special.size, replace=False)] = special
        x.flags.writeable = False
        assert_bits(direct(x), gk.batch_sum(x, out=poisoned((), dtype)))
        if x.ndim == 2:
            want = gk.batch_sum(x, axis=0, out=poisoned(x.shape[1:], dtype))
            assert_bits(direct(x, axis=0), want)
            assert_bits(direct(np.asfortranarray(x), axis=0), want)
    for x in (np.full(300, -0.0, dtype), np.full((256, 2), -0.0, dtype)):
        assert_bits(direct(x), canonical_sum(x))
        if x.ndim == 2:
            assert_bits(direct(x, axis=0), canonical_sum_axis0(x))
