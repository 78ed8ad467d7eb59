"""The ``gpukernels`` command: ``info``, ``demo`` and ``--version``.

``gpukernels info`` prints versions and what hardware the library sees; ``gpukernels demo``
hands its arguments to ``gpukernels.demo.main``; ``gpukernels --version`` prints the
library's version. Each subcommand imports what it needs only when it runs. The benchmarks
are not part of the installed library: they are a folder of the repository, run from its
root with ``python -m benchmarks`` (``make bench``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys

from gpukernels import __version__

PACKAGES = (
    "gpukernels",
    "numpy",
    "numba",
    "tbb",
    "numba-cuda",
    "cupy-cuda13x",
    "cupy-cuda12x",
    "cupy",
    "torch",
    "triton",
    "liger-kernel",
    "jax",
    "jaxlib",
    "dask",
    "distributed",
    "ml_dtypes",
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
    import numba
    import numpy as np

    import gpukernels as gk

    facts = dict(versions())
    facts["GPUKERNELS_BACKEND"] = os.environ.get("GPUKERNELS_BACKEND", "auto")
    try:
        facts["NumPy arrays run on"] = gk.backend(np.zeros(0))
    except (TypeError, ValueError) as error:  # a setting the library refuses
        facts["NumPy arrays run on"] = f"nothing: {error}"
    facts["NUMBA_ENABLE_CUDASIM"] = os.environ.get("NUMBA_ENABLE_CUDASIM", "0")
    facts["cpu threads"] = f"{numba.get_num_threads()} of {os.cpu_count()} cores"
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
        facts["device"] = "none"
    return facts


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
        prog="gpukernels", description="Information about gpukernels and its demos."
    )
    top.add_argument("--version", action="version", version=f"gpukernels {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
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
