"""Where Numba caches the compiled CPU kernels, decided once before any kernel is declared.

Numba writes a kernel's machine code next to its source (``__pycache__``), else under the
user's cache folder, else nowhere: with ``cache=CACHE`` and no writable place it fails at
import with "cannot cache function ... no locator available" (a read-only install with an
unwritable ``HOME``). Then this module points Numba at a folder of the system's temporary
directory, or, if even that cannot be written, compiles without caching; either way it warns
once. ``NUMBA_CACHE_DIR`` set by the user is honoured first, as Numba does; where Numba
passes over it (not writable) without a word, this module warns. The fallback
folder is used only if it belongs to this user and no one else may write to it (cached
kernels are loaded as code). It is set as Numba's process-wide cache folder, so other
Numba code of the process caches there too.

The kernels are declared with this module's :func:`njit`, whose cache files are safe for
processes that compile at once (see :class:`KeyedCacheFile`).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import warnings

import numba
from numba.core import config
from numba.core.caching import FunctionCache, IndexDataCacheFile


def _probe() -> None:
    """A function of this package's folder: Numba locates every kernel's cache like its."""


def _cache_path() -> str | None:
    """The folder Numba would cache this package's kernels in, or None where it has none."""
    try:
        return FunctionCache(_probe)._cache_path
    except RuntimeError:
        return None


def _private_folder(path: str) -> bool:
    """Create ``path`` for this user alone, or accept it if it exists, is this user's and
    nobody else may write to it: cached kernels are loaded as code, so a folder another user
    could write to (a predictable name in a shared temporary directory) must not be used."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return False
    mine = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return stat.S_ISDIR(info.st_mode) and mine and not info.st_mode & 0o022


def _decide() -> bool:
    chosen = config.CACHE_DIR  # the user's NUMBA_CACHE_DIR, or ""
    choose = "" if chosen else " (set NUMBA_CACHE_DIR to choose)"
    path = _cache_path()
    if path is not None:
        if chosen and not os.path.abspath(path).startswith(os.path.abspath(chosen)):
            _warn(f"NUMBA_CACHE_DIR={chosen} is not writable, so Numba caches in {path}")
        return True
    folders = f"NUMBA_CACHE_DIR={chosen}, the package" if chosen else "the package"
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    fallback = os.path.join(tempfile.gettempdir(), f"gpukernels-numba-cache-{uid}")
    if _private_folder(fallback):
        config.CACHE_DIR = fallback
        if _cache_path() is not None:
            _warn(
                f"{folders} and the user cache folders are not writable, so Numba caches "
                f"the compiled kernels in {fallback}{choose}"
            )
            return True
    config.CACHE_DIR = ""
    _warn(
        f"no writable folder for Numba's cache ({folders} folder, the user cache folder, "
        f"{fallback}){choose}: kernels are compiled at first use in every process"
    )
    return False


def _warn(message: str) -> None:
    warnings.warn(f"gpukernels: {message}", RuntimeWarning, stacklevel=3)


CACHE: bool = _decide()


class KeyedCacheFile(IndexDataCacheFile):
    """Numba's index and data files of one function, with each overload's data file named
    after its key (signature and CPU) and written before the index that points to it.

    Numba numbers the data files in the order it saves them, after reading the index. Two
    processes compiling different signatures at once (``make test``'s workers, a
    distributed job's ranks, on a cold cache) can then both take number 1, and the index one
    writes can name the data file the other wrote: a later process loads one signature's
    machine code for another. Here a name belongs to one key, so it holds that key's code
    whoever wrote it last; a lost index entry only costs a compilation. The price: a data
    file of an edited function's old key is never reused (Numba overwrites its numbers), so
    the cache folder keeps it until it is cleared; an installed package is not edited.
    """

    def save(self, key, data):
        number = int(hashlib.sha256(repr(key).encode()).hexdigest()[:15], 16)
        name = self._data_name(number)
        self._save_data(name, data)
        overloads = self._load_index()
        if overloads.get(key) != name:
            overloads[key] = name
            self._save_index(overloads)


def _options_tag(options: dict) -> str:
    """A short name of the compile options: Numba keys its cache by source file and
    signature only, so code compiled with other options (an ``error_model`` changed in this
    module, say, its callers' files untouched) gets files of its own rather than old code."""
    canonical = sorted(
        (k, sorted(v) if isinstance(v, set | frozenset) else v) for k, v in options.items()
    )
    return hashlib.sha256(repr(canonical).encode()).hexdigest()[:8]


# What KeyedCacheFile uses of Numba's (private) cache file: without it, Numba's own is kept
_NUMBA_PARTS = ("_cache_path", "_index_name", "_source_stamp", "_data_name", "_load_index")


def njit(fn=None, **options):
    """``numba.njit``, with the cache files of :class:`KeyedCacheFile` when caching, and
    NumPy's error model unless told otherwise: a float division by zero gives inf or NaN, as
    in a ``parallel=True`` loop and on CUDA, not Python's ``ZeroDivisionError`` (which a
    serial kernel would raise where its parallel twin returns NaN)."""
    if fn is None:
        return lambda f: njit(f, **options)
    options.setdefault("error_model", "numpy")
    dispatcher = numba.njit(fn, **options)
    cache = getattr(dispatcher, "_cache", None)
    old = getattr(cache, "_cache_file", None)
    if isinstance(cache, FunctionCache) and all(hasattr(old, a) for a in _NUMBA_PARTS):
        base = f"{old._index_name[: -len('.nbi')]}-{_options_tag(options)}"
        cache._cache_file = KeyedCacheFile(old._cache_path, base, old._source_stamp)
    return dispatcher
