"""Peak extra memory of one variant: one call, in a fresh process, beyond inputs and outputs.

``measure(dev, op, shape, dtype, variant)`` runs ``python -m benchmarks.memory`` for one
variant of one case and returns what it printed. That process draws the case's first input
set, prepares the variant, calls it once to warm up (JIT compilation, ``torch.compile``,
thread pools: none of it counts), then reads the baseline, calls it once more and reads the
peak. The figure is ``peak - baseline - outputs``: what the call needed beyond its inputs
(there before the baseline) and the arrays it returns (the bytes of the loss and gradients).

One method for every variant, whatever allocates the memory (NumPy, Numba, PyTorch):

- CPU: the process's resident set. ``/proc/self/clear_refs`` (``5``) resets its high-water
  mark (``VmHWM``) after the warm-up, so the peak is that of the measured call alone;
  ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` are fixed at 128 KiB so that
  glibc maps every larger block afresh and unmaps it when freed: memory freed by the
  warm-up is not kept resident and reused unseen. Linux only.
- CUDA: PyTorch's caching allocator (``torch.cuda.max_memory_allocated``), with CuPy's
  allocations routed through it (``cupy.cuda.set_allocator``), so gpukernels' CuPy arrays
  and PyTorch's tensors are counted by one allocator. Untested until a GPU run.

A fresh process per variant keeps one variant's allocator state, caches and compiled code
out of another's figure.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
METHOD = {
    "cpu": "one call in a fresh process after a warm-up call: resident-set high-water mark "
    "(VmHWM, reset by /proc/self/clear_refs) minus the resident set before the call minus "
    "the bytes of the outputs; glibc mmap and trim thresholds fixed at 128 KiB",
    "cuda": "one call in a fresh process after a warm-up call: torch.cuda.max_memory_allocated "
    "(CuPy allocating through PyTorch's caching allocator) minus memory_allocated before the "
    "call minus the bytes of the outputs",
}


def measure(dev, op, shape: tuple, dtype: str, variant: str) -> dict:
    """Run the measurement of ``variant`` in a fresh process and return its record.

    The record holds ``peak_extra_bytes``, ``output_bytes``, ``baseline_bytes``,
    ``peak_bytes`` and ``seconds`` (the child's wall time), or ``error``.
    """
    name = op.__name__.rsplit(".", 1)[-1]
    cmd = [sys.executable, "-m", "benchmarks.memory", name, "x".join(map(str, shape))]
    cmd += [dtype, dev.kind, variant]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **MALLOC_ENV, "PYTHONPATH": path}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {"error": f"memory measurement took over {TIMEOUT_S} s"}
    seconds = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"error": why[:160]}
    return {**json.loads(lines[-1]), "seconds": seconds}


# ---- the child process ------------------------------------------------------------------
def _status_bytes(key: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process, in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024


class _HostProbe:
    """The resident set of this process, its high-water mark reset before the call."""

    def __init__(self) -> None:
        if not Path("/proc/self/clear_refs").exists():
            raise RuntimeError("needs Linux (/proc/self/clear_refs)")

    def start(self) -> int:
        base = _status_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        return base

    def peak(self) -> int:
        return _status_bytes("VmHWM")


class _CudaProbe:
    """PyTorch's caching allocator, CuPy's allocations routed through it."""

    def __init__(self) -> None:
        import cupy
        import torch

        self.torch = torch

        def malloc(size, device):
            stream = cupy.cuda.get_current_stream().ptr
            return torch.cuda.caching_allocator_alloc(size, device, stream)

        def free(ptr, device):
            torch.cuda.caching_allocator_delete(ptr)

        self.allocator = cupy.cuda.memory.PythonFunctionAllocator(malloc, free)
        cupy.cuda.set_allocator(self.allocator.malloc)

    def start(self) -> int:
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()
        return self.torch.cuda.memory_allocated()

    def peak(self) -> int:
        self.torch.cuda.synchronize()
        return self.torch.cuda.max_memory_allocated()


def _nbytes(value) -> int:
    """The bytes of the arrays or tensors in a (nested) result."""
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    if hasattr(value, "element_size"):  # a tensor
        return value.numel() * value.element_size()
    return int(getattr(value, "nbytes", 0))


def child(argv: list[str]) -> dict:
    """``NAME SHAPE DTYPE KIND VARIANT`` -> the record ``measure`` returns."""
    from .device import open_device

    name, shape, dtype, kind, variant = argv
    shape = tuple(int(d) for d in shape.split("x"))
    dev = open_device(kind)
    probe = _CudaProbe() if dev.kind == "cuda" else _HostProbe()
    op = importlib.import_module(f"benchmarks.{name}")
    arrays = op.inputs(dev, shape, dtype, seed=0)
    (v,) = [v for v in op.variants(dev) if v.name == variant]
    args = v.prepare(arrays)
    v.call(args)  # warm-up: compilation and first-call allocations do not count
    dev.sync()
    gc.collect()
    base = probe.start()
    out = v.call(args)
    dev.sync()
    peak = probe.peak()
    outputs = _nbytes(out)
    return {
        "peak_extra_bytes": peak - base - outputs,
        "output_bytes": outputs,
        "baseline_bytes": base,
        "peak_bytes": peak,
    }


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1:])))
