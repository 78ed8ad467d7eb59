"""The benchmark harness's timing rounds (benchmarks/harness.py), on a fake device: which
calls run in which order and what each variant gets back. Nothing here is timed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks: a folder, not installed
from benchmarks import harness  # noqa: E402


class _Device:
    """Calls ``fn`` as the CPU device does, one sample of 1 s per call (per batch)."""

    def sync(self):
        pass

    def time_calls(self, fn, reps, n_sets, first=0):
        for i in range(first, first + reps):
            fn(i % n_sets)
        return [1.0] * reps

    def time_host(self, fn, reps, n_sets, batch, first=0):
        for i in range(first, first + reps * batch):
            fn(i % n_sets)
        return [1.0] * reps


def _recording(log, name, fail_at=None):
    def call(i):
        log.append((name, i))
        if fail_at is not None and sum(1 for n, _ in log if n == name) == fail_at:
            raise RuntimeError(f"{name} failed")

    return call


def _paced(monkeypatch, seconds):
    """The first warm-up: each input set once, ``seconds`` a call."""

    def warm_up(dev, fn, n_sets, _seconds):
        for i in range(n_sets):
            fn(i)
        return seconds, 0

    monkeypatch.setattr(harness, "_warm_up", warm_up)


def test_rounds_take_the_variants_in_turn_and_keep_each_ones_samples():
    log = []
    budget = harness.Budget(warmup_s=0.0, time_s=0.0, min_reps=7, max_reps=7)
    calls = [_recording(log, "a"), _recording(log, "b"), _recording(log, "c")]
    got = harness.time_in_rounds(_Device(), calls, 3, budget, host=False)
    # 7 repeats in 5 rounds: 2 a round, all samples kept
    assert [t.reps for t in got] == [10, 10, 10]
    warm_up, timed = log[:9], log[9:]
    assert warm_up == [(n, i) for n in "abc" for i in range(3)]  # every input set once
    firsts = [timed[k][0] for k in range(0, len(timed), 2)]
    assert firsts == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c", "b", "c", "a"]
    # each call's input sets rotate on from round to round
    assert [i for n, i in timed if n == "a"] == [i % 3 for i in range(10)]


def test_each_round_warms_each_call_up_again_and_the_sets_rotate_on(monkeypatch):
    _paced(monkeypatch, 0.01)  # 0.1 s of warm-up: 0.02 s, two calls, in each round
    log = []
    budget = harness.Budget(warmup_s=0.1, time_s=0.0, min_reps=5, max_reps=5)
    got = harness.time_in_rounds(_Device(), [_recording(log, "a")], 4, budget, host=False)
    assert got[0].reps == 5
    sets = [i for _, i in log]
    assert sets == [0, 1, 2, 3] + [i % 4 for i in range(3 * 5)]  # warm 2, time 1 a round


def test_host_clock_batches_rotate_on(monkeypatch):
    _paced(monkeypatch, 1.0)  # slower than a round's warm-up: none
    log = []
    budget = harness.Budget(warmup_s=0.1, time_s=0.0, min_reps=5, max_reps=5, host_batch=3)
    got = harness.time_in_rounds(_Device(), [_recording(log, "a")], 2, budget, host=True)
    assert got[0].reps == 5
    assert [i for _, i in log] == [0, 1] + [i % 2 for i in range(5 * 3)]


def test_a_call_that_raises_gets_its_exception_and_the_others_go_on():
    log = []
    budget = harness.Budget(warmup_s=0.0, time_s=0.0, min_reps=5, max_reps=5)
    calls = [_recording(log, "a"), _recording(log, "b", fail_at=3), _recording(log, "c")]
    got = harness.time_in_rounds(_Device(), calls, 1, budget, host=False)
    assert isinstance(got[1], RuntimeError) and str(got[1]) == "b failed"
    assert [got[0].reps, got[2].reps] == [5, 5]
    assert sum(1 for n, _ in log if n == "b") == 3  # none after it raised


def test_commit_named_where_git_cannot_tell(tmp_path, monkeypatch):
    """A copy of the tree without its history (a lent GPU machine's) records the commit the
    caller names in ``GPUKERNELS_COMMIT``, else ``unknown``."""
    from benchmarks import runner

    monkeypatch.setenv("GPUKERNELS_COMMIT", "abc1234")
    monkeypatch.setattr(runner, "ROOT", tmp_path)  # no repository there
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert runner.git_commit() == "abc1234"
    monkeypatch.delenv("GPUKERNELS_COMMIT")
    assert runner.git_commit() == "unknown"
