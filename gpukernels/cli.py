"""The ``gpukernels`` command: ``bench``, ``info`` and ``demo``.

``gpukernels bench`` runs the benchmark suite of the source checkout (the ``benchmarks``
package, installed beside ``gpukernels`` by ``pip install -e .``); ``gpukernels info``
prints versions and what hardware the library sees; ``gpukernels demo`` hands its arguments
to ``gpukernels.demo.main``. Each subcommand imports what it needs only when it runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys

PACKAGES = (
    "gpukernels",
    "numpy",
    "numba",
    "numba-cuda",
    "cupy-cuda13x",
    "cupy-cuda12x",
    "cupy",
    "torch",
    "triton",
    "liger-kernel",
    "rich",
    "matplotlib",
)


def versions() -> dict[str, str]:
    """Python's version and that of each installed package the library or its benchmarks use."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            module = sys.modules.get(name.replace("-", "_"))
            if module is not None and hasattr(module, "__version__"):
                found[name] = str(module.__version__)
    return found


def info() -> dict[str, str]:
    """Versions, the backend NumPy arrays would use, and the GPU if there is one."""
    import gpukernels as gk

    facts = dict(versions())
    facts["GPUKERNELS_BACKEND"] = os.environ.get("GPUKERNELS_BACKEND", "auto")
    facts["NUMBA_ENABLE_CUDASIM"] = os.environ.get("NUMBA_ENABLE_CUDASIM", "0")
    facts["cpu threads"] = str(os.cpu_count())
    available = gk.cuda_available()
    facts["cuda available"] = str(available)
    if available:
        from numba import cuda

        device = cuda.get_current_device()
        name = device.name
        facts["device"] = name.decode() if isinstance(name, bytes) else str(name)
        facts["compute capability"] = ".".join(map(str, device.compute_capability))
        try:
            facts["driver"] = ".".join(map(str, cuda.cudadrv.driver.driver.get_version()))
        except Exception:  # the driver query's location differs between numba-cuda versions
            pass
    else:
        facts["device"] = "none (the cpu_fallback kernels run NumPy arrays)"
    return facts


def _bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.runner import run
    except ImportError as exc:
        print(
            f"gpukernels bench needs the repository's benchmarks package ({exc}): run it from "
            "the repository root, or install the checkout with pip install -e .",
            file=sys.stderr,
        )
        return 2
    return run(args)


def _info(args: argparse.Namespace) -> int:
    facts = info()
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key.ljust(width)}  {value}")
    return 0


def _demo(argv: list[str]) -> int:
    from gpukernels.demo import main as demo_main

    return demo_main(argv) or 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    top = argparse.ArgumentParser(
        prog="gpukernels", description="Benchmarks, information and demos of gpukernels."
    )
    sub = top.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time the kernels against NumPy/CuPy and PyTorch")
    bench.add_argument(
        "--ops", help="comma list of softmax_xent,bce,mse,sigmoid,reduce,overhead (default: all)"
    )
    bench.add_argument(
        "--sizes",
        help="comma list of tiers small,medium,large (default: all) or "
        "explicit sizes: 4096x1024 (rows x classes), 2^24, 16M, 1048576",
    )
    bench.add_argument(
        "--dtypes",
        help="comma list of float32,float16,float64 "
        "(default: float32 on the CPU, float32,float16 on the GPU)",
    )
    bench.add_argument("--quick", action="store_true", help="shorter timing: about a minute")
    bench.add_argument(
        "--backend",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="cuda needs a GPU and CuPy; auto picks it when present",
    )
    bench.add_argument("--out", help="folder for the JSON and PNG (default: benchmarks/results)")
    bench.set_defaults(handler=_bench)
    sub.add_parser("info", help="versions, backend and GPU").set_defaults(handler=_info)
    # Listed for --help; main() hands everything after "demo" to the demo's own parser.
    sub.add_parser("demo", help="run the demos (gpukernels demo --help)", add_help=False)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gpukernels`` script and of ``python -m gpukernels``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:
        return _demo(argv[1:])
    args = parser().parse_args(argv)
    return args.handler(args)
