"""The engines of class-sharded cross-entropy against the whole rows: gpukernels.dask on the
threaded scheduler (uneven column chunks: one a single column, some without a target) and on
a two-process LocalCluster; vocab_parallel_cross_entropy on gloo with 2 and 3 spawned
processes, against torch.nn.functional.cross_entropy."""

import doctest
import importlib
import multiprocessing
import os
import sys
import time
import traceback
from datetime import timedelta

import numpy as np
import pytest
from _refs import assert_close, loss_dtype, torch_cross_entropy_loss

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
    # a fan-in past every chunk merges them all at once (Dask ran out of memory for 2^62)
    loss, grad = gkd.softmax_cross_entropy(logits, y, split_every=2**62, **FULL)
    assert_close(loss.compute(scheduler="sync"), want_loss, np.float64, what="loss")


def test_dask_mean_with_a_class_as_ignore_index(cpu_backend, gkd):
    """A non-negative ``ignore_index`` (a padding class 0): the mean counts the rows whose
    target is not it, as the whole rows (and PyTorch) count them."""
    import dask.array as da

    z, y = logits_and_target(seed=9)
    y = np.maximum(y, 0)  # no -100: 0 is the one ignored
    y[::3] = 0
    loss, grad = gkd.softmax_cross_entropy(da.from_array(z, chunks=CHUNKS), y, ignore_index=0)
    want_loss, want_grad = whole_rows(z, y, ignore_index=0)
    assert_close(loss.compute(scheduler="sync"), want_loss, np.float64, what="loss")
    assert_close(grad.compute(scheduler="sync"), want_grad, np.float64, what="grad")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dask_mean_over_no_row(cpu_backend, gkd, reduction):
    import dask.array as da

    z, y = logits_and_target()
    y[:] = -100
    loss, grad = gkd.softmax_cross_entropy(da.from_array(z, CHUNKS), y, reduction=reduction)
    assert float(loss.compute(scheduler="threads")) == 0.0
    assert not np.any(grad.compute(scheduler="threads"))


@pytest.mark.parametrize(
    "reduction, upstream",
    [
        ("mean", np.float32(0.5)),
        ("mean", np.array([0.5])),
        ("sum", "dask-0d"),
        ("none", 0.5),
        ("none", "dask-0d"),
    ],
)
def test_dask_upstream_gradients(cpu_backend, gkd, reduction, upstream):
    import dask.array as da

    z, y = logits_and_target()
    if isinstance(upstream, str):
        upstream, given = np.array(0.5), da.from_array(np.array(0.5))
    else:
        given = upstream
    loss, grad = gkd.softmax_cross_entropy(
        da.from_array(z, CHUNKS), y, reduction=reduction, grad_output=given
    )
    want_loss, want_grad = whole_rows(z, y, reduction=reduction, grad_output=upstream)
    assert_close(loss.compute(scheduler="sync"), want_loss, np.float64, what="loss")
    assert_close(grad.compute(scheduler="sync"), want_grad, np.float64, what="grad")


