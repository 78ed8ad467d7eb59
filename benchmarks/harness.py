"""Measure one case: check every variant against a float64 reference, then time it.

The one timing path of the suite. A case is an op at one shape and dtype. Its inputs are
random (never zeros) and, where one set of them would fit in the device's last-level cache
(GPU L2, CPU L3), several sets are drawn and the calls rotate among them so that every call
reads from memory. Each variant is checked first (loss and gradient within a tolerance of the
reference) and timed only if it passes: warm-up calls (compilation, allocation pools) first,
then enough timed calls for a stable median, in rounds that take the variants in turn. The
memory copy of the same number of bytes is timed on the same device in the same way: it is
the ceiling a memory-bound op can reach.
"""

from __future__ import annotations

import functools
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import memory
from .baselines import OURS, as_array

# Largest relative error (loss: |a - b| / |b|; gradient: max |a - b| / max |b|) against the
# float64 reference. float16 covers values stored in half precision (PyTorch's loss too);
# bfloat16 (8 significant bits, 3 fewer) about 4 of its units in the last place.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}
MAX_SETS = 64
# The timed calls of a case run in rounds that take its variants in turn (time_in_rounds).
ROUNDS = 5
TINY = 1e-300


@dataclass(frozen=True)
class Budget:
    """How long to warm up and to time one variant, and the bounds on the repeat count."""

    warmup_s: float
    time_s: float
    min_reps: int
    max_reps: int
    host_batch: int = 20


BUDGETS = {
    ("cpu", False): Budget(warmup_s=0.2, time_s=1.5, min_reps=7, max_reps=300),
    ("cpu", True): Budget(warmup_s=0.05, time_s=0.15, min_reps=3, max_reps=60),
    ("cuda", False): Budget(warmup_s=0.05, time_s=0.25, min_reps=20, max_reps=1000),
    ("cuda", True): Budget(warmup_s=0.02, time_s=0.06, min_reps=10, max_reps=200),
}


@dataclass(frozen=True)
class Timing:
    """Order statistics of the per-call seconds."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    reps: int

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        """The statistics of a list of seconds."""
        q1, med, q3 = np.percentile(samples, [25, 50, 75])
        return cls(float(med), float(q1), float(q3), min(samples), max(samples), len(samples))

    @property
    def spread(self) -> float:
        """The interquartile range over the median."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else math.nan


@dataclass
class Outcome:
    """One variant on one case: ``ok``, ``mismatch``, ``error`` or ``skipped``."""

    variant: str
    status: str
    detail: str = ""
    loss_err: float | None = None
    grad_err: float | None = None
    timing: Timing | None = None
    memory: dict | None = None  # peak extra memory, for ops with ``MEMORY`` (see memory.py)


@dataclass
class CaseResult:
    """All variants of one case, with the copy ceiling measured beside them."""

    op: str
    shape: tuple
    dtype: str
    nbytes: int
    host_clock: bool
    n_sets: int
    memory: bool = False  # whether the peak extra memory of each variant was measured
    copy: Timing | None = None
    copy_bytes: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def timed(self, name: str) -> Timing | None:
        """The timing of variant ``name``, or None if it did not run."""
        for o in self.outcomes:
            if o.variant == name and o.timing is not None:
                return o.timing
        return None

    def gbps(self, timing: Timing) -> float | None:
        """The byte model over the median, in GB/s (None for the overhead case)."""
        return None if self.host_clock else self.nbytes / timing.median / 1e9

    @property
    def copy_gbps(self) -> float | None:
        """The copy's bytes read plus written over its median, in GB/s."""
        return self.copy_bytes / self.copy.median / 1e9 if self.copy else None

    def pct_of_copy(self, timing: Timing) -> float | None:
        """GB/s as a percentage of the copy's GB/s."""
        rate, ceiling = self.gbps(timing), self.copy_gbps
        return None if rate is None or not ceiling else 100.0 * rate / ceiling

    def speedup(self, name: str) -> float | None:
        """Variant ``name``'s median over gpukernels' (above 1: gpukernels is faster)."""
        ours, other = self.timed(OURS), self.timed(name)
        return other.median / ours.median if ours and other else None


