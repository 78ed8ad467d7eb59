"""A read-only install (package folder and HOME not writable, no NUMBA_CACHE_DIR) still
works: the CPU kernels cache in a folder of the temporary directory, or compile uncached,
and the library warns once.

The tests run as root here, where file permissions do not stop writes, so a subprocess
makes every Numba cache folder outside the allowed one unwritable by patching the check
Numba's cache locators run (``_CacheLocator.ensure_cache_path``).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import os, sys, warnings
from numba.core import caching

allowed = sys.argv[1]
original = caching._CacheLocator.ensure_cache_path

def ensure_cache_path(self):
    if not (allowed and self.get_cache_path().startswith(allowed)):
        raise OSError("read-only (simulated)")
    return original(self)

caching._CacheLocator.ensure_cache_path = ensure_cache_path
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import numpy as np
    import gpukernels as gk
    loss, grad = gk.softmax_cross_entropy(np.eye(3, dtype=np.float32), np.arange(3))
    gk.mse(np.ones(4), np.zeros(4))
messages = [str(w.message) for w in caught if "gpukernels" in str(w.message)]
print("LOSS", float(loss))
print("WARNINGS", len(messages))
for m in messages:
    print("WARNING", m)
"""


def _run(allowed: str, tmp: Path, cache_dir: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    env.update(
        GPUKERNELS_BACKEND="cpu", NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=str(ROOT), TMPDIR=str(tmp)
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, allowed],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow
def test_falls_back_to_the_temporary_directory(tmp_path):
    # only the fallback folder is writable (not all of the temporary directory)
    out = _run(str(tmp_path / "gpukernels-numba-cache-"), tmp_path)
    assert "LOSS 0.55144" in out
    assert "WARNINGS 1" in out and "caches the compiled kernels in" in out
    (folder,) = tmp_path.glob("gpukernels-numba-cache-*")
    assert folder.stat().st_mode & 0o777 == 0o700


@pytest.mark.slow
def test_compiles_uncached_when_nothing_is_writable(tmp_path):
    out = _run("", tmp_path)
    assert "LOSS 0.55144" in out
    assert "WARNINGS 1" in out and "compiled at first use" in out


@pytest.mark.slow
def test_refuses_a_fallback_folder_others_may_write(tmp_path):
    """Cached kernels are loaded as code: a world-writable folder of the predictable name
    (planted by another user, say) is not used."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    planted = tmp_path / f"gpukernels-numba-cache-{uid}"
    planted.mkdir()
    planted.chmod(0o777)
    out = _run(str(planted), tmp_path)
    assert "LOSS 0.55144" in out
    assert "compiled at first use" in out and not list(planted.iterdir())


@pytest.mark.slow
def test_says_when_numba_cache_dir_is_not_writable(tmp_path):
    """Numba passes over an unwritable NUMBA_CACHE_DIR without a word and caches elsewhere;
    the library says so, and where."""
    chosen = tmp_path / "chosen"
    out = _run(str(ROOT), tmp_path, cache_dir=str(chosen))
    assert "LOSS 0.55144" in out and "WARNINGS 1" in out
    assert f"NUMBA_CACHE_DIR={chosen} is not writable, so Numba caches in {ROOT}" in out
