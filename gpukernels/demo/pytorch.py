"""Part 4: a PyTorch classifier in bfloat16, trained with ``gpukernels.torch.CrossEntropyLoss``
and, from the same start, with ``torch.nn.CrossEntropyLoss``.

A two-layer MLP (weights and activations bfloat16) learns which of ``K`` Gaussian clusters a
point comes from. The only change between the two runs is the loss module, the drop-in
replacement a training script would make; the two loss curves should lie on each other, and
the held-out accuracy should be far above chance. Needs PyTorch (``pip install
gpukernels[torch]``); CUDA tensors when PyTorch sees a GPU, CPU tensors otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import heading, new_figure, progress, save_figure, say, table

CLASSES, FEATURES, HIDDEN = 8, 16, 64
LEARNING_RATE = 0.3


def _data(torch, n: int, seed: int, device) -> tuple[Any, Any]:
    gen = torch.Generator().manual_seed(seed)
    centres = 2.5 * torch.randn(CLASSES, FEATURES, generator=gen)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    points = centres[labels] + torch.randn(n, FEATURES, generator=gen)
    return points.to(device, torch.bfloat16), labels.to(device)


def train(torch, loss_fn, x, y, steps: int, seed: int, label: str) -> tuple[Any, list[float]]:
    """SGD on mini-batches of 256 from a fixed start; returns the model and the losses."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN), torch.nn.GELU(), torch.nn.Linear(HIDDEN, CLASSES)
    ).to(x.device, torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    order = torch.Generator().manual_seed(seed + 1)
    losses = []
    with progress(steps, label) as advance:
        for _ in range(steps):
            batch = torch.randint(0, x.shape[0], (256,), generator=order).to(x.device)
            opt.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            losses.append(loss.item())
            advance(losses[-1])
    return model, losses


def run(out_dir: Path | str, *, fast: bool = False, seed: int = 0) -> dict[str, Any]:
    """Train twice, print both loss curves' ends and the accuracies, write ``pytorch.png``.

    Returns ``losses`` and ``reference_losses``, ``accuracy`` (held-out, ours),
    ``reference_accuracy``, ``gap`` (the largest difference of the two curves' running means),
    ``ok`` and ``figure``; without PyTorch, ``ok`` is ``None`` and nothing runs.
    """
    heading("pytorch: a bfloat16 MLP, gpukernels.torch.CrossEntropyLoss as a drop-in")
    try:
        import torch
    except ImportError:
        say("PyTorch is not installed (pip install gpukernels[torch]): part skipped")
        return {"ok": None, "figure": None}
    import gpukernels.torch as gkt

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = 60 if fast else 300
    x, y = _data(torch, 6000, seed, device)
    x_test, y_test = x[5000:], y[5000:]
    x, y = x[:5000], y[:5000]
    say(f"{CLASSES} classes, {FEATURES} features, bfloat16 tensors on {device}")
    ours, losses = train(torch, gkt.CrossEntropyLoss(), x, y, steps, seed, "gpukernels")
    theirs, reference = train(torch, torch.nn.CrossEntropyLoss(), x, y, steps, seed, "torch")
    with torch.no_grad():
        accuracy = (ours(x_test).argmax(1) == y_test).float().mean().item()
        reference_accuracy = (theirs(x_test).argmax(1) == y_test).float().mean().item()
    window = 10
    running = [
        [sum(c[k : k + window]) / window for k in range(len(c) - window + 1)]
        for c in (losses, reference)
    ]
    gap = max(abs(a - b) for a, b in zip(running[0], running[1], strict=True))
    figure = _plot(losses, reference, out_dir)
    table(
        "pytorch: result",
        [
            ("steps, learning rate", f"{steps}, {LEARNING_RATE:g}"),
            ("loss first -> last (ours)", f"{losses[0]:.3f} -> {losses[-1]:.3f}"),
            ("loss first -> last (torch)", f"{reference[0]:.3f} -> {reference[-1]:.3f}"),
            ("largest gap of the curves", f"{gap:.4f}"),
            ("held-out accuracy (ours, torch)", f"{accuracy:.1%}, {reference_accuracy:.1%}"),
            ("figure", str(figure)),
        ],
    )
    return {
        "losses": losses,
        "reference_losses": reference,
        "accuracy": accuracy,
        "reference_accuracy": reference_accuracy,
        "gap": gap,
        "ok": accuracy > 0.9 and gap < 0.05,
        "figure": figure,
    }


def _plot(losses: list[float], reference: list[float], out_dir) -> Path:
    fig = new_figure(6, 4)
    ax = fig.subplots()
    ax.semilogy(reference, color="tab:orange", lw=3, alpha=0.5, label="torch.nn.CrossEntropyLoss")
    ax.semilogy(losses, color="tab:blue", lw=1, label="gpukernels.torch.CrossEntropyLoss")
    ax.set(xlabel="step", ylabel="cross-entropy (bfloat16 model)", title="Same start, same data")
    ax.legend()
    return save_figure(fig, out_dir, "pytorch.png")
