"""``python -m benchmarks``: pick the cases, run them, print the tables, write JSON and the plot.

``main(argv)`` parses the command line (``parser()``); ``run(options)`` takes its namespace
(``ops``, ``sizes``, ``dtypes``, ``quick``, ``backend``, ``out``). The cases are the ops of
the library's op table (``gpukernels._ops.OPS``) that name a benchmark module, plus the extra
cases: ``overhead`` (the Python cost of a call rather than a kernel), ``torch_xent``
(``gpukernels.torch.cross_entropy`` on tensors), ``torch_xent_eval`` (the same under
``torch.no_grad()``: the loss alone, timed and its peak memory measured), ``torch_mse_eval``
(``gpukernels.torch.mse_loss`` likewise) and ``linear_xent``
(the fused output layer, timed and its peak memory measured).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from gpukernels._ops import OPS as KERNEL_OPS

from . import memory, report
from .device import Device, open_device, slug
from .harness import BUDGETS, ROUNDS, TOLERANCE, run_case

TIERS = ("small", "medium", "large")
ROOT = Path(__file__).resolve().parent.parent
# Not ops of the table: batch_sum down the columns, the Python cost of one small call, the
# PyTorch losses, the output layer.
EXTRA_CASES = (
    "column_sum",
    "overhead",
    "torch_xent",
    "torch_xent_eval",
    "torch_mse_eval",
    "linear_xent",
)


def bench_names() -> tuple[str, ...]:
    """Every benchmark module: the op table's ``bench`` entries, then the extra cases."""
    return tuple(op.bench for op in KERNEL_OPS.values() if op.bench) + EXTRA_CASES


def missing_public(name: str) -> list[str]:
    """The public functions the op of benchmark ``name`` needs that ``gpukernels`` lacks."""
    import gpukernels as gk

    ops = [op for op in KERNEL_OPS.values() if op.bench == name]
    return [f for op in ops for f in op.public if not hasattr(gk, f)]


