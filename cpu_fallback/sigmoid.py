"""Sigmoid, its derivative and its backward on the CPU: one parallel elementwise pass each."""

from numba import prange

from gpukernels._scalar import ONE

from . import compute_view, load, output_view, parallel_kernel, put, store
from ._math import sigmoid as _sigmoid
from ._math import sigmoid_derivative as _sigmoid_derivative


@parallel_kernel
def _sigmoid_kernel(x, y):
    for i in prange(x.shape[0]):
        put(y, i, _sigmoid(load(x, i)))


@parallel_kernel
def _derivative_kernel(x, y):
    for i in prange(x.shape[0]):
        put(y, i, _sigmoid_derivative(load(x, i)))


@parallel_kernel
def _backward_kernel(g, y, out):
    for i in prange(y.shape[0]):
        y_i = load(y, i)
        put(out, i, load(g, i) * y_i * (ONE - y_i))


def _run(kernel, out, *inputs):
    buffer = output_view(out)
    kernel(*(compute_view(x) for x in inputs), buffer, work=out.size)
    store(buffer, out)


def sigmoid(x, y):
    """y = 1 / (1 + exp(-x))."""
    _run(_sigmoid_kernel, y, x)


def sigmoid_derivative(x, y):
    """y = sigmoid(x) sigmoid(-x)."""
    _run(_derivative_kernel, y, x)


def sigmoid_backward(grad_output, y, out):
    """out = grad_output y (1 - y)."""
    _run(_backward_kernel, out, grad_output, y)
