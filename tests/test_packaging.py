"""What the wheel holds, and what importing the library pulls in.

The wheel must install only ``gpukernels`` and ``cpu_fallback``: ``benchmarks`` is a folder of
the repository (run with ``python -m benchmarks``), and a top-level package of that name would
collide with other projects' folders. The library must not import it either.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.nbi", "*.nbc", "results"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (so no build/ lands in the worktree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    cmd = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*cmd, "--no-index", "-q", "-w", str(tmp / "dist")],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (found,) = (tmp / "dist").glob("gpukernels-*.whl")
    return found


def test_wheel_holds_only_the_library(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"gpukernels", "cpu_fallback"}
    assert "gpukernels/cuda/__init__.py" in names
    assert "gpukernels/demo/__init__.py" in names


def test_wheel_metadata(wheel):
    import gpukernels

    assert wheel.name == f"gpukernels-{gpukernels.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
        assert "gpukernels = gpukernels.cli:main" in zf.read(info).decode()
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    extras = {line.split(":", 1)[1].strip() for line in text.splitlines() if "Extra:" in line}
    wanted = {"cuda", "gpu", "test", "bench", "demo", "torch", "dask", "jax"}
    assert wanted <= extras
    assert extras & {"ml_dtypes", "ml-dtypes"}


def test_library_never_imports_benchmarks():
    code = (
        "import sys, gpukernels, gpukernels.cli; "
        "assert gpukernels.cli.parser() is not None; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks'))"
    )
    # Run from the repository root, where the benchmarks folder is importable.
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_version_flag():
    import gpukernels

    done = subprocess.run(
        [sys.executable, "-m", "gpukernels", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"gpukernels {gpukernels.__version__}"