def parse_list(text: str | None, allowed: tuple[str, ...] | None, what: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]``, each checked against ``allowed``."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if bad:
        raise SystemExit(f"--{what}: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def parse_size(text: str) -> tuple[int, ...]:
    """``4096x1024``, ``2048x256x32768``, ``1048576``, ``2^20``, ``16M`` or ``1G`` (binary)
    as a shape."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    dims = []
    for part in text.lower().split("x"):
        if m := re.fullmatch(r"2\^(\d+)", part):
            dims.append(1 << int(m.group(1)))
        elif m := re.fullmatch(r"(\d+)([kmg]?)", part):
            dims.append(int(m.group(1)) * units[m.group(2).upper()])
        else:
            raise SystemExit(f"--sizes: cannot read {text!r} (try 4096x1024, 2^20 or 16M)")
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise SystemExit(f"--sizes: {text!r} is not a count, an NxC or an NxHxV shape")
    return tuple(dims)


def plan(dev: Device, ops: list[str], sizes: str | None, dtypes: list[str]) -> list[tuple]:
    """``(module, shape, dtype)`` for every case to run, in order, without repeats."""
    entries = parse_list(sizes, None, "sizes")
    tiers = [e for e in entries if e in TIERS] or (list(TIERS) if not entries else [])
    explicit = [parse_size(e) for e in entries if e not in TIERS]
    cases = []
    for name in ops:
        if missing := missing_public(name):
            print(f"skipping {name}: gpukernels has no {', '.join(missing)}", file=sys.stderr)
            continue
        op = importlib.import_module(f"benchmarks.{name}")
        if why := getattr(op, "unavailable", lambda dev: "")(dev):
            print(f"skipping {name}: {why}", file=sys.stderr)
            continue
        shapes = [s for t in tiers for s in op.SIZES[dev.kind].get(t, [])]
        if not getattr(op, "HOST_CLOCK", False):
            dims = getattr(op, "SIZE_DIMS", (1, 2))  # the --sizes entries the op can take
            if odd := [e for e in explicit if len(e) not in dims]:
                shown = ", ".join(report.fmt_shape(e) for e in odd)
                print(f"{name}: ignoring --sizes {shown} (not its shape)", file=sys.stderr)
            shapes += [op.shape_of(s) for s in explicit if len(s) in dims]
        for shape in dict.fromkeys(tuple(s) for s in shapes):
            for dtype in dtypes or op.DTYPES[dev.kind]:
                cases.append((op, shape, dtype))
    return cases


def git_commit() -> str:
    """``git rev-parse`` of the checkout (with ``-dirty`` for local changes); where git cannot
    tell (a copy of the tree without its history, as a lent GPU machine gets),
    ``$GPUKERNELS_COMMIT`` as the caller names it, else ``unknown``."""
    told = os.environ.get("GPUKERNELS_COMMIT") or "unknown"
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return told
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return told
    return head.stdout.strip() + ("-dirty" if dirty else "")


def default_out() -> Path:
    """``benchmarks/results`` in a source checkout, else ``./benchmark-results``."""
    if (ROOT / "pyproject.toml").exists():
        return ROOT / "benchmarks" / "results"
    return Path.cwd() / "benchmark-results"


def metadata(dev: Device, options, ops: list[str], dtypes: list[str], budget, now) -> dict:
    """What the results file says about the run: device, versions, commit, options, method."""
    from gpukernels.cli import versions

    clock = "CUDA events" if dev.kind == "cuda" else "time.perf_counter"
    copy = "cudaMemcpyAsync device to device" if dev.kind == "cuda" else "np.copyto per core"
    return {
        "device": dev.details(),
        "date": now.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "versions": versions(),
        "options": {
            "ops": ops,
            "sizes": options.sizes,
            "dtypes": dtypes or "default",
            "quick": bool(options.quick),
            "backend": dev.kind,
        },
        "method": {
            "timing": (
                f"{clock} around each call, after warm-up, in {ROUNDS} rounds that take a "
                "case's variants in turn"
            ),
            "statistic": "median; spread: interquartile range (q1, q3) and min/max",
            "copy": f"{copy} moving the same number of bytes (half read, half written)",
            "check": "loss and gradient against a float64 reference before timing",
            "budget": vars(budget),
        },
    }


def numba_threading_layer() -> str:
    """The pool Numba's parallel kernels run on (``tbb``, ``omp``, ``workqueue``), or
    ``not started`` before the first parallel kernel."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return "not started"


def run(options) -> int:
    """Run the benchmark described by the parsed ``python -m benchmarks`` options."""
    started = time.perf_counter()
    names = bench_names()
    ops = parse_list(options.ops, names, "ops") or list(names)
    dtypes = parse_list(options.dtypes, tuple(TOLERANCE), "dtypes")
    try:
        dev = open_device(options.backend)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    # NumPy arrays must not wander onto the simulator, nor CuPy arrays be refused.
    os.environ["GPUKERNELS_BACKEND"] = "cpu" if dev.kind == "cpu" else "auto"
    cases = plan(dev, ops, options.sizes, dtypes)
    if not cases:
        raise SystemExit("no cases: check --ops, --sizes and --dtypes for this backend")
    budget = BUDGETS[dev.kind, bool(options.quick)]
    full = not (options.quick or options.ops or options.sizes or options.dtypes)
    tag = "" if full else ("-quick" if options.quick else "-partial") + "-scratch"
    now = datetime.datetime.now().astimezone()
    out = Path(options.out) if options.out else default_out()
    stem = out / f"{slug(dev.name)}-{now:%Y-%m-%d}{tag}"
    meta = metadata(dev, options, ops, dtypes, budget, now)
    if any(getattr(op, "MEMORY", False) for op, _, _ in cases):
        meta["method"]["memory"] = memory.METHOD[dev.kind]
    print(f"gpukernels bench: {len(cases)} cases on {dev.name} ({dev.kind})", flush=True)
    results, records = [], []
    total = sum(len(op.variants(dev)) for op, _, _ in cases)
    with report.Progress(total) as progress:
        for op, shape, dtype in cases:
            progress.case(f"{op.NAME} {report.fmt_shape(shape)} {dtype}")
            result = run_case(dev, op, shape, dtype, budget, progress.step)
            results.append(result)
            records.append(report.case_record(result, op))
            meta["numba_threading_layer"] = numba_threading_layer()
            report.write_json(stem.with_suffix(".json"), meta, records)
    titles = {op.NAME: f"{op.TITLE}: {op.BYTES}" for op, _, _ in cases}
    heading = f"gpukernels bench, {dev.name}, {now:%Y-%m-%d}"
    note = report.plot(stem.with_suffix(".png"), results, titles, heading)
    report.print_table(
        "All variants (ours x = that variant's median / gpukernels')",
        report.detail_head(results),
        report.detail_rows(results),
    )
    head, rows = report.summary(results)
    report.print_table(
        f"{heading}: gpukernels, and how much faster it is than each baseline", head, rows
    )
    print(f"results: {stem.with_suffix('.json')}")
    print(f"plot: {note}" if note else f"plot: {stem.with_suffix('.png')}")
    print(f"bench took {time.perf_counter() - started:.0f} s")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks``."""
    top = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time the gpukernels ops against NumPy/CuPy and PyTorch on this machine.",
    )
    top.add_argument("--ops", help=f"comma list of {','.join(bench_names())} (default: all)")
    top.add_argument(
        "--sizes",
        help="comma list of tiers small,medium,large (default: all) or "
        "explicit sizes: 4096x1024 (rows x classes), 2048x256x32768 (linear_xent: "
        "rows x hidden x classes), 2^24, 16M, 1048576",
    )
    top.add_argument(
        "--dtypes",
        help="comma list of float32,float16,bfloat16,float64 (default: each op's own: "
        "float32 on the CPU, float32,float16 on the GPU; torch_xent adds bfloat16)",
    )
    top.add_argument("--quick", action="store_true", help="shorter timing: fewer, shorter repeats")
    top.add_argument(
        "--backend",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="cuda needs a GPU and CuPy; auto picks it when present",
    )
    top.add_argument("--out", help="folder for the JSON and PNG (default: benchmarks/results)")
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks`` (run from the repository root)."""
    return run(parser().parse_args(argv))
