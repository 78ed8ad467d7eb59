"""``gpukernels demo``: the library at work on the examples of seeds 000 and 002.

Three parts, each printing what it does and what it found and writing a PNG of its curves:

- ``descent``: gradient descent on y = x^2 - 4x + 6, the gradient from ``gk.mse``;
- ``neuron``: one sigmoid neuron trained with the quadratic cost (``gk.mse``, ``gk.sigmoid``,
  ``gk.sigmoid_backward``, ``gk.batch_sum``);
- ``localize``: object localisation with ``gk.composite_loss`` (BCE on the objectness logit
  plus a masked MSE on the box) and a check of its sum rule;
- ``pytorch``: a bfloat16 PyTorch MLP trained with ``gpukernels.torch.CrossEntropyLoss`` and
  with ``torch.nn.CrossEntropyLoss`` from the same start (needs PyTorch).

Each part's ``run(out_dir, fast=..., seed=...)`` returns a dict of its results.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gpukernels as gk

from . import descent, localize, neuron, pytorch
from ._common import array_module, say, table

PARTS = {
    "descent": descent.run,
    "neuron": neuron.run,
    "localize": localize.run,
    "pytorch": pytorch.run,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpukernels demo", description="Run the gpukernels examples end to end."
    )
    parser.add_argument(
        "part", nargs="?", default="all", choices=[*PARTS, "all"], help="which part (default all)"
    )
    parser.add_argument("--fast", action="store_true", help="smaller data and fewer steps")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for PNGs")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the generated data (>= 0)")
    return parser


def _seed(text: str) -> int:
    """A seed for NumPy's generators: an integer >= 0."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return seed


def main(argv: list[str] | None = None) -> int:
    """Run the chosen part (or all); 0 when every part reached its goal, else 1. A folder
    that cannot be made and a backend setting that cannot run the demo's arrays are usage
    errors, found before any part runs."""
    parser = _parser()
    args = parser.parse_args(argv)
    names = list(PARTS) if args.part == "all" else [args.part]
    xp = array_module()
    probe = xp.zeros(1, dtype=xp.float32)
    try:
        where = gk.backend(probe)
        args.out.mkdir(parents=True, exist_ok=True)
    except (OSError, TypeError, ValueError) as error:
        parser.error(str(error))
    say(f"gpukernels demo: arrays are {xp.__name__}, kernels run on {where}")
    rows, all_ok = [], True
    for name in names:
        start = time.perf_counter()
        result = PARTS[name](args.out, fast=args.fast, seed=args.seed)
        all_ok &= result["ok"] is not False  # None: skipped (an optional extra is missing)
        status = {True: "goal reached", False: "goal MISSED", None: "skipped"}[result["ok"]]
        rows.append((name, f"{status}, {time.perf_counter() - start:.1f} s, {result['figure']}"))
    table("demo summary", rows)
    return 0 if all_ok else 1
