"""The kinds of ``composite_loss`` term and the reductions: enums shared by the public API and
both backends.

Kernels compare a term's kind or a reduction with the module-level integers below (Numba
freezes them as constants); the public API names both by their ``str`` value.
"""

from __future__ import annotations

from enum import IntEnum

MAX_TERMS = 16  # most terms of one composite_loss: the CUDA kernel's per-term local arrays


class TermKind(IntEnum):
    """A composite term's loss; ``TermKind.from_name("mse")`` gives ``TermKind.MSE``."""

    SOFTMAX_CROSS_ENTROPY = 0
    BCE_WITH_LOGITS = 1
    MSE = 2
    HUBER = 3

    @property
    def label(self) -> str:
        """The name users write in a ``LossTerm``: ``"softmax_cross_entropy"`` and so on."""
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> TermKind:
        return cls[name.upper()]


NAMES: tuple[str, ...] = tuple(kind.label for kind in TermKind)
SOFTMAX_CROSS_ENTROPY = int(TermKind.SOFTMAX_CROSS_ENTROPY)
BCE_WITH_LOGITS = int(TermKind.BCE_WITH_LOGITS)
MSE = int(TermKind.MSE)
HUBER = int(TermKind.HUBER)


class Reduction(IntEnum):
    """A loss's reduction as launchers take it: the fused kernels reduce in the same call."""

    NONE = 0
    SUM = 1
    MEAN = 2


REDUCTION_CODES: dict[str, int] = {r.name.lower(): int(r) for r in Reduction}
SUM, MEAN = int(Reduction.SUM), int(Reduction.MEAN)
