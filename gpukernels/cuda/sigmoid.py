r"""Elementwise sigmoid, its derivative and its backward pass, grid-stride over 1-D arrays.

.. math::
    \sigma(x) = \frac{1}{1 + e^{-x}}, \qquad \sigma'(x) = \sigma(x)\,\sigma(-x), \qquad
    \mathrm{backward}(g, y) = g\, y\, (1 - y)

computed from :math:`e^{-|x|}` (``gpukernels._scalar``) so that nothing overflows and
:math:`\sigma'` keeps its relative precision where :math:`1 - \sigma(x)` would round to 0.
Maths in the accumulation dtype, rounded once at the store.
"""

from __future__ import annotations

import functools

from numba import cuda

from .. import _scalar
from ._cuda import (
    POLICY,
    STORAGE,
    acc_constant,
    accumulator,
    bits,
    element_io,
    grid_for,
    is_bf16,
    kernel_type,
    launch,
    scalar_device,
)


@functools.cache
def _kernels(acc, bf16: bool, grad_bf16: bool):
    one = acc_constant(acc, 1.0)
    load, store = element_io(acc, bf16)
    load_grad = element_io(acc, grad_bf16)[0]
    _sigmoid = scalar_device(_scalar.sigmoid, acc)
    _sigmoid_derivative = scalar_device(_scalar.sigmoid_derivative, acc)

    @cuda.jit
    def _sigmoid_kernel(x, y):
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            y[i] = store(_sigmoid(load(x[i])))

    @cuda.jit
    def _sigmoid_derivative_kernel(x, y):
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            y[i] = store(_sigmoid_derivative(load(x[i])))

    @cuda.jit
    def _sigmoid_backward_kernel(grad_output, y, out):
        for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
            s = load(y[i])
            out[i] = store(load_grad(grad_output[i]) * s * (one - s))

    return _sigmoid_kernel, _sigmoid_derivative_kernel, _sigmoid_backward_kernel


def _run(which: int, *arrays) -> None:
    n = arrays[-1].shape[0]
    if n == 0:
        return
    threads = POLICY.elementwise_threads
    dtype = arrays[-1].dtype
    kernel = _kernels(accumulator(dtype), is_bf16(dtype), is_bf16(arrays[0].dtype))[which]
    launch(kernel, grid_for(n, threads), threads, 0, *map(bits, arrays))


def sigmoid(x, y) -> None:
    """``y = 1 / (1 + exp(-x))`` elementwise (1-D, ``y`` may be ``x``)."""
    _run(0, x, y)


def sigmoid_derivative(x, y) -> None:
    """``y = sigmoid(x) * sigmoid(-x)`` elementwise (1-D, ``y`` may be ``x``)."""
    _run(1, x, y)


def sigmoid_backward(grad_output, y, out) -> None:
    """``out = grad_output * y * (1 - y)`` elementwise (1-D; ``y`` the saved sigmoid, and
    ``grad_output`` of ``y``'s dtype or of the accumulation dtype)."""
    _run(2, grad_output, y, out)


def ptx_signatures():
    """``(kernel, argument types)`` of every launch this module makes on a GPU."""
    sigs = []
    for dtype in STORAGE:
        acc, bf16 = accumulator(dtype), is_bf16(dtype)
        forward, derivative, backward = _kernels(acc, bf16, bf16)
        vec, acc_vec = kernel_type(dtype)[::1], acc[::1]
        sigs += [(forward, (vec, vec)), (derivative, (vec, vec)), (backward, (vec, vec, vec))]
        if acc_vec != vec:
            sigs.append((_kernels(acc, bf16, False)[2], (acc_vec, vec, vec)))
    return sigs
