"""Part 1 (seed 002): gradient descent on y = x^2 - 4x + 6 from x = 8, learning rate 0.1.

Written as y = (x - 2)^2 + 2, the curve is ``gk.mse(pred=[x], target=[2], reduction="sum")``
plus 2, so the library's gradient 2 (x - 2) is dy/dx = 2x - 4 and each step is
x <- x - 0.1 (2x - 4): 8, 6.8, 5.84, 5.072, ... Since x - 2 shrinks by 0.8 a step, it stops
after 70 steps, the first iterate within 1e-6 of the minimum x = 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import gpukernels as gk

from ._common import array_module, heading, new_figure, save_figure, say, table

X0 = 8.0
LEARNING_RATE = 0.1
MINIMUM = 2.0
TOLERANCE = 1e-6
MAX_STEPS = 1000


def descend(xp: Any) -> tuple[list[float], list[float]]:
    """Iterates x_k and curve values y_k until |x_k - 2| <= 1e-6 (or ``MAX_STEPS``)."""
    x = xp.asarray([X0])
    target = xp.asarray([MINIMUM])
    xs, ys = [], []
    for _ in range(MAX_STEPS + 1):
        loss, grad = gk.mse(x, target, reduction="sum")  # (x - 2)^2 and 2x - 4
        xs.append(float(x[0]))
        ys.append(float(loss) + 2.0)
        if abs(xs[-1] - MINIMUM) <= TOLERANCE:
            break
        x = x - LEARNING_RATE * grad
    return xs, ys


def _plot(xs: list[float], ys: list[float], out_dir: Path | str) -> Path:
    fig = new_figure(10, 4)
    left, right = fig.subplots(1, 2)
    grid = np.linspace(-1.0, 9.0, 200)
    left.plot(grid, grid**2 - 4 * grid + 6, color="0.6", label="y = x² - 4x + 6")
    left.plot(xs, ys, "o-", ms=3, color="tab:red", label="iterates (lr 0.1)")
    left.set(xlabel="x", ylabel="y", title="Gradient descent from x = 8")
    left.legend()
    right.semilogy(np.abs(np.asarray(xs) - MINIMUM), "o-", ms=3)
    right.axhline(TOLERANCE, color="0.5", ls="--", label="tolerance 1e-6")
    right.set(xlabel="step", ylabel="|x - 2|", title="Distance to the minimum")
    right.legend()
    return save_figure(fig, out_dir, "descent.png")


def run(out_dir: Path | str, *, fast: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run the part, print what it finds and write ``descent.png``; ``fast``/``seed`` unused.

    Returns ``x`` (the last iterate), ``steps``, ``iterates``, ``ok`` and ``figure``.
    """
    heading("descent: minimise y = x^2 - 4x + 6 with gradients from gk.mse")
    say("y = (x - 2)^2 + 2: gk.mse([x], [2], reduction='sum') gives (x - 2)^2 and dy/dx = 2x - 4")
    xs, ys = descend(array_module())
    steps = len(xs) - 1
    say("iterates: " + ", ".join(f"{x:.6g}" for x in xs[:8]) + ", ...")
    for k in [*range(10, steps, 10), steps]:
        say(f"  step {k:3d}: x = {xs[k]:.9f}   y = {ys[k]:.12f}")
    ok = abs(xs[-1] - MINIMUM) <= TOLERANCE
    figure = _plot(xs, ys, out_dir)
    table(
        "descent: result",
        [
            ("start, learning rate", f"x = {X0:g}, {LEARNING_RATE:g}"),
            ("steps to |x - 2| <= 1e-6", str(steps)),
            ("final x", f"{xs[-1]:.9f}"),
            ("final y (minimum 2)", f"{ys[-1]:.12f}"),
            ("figure", str(figure)),
        ],
    )
    return {"x": xs[-1], "steps": steps, "iterates": xs, "ok": ok, "figure": figure}
