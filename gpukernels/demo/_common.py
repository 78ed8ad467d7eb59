"""What the demo parts share: the array module, console output and figure files.

Console output goes through rich when it imports (a progress bar with the current loss, boxed
tables) and through plain ``print`` otherwise. Figures are drawn on a bare
``matplotlib.figure.Figure`` (no pyplot, so no GUI backend is ever touched).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import gpukernels as gk

try:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
except ImportError:  # rich is optional: the `demo` extra brings it
    Console = None


def array_module() -> ModuleType:
    """CuPy where the library would run CuPy arrays on a GPU, NumPy otherwise.

    Each part calls this once and writes the rest of its code against the returned ``xp``, so
    the CPU and GPU runs share one code path. ``GPUKERNELS_BACKEND=cpu`` forces NumPy.
    """
    if os.environ.get("GPUKERNELS_BACKEND", "auto").strip().lower() == "cpu":
        return np
    try:
        import cupy
    except ImportError:
        return np
    return cupy if gk.cuda_available() and cupy.cuda.is_available() else np


def to_host(a: Any) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array (CuPy's ``get`` waits for the device)."""
    get = getattr(a, "get", None)
    return get() if callable(get) else np.asarray(a)


def _console() -> Any:
    # A fresh Console per call follows sys.stdout as it is now (pytest swaps it per test).
    return Console(highlight=False) if Console is not None else None


def say(text: str = "") -> None:
    """Print one line of the demo's narrative."""
    console = _console()
    if console is None:
        print(text)
    else:
        console.print(text, markup=False)


def heading(text: str) -> None:
    """Print a part's title."""
    console = _console()
    if console is None:
        print(f"\n== {text} ==")
    else:
        console.rule(f"[bold]{text}")


def table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """Print a two-column table of results."""
    console = _console()
    if console is None:
        width = max(len(name) for name, _ in rows)
        print(title)
        for name, value in rows:
            print(f"  {name:<{width}}  {value}")
        return
    tab = Table(title=title, title_justify="left", show_header=False)
    tab.add_column(style="bold")
    tab.add_column(justify="right")
    for name, value in rows:
        tab.add_row(name, value)
    console.print(tab)


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator[Callable[..., None]]:
    """Yield ``advance(loss, steps=1)``: ``steps`` more steps done, ``loss`` the current loss.

    A rich progress bar showing the loss when rich imports; otherwise about ten plain lines.
    """
    console = _console()
    if console is None:
        done = 0

        every = max(1, total // 10)

        def advance(loss: float, steps: int = 1) -> None:
            nonlocal done
            before, done = done, done + steps
            if done == total or done // every > before // every:
                print(f"  {label} {done}/{total}  loss {loss:.5f}")

        yield advance
        return
    columns = (
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.5f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=total, loss=float("nan"))
        yield lambda loss, steps=1: bar.update(task, advance=steps, loss=loss)


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure that needs no display."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Any, out_dir: Path | str, name: str) -> Path:
    """Write ``fig`` to ``out_dir/name`` as a PNG and return the path."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
