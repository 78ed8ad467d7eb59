"""The environment settings the library reads, each read in this one place.

``NUMBA_ENABLE_CUDASIM=1`` runs ``@cuda.jit`` kernels on Numba's simulator (Numba reads it when
it is first imported; so do we, once). ``GPUKERNELS_BACKEND`` forces a backend per call.
"""

from __future__ import annotations

import os

ENV_BACKEND = "GPUKERNELS_BACKEND"
BACKEND_CHOICES = ("auto", "cpu", "cuda")

SIMULATOR: bool = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def forced_backend() -> str:
    """``GPUKERNELS_BACKEND`` (``auto``, ``cpu`` or ``cuda``), read at every call."""
    choice = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"{ENV_BACKEND} must be one of auto, cpu, cuda; got {choice!r}")
    return choice
