"""The engines of class-sharded cross-entropy against the whole rows: gpukernels.dask on the
threaded scheduler (uneven column chunks: one a single column, some without a target) and on
a two-process LocalCluster."""

import doctest
import importlib
import sys

import numpy as np
import pytest
from _refs import assert_close, loss_dtype

import gpukernels as gk

N, V = 9, 23
CHUNKS = ((5, 4), (10, 1, 12))  # 2 x 3 blocks; the middle column chunk is class 10 alone
FULL = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0}


def logits_and_target(dtype=np.float64, seed=7, n=N, v=V):
    """Logits of order 3; targets in the first and last column chunks only (none is class
    10), rows 2 and 6 ignored."""
    rng = np.random.default_rng(seed)
    z = (3 * rng.standard_normal((n, v))).astype(dtype)
    y = rng.choice(np.r_[0:10, 11:v], n)
    y[[2, 6]] = -100
    return z, y


def whole_rows(z, y, **options):
    return gk.softmax_cross_entropy(z, y, **options)


# ---------------------------------------------------------------------------------- Dask


@pytest.fixture
def gkd():
    pytest.importorskip("dask.array")
    import gpukernels.dask

    return gpukernels.dask


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("full", [False, True], ids=["plain", "smooth-zloss-softcap"])
def test_dask_equals_the_whole_rows(cpu_backend, gkd, dtype, reduction, full):
    import dask
    import dask.array as da

    z, y = logits_and_target(dtype)
    options = dict(FULL) if full else {}
    if full:  # an upstream gradient: a number, or rows chunked unlike the logits
        up = np.random.default_rng(1).uniform(0.5, 2, N).astype(loss_dtype(dtype))
        options["grad_output"] = up if reduction == "none" else 0.7
    logits = da.from_array(z, chunks=CHUNKS)
    dask_options = dict(options)
    if reduction == "none" and full:
        dask_options["grad_output"] = da.from_array(up, chunks=3)
    loss, grad = gkd.softmax_cross_entropy(logits, y, reduction=reduction, **dask_options)
    assert grad.chunks == CHUNKS
    assert loss.shape == ((N,) if reduction == "none" else ())
    got_loss, got_grad = dask.compute(loss, grad, scheduler="threads")
    want_loss, want_grad = whole_rows(z, y, reduction=reduction, **options)
    assert got_loss.dtype == want_loss.dtype == loss.dtype
    assert got_grad.dtype == grad.dtype == np.dtype(dtype)
    assert_close(got_loss, want_loss, dtype, what="loss")
    assert_close(got_grad, want_grad, dtype, what="grad")


def test_dask_tree_of_stats_and_a_dask_target(cpu_backend, gkd):
    """Six column chunks merged two at a time (a tree of three levels); the target a dask
    array chunked unlike the rows; a mean over the non-ignored rows of every row block."""
    import dask.array as da

    z, y = logits_and_target(seed=8, n=12)
    y[:6] = -100  # the first row block has no row to count
    logits = da.from_array(z, chunks=(6, 4))
    loss, grad = gkd.softmax_cross_entropy(
        logits, da.from_array(y, chunks=5), split_every=2, **FULL
    )
    want_loss, want_grad = whole_rows(z, y, **FULL)
    assert_close(loss.compute(scheduler="threads"), want_loss, np.float64, what="loss")
    assert_close(grad.compute(scheduler="threads"), want_grad, np.float64, what="grad")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dask_mean_over_no_row(cpu_backend, gkd, reduction):
    import dask.array as da

    z, y = logits_and_target()
    y[:] = -100
    loss, grad = gkd.softmax_cross_entropy(da.from_array(z, CHUNKS), y, reduction=reduction)
    assert float(loss.compute(scheduler="threads")) == 0.0
    assert not np.any(grad.compute(scheduler="threads"))


def test_dask_tasks_read_one_chunk_of_logits(gkd):
    """No task of the graph depends on two chunks of logits: only stats move."""
    import dask.array as da
    from dask.core import get_dependencies

    z, y = logits_and_target()
    logits = da.from_array(z, chunks=CHUNKS, name="the-logits")
    loss, grad = gkd.softmax_cross_entropy(logits, y, **FULL)
    graph = {**dict(loss.__dask_graph__()), **dict(grad.__dask_graph__())}
    readers = 0
    for key in graph:
        chunks = [d for d in get_dependencies(graph, key) if d[0] == "the-logits"]
        assert len(chunks) <= 1, (key, chunks)
        readers += bool(chunks)
    assert readers == 2 * 6  # the stats and the loss-and-gradient of each of the 6 chunks


def test_dask_errors(cpu_backend, gkd):
    import dask.array as da

    z, y = logits_and_target()
    logits = da.from_array(z, chunks=CHUNKS)
    with pytest.raises(ValueError, match="reduction"):
        gkd.softmax_cross_entropy(logits, y, reduction="avg")
    with pytest.raises(ValueError, match="target"):
        gkd.softmax_cross_entropy(logits, y[:-1])
    with pytest.raises(TypeError, match="integer"):
        gkd.softmax_cross_entropy(logits, y.astype(np.float32))
    with pytest.raises(ValueError, match="logits"):
        gkd.softmax_cross_entropy(logits[0], y)
    with pytest.raises(ValueError, match="grad_output"):
        gkd.softmax_cross_entropy(logits, y, grad_output=np.ones(N))
    y[0] = V  # out of range: found by the tasks
    loss, _ = gkd.softmax_cross_entropy(logits, y)
    with pytest.raises(ValueError, match="class"):
        loss.compute(scheduler="sync")


def test_dask_docstring_example(cpu_backend, gkd):
    result = doctest.testmod(gkd, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_dask_missing_names_the_extra(monkeypatch):
    for name in ("dask", "dask.array", "dask.array.utils", "gpukernels.dask"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "gpukernels.dask")
    with pytest.raises(ImportError, match=r"pip install gpukernels\[dask\]"):
        importlib.import_module("gpukernels.dask")


@pytest.mark.slow
def test_dask_on_a_local_cluster(cpu_backend, gkd):
    """Two worker processes (loopback only); the tasks and the stats travel between them."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        pytest.skip(f"distributed is not importable: {error}")
    import dask.array as da

    z, y = logits_and_target()
    with (
        LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        loss, grad = gkd.softmax_cross_entropy(da.from_array(z, CHUNKS), y, **FULL)
        got_loss, got_grad = client.compute([loss, grad], sync=True)
    want_loss, want_grad = whole_rows(z, y, **FULL)
    assert_close(got_loss, want_loss, np.float64, what="loss")
    assert_close(got_grad, want_grad, np.float64, what="grad")
