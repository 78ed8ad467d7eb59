"""Part 3 (seed 000): object localisation with one composite loss and the sum rule.

Each 24x24 image is noise, and about half hold one bright rectangle. A two-layer network
(ReLU hidden layer, written with the array module ``xp``: NumPy or CuPy) outputs 5 numbers per
image: an objectness logit and the box (x_min, y_min, x_max, y_max) / 24. The loss is

    L = BCE_with_logits(column 0)  +  MSE(columns 1..4, rows with an object only)

from ``gk.composite_loss``, each term averaged over its own selection, and its gradient with
respect to the outputs is the sum of the two terms' gradients, each in its own columns (the
sum rule of seed 000). ``sum_rule_gap`` checks that against the terms computed separately with
``gk.bce_with_logits`` and ``gk.mse``. The maths is in README.md (the localisation walk-through).
"""

from __future__ import annotations

import time
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

SIZE = 24
TERMS = (
    gk.LossTerm("bce_with_logits", columns=slice(0, 1)),
    gk.LossTerm("mse", columns=slice(1, 5), only_where=0),  # box loss only where an object is
)
FULL = {"n_train": 30000, "n_test": 2000, "hidden": 256, "epochs": 30}
FAST = {"n_train": 6000, "n_test": 1000, "hidden": 128, "epochs": 15}
BATCH, LEARNING_RATE, MOMENTUM = 64, 0.05, 0.9
REPORT_EVERY = 20  # batches between progress updates (each reads the loss off the device)


