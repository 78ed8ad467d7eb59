"""``sigmoid``, ``sigmoid_derivative`` and ``sigmoid_backward``: one pass each."""

from __future__ import annotations

from . import _validate
from ._common import FlatOutput, flat_input
from ._dispatch import ArrayArguments
from ._dtypes import companion_dtype
from ._tensors import tensor_io

_UNARY_ARGUMENTS = ArrayArguments("x", optional=("out",), in_place=("x",))
_BACKWARD_ARGUMENTS = ArrayArguments(
    "grad_output", "y", optional=("out",), in_place=("grad_output", "y")
)


def _unary(op: str, x, out):
    call = _UNARY_ARGUMENTS.call(x, out)
    x, out = call.arrays
    dtype = _validate.float_array("x", x)
    _validate.out_array(out, tuple(x.shape), dtype, call.library)
    y = FlatOutput(call.xp, out, tuple(x.shape), dtype)
    if x.size:
        getattr(call.ops("sigmoid"), op)(flat_input(call.xp, x), y.flat)
    return y.result()


@tensor_io(_UNARY_ARGUMENTS)
def sigmoid(x, *, out=None):
    r"""The logistic function, elementwise.

    .. math:: \sigma(x) = \frac{1}{1 + e^{-x}}

    computed from :math:`e^{-|x|}` (as :math:`e^{x} / (1 + e^{x})` for negative ``x``) so
    that it never overflows.

    Args:
        x: any shape, float16/bfloat16/float32/float64.
        out: optional array of ``x``'s shape and dtype (may be ``x``).

    Example:
        >>> import numpy as np, gpukernels as gk
        >>> gk.sigmoid(np.array([-1e4, 0.0, 1e4])).tolist()
        [0.0, 0.5, 1.0]
    """
    return _unary("sigmoid", x, out)


@tensor_io(_UNARY_ARGUMENTS)
def sigmoid_derivative(x, *, out=None):
    r"""The sigmoid's derivative, elementwise, in one pass.

    .. math:: \sigma'(x) = \sigma(x)\,(1 - \sigma(x)) = \sigma(x)\,\sigma(-x)
        = \frac{e^{-|x|}}{(1 + e^{-|x|})^2}

    accurate to the dtype's precision for every ``x``, also where ``1 - sigma(x)`` rounds
    to 0.

    Example:
        >>> import numpy as np, gpukernels as gk
        >>> gk.sigmoid_derivative(np.array([0.0])).tolist()
        [0.25]
    """
    return _unary("sigmoid_derivative", x, out)


@tensor_io(_BACKWARD_ARGUMENTS)
def sigmoid_backward(grad_output, y, *, out=None):
    r"""Chain rule through a sigmoid from its saved output ``y = sigmoid(x)``.

    .. math:: \frac{\partial L}{\partial x} = \frac{\partial L}{\partial y}\, y\, (1 - y)

    Args:
        grad_output: upstream gradient, a float array of ``y``'s shape. One of another dtype
            than ``y`` is read in the dtype the kernel computes in (float32 for 16-bit
            ``y``, else ``y``'s), so a float32 gradient is never rounded to float16 first.
        y: the forward pass's sigmoid output.
        out: optional array of ``y``'s shape and dtype (may be ``grad_output`` or ``y``).

    Example:
        >>> import numpy as np, gpukernels as gk
        >>> gk.sigmoid_backward(np.array([2.0]), np.array([0.5])).tolist()
        [0.5]
    """
    call = _BACKWARD_ARGUMENTS.call(grad_output, y, out)
    g, y, out = call.arrays
    dtype = _validate.float_array("y", y)
    _validate.float_array("grad_output", g)
    _validate.same_shape("grad_output", g, "y", tuple(y.shape))
    _validate.out_array(out, tuple(y.shape), dtype, call.library)
    xp = call.xp
    result = FlatOutput(xp, out, tuple(y.shape), dtype)
    if y.size:
        call.ops("sigmoid").sigmoid_backward(
            flat_input(xp, g, companion_dtype(g.dtype, dtype)), flat_input(xp, y), result.flat
        )
    return result.result()
