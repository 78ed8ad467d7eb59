"""Part 2 (seed 002): one sigmoid neuron trained with the quadratic cost by gradient descent.

The neuron is y_hat = sigmoid(z), z = X w + b, and the cost over N examples is

    C = 1/(2N) sum_i (y_hat_i - y_i)^2.

By the chain rule dC/dw = X^T [dC/dy_hat * y_hat (1 - y_hat)] and dC/db = sum_i of the same
bracket, with dC/dy_hat = (y_hat - y)/N. Each factor comes from the library:
``gk.mse(reduction="batchmean", grad_output=0.5)`` gives 2C as its loss and dC/dy_hat as its
gradient, ``gk.sigmoid_backward`` multiplies by y_hat (1 - y_hat), and ``gk.batch_sum(axis=0)``
sums the bracket over the batch for the bias gradient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import gpukernels as gk

from ._common import (
    array_module,
    heading,
    new_figure,
    progress,
    save_figure,
    say,
    table,
    to_host,
)

LEARNING_RATE = 5.0
MARGIN = 0.3  # half-width of the empty band around the true boundary: the classes separate


def make_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points in the plane, labelled by a random line, none within ``MARGIN`` of it.

    Returns ``x`` ``(n, 2)`` and ``y`` ``(n, 1)`` (0. or 1.), float32.
    """
    angle = rng.uniform(0.0, 2.0 * np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])
    offset = rng.uniform(-0.5, 0.5)
    x = rng.uniform(-3.0, 3.0, size=(4 * n, 2))
    side = x @ normal + offset
    x, side = x[np.abs(side) > MARGIN][:n], side[np.abs(side) > MARGIN][:n]
    return x.astype(np.float32), (side > 0).astype(np.float32)[:, None]


def train(x: Any, y: Any, steps: int, xp: Any) -> tuple[Any, Any, list[float]]:
    """Full-batch gradient descent from w = 0, b = 0; returns ``w`` (2, 1), ``b`` (1,), costs."""
    w = xp.zeros((x.shape[1], 1), dtype=x.dtype)
    b = xp.zeros((1,), dtype=x.dtype)
    costs = []
    with progress(steps, "neuron step") as advance:
        for _ in range(steps):
            y_hat = gk.sigmoid(x @ w + b)
            # batchmean divides by N: loss = (1/N) sum (y_hat - y)^2 = 2C, grad = dC/dy_hat
            twice_cost, d_y_hat = gk.mse(y_hat, y, reduction="batchmean", grad_output=0.5)
            d_z = gk.sigmoid_backward(d_y_hat, y_hat)  # dC/dz = dC/dy_hat * y_hat (1 - y_hat)
            w -= LEARNING_RATE * (x.T @ d_z)  # dC/dw = sum_i dC/dz_i x_i
            b -= LEARNING_RATE * gk.batch_sum(d_z, axis=0)  # dC/db = sum_i dC/dz_i
            costs.append(0.5 * float(twice_cost))
            advance(costs[-1])
    return w, b, costs


def accuracy(x: Any, y: Any, w: Any, b: Any) -> float:
    """Share of points on the right side of sigmoid(z) = 1/2, i.e. of z = 0."""
    return float(((x @ w + b > 0) == (y > 0.5)).mean())


def _plot(costs: list[float], x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, out_dir):
    fig = new_figure(10, 4)
    left, right = fig.subplots(1, 2)
    left.semilogy(costs)
    left.set(xlabel="step", ylabel="C = 1/(2N) Σ (ŷ - y)²", title="Quadratic cost (train)")
    labels = y[:, 0] > 0.5
    right.scatter(*x[labels].T, s=8, color="tab:blue", label="class 1")
    right.scatter(*x[~labels].T, s=8, color="tab:orange", label="class 0")
    grid = np.linspace(-3.0, 3.0, 2)
    if abs(w[1, 0]) > abs(w[0, 0]):  # the line w.x + b = 0, solved for the steeper coordinate
        right.plot(grid, -(w[0, 0] * grid + b[0]) / w[1, 0], "k-", label="ŷ = 1/2")
    else:
        right.plot(-(w[1, 0] * grid + b[0]) / w[0, 0], grid, "k-", label="ŷ = 1/2")
    right.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", title="Held-out points, learnt boundary")
    right.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    return save_figure(fig, out_dir, "neuron.png")


def run(out_dir: Path | str, *, fast: bool = False, seed: int = 0) -> dict[str, Any]:
    """Train, print the cost falling and the held-out accuracy, write ``neuron.png``.

    Returns ``costs``, ``train_accuracy``, ``accuracy`` (held-out), ``ok`` and ``figure``.
    """
    heading("neuron: one sigmoid neuron, quadratic cost, gradient descent")
    xp = array_module()
    n_train, n_test, steps = (200, 200, 150) if fast else (1000, 1000, 500)
    x_all, y_all = make_data(np.random.default_rng(seed), n_train + n_test)
    x, y = xp.asarray(x_all[:n_train]), xp.asarray(y_all[:n_train])
    x_test, y_test = xp.asarray(x_all[n_train:]), xp.asarray(y_all[n_train:])
    say(f"{n_train} training and {n_test} held-out points, two classes split by a line")
    w, b, costs = train(x, y, steps, xp)
    for k in sorted({0, steps // 10, steps // 4, steps // 2, steps - 1}):
        say(f"  step {k + 1:4d}: cost {costs[k]:.6f}")
    train_acc, test_acc = accuracy(x, y, w, b), accuracy(x_test, y_test, w, b)
    figure = _plot(costs, x_all[n_train:], y_all[n_train:], to_host(w), to_host(b), out_dir)
    table(
        "neuron: result",
        [
            ("steps, learning rate", f"{steps}, {LEARNING_RATE:g}"),
            ("cost first -> last", f"{costs[0]:.4f} -> {costs[-1]:.4f}"),
            ("train accuracy", f"{train_acc:.1%}"),
            ("held-out accuracy", f"{test_acc:.1%}"),
            ("w, b", ", ".join(f"{v:.3f}" for v in [*to_host(w)[:, 0], *to_host(b)])),
            ("figure", str(figure)),
        ],
    )
    return {
        "costs": costs,
        "train_accuracy": train_acc,
        "accuracy": test_acc,
        "ok": test_acc >= 0.95,
        "figure": figure,
    }
