"""Kernel launches per public call on the CUDA backend, counted on the simulator.

Every launch configures a kernel (``kernel[grid, block, stream, shared]``); the counter wraps
that step of the simulator's kernel class, so it sees each launch whatever module makes it.
The table is the contract: one launch per call, except where a second kernel sums what the
first wrote (``composite_loss``: the rows, then the per-term column sums;
``shard_loss_and_grad``: the rows, then the sum of the row losses; a probability-target
cross-entropy: the rows, then their sum) and the class-index cross-entropy, whose mean needs
its divisor before any gradient is written (a scan of the labels, the rows, and the sum of
the row losses: 3, or 2 without a reduction).
"""

import functools

import numpy as np
import pytest

import gpukernels as gk

pytestmark = pytest.mark.skipif(
    not __import__("conftest").SIMULATOR, reason="counts launches on the simulator"
)


@pytest.fixture
def launches(monkeypatch):
    """A list that grows by one entry (the kernel's name) at every CUDA launch."""
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    monkeypatch.setenv("GPUKERNELS_BACKEND", "cuda")
    seen = []
    configure = FakeCUDAKernel.__getitem__

    def counted(self, configuration):
        seen.append(self.fn.__name__)
        return configure(self, configuration)

    monkeypatch.setattr(FakeCUDAKernel, "__getitem__", counted)
    return seen


RNG = np.random.default_rng(5)
Z = RNG.standard_normal((33, 7)).astype(np.float32)
T = RNG.standard_normal((33, 7)).astype(np.float32)
Y = RNG.integers(0, 7, 33)
P = np.full((33, 7), 1 / 7, np.float32)


@functools.cache
def _whole_row_stats():
    """The statistics of one shard holding every class (made by the uncounted first call)."""
    return gk.shard_stats(Z, Y, class_start=0)


CALLS = {
    "softmax_cross_entropy labels mean": (lambda: gk.softmax_cross_entropy(Z, Y), 3),
    "softmax_cross_entropy labels sum": (
        lambda: gk.softmax_cross_entropy(Z, Y, reduction="sum"),
        3,
    ),
    "softmax_cross_entropy labels none": (
        lambda: gk.softmax_cross_entropy(Z, Y, reduction="none", validate=False),
        2,
    ),
    "softmax_cross_entropy probs mean": (lambda: gk.softmax_cross_entropy(Z, P), 2),
    "softmax_cross_entropy probs none": (
        lambda: gk.softmax_cross_entropy(Z, P, reduction="none"),
        1,
    ),
    "mse mean": (lambda: gk.mse(Z, T), 1),
    "mse none": (lambda: gk.mse(Z, T, reduction="none"), 1),
    "bce_with_logits sum": (lambda: gk.bce_with_logits(Z, np.abs(P), reduction="sum"), 1),
    "huber_loss mean": (lambda: gk.huber_loss(Z, T, delta=0.5), 1),
    "sigmoid": (lambda: gk.sigmoid(Z), 1),
    "sigmoid_derivative": (lambda: gk.sigmoid_derivative(Z), 1),
    "batch_sum": (lambda: gk.batch_sum(Z), 1),
    "batch_sum axis=0": (lambda: gk.batch_sum(np.tile(Z, (40, 1)), axis=0), 1),
    "composite_loss": (
        lambda: gk.composite_loss(
            Z,
            np.concatenate([(Y % 5)[:, None], T[:, :2]], axis=1).astype(np.float32),
            [
                gk.LossTerm(
                    "softmax_cross_entropy", columns=slice(0, 5), target_columns=slice(0, 1)
                ),
                gk.LossTerm("mse", columns=slice(5, 7), target_columns=slice(1, 3)),
            ],
        ),
        2,
    ),
    "shard_stats": (lambda: gk.shard_stats(Z[:, :4], Y, class_start=0), 1),
    "shard_loss_and_grad": (
        lambda: gk.shard_loss_and_grad(Z, Y, _whole_row_stats(), class_start=0, num_classes=7),
        2,
    ),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_launches_per_call(launches, name):
    call, expected = CALLS[name]
    call()  # compiles (the simulator compiles nothing, but keeps the first call out anyway)
    launches.clear()
    call()
    assert len(launches) == expected, launches


def test_every_launch_is_counted(launches):
    """The counter is no stub: a call with more launches than its table entry is seen."""
    gk.mse(Z, T)
    gk.batch_sum(Z)
    assert len(launches) == 2
