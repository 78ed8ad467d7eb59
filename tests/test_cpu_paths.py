"""The CPU kernels' two compilations: parallel for large inputs, serial for small ones.

Every public function gives the same bits on both paths, at sizes that span several tiles
and several parallel tasks, so the reference tests of either path cover the other.
"""

import numpy as np
import pytest
from _refs import random_floats, random_labels, random_probs

import cpu_fallback
import gpukernels as gk
from cpu_fallback import mse as mse_kernels

N, C = 1031, 37  # 38,147 logits: several tiles and tasks, past the parallel threshold


def _calls(rng):
    z = random_floats(rng, (N, C), np.float32)
    labels = random_labels(rng, N, C)
    labels[::7] = -100
    probs = random_probs(rng, N, C, np.float32)
    y = rng.uniform(0.0, 1.0, (N, C)).astype(np.float32)
    weight = rng.uniform(0.5, 2.0, C).astype(np.float32)
    go = random_floats(rng, (N, C), np.float32)
    wide = random_floats(rng, (257, 131), np.float32)  # rows past the folded length
    wide_labels = random_labels(rng, 257, 131)
    wide_labels[::9] = -100  # rows that take no part skip their exponentials
    box = np.concatenate([(rng.random((N, 1)) < 0.5), rng.random((N, 4))], axis=1)
    terms = [
        gk.LossTerm("bce_with_logits", slice(0, 1)),
        gk.LossTerm("mse", slice(1, 5), only_where=0),
        gk.LossTerm("huber", slice(1, 5), only_where=0, delta=0.1),
    ]
    return {
        "ce labels": lambda: gk.softmax_cross_entropy(
            z, labels, weight=weight, label_smoothing=0.1
        ),
        "ce probs": lambda: gk.softmax_cross_entropy(z, probs, reduction="sum"),
        "ce none": lambda: gk.softmax_cross_entropy(
            z, labels, reduction="none", grad_output=go[:, 0]
        ),
        "ce long rows": lambda: gk.softmax_cross_entropy(
            wide, wide_labels, z_loss=1e-3, softcap=5.0
        ),
        "bce": lambda: gk.bce_with_logits(z, y, pos_weight=weight),
        "bce none": lambda: gk.bce_with_logits(z, y, reduction="none", grad_output=go),
        "mse": lambda: gk.mse(z, y, reduction="batchmean"),
        "huber": lambda: gk.huber_loss(z, y, delta=0.5),
        "sigmoid": lambda: gk.sigmoid(z),
        "sigmoid_derivative": lambda: gk.sigmoid_derivative(z),
        "sigmoid_backward": lambda: gk.sigmoid_backward(go, y),
        "batch_sum": lambda: gk.batch_sum(z),
        "batch_sum axis 0": lambda: gk.batch_sum(z, axis=0),
        # with out=, batch_sum takes its general path at every size
        "batch_sum out": lambda: gk.batch_sum(z, out=np.empty((), np.float32)),
        "batch_sum axis 0 out": lambda: gk.batch_sum(z, axis=0, out=np.empty(C, np.float32)),
        "composite": lambda: gk.composite_loss(z[:, :5], box.astype(np.float32), terms),
        "shard": lambda: gk.shard_loss_and_grad(
            z[:, 5:],
            labels,
            gk.merge_shard_stats(
                gk.shard_stats(z[:, :5], labels, class_start=0),
                gk.shard_stats(z[:, 5:], labels, class_start=5),
            ),
            class_start=5,
            num_classes=C,
            label_smoothing=0.1,
            z_loss=1e-3,
        ),
    }


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("name", list(_calls(np.random.default_rng(0))))
def test_serial_and_parallel_give_the_same_bits(cpu_backend, monkeypatch, name):
    call = _calls(np.random.default_rng(1))[name]
    monkeypatch.setattr(cpu_fallback, "PARALLEL_MIN_WORK", 0)
    parallel = _as_tuple(call())
    monkeypatch.setattr(cpu_fallback, "PARALLEL_MIN_WORK", 1 << 62)
    serial = _as_tuple(call())
    assert len(parallel) == len(serial)
    for p, s in zip(parallel, serial, strict=True):
        assert p.dtype == s.dtype and p.shape == s.shape
        assert p.tobytes() == s.tobytes(), name
        assert np.isfinite(p).all()


def test_small_work_runs_serial_and_large_work_parallel(cpu_backend, monkeypatch):
    rng = np.random.default_rng(2)
    ran = []
    kernel = mse_kernels.loss_and_grad.kernel
    for path in ("serial", "parallel"):
        compiled = getattr(kernel, path)
        monkeypatch.setattr(kernel, path, lambda *a, c=compiled, p=path: (ran.append(p), c(*a)))
    monkeypatch.setattr(cpu_fallback, "PARALLEL_MIN_WORK", 1000)
    for n in (999, 1000):
        x, t = random_floats(rng, (n,), np.float32), random_floats(rng, (n,), np.float32)
        gk.mse(x, t)
    assert ran == ["serial", "parallel"]
