"""The output layer and its cross-entropy, ``x @ W.T + b`` then softmax cross-entropy, loss and
the gradients of ``x``, ``W`` and ``b``: time and peak extra memory.

Shapes are ``N x H x V``: ``N`` rows of ``H`` features, ``V`` classes; class-index targets,
``reduction="mean"``, with a bias. Variants (each returns the loss and the three gradients):

- ``gpukernels``: ``gk.linear_cross_entropy`` on NumPy (CuPy) arrays, default chunks (about
  256 MiB of logits; at 2048 x 32768 in float32 that is every row in one chunk);
- ``gpukernels chunk_size=256``: the same, 256 rows a chunk (32 MiB of logits at V = 32768);
- ``gpukernels.torch``: ``gpukernels.torch.linear_cross_entropy`` on tensors, with
  ``torch.autograd.grad``;
- ``numpy`` (``cupy``): the array expression (logits, softmax in place, three products);
- ``torch.linear_ce``: ``torch.nn.functional.linear_cross_entropy``, its default path
  (``options=None``: the linear layer, then ``cross_entropy``);
- ``torch.linear_ce chunked``: the same with ``options=torch.nn.LinearCrossEntropyOptions()``
  (PyTorch's chunked implementation, which never holds the ``(N, V)`` logits);
- ``torch``: ``F.cross_entropy(F.linear(x, W, b), y)`` eager, ``torch.compile``: compiled
  (``dynamic=False``; forward and backward compiled by the check call, before any timing).

Byte model (the fewest bytes a call must move): ``x``, ``W``, ``b`` and the int64 labels
read once, their three gradients written once; never the ``N x V`` logits. The op is bound by
its three matrix products (``6 N H V`` flops), not by memory, so its GB/s is far below the
copy's; the byte model only keeps the GB/s column defined.

Memory (``MEMORY``): after a variant is timed, ``memory.measure`` runs it once more in a fresh
process, after a warm-up call, and records the peak memory the call needed beyond its inputs
and its outputs (the loss and the three gradients). On the CPU that is the peak growth of the
resident set (high-water mark reset by ``/proc/self/clear_refs``, glibc made to unmap freed
blocks), which counts NumPy's, Numba's and PyTorch's allocations alike; on CUDA the peak of
PyTorch's caching allocator with CuPy allocating through it. For reference, the logits take
``N V s`` bytes (``s`` bytes an element): 256 MiB at 2048 x 32768 in float32.
"""

from __future__ import annotations

import functools

from .baselines import OURS, Variant, torch_or_reason, torch_variants
from .common import acc_dtype, itemsize

NAME = "linear_xent"
TITLE = "linear + cross-entropy (N x H x V), time and peak memory"
BYTES = "x, W, b, labels read once + their gradients written once (never the N x V logits)"
MEMORY = True
SIZE_DIMS = (3,)  # --sizes NxHxV
SIZES = {
    "cpu": {
        "small": [(512, 128, 8192)],
        "medium": [(1024, 256, 16384)],
        "large": [(2048, 256, 32768)],
    },
    "cuda": {
        "small": [(2048, 256, 32768)],
        "medium": [(4096, 2048, 65536)],
        "large": [(8192, 4096, 131072)],
    },
}
DTYPES = {"cpu": ("float32",), "cuda": ("float32",)}
SMALL_CHUNK = 256


def unavailable(dev) -> str:
    """Why this case cannot run here ("" when it can)."""
    import gpukernels as gk

    return "" if hasattr(gk, "linear_cross_entropy") else "gpukernels has no linear_cross_entropy"


def shape_of(size: tuple[int, ...]) -> tuple[int, int, int]:
    """``NxHxV`` as is."""
    return size


def nbytes(shape, dtype: str) -> int:
    """``x``, ``W``, ``b`` in and their gradients out, int64 labels in."""
    n, h, v = shape
    return 2 * (n * h + v * h + v) * itemsize(dtype) + 8 * n