def test_dask_no_rows(cpu_backend, gkd):
    import dask.array as da

    z, y = np.zeros((0, V)), np.zeros(0, np.int64)
    loss, grad = gkd.softmax_cross_entropy(da.from_array(z, (1, 10)), y)
    assert float(loss.compute(scheduler="sync")) == 0.0
    assert grad.compute(scheduler="sync").shape == (0, V)


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
    assert readers == 2 * 6  # the stats and the gradient of each of the 6 chunks
    loss_only = dict(loss.__dask_graph__())  # the loss waits for no gradient
    assert not any(isinstance(k, tuple) and k[0] == grad.name for k in loss_only)


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
    with pytest.raises(ValueError, match="softcap"):  # while the graph is built
        gkd.softmax_cross_entropy(logits.astype(np.float32), y, softcap=1e39)
    for bad, error in (({1: 1}, TypeError), (2.5, TypeError), (True, TypeError), (1, ValueError)):
        with pytest.raises(error, match="split_every"):  # a dict of 1 gave a wrong loss
            gkd.softmax_cross_entropy(logits, y, split_every=bad)
    with pytest.raises(ValueError, match="split_every must fit int64"):
        gkd.softmax_cross_entropy(logits, y, split_every=10**30)
    with pytest.raises(TypeError, match="grad_output must have dtype"):  # as the whole rows
        gkd.softmax_cross_entropy(logits, y, reduction="none", grad_output=np.arange(N))
    with pytest.raises(ValueError, match="unknown chunk sizes"):  # after boolean indexing
        gkd.softmax_cross_entropy(logits[da.from_array(np.ones(N, bool), chunks=5)], y)
    no_classes = da.zeros((N, 0), chunks=(N, 1))
    with pytest.raises(ValueError, match="at least one class"):  # as the whole rows refuse it
        gkd.softmax_cross_entropy(no_classes, np.full(N, -100))
    with pytest.raises(TypeError, match="logits must be a dask array, .* got list"):
        gkd.softmax_cross_entropy(z.tolist(), y)
    with pytest.raises(TypeError, match="target must be a dask array, .* got list"):
        gkd.softmax_cross_entropy(logits, y.tolist())
    for reduction in ("mean", "sum", "none"):  # while the graph is built, for each
        with pytest.raises(ValueError, match="grad_output must be a real number within"):
            gkd.softmax_cross_entropy(logits, y, reduction=reduction, grad_output=10**400)
    with pytest.raises(TypeError, match="grad_output must be a real number, a dask array"):
        gkd.softmax_cross_entropy(logits, y, grad_output=[1.0])
    # out of range, in the second row block: found by the tasks, and numbered in the whole
    # array, for the loss and for the gradient, as the whole rows number it
    for bad in (V, -3, 2**63 + 1):
        labels = np.maximum(y, 0).astype(np.uint64) if bad > 2**63 else y.copy()
        labels[7] = bad
        message = f"class index {bad} at row 7,"
        with pytest.raises(ValueError, match=message):
            whole_rows(z, labels)
        for result in gkd.softmax_cross_entropy(logits, labels):
            with pytest.raises(ValueError, match=message):
                result.compute(scheduler="sync")


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


# ------------------------------------------------------------------------ torch.distributed

TORCH_CASES = [
    {"dtype": "float32", "reduction": "mean"},
    {"dtype": "float16", "reduction": "mean"},  # the gradient computed times 8, then unscaled
    {"dtype": "float64", "reduction": "sum", **FULL},
    {"dtype": "float64", "reduction": "none", **FULL},
    {"dtype": "float64", "reduction": "mean", "label_smoothing": 0.2, "all_ignored": True},
]
JOIN_SECONDS = 120


def torch_case(case: dict, world: int):
    """The whole rows of a case: ``world * 5`` classes (shards of 5), and an upstream
    gradient for ``"none"``."""
    z, y = logits_and_target(np.dtype(case["dtype"]), seed=world, n=N, v=5 * world)
    if case.get("all_ignored"):
        y[:] = -100
    up = np.random.default_rng(world + 1).uniform(0.5, 2, N).astype(case["dtype"])
    options = {k: v for k, v in case.items() if k not in ("dtype", "all_ignored")}
    return z, y, up, options


