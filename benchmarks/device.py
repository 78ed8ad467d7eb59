"""The arrays, clocks and memory copy of one backend: ``cpu`` (NumPy) or ``cuda`` (CuPy).

Every op module and the harness reach the hardware only through a ``Device``, so the CPU and
GPU runs share all other code. GPU times come from CUDA events recorded on CuPy's current
stream (the stream gpukernels, CuPy and PyTorch's default stream all run on); CPU times from
``time.perf_counter``.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_CPU_CACHE = 32 << 20


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_cache_bytes() -> int:
    """The last-level cache of CPU 0 from sysfs (32 MiB when it cannot be read)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    sizes = []
    for index in base.glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        match = re.fullmatch(r"(\d+)([KMG]?)", text)
        if match:
            scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2)]
            sizes.append(int(match.group(1)) * scale)
    return max(sizes, default=DEFAULT_CPU_CACHE)


def slug(text: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``: a file-name-safe name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


class Device:
    """NumPy on the host: arrays, a per-call clock, ``np.copyto`` on every core as the ceiling."""

    kind = "cpu"

    def __init__(self) -> None:
        self.xp = np
        self.threads = os.cpu_count() or 1
        self.name = f"{_cpu_name()} ({self.threads} cores)"
        self.cache_bytes = _cpu_cache_bytes()
        self._pool = None

    @property
    def library(self) -> str:
        """The array library's name, which is also the name of its expression baseline."""
        return self.xp.__name__

    def details(self) -> dict:
        """What the results file records about the machine."""
        return {
            "kind": self.kind,
            "name": self.name,
            "threads": self.threads,
            "cache_bytes": self.cache_bytes,
            "machine": platform.machine(),
        }

    # Random inputs. Never zeros: they hide unwritten outputs and can run faster.
    def normal(self, shape, dtype, seed: int):
        """Standard normal values, drawn in float32/float64 and rounded to ``dtype``."""
        rng = np.random.default_rng(seed)
        draw = np.float64 if np.dtype(dtype) == np.float64 else np.float32
        return rng.standard_normal(shape, dtype=draw).astype(dtype, copy=False)

    def uniform(self, shape, dtype, seed: int):
        """Uniform values in [0, 1)."""
        rng = np.random.default_rng(seed)
        draw = np.float64 if np.dtype(dtype) == np.float64 else np.float32
        return rng.random(shape, dtype=draw).astype(dtype, copy=False)

    def labels(self, n: int, classes: int, seed: int):
        """``n`` int64 class indices in ``[0, classes)``."""
        return np.random.default_rng(seed).integers(0, classes, n, dtype=np.int64)

    # Clocks.
    def sync(self) -> None:
        """Wait for queued work (nothing is queued on the host)."""

    def time_calls(
        self, fn: Callable[[int], object], reps: int, n_sets: int, first: int = 0
    ) -> list[float]:
        """Seconds of each of ``reps`` calls ``fn(i % n_sets)``, ``i`` from ``first``, one
        sample per call."""
        samples = []
        for i in range(first, first + reps):
            start = time.perf_counter()
            fn(i % n_sets)
            samples.append(time.perf_counter() - start)
        return samples

    def time_host(
        self, fn: Callable[[int], object], reps: int, n_sets: int, batch: int, first: int = 0
    ) -> list[float]:
        """Host seconds per call over batches of ``batch`` calls, synchronised per batch.

        This is the time a Python caller waits per call: argument checks, allocation and the
        launch, not only the work on the device.
        """
        samples = []
        for r in range(reps):
            start = time.perf_counter()
            for i in range(batch):
                fn((first + r * batch + i) % n_sets)
            self.sync()
            samples.append((time.perf_counter() - start) / batch)
        return samples

    # The copy ceiling.
    def copier(self, nbytes: int, seed: int) -> tuple[Callable[[], None], int]:
        """A copy that moves ``nbytes`` (half read, half written) and the bytes it moves.

        ``np.copyto`` on one slice per core, run by a thread pool (NumPy lets go of the GIL
        while it copies): the kernels use every core, so the ceiling must too.
        """
        half = max(4, nbytes // 8 * 4)
        src = self.normal((half // 4,), np.float32, seed).view(np.uint8)
        dst = self.normal((half // 4,), np.float32, seed + 1).view(np.uint8)
        cuts = [half * k // self.threads // 64 * 64 for k in range(self.threads)] + [half]
        pieces = [(dst[a:b], src[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
        if len(pieces) == 1 or half < 1 << 20:
            return (lambda: np.copyto(dst, src)), 2 * half
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bench-copy")
        pool = self._pool

        def copy() -> None:
            for future in [pool.submit(np.copyto, d, s) for d, s in pieces]:
                future.result()

        return copy, 2 * half

    def release(self) -> None:
        """Return cached memory between cases (nothing to do on the host)."""


class CudaDevice(Device):
    """CuPy on the current GPU: CUDA events, a device-to-device ``cudaMemcpyAsync`` copy."""

    kind = "cuda"

    def __init__(self) -> None:
        import cupy

        self.cupy = cupy
        self.xp = cupy
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.cache_bytes = int(props.get("l2CacheSize", 50 << 20))
        self.memory_bytes = int(props.get("totalGlobalMem", 0))
        self.capability = f"{props.get('major', '?')}.{props.get('minor', '?')}"
        self.threads = int(props.get("multiProcessorCount", 0))

    def details(self) -> dict:
        """Device name, memory, L2 size, compute capability, driver and runtime versions."""
        runtime = self.cupy.cuda.runtime
        return {
            "kind": self.kind,
            "name": self.name,
            "multiprocessors": self.threads,
            "cache_bytes": self.cache_bytes,
            "memory_bytes": self.memory_bytes,
            "compute_capability": self.capability,
            "driver": _nvidia_smi_driver() or str(runtime.driverGetVersion()),
            "cuda_runtime": runtime.runtimeGetVersion(),
        }

    def normal(self, shape, dtype, seed: int):
        """Standard normal values drawn on the device (float32/float64, then ``dtype``)."""
        rs = self.cupy.random.RandomState(seed)
        draw = np.float64 if np.dtype(dtype) == np.float64 else np.float32
        return rs.standard_normal(shape, dtype=draw).astype(dtype, copy=False)

    def uniform(self, shape, dtype, seed: int):
        """Uniform values in [0, 1) drawn on the device."""
        rs = self.cupy.random.RandomState(seed)
        draw = np.float64 if np.dtype(dtype) == np.float64 else np.float32
        return rs.random_sample(shape, dtype=draw).astype(dtype, copy=False)

    def labels(self, n: int, classes: int, seed: int):
        """``n`` int64 class indices in ``[0, classes)`` on the device."""
        rs = self.cupy.random.RandomState(seed)
        return rs.randint(0, classes, size=n, dtype=np.int64)

    def sync(self) -> None:
        """Wait for the current device's queued work."""
        self.cupy.cuda.Device().synchronize()

    def time_calls(
        self, fn: Callable[[int], object], reps: int, n_sets: int, first: int = 0
    ) -> list[float]:
        """Seconds of each call between two CUDA events (``fn((first + i) % n_sets)``); one
        synchronisation at the end."""
        event = self.cupy.cuda.Event
        marks = [(event(), event()) for _ in range(reps)]
        for i, (start, end) in enumerate(marks):
            start.record()
            fn((first + i) % n_sets)
            end.record()
        marks[-1][1].synchronize()
        elapsed = self.cupy.cuda.get_elapsed_time
        return [elapsed(start, end) * 1e-3 for start, end in marks]

    def copier(self, nbytes: int, seed: int) -> tuple[Callable[[], None], int]:
        """A device-to-device ``cudaMemcpyAsync`` on the current stream, ``nbytes`` moved."""
        half = max(4, nbytes // 8 * 4)
        src = self.normal((half // 4,), np.float32, seed).view(np.uint8)
        dst = self.normal((half // 4,), np.float32, seed + 1).view(np.uint8)

        def copy() -> None:
            dst.data.copy_from_device_async(src.data, half)

        return copy, 2 * half

    def release(self) -> None:
        """Give cached blocks of CuPy's pool (and PyTorch's, if loaded) back to the driver."""
        import gc
        import sys

        gc.collect()
        self.cupy.get_default_memory_pool().free_all_blocks()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def _nvidia_smi_driver() -> str | None:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def cuda_usable() -> tuple[bool, str]:
    """Whether the GPU benchmark can run here, and why not when it cannot."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        return False, "NUMBA_ENABLE_CUDASIM=1 (the simulator) is set"
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed"
    try:
        if not cupy.cuda.is_available():
            return False, "CuPy sees no GPU"
    except Exception as exc:  # CUDA runtime errors of any kind mean the same here
        return False, f"CuPy cannot reach a GPU ({exc})"
    import gpukernels as gk

    if not gk.cuda_available():
        return False, "Numba's CUDA target sees no GPU"
    return True, ""


def open_device(kind: str) -> Device:
    """A ``Device`` for ``cpu`` or ``cuda``; ``auto`` picks ``cuda`` when it is usable."""
    if kind == "auto":
        kind = "cuda" if cuda_usable()[0] else "cpu"
    if kind == "cuda":
        ok, why = cuda_usable()
        if not ok:
            raise RuntimeError(f"--backend cuda: {why}")
        return CudaDevice()
    return Device()