def inputs(dev, shape, dtype: str, seed: int) -> tuple:
    """Standard normal ``x``, ``W`` scaled by ``1 / sqrt(H)`` and ``b`` by 0.1 (logits of
    about unit variance), uniform random class indices: ``(x, W, b, labels)``."""
    n, h, v = shape
    x = dev.normal((n, h), dtype, seed)
    w = dev.normal((v, h), dtype, seed + 1)
    w *= dev.xp.asarray(h**-0.5, dtype=dtype)
    b = dev.normal((v,), dtype, seed + 2)
    b *= dev.xp.asarray(0.1, dtype=dtype)
    return x, w, b, dev.labels(n, v, seed + 7919)


def expression(xp, x, w, b, labels, acc=None):
    """The layer and its cross-entropy as array expressions: the baseline and the reference.

    ``z = x W^T + b``, ``g = (softmax(z) - onehot(y)) / N``, gradients ``g W``, ``g^T x`` and
    ``sum_i g_i``. One ``(N, V)`` buffer, overwritten in place. Runs in ``acc`` (the data's
    dtype, float32 for 16-bit data, unless given) and returns the gradients in the inputs'
    dtype, or in ``acc`` when given.
    """
    work = acc_dtype(x.dtype) if acc is None else acc
    x_, w_, b_ = (a.astype(work, copy=False) for a in (x, w, b))
    n = x_.shape[0]
    rows = xp.arange(n)
    z = x_ @ w_.T
    z += b_
    picked = z[rows, labels]
    m = z.max(axis=1, keepdims=True)
    z -= m
    xp.exp(z, out=z)
    s = z.sum(axis=1, keepdims=True)
    z /= s
    loss = (xp.log(s[:, 0]) + m[:, 0] - picked).mean()
    z[rows, labels] -= 1
    z *= 1.0 / n
    grads = (z @ w_, z.T @ x_, z.sum(axis=0))
    if acc is None:
        grads = tuple(g.astype(x.dtype, copy=False) for g in grads)
    return loss, grads


def reference(dev, arrays) -> tuple:
    """The expression in float64."""
    return expression(dev.xp, *arrays, acc=dev.xp.float64)


def _ours(arrays, **options):
    import gpukernels as gk

    x, w, b, labels = arrays
    loss, gx, gw, gb = gk.linear_cross_entropy(x, w, labels, linear_bias=b, **options)
    return loss, (gx, gw, gb)


def _gkt(x, w, b, labels):
    import gpukernels.torch as gkt

    return gkt.linear_cross_entropy(x, w, labels, linear_bias=b)


def _linear_then_ce(x, w, b, labels):
    import torch.nn.functional as F

    return F.cross_entropy(F.linear(x, w, b), labels)


def _torch_linear_ce(x, w, b, labels):
    import torch.nn.functional as F

    return F.linear_cross_entropy(x, w, labels, linear_bias=b)


def _torch_linear_ce_chunked(x, w, b, labels):
    import torch

    options = torch.nn.LinearCrossEntropyOptions()
    return torch.nn.functional.linear_cross_entropy(x, w, labels, linear_bias=b, options=options)


def _has(obj, names: tuple[str, ...]) -> bool:
    for name in names:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def variants(dev) -> list[Variant]:
    """gpukernels (arrays: default and small chunks; tensors), the NumPy/CuPy expression,
    PyTorch's ``linear_cross_entropy`` (default and chunked), and the plain layer then
    ``F.cross_entropy`` eager and compiled."""
    xp = dev.xp
    small = functools.partial(_ours, chunk_size=SMALL_CHUNK)
    found = [
        Variant(OURS, call=_ours),
        Variant(f"{OURS} chunk_size={SMALL_CHUNK}", call=small),
    ]
    found += torch_variants(dev.kind, _gkt, compiled=False, name=f"{OURS}.torch", wrt=3)
    found.append(Variant(dev.library, call=lambda a: expression(xp, *a)))
    torch, _ = torch_or_reason(dev.kind)
    for name, fn, needs in (
        ("torch.linear_ce", _torch_linear_ce, ("functional", "linear_cross_entropy")),
        ("torch.linear_ce chunked", _torch_linear_ce_chunked, ("LinearCrossEntropyOptions",)),
    ):
        if torch is not None and not _has(torch.nn, needs):
            found.append(Variant(name, skip=f"this PyTorch has no torch.nn.{'.'.join(needs)}"))
        else:
            found += torch_variants(dev.kind, fn, compiled=False, name=name, wrt=3)
    return found + torch_variants(dev.kind, _linear_then_ce, compiled=True, wrt=3)
