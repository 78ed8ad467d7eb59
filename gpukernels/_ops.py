"""The op table: every kernel op of the library, declared once.

An op is a module of the same name in each backend, ``cpu_fallback.<name>`` (``@njit``) and
``gpukernels.cuda.<name>`` (``@cuda.jit``), defining the same launchers with the same
signatures (docs/BACKENDS.md). The CUDA module also defines ``ptx_signatures()``: every
``(kernel, argument types)`` it launches with on a GPU. The dispatcher, the PTX test, the
launcher-parity and simulator tests and the benchmarks all iterate this table, so a new op
is added here and nowhere else is a list of op names kept.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

PACKAGES = {"cpu": "cpu_fallback", "cuda": "gpukernels.cuda"}


@dataclass(frozen=True)
class Op:
    """One kernel op.

    Attributes:
        name: the module name in ``cpu_fallback`` and ``gpukernels.cuda``.
        launchers: the launcher functions both modules define, with the same signatures.
        public: the public functions of ``gpukernels`` that call them.
        bench: the module of the repository's ``benchmarks/`` folder that times it, or
            ``None`` (the library never imports it; the benchmarks look it up here).
    """

    name: str
    launchers: tuple[str, ...]
    public: tuple[str, ...]
    bench: str | None

    def module(self, backend: str) -> ModuleType:
        """The launcher module of this op on ``backend`` (``"cpu"`` or ``"cuda"``)."""
        return importlib.import_module(f"{PACKAGES[backend]}.{self.name}")


_ELEMENTWISE_LOSS = ("loss_and_grad",)

OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("reduce", ("total", "column_totals"), ("batch_sum",), "reduce"),
        Op(
            "softmax_xent",
            ("label_row_weights", "softmax_xent_labels", "softmax_xent_probs"),
            ("softmax_cross_entropy", "linear_cross_entropy"),
            "softmax_xent",
        ),
        Op("bce", _ELEMENTWISE_LOSS, ("bce_with_logits",), "bce"),
        Op("mse", _ELEMENTWISE_LOSS, ("mse",), "mse"),
        Op("huber", _ELEMENTWISE_LOSS, ("huber_loss",), "huber"),
        Op(
            "sigmoid",
            ("sigmoid", "sigmoid_derivative", "sigmoid_backward"),
            ("sigmoid", "sigmoid_derivative", "sigmoid_backward"),
            "sigmoid",
        ),
        Op("composite", ("composite",), ("composite_loss",), None),
        Op(
            "shard",
            ("shard_stats", "shard_loss_and_grad"),
            ("shard_stats", "merge_shard_stats", "shard_loss_and_grad"),
            None,
        ),
    )
}