def make_images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` flattened noisy images ``(n, 576)`` and targets ``(n, 5)``, float32.

    Target row: [1, box] for an image with a rectangle (sides 4 to 12 pixels, box in units of
    the image side), [0, 0, 0, 0, 0] for noise alone.
    """
    images = rng.normal(0.0, 0.25, size=(n, SIZE, SIZE))
    target = np.zeros((n, 5))
    for i in np.flatnonzero(rng.random(n) < 0.5):
        w, h = rng.integers(4, 13, size=2)
        x0, y0 = rng.integers(0, SIZE - w + 1), rng.integers(0, SIZE - h + 1)
        images[i, y0 : y0 + h, x0 : x0 + w] += rng.uniform(0.7, 1.2)
        target[i] = [1.0, x0 / SIZE, y0 / SIZE, (x0 + w) / SIZE, (y0 + h) / SIZE]
    return images.reshape(n, -1).astype(np.float32), target.astype(np.float32)


def init_params(rng: np.random.Generator, hidden: int, mean_box: np.ndarray, xp: Any) -> dict:
    """He-initialised weights; the box outputs start at the mean training box."""
    b2 = np.concatenate([[0.0], mean_box])
    params = {
        "w1": rng.normal(0.0, np.sqrt(2.0 / SIZE**2), size=(SIZE**2, hidden)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0.0, 0.01, size=(hidden, 5)),
        "b2": b2,
    }
    return {k: xp.asarray(v, dtype=np.float32) for k, v in params.items()}


def forward(params: dict, x: Any, xp: Any) -> tuple[Any, Any]:
    """Hidden activations ``(n, hidden)`` and outputs ``(n, 5)``."""
    hidden = xp.maximum(x @ params["w1"] + params["b1"], 0.0)
    return hidden, hidden @ params["w2"] + params["b2"]


def backward(params: dict, x: Any, hidden: Any, grad_out: Any) -> dict:
    """Parameter gradients from dL/d(outputs); bias gradients are ``gk.batch_sum(axis=0)``."""
    grad_hidden = (grad_out @ params["w2"].T) * (hidden > 0)
    return {
        "w2": hidden.T @ grad_out,
        "b2": gk.batch_sum(grad_out, axis=0),
        "w1": x.T @ grad_hidden,
        "b1": gk.batch_sum(grad_hidden, axis=0),
    }


def train(params: dict, x: Any, target: Any, epochs: int, seed: int, xp: Any) -> list[float]:
    """Mini-batch SGD with momentum; returns the mean training loss of each epoch."""
    velocity = {k: xp.zeros_like(v) for k, v in params.items()}
    order_rng = np.random.default_rng(seed + 1)
    batches = -(-x.shape[0] // BATCH)
    losses = []
    with progress(epochs * batches, "localize batch") as advance:
        for _ in range(epochs):
            order = xp.asarray(order_rng.permutation(x.shape[0]))
            total = 0.0
            for k in range(batches):
                rows = order[k * BATCH : (k + 1) * BATCH]
                hidden, out = forward(params, x[rows], xp)
                loss, grad_out = gk.composite_loss(out, target[rows], TERMS)
                for name, grad in backward(params, x[rows], hidden, grad_out).items():
                    velocity[name] *= MOMENTUM
                    velocity[name] -= LEARNING_RATE * grad
                    params[name] += velocity[name]
                total = total + loss  # stays on the device until the epoch ends
                if k % REPORT_EVERY == REPORT_EVERY - 1 or k == batches - 1:
                    advance(float(total) / (k + 1), steps=k % REPORT_EVERY + 1)
            losses.append(float(total) / batches)
    return losses


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise intersection over union of boxes (x_min, y_min, x_max, y_max)."""
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = width * height

    def area(c: np.ndarray) -> np.ndarray:
        return np.clip(c[:, 2] - c[:, 0], 0, None) * np.clip(c[:, 3] - c[:, 1], 0, None)

    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def evaluate(out: np.ndarray, target: np.ndarray, mean_box: np.ndarray) -> dict[str, float]:
    """Objectness accuracy and mean IoU on images with an object, with trivial baselines.

    The baselines: always answering the majority class, and always predicting the mean box.
    """
    present = target[:, 0] > 0.5
    share = present.mean()
    return {
        "accuracy": float(((out[:, 0] > 0) == present).mean()),
        "mean_iou": float(box_iou(out[present, 1:], target[present, 1:]).mean()),
        "majority_rate": float(max(share, 1.0 - share)),
        "baseline_iou": float(
            box_iou(np.tile(mean_box, (present.sum(), 1)), target[present, 1:]).mean()
        ),
    }


def separate_terms(pred: Any, target: Any, xp: Any) -> tuple[Any, Any]:
    """The loss and output gradient with each term computed on its own, then added.

    BCE with logits on column 0, averaged over all N rows; MSE on columns 1..4 of the rows
    with an object, averaged over their N_obj * 4 elements; each gradient lands in its columns.
    """
    grad = xp.zeros_like(pred)
    bce_loss, grad[:, 0:1] = gk.bce_with_logits(pred[:, 0:1], target[:, 0:1], reduction="mean")
    present = xp.flatnonzero(target[:, 0] != 0)
    box_loss, grad[present, 1:5] = gk.mse(pred[present, 1:5], target[present, 1:5])
    return bce_loss + box_loss, grad


def sum_rule_gap(pred: Any, target: Any, xp: Any) -> dict[str, float]:
    """Largest differences between ``gk.composite_loss`` and ``separate_terms``.

    Returns ``grad`` and ``loss`` (absolute differences) and ``grad_scale`` (max |gradient|).
    """
    loss, grad = gk.composite_loss(pred, target, TERMS)
    loss_sep, grad_sep = separate_terms(pred, target, xp)
    return {
        "grad": float(xp.abs(grad - grad_sep).max()),
        "loss": float(abs(loss - loss_sep)),
        "grad_scale": float(xp.abs(grad_sep).max()),
    }


def _draw_box(ax: Any, box: np.ndarray, color: str) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box * SIZE - 0.5  # pixel i covers [i - 0.5, i + 0.5] in imshow
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, lw=1.5))


def _plot(losses: list[float], images: np.ndarray, out: np.ndarray, target: np.ndarray, out_dir):
    fig = new_figure(12, 5)
    panels = fig.subplot_mosaic([["loss", "loss", "0", "1", "2", "3"], ["loss", "loss", *"4567"]])
    panels["loss"].semilogy(np.arange(1, len(losses) + 1), losses, "o-", ms=3)
    panels["loss"].set(xlabel="epoch", ylabel="BCE + masked MSE", title="Training loss")
    for k in range(8):
        ax = panels[str(k)]
        ax.imshow(images[k].reshape(SIZE, SIZE), cmap="gray")
        ax.set(xticks=[], yticks=[])
        if target[k, 0] > 0.5:
            _draw_box(ax, target[k, 1:], "tab:green")
        p = 1.0 / (1.0 + np.exp(-out[k, 0]))
        if out[k, 0] > 0:
            _draw_box(ax, out[k, 1:], "tab:red")
        ax.set_title(f"p(object) {p:.2f}", fontsize="small")
    fig.suptitle("Held-out images: true box green, predicted box red (where p > 1/2)")
    return save_figure(fig, out_dir, "localize.png")


def run(out_dir: Path | str, *, fast: bool = False, seed: int = 0) -> dict[str, Any]:
    """Train the localiser, check the sum rule, print results and write ``localize.png``.

    Returns the ``evaluate`` figures, ``sum_rule`` (``sum_rule_gap``), ``losses``,
    ``seconds`` (training time), ``ok`` and ``figure``. ``ok``: accuracy > 95% and mean IoU >
    0.5, or with ``fast`` accuracy 0.3 above the majority rate and IoU 0.2 above the mean box's.
    """
    heading("localize: objectness + box from one composite loss")
    xp = array_module()
    cfg = FAST if fast else FULL
    rng = np.random.default_rng(seed)
    x_host, t_host = make_images(rng, cfg["n_train"] + cfg["n_test"])
    n = cfg["n_train"]
    mean_box = t_host[:n][t_host[:n, 0] > 0.5, 1:].mean(axis=0)
    x, target = xp.asarray(x_host[:n]), xp.asarray(t_host[:n])
    say(f"{n} training and {cfg['n_test']} held-out {SIZE}x{SIZE} images, about half with a box")
    say(f"network {SIZE**2} -> {cfg['hidden']} (ReLU) -> 5, array module {xp.__name__}")
    params = init_params(rng, cfg["hidden"], mean_box, xp)

    gap = sum_rule_gap(forward(params, x[:BATCH], xp)[1], target[:BATCH], xp)
    say(
        f"sum rule: |composite grad - (BCE grad + masked MSE grad)| max {gap['grad']:.3g} "
        f"(gradients up to {gap['grad_scale']:.3g}), loss difference {gap['loss']:.3g}"
    )
    start = time.perf_counter()
    losses = train(params, x, target, cfg["epochs"], seed, xp)
    seconds = time.perf_counter() - start

    out = to_host(forward(params, xp.asarray(x_host[n:]), xp)[1])
    found = evaluate(out, t_host[n:], mean_box)
    figure = _plot(losses, x_host[n:], out, t_host[n:], out_dir)
    table(
        "localize: held-out results",
        [
            ("objectness accuracy", f"{found['accuracy']:.1%}"),
            ("  majority-class baseline", f"{found['majority_rate']:.1%}"),
            ("mean IoU (images with a box)", f"{found['mean_iou']:.3f}"),
            ("  always-the-mean-box baseline", f"{found['baseline_iou']:.3f}"),
            ("training loss first -> last epoch", f"{losses[0]:.4f} -> {losses[-1]:.4f}"),
            ("training time", f"{seconds:.1f} s ({cfg['epochs']} epochs)"),
            ("sum rule: max gradient difference", f"{gap['grad']:.3g}"),
            ("figure", str(figure)),
        ],
    )
    if fast:  # a short run only has to beat the trivial baselines clearly
        ok = found["accuracy"] > found["majority_rate"] + 0.3
        ok = ok and found["mean_iou"] > found["baseline_iou"] + 0.2
    else:
        ok = found["accuracy"] > 0.95 and found["mean_iou"] > 0.5
    return {
        **found,
        "sum_rule": gap,
        "losses": losses,
        "seconds": seconds,
        "ok": ok,
        "figure": figure,
    }