def time_in_rounds(dev, fns: list, n_sets: int, budget: Budget, host: bool) -> list:
    """Time each of ``fns`` (``fn(i)`` calls on input set ``i``): the ``Timing`` of each, or
    the exception a call raised.

    Each is warmed up first: on every input set at least once and for ``budget.warmup_s``
    (the check has made the first call, where JIT compilation happens); the warm-up's pace
    sets its repeat count. The repeats then run in ``ROUNDS`` rounds that take the calls in
    turn, each round starting one further along, so that a burst of load on a shared
    machine falls on every variant of a case rather than on one variant's figure. In a
    round, a call first runs as often as fits in a ``ROUNDS``-th of the warm-up time (the
    other calls have taken the caches and branch predictors since; a slow call, not at
    all). Each call's input sets rotate on from round to round, warm-up calls included, so
    that a timed call never reads the set a call just before it read. A call that raises
    leaves the rounds.
    """
    results: list = [None] * len(fns)
    pace = {}
    position = {}  # each call's next input set
    for k, fn in enumerate(fns):
        try:
            pace[k], position[k] = _warm_up(dev, fn, n_sets, budget.warmup_s)
        except Exception as exc:  # reported by the caller, the others go on
            results[k] = exc
    samples = {k: [] for k in pace}
    order = list(pace)
    for r in range(ROUNDS):
        gc.collect()
        shift = r % max(len(order), 1)
        for k in order[shift:] + order[:shift]:
            if results[k] is not None:
                continue
            per_call, fn = pace[k], fns[k]
            try:
                warm = int(budget.warmup_s / ROUNDS / per_call)
                for i in range(position[k], position[k] + warm):
                    fn(i % n_sets)
                dev.sync()
                reps = -(-_repeats(per_call, budget, host) // ROUNDS)
                first = position[k] + warm
                samples[k] += _sample(dev, fn, reps, n_sets, host, budget.host_batch, first)
                position[k] = (first + reps * (budget.host_batch if host else 1)) % n_sets
            except Exception as exc:
                results[k] = exc
    for k, got in samples.items():
        if results[k] is None:
            results[k] = Timing.of(got)
    return results


def _warm_up(dev, fn, n_sets: int, seconds: float) -> tuple[float, int]:
    """Call ``fn`` on each input set at least once and for at least ``seconds``: the seconds
    a call took (never 0: budgets divide by it) and the next input set."""
    calls, start = 0, time.perf_counter()
    while calls < n_sets or time.perf_counter() - start < seconds:
        fn(calls % n_sets)
        dev.sync()
        calls += 1
    return max(time.perf_counter() - start, 1e-9) / calls, calls % n_sets


def _repeats(per_call: float, budget: Budget, host: bool) -> int:
    """The timed calls (host clock: batches of calls) that fit in the budget, within its
    bounds."""
    reps = budget.time_s / (per_call * budget.host_batch if host else per_call)
    return int(min(max(reps, budget.min_reps), budget.max_reps))


def _sample(dev, fn, reps: int, n_sets: int, host: bool, batch: int, first: int) -> list[float]:
    """``reps`` samples of seconds per call from input set ``first`` on, with the collector
    off."""
    gc.disable()
    try:
        if host:
            return dev.time_host(fn, reps, n_sets, batch, first)
        return dev.time_calls(fn, reps, n_sets, first)
    finally:
        gc.enable()


def compare(xp, got: tuple, ref: tuple) -> tuple[float | None, float | None]:
    """Relative errors of a variant's ``(loss, grad)`` against the reference's.

    ``grad`` may be a tuple of gradients (one per differentiated argument) where the
    reference's is: each is compared with its own scale, and the worst error counts.
    """
    loss, grad = got
    loss = as_array(xp, loss)
    ref_loss, ref_grad = ref
    loss_err = grad_err = None
    if ref_loss is not None:
        if loss is None:
            raise ValueError("returned no loss")
        a, b = float(loss), float(ref_loss)
        loss_err = abs(a - b) / max(abs(b), TINY)
    if ref_grad is not None:
        if not isinstance(ref_grad, tuple):
            return loss_err, _grad_err(xp, as_array(xp, grad), ref_grad)
        if not isinstance(grad, tuple) or len(grad) != len(ref_grad):
            raise ValueError(f"returned no tuple of {len(ref_grad)} gradients")
        pairs = zip(grad, ref_grad, strict=True)
        grad_err = max(_grad_err(xp, as_array(xp, g), r) for g, r in pairs)
    return loss_err, grad_err


def _grad_err(xp, grad, ref_grad) -> float:
    """``max |grad - ref| / max |ref|``."""
    if grad is None or tuple(grad.shape) != tuple(ref_grad.shape):
        raise ValueError(f"gradient of shape {getattr(grad, 'shape', None)}")
    scale = float(xp.abs(ref_grad).max())
    diff = grad.astype(xp.float64)  # a copy, so the in-place steps leave grad alone
    diff -= ref_grad
    return float(xp.abs(diff, out=diff).max()) / max(scale, TINY)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def _check(dev, variant, sets, ref, tol) -> tuple[Outcome, list | None]:
    """The variant's outcome after its first call, and its prepared arguments if it passed."""
    if variant.skip:
        return Outcome(variant.name, "skipped", variant.skip), None
    try:
        args = [variant.prepare(s) for s in sets]
        loss_err, grad_err = compare(dev.xp, variant.call(args[0]), ref)
    except Exception as exc:  # a baseline that cannot run here is reported, not fatal
        return Outcome(variant.name, "error", _short(exc)), None
    worst = max((e for e in (loss_err, grad_err) if e is not None), default=0.0)
    ok = worst <= tol  # False for NaN
    detail = "" if ok else f"relative error {worst:.2e} > {tol:.0e}"
    outcome = Outcome(variant.name, "ok" if ok else "mismatch", detail, loss_err, grad_err)
    return outcome, args if ok else None


def copy_ceiling(dev, nbytes: int, n_sets: int, budget: Budget) -> tuple[Timing, int]:
    """Time a copy that moves ``nbytes`` (read plus written), rotating like the op's inputs."""
    copies = [dev.copier(nbytes, seed=10_000 + 2 * k) for k in range(n_sets)]
    (timing,) = time_in_rounds(dev, [lambda i: copies[i][0]()], n_sets, budget, host=False)
    if isinstance(timing, Exception):
        raise timing
    return timing, copies[0][1]


def _nth(call: Callable, args: list, i: int):
    return call(args[i])


def run_case(dev, op, shape: tuple, dtype: str, budget: Budget, step: Callable) -> CaseResult:
    """Check and time every variant of ``op`` at ``shape`` and ``dtype``.

    ``step(label)`` is called once per variant, for a progress display. For an op with
    ``MEMORY = True`` each timed variant's peak extra memory is then measured in a fresh
    process (``memory.measure``).
    """
    host = getattr(op, "HOST_CLOCK", False)
    with_memory = bool(getattr(op, "MEMORY", False))
    nbytes = op.nbytes(shape, dtype)
    n_sets = 1 if host else min(MAX_SETS, max(1, math.ceil(2 * dev.cache_bytes / nbytes)))
    result = CaseResult(op.NAME, tuple(shape), dtype, nbytes, host, n_sets, memory=with_memory)
    sets = [op.inputs(dev, shape, dtype, seed=k) for k in range(n_sets)]
    ref = op.reference(dev, sets[0])
    variants = op.variants(dev)
    checked = []
    for v in variants:
        checked.append(_check(dev, v, sets, ref, TOLERANCE[dtype]))
        dev.release()  # each check's outputs, before the next variant allocates its own
    del ref
    dev.release()
    result.outcomes = [outcome for outcome, _ in checked]
    passed = [
        (outcome, functools.partial(_nth, v.call, args))
        for v, (outcome, args) in zip(variants, checked, strict=True)
        if args is not None
    ]
    timings = time_in_rounds(dev, [call for _, call in passed], n_sets, budget, host)
    for (outcome, _), timing in zip(passed, timings, strict=True):
        if isinstance(timing, Exception):  # reported in the table, the run goes on
            outcome.status, outcome.detail = "error", _short(timing)
        else:
            outcome.timing = timing
    for variant, outcome in zip(variants, result.outcomes, strict=True):
        if with_memory and outcome.timing is not None:
            outcome.memory = memory.measure(dev, op, shape, dtype, variant.name)
        step(outcome)
    del checked, sets
    dev.release()
    if not host:
        result.copy, result.copy_bytes = copy_ceiling(dev, nbytes, n_sets, budget)
    return result
