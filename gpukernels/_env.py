"""The environment settings the library reads, each read in this one place.

``NUMBA_ENABLE_CUDASIM=1`` runs ``@cuda.jit`` kernels on Numba's simulator (Numba reads it when
it is first imported; so do we, once). ``GPUKERNELS_BACKEND`` forces a backend per call;
``GPUKERNELS_CUDA_LAUNCH`` picks how CUDA kernels are launched, per launch.
"""

from __future__ import annotations

import os
from collections.abc import Callable

ENV_BACKEND = "GPUKERNELS_BACKEND"
BACKEND_CHOICES = ("auto", "cpu", "cuda")
ENV_LAUNCH = "GPUKERNELS_CUDA_LAUNCH"
LAUNCH_CHOICES = ("direct", "numba")

SIMULATOR: bool = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def _reader(key: str) -> Callable[[], str | None]:
    """A function that reads ``os.environ[key]`` (``None`` when unset) as it is now.

    ``os.environ.get`` of an unset key costs about 0.9 us (``os._Environ`` raises and catches
    a ``KeyError``), a twentieth of a small call. The reader looks the key up in the dict
    behind ``os.environ`` instead, which every change made through ``os.environ`` updates
    (0.06 us), and falls back to ``os.environ.get`` where CPython's mapping has no such dict.
    """
    data = getattr(os.environ, "_data", None)
    encode = getattr(os.environ, "encodekey", None)
    decode = getattr(os.environ, "decodevalue", None)
    if not isinstance(data, dict) or encode is None or decode is None:
        return lambda: os.environ.get(key)
    encoded = encode(key)

    def read() -> str | None:
        value = data.get(encoded)
        return None if value is None else decode(value)

    return read


_read_backend = _reader(ENV_BACKEND)
_read_launch = _reader(ENV_LAUNCH)


def forced_backend() -> str:
    """``GPUKERNELS_BACKEND`` (``auto``, ``cpu`` or ``cuda``), read at every call."""
    return _pick(ENV_BACKEND, BACKEND_CHOICES, _read_backend())


def cuda_launch() -> str:
    """``GPUKERNELS_CUDA_LAUNCH``, read at every launch: ``direct`` (the default: parameters
    packed by :mod:`gpukernels.cuda._direct`) or ``numba`` (Numba's own launch)."""
    return _pick(ENV_LAUNCH, LAUNCH_CHOICES, _read_launch())


def _pick(key: str, choices: tuple[str, ...], value: str | None) -> str:
    """The setting ``key``'s ``value`` as one of ``choices`` (unset or blank: the first);
    anything else is a ``ValueError``."""
    if value is None:
        return choices[0]
    picked = value.strip().lower() or choices[0]
    if picked not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}; got {picked!r}")
    return picked
