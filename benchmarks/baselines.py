"""Variants: gpukernels' own, PyTorch's (eager and ``torch.compile``) and JAX's (``jax.jit``),
on the same data.

PyTorch sees the very arrays the other variants read, through DLPack (``torch.from_dlpack``),
so no variant gets a copy the others do not. A PyTorch loss variant runs the forward and the
backward (``torch.autograd.grad``), the work gpukernels does in one call; a JAX one runs
``jax.jit(jax.value_and_grad(loss))`` on a copy of the inputs made before timing (on the CPU
only: the GPU image's JAX is not set up here), waiting for the result.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

OURS = "gpukernels"


def _identity(arrays):
    return arrays


@dataclass(frozen=True)
class Variant:
    """One implementation of a case's maths.

    ``prepare`` turns the case's arrays (a tuple, in the device's library) into the variant's
    arguments over the same memory; ``call`` maps those to ``(loss, grad)``, either of which
    may be ``None``. ``skip`` holds the reason when the variant cannot run here.
    """

    name: str
    call: Callable[[Any], tuple] = field(default=lambda args: (None, None))
    prepare: Callable[[tuple], Any] = _identity
    skip: str = ""


def ours(xp, fn: Callable, *, out: bool = True, **kwargs) -> list[Variant]:
    """gpukernels as a user calls it, and (``out=True``) writing into a preallocated buffer.

    The second shows the kernel without the allocation of its output (on the host a fresh
    array costs page faults on first touch).
    """
    plain = Variant(OURS, call=lambda a: fn(*a, **kwargs))
    if not out:
        return [plain]

    def with_buffer(arrays):
        return arrays, xp.full_like(arrays[0], xp.nan)  # poisoned: every element must be written

    buffered = Variant(
        f"{OURS} out=", call=lambda p: fn(*p[0], out=p[1], **kwargs), prepare=with_buffer
    )
    return [plain, buffered]


@functools.cache
def loss_variants(
    dev, own: Callable, torch_loss: str, expression: Callable, jax_loss: Callable
) -> list[Variant]:
    """An elementwise loss's variants: gpukernels' ``own`` (allocating and ``out=``), the
    NumPy/CuPy ``expression``, ``torch.nn.functional.<torch_loss>`` forward + backward
    (eager and compiled), and ``jax_loss(jnp, *arrays)`` (the scalar loss) through
    ``jax.jit(jax.value_and_grad(...))``."""
    xp = dev.xp
    torch, _ = torch_or_reason(dev.kind)
    fn = getattr(torch.nn.functional, torch_loss) if torch else None
    return (
        ours(xp, own)
        + [Variant(dev.library, call=lambda a: expression(xp, *a))]
        + torch_variants(dev.kind, fn)
        + jax_variants(dev.kind, jax_loss)
    )


def jax_variants(kind: str, fn: Callable, *, backward: bool = True) -> list[Variant]:
    """``jax.jit`` of ``fn(jnp, *arrays)`` on the CPU: with ``backward`` (a scalar loss) its
    value and gradient with respect to the first array, else its result (an elementwise op,
    or when 0-d, a sum)."""
    if kind != "cpu":
        return []
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return [Variant("jax", skip="JAX is not installed (make bench installs it)")]

    def loss(*arrays):
        return fn(jnp, *arrays)

    jitted = jax.jit(jax.value_and_grad(loss) if backward else loss)

    def prepare(arrays):
        return tuple(jnp.asarray(a) for a in arrays)

    def call(args):
        out = jax.block_until_ready(jitted(*args))
        if backward:
            return out
        return (out, None) if out.ndim == 0 else (None, out)

    return [Variant("jax", call=call, prepare=prepare)]


def torch_or_reason(kind: str) -> tuple[Any, str]:
    """``(torch, "")`` when PyTorch can run on this backend, else ``(None, why not)``."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    if kind == "cuda" and not torch.cuda.is_available():
        return None, "PyTorch sees no GPU"
    if kind == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    return torch, ""


RECOMPILE_LIMIT = 64  # compiled graphs kept per function: one per shape and dtype of a run


def compile_static(torch, fn: Callable) -> Callable:
    """``torch.compile(fn)`` specialised to each shape (``dynamic=False``).

    Dynamo keeps its compiled graphs on ``fn``'s code object, shared by every
    ``torch.compile`` of it, and past its recompile limit (8) silently runs ``fn`` eagerly;
    a run has more shapes and dtypes than that, so the limit is raised.
    """
    config = torch._dynamo.config
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, limit):
            setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
            break
    return torch.compile(fn, dynamic=False)


def torch_variants(
    kind: str,
    fn: Callable,
    *,
    backward: bool = True,
    compiled: bool | None = None,
    name: str = "torch",
    wrt: int = 1,
) -> list[Variant]:
    """PyTorch eager and ``torch.compile`` of ``fn`` over the case's arrays.

    ``fn(x, *rest)`` takes tensors; with ``backward`` it returns a scalar loss and the variant
    returns ``(loss, d loss / d x)``, or with ``wrt > 1`` ``(loss, (d loss / d t) for the
    first wrt tensors t)``; without, its result is the variant's ``grad`` (an elementwise
    op) or, when 0-d, its ``loss`` (a sum).
    """
    torch, why = torch_or_reason(kind)
    compiled = True if compiled is None else compiled
    names = [name, f"{name}.compile"] if compiled else [name]
    if torch is None:
        return [Variant(n, skip=why) for n in names]

    def prepare(arrays):
        tensors = tuple(torch.from_dlpack(a) for a in arrays)
        if backward:
            for t in tensors[:wrt]:
                t.requires_grad_(True)
        return tensors

    def make_call(f):
        if backward:

            def call(t):
                loss = f(*t)
                grads = torch.autograd.grad(loss, t[:wrt])
                return loss.detach(), grads[0] if wrt == 1 else grads

            return call

        def call_plain(t):
            with torch.no_grad():
                y = f(*t)
            return (y, None) if y.ndim == 0 else (None, y)

        return call_plain

    out = [Variant(name, call=make_call(fn), prepare=prepare)]
    if compiled:
        compiled_fn = compile_static(torch, fn)
        out.append(Variant(f"{name}.compile", call=make_call(compiled_fn), prepare=prepare))
    return out


def eval_variants(kind: str, name: str) -> list[Variant]:
    """An evaluation step: ``gpukernels.torch``'s loss ``name`` (the loss alone), PyTorch's
    ``torch.nn.functional`` one eager and compiled, all under ``torch.no_grad()``."""
    torch, why = torch_or_reason(kind)
    if torch is None:
        return [Variant(n, skip=why) for n in (OURS, "torch", "torch.compile")]
    import gpukernels.torch as gkt

    ours = torch_variants(kind, getattr(gkt, name), backward=False, compiled=False, name=OURS)
    theirs = getattr(torch.nn.functional, name)
    return ours + torch_variants(kind, theirs, backward=False, compiled=True)


def as_array(xp, value):
    """A result of any variant as an array of ``xp`` (PyTorch tensors through DLPack)."""
    if value is None:
        return None
    if hasattr(value, "detach"):
        tensor = value.detach()
        if str(tensor.dtype) == "torch.bfloat16":  # NumPy and CuPy have none: widen, exactly
            tensor = tensor.float()
        return xp.from_dlpack(tensor.contiguous())
    return xp.asarray(value)
