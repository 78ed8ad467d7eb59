"""Scalar maths for the CPU kernels: the shared leaves of ``gpukernels._scalar`` and an exp
that vectorises.

Without SVML, ``math.exp`` is a scalar libm call that LLVM cannot vectorise; ``fast_exp`` on
float32 is Cody-Waite range reduction plus the Cephes minimax polynomial, with 2^n built from
the bits of the rounded exponent, all plain arithmetic that becomes AVX2 code. It is within
2 ulp of the true exp on [-86.5, 88.7] (tests/test_cpu_math.py); below it returns 0 (an
absolute error under 3e-38), above inf, and NaN stays NaN. float64 uses ``math.exp``.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from gpukernels import _scalar

sigmoid = njit(inline="always")(_scalar.sigmoid)
sigmoid_derivative = njit(inline="always")(_scalar.sigmoid_derivative)
bce_with_logits = njit(inline="always")(_scalar.bce_with_logits)


@intrinsic
def _float_bits(typingctx, x):
    """The IEEE bits of a float32 as an int32 (a register move, no conversion)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _bits_float(typingctx, i):
    """The float32 whose IEEE bits are the int32 ``i``."""
    if i != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)  # exact in 9 bits, so n * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_ROUND = np.float32(12582912.0)  # 1.5 * 2^23: adding it rounds to an integer in the low bits
_ROUND_BITS = np.int32(0x4B400000)
_LOWEST = np.float32(-86.5)  # exp(-86.5) = 2.7e-38: below, 0 (the smallest normal is 1.2e-38)
_HIGHEST = np.float32(88.72283)
_P = tuple(
    np.float32(c)
    for c in (
        1.9875691500e-4,
        1.3981999507e-3,
        8.3334519073e-3,
        4.1665795894e-2,
        1.6666665459e-1,
        5.0000001201e-1,
    )
)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)


@njit  # not inline="always": it would take the caller's fastmath, and reassociation
# would fold (x + _ROUND) - _ROUND back to x. LLVM still inlines it, keeping its own flags.
def _exp_f32(x):
    xc = _HIGHEST if x > _HIGHEST else x
    xc = _LOWEST if xc < _LOWEST else xc
    k = xc * _LOG2E + _ROUND  # the exponent n = round(x / ln 2) sits in k's low bits
    n = k - _ROUND
    r = (xc - n * _LN2_HI) - n * _LN2_LO  # |r| <= ln2 / 2
    p = ((((_P[0] * r + _P[1]) * r + _P[2]) * r + _P[3]) * r + _P[4]) * r + _P[5]
    p = p * r * r + r + _ONE
    # p * 2^n by adding n to p's exponent bits: integer arithmetic, which no floating-point
    # flag of an inlining caller can reassociate, and n = 128 gives inf only when p >= 1.
    y = _bits_float(np.int32(_float_bits(p) + ((_float_bits(k) - _ROUND_BITS) << 23)))
    y = _ZERO if x < _LOWEST else y
    return _INF if x > _HIGHEST else y


def fast_exp(x):
    """exp(x): vectorisable polynomial for float32, ``math.exp`` for float64."""
    return math.exp(x)


@overload(fast_exp)
def _fast_exp_overload(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)