def torch_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank: its shard's loss and gradient for every case, saved to ``out_dir``."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    try:
        import torch
        import torch.distributed as dist

        from gpukernels._torch_distributed import vocab_parallel_cross_entropy

        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=JOIN_SECONDS),
        )
        for k, case in enumerate(TORCH_CASES):
            z, y, up, options = torch_case(case, world)
            width = z.shape[1] // world
            shard = torch.tensor(z[:, rank * width : (rank + 1) * width], requires_grad=True)
            loss = vocab_parallel_cross_entropy(shard, torch.tensor(y), **options)
            loss.backward(torch.tensor(up) if options["reduction"] == "none" else None)
            np.savez(
                os.path.join(out_dir, f"{k}-{rank}.npz"),
                loss=loss.detach().numpy(),
                grad=shard.grad.numpy(),
            )
        shard = torch.tensor(z[:, :width], requires_grad=True)
        loss = vocab_parallel_cross_entropy(shard, torch.tensor(y), reduction="sum")
        try:
            torch.autograd.grad(loss, shard, create_graph=True)
        except RuntimeError as error:
            assert "once differentiable" in str(error)
        else:
            raise AssertionError("a second derivative was not refused")
        compiled = torch.compile(  # run eagerly inside a compiled function: a graph break
            lambda s: vocab_parallel_cross_entropy(s, torch.tensor(y), reduction="sum"),
            backend="aot_eager",
        )
        assert torch.equal(compiled(shard), loss)
        # rows 0 and 1 as [4, 0] and [0, 2]: alike by a position-weighted sum (4 = 2 * 2)
        collision = np.concatenate([[4, 0] if rank == 0 else [0, 2], y[2:]])
        # rows 0 and 1 as [1, 2] and [2, 1]: alike by a digest of the labels alone
        swapped = np.concatenate([[1, 2] if rank == 0 else [2, 1], y[2:]])
        disagreements = [  # what this rank passes where the ranks disagree
            ("shard width", (z[:, : 5 + rank], y, {})),
            ("rows", (z[rank:, :width], y[rank:], {})),
            ("dtype", (z[:, :width].astype(np.float32 if rank else np.float64), y, {})),
            ("label_smoothing", (z[:, :width], y, {"label_smoothing": 0.1 * rank})),
            ("target", (z[:, :width], np.where(np.arange(N) == 3, (y + rank) % 10, y), {})),
            ("target", (z[:, :width], collision, {})),
            ("target", (z[:, :width], swapped, {})),
        ]
        for what, (logits, labels, options) in disagreements:
            try:  # every rank refuses, after one small exchange: none is left waiting
                vocab_parallel_cross_entropy(torch.tensor(logits), torch.tensor(labels), **options)
            except ValueError as error:
                assert f"rank 1 of the group disagrees with rank 0 on {what}" in str(error)
            else:
                raise AssertionError(f"ranks that disagree on {what} were not refused")
        # -0.0 and 0.0 are the same option: the ranks agree, as on the call without them
        signed = {"label_smoothing": -0.0, "z_loss": -0.0} if rank else {}
        agreed = vocab_parallel_cross_entropy(torch.tensor(z[:, :width]), torch.tensor(y), **signed)
        plain = vocab_parallel_cross_entropy(torch.tensor(z[:, :width]), torch.tensor(y))
        assert torch.equal(agreed, plain)
        try:  # no class on rank 1 alone: refused there as the array level refuses it
            vocab_parallel_cross_entropy(
                torch.tensor(z[:, : 0 if rank == 1 else width]), torch.tensor(y)
            )
        except ValueError as error:
            want = "logits_shard must have at least one class" if rank == 1 else "rank 1 of the"
            assert want in str(error), error
        else:
            raise AssertionError("a shard of no class was not refused")
        bad = {"label_smoothing": 2.0} if rank == 1 else {}  # refused by rank 1 alone
        try:
            vocab_parallel_cross_entropy(torch.tensor(z[:, :width]), torch.tensor(y), **bad)
        except ValueError as error:
            want = "label_smoothing must be" if rank == 1 else "rank 1 of the group refused"
            assert want in str(error), error
        else:
            raise AssertionError("an argument refused by one rank went unnoticed")
        logits = z[:, :width] if rank == 1 else torch.tensor(z[:, :width])  # an array
        try:
            vocab_parallel_cross_entropy(logits, torch.tensor(y))
        except (TypeError, ValueError) as error:
            want = "must be a torch.Tensor" if rank == 1 else "rank 1 of the group refused"
            assert want in str(error), error
        else:
            raise AssertionError("an array on one rank went unnoticed")
        logits = torch.tensor(z[:, :width])  # on the meta device on rank 1: refused there
        try:
            vocab_parallel_cross_entropy(
                logits.to("meta") if rank == 1 else logits, torch.tensor(y)
            )
        except (TypeError, ValueError) as error:
            want = "is on meta, which is not supported" if rank == 1 else "rank 1 of the group"
            assert want in str(error), error
        else:
            raise AssertionError("a meta tensor on one rank went unnoticed")
        first_only = dist.new_group([0])  # every rank takes part in making it
        if rank:
            try:
                vocab_parallel_cross_entropy(shard, torch.tensor(y), group=first_only)
            except ValueError as error:
                assert "not a member of group" in str(error)
            else:
                raise AssertionError("a rank outside the group was not refused")
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(out_dir, f"error-{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise


def run_ranks(world: int, tmp_path) -> None:
    """Spawn ``world`` ranks; wait for all of them, or kill them all at the first failure or
    after ``JOIN_SECONDS``."""
    context = multiprocessing.get_context("spawn")
    init_file = tmp_path / "rendezvous"
    procs = [
        context.Process(target=torch_worker, args=(r, world, str(init_file), str(tmp_path)))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_SECONDS
    try:
        while time.monotonic() < deadline and any(p.is_alive() for p in procs):
            if any(p.exitcode not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(10)
    errors = "\n".join(f.read_text() for f in sorted(tmp_path.glob("error-*.txt")))
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world, f"exit codes {codes} (killed after {JOIN_SECONDS} s?)\n{errors}"


def torch_reference(z, y, up, *, reduction, **options):
    """torch.nn.functional.cross_entropy of the whole rows in float64, with the z-loss and
    the softcap written out (``_refs.torch_cross_entropy_loss``); a mean over no row is 0."""
    import torch

    x = torch.tensor(z.astype(np.float64), requires_grad=True)
    total = torch_cross_entropy_loss(x, torch.tensor(y), reduction=reduction, **options)
    total.backward(torch.tensor(up, dtype=torch.float64) if reduction == "none" else None)
    return total.detach().numpy(), x.grad.numpy()


def test_vocab_parallel_takes_tensors():
    """Without a process group, a non-tensor is refused at once; within one, the other
    ranks learn of it in the agreement exchange (torch_worker). Tensors without a process
    group: a ValueError saying so."""
    torch = pytest.importorskip("torch")
    from gpukernels._torch_distributed import vocab_parallel_cross_entropy

    z, y = logits_and_target()
    with pytest.raises(TypeError, match="logits_shard must be a torch.Tensor, got ndarray"):
        vocab_parallel_cross_entropy(z, torch.tensor(y))
    with pytest.raises(TypeError, match="target must be a torch.Tensor, got list"):
        vocab_parallel_cross_entropy(torch.tensor(z), y.tolist())
    with pytest.raises(ValueError, match="call torch.distributed.init_process_group first"):
        vocab_parallel_cross_entropy(torch.tensor(z), torch.tensor(y))


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel_on_gloo(world, tmp_path):
    pytest.importorskip("torch")
    run_ranks(world, tmp_path)
    for k, case in enumerate(TORCH_CASES):
        z, y, up, options = torch_case(case, world)
        want_loss, want_grad = torch_reference(z, y, up, **options)
        parts = [np.load(tmp_path / f"{k}-{r}.npz") for r in range(world)]
        for part in parts[1:]:  # every rank merged the same stats in the same order
            np.testing.assert_array_equal(part["loss"], parts[0]["loss"])
        assert_close(parts[0]["loss"], want_loss, z.dtype, what=f"loss of {case}")
        grad = np.concatenate([p["grad"] for p in parts], axis=1)
        assert grad.dtype == z.dtype
        assert_close(grad, want_grad, z.dtype, what=f"grad of {case}")
