"""Scalar maths for the CPU kernels: the shared leaves of ``gpukernels._scalar`` and an exp
that vectorises.

Without SVML, ``math.exp`` is a scalar libm call that LLVM cannot vectorise; ``fast_exp`` on
float32 is Cody-Waite range reduction plus the Cephes minimax polynomial, with 2^n built from
the bits of the rounded exponent, all plain arithmetic that becomes vector code (with fused
multiply-adds where the CPU has them: each rounds once, so they only help). It is within
2 ulp of the true exp on [-86.5, 88.7] (tests/test_cpu_math.py), rounds once into the
subnormals below, gives 0 under -104 and inf above 88.7, and NaN stays NaN. float64 uses
``math.exp``.
"""

import math
from types import FunctionType

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from gpukernels import _scalar


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


_KEY_TYPES = {types.float32: types.int32, types.float64: types.int64}
_FLOAT_TYPES = {key: value for value, key in _KEY_TYPES.items()}


def _flip_magnitude(builder, i, width):
    """``i ^ ((i >> (width - 1)) & (2^(width-1) - 1))``: a negative value's magnitude bits
    inverted (an arithmetic shift spreads the sign), a non-negative one unchanged."""
    sign = builder.ashr(i, ir.Constant(i.type, width - 1))
    return builder.xor(i, builder.and_(sign, ir.Constant(i.type, (1 << (width - 1)) - 1)))


@intrinsic
def order_key(typingctx, x):
    """A signed integer of ``x``'s width whose order is IEEE 754's total order of floats:
    -NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN. The float's bits, with a negative
    one's magnitude bits inverted (so that larger magnitudes sort lower); no conversion.
    A max over keys vectorises where a float compare-and-select does not (without a no-NaN
    flag, LLVM keeps such a reduction scalar)."""
    if x not in _KEY_TYPES:
        return None
    key = _KEY_TYPES[x]

    def codegen(context, builder, signature, args):
        bits = builder.bitcast(args[0], ir.IntType(key.bitwidth))
        return _flip_magnitude(builder, bits, key.bitwidth)

    return key(x), codegen


@intrinsic
def key_value(typingctx, k):
    """The float whose :func:`order_key` is ``k`` (the same flip undoes it)."""
    if k not in _FLOAT_TYPES:
        return None
    value = _FLOAT_TYPES[k]

    def codegen(context, builder, signature, args):
        bits = _flip_magnitude(builder, args[0], k.bitwidth)
        return builder.bitcast(bits, context.get_value_type(value))

    return value(k), codegen


_BF16_NAN = np.uint16(0x7FC0)
_HALF_ULP_BF16 = np.uint32(0x7FFF)


@njit(inline="always")
def bf16_value(b):
    """The float32 value of the bfloat16 bits ``b`` (uint16): the bits become float32's top
    half. Exact."""
    return _bits_float(np.int32(np.uint32(b) << np.uint32(16)))


@njit(inline="always")
def bf16_bits(x):
    """The bfloat16 bits (uint16) of the float32 ``x``, rounded once to nearest even: half
    the dropped ulp plus the kept lowest bit, carried into the top half (an overflow rounds
    to inf, as it should). NaN gives the quiet NaN 0x7FC0, as on CUDA."""
    u = np.uint32(_float_bits(x))
    rounded = u + _HALF_ULP_BF16 + ((u >> np.uint32(16)) & np.uint32(1))
    return _BF16_NAN if x != x else np.uint16(rounded >> np.uint32(16))


_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)  # exact in 9 bits, so n * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_ROUND = np.float32(12582912.0)  # 1.5 * 2^23: adding it rounds to an integer in the low bits
_ROUND_BITS = np.int32(0x4B400000)
_LOWEST = np.float32(-104.0)  # exp below rounds to 0 (the smallest subnormal is 1.4e-45)
_SUBNORMAL_N = -100  # from 2^-100 down, build p 2^(n+32) and scale by 2^-32: one rounding
_SUBNORMAL_SCALE = np.float32(2.0**-32)
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


# Not inline="always": it would take the caller's fastmath, and reassociation would fold
# (x + _ROUND) - _ROUND back to x. LLVM still inlines it, keeping its own flags. Contraction
# alone (a * b + c as one fused multiply-add, rounded once) reorders nothing: it takes a
# quarter of the time off (sigmoid' of 2^20 float32, one core: 578 -> 435 us).
@njit(fastmath={"contract"})
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
    n_int = _float_bits(k) - _ROUND_BITS
    tiny = n_int < _SUBNORMAL_N
    y = _bits_float(np.int32(_float_bits(p) + ((n_int + 32 if tiny else n_int) << 23)))
    y = y * _SUBNORMAL_SCALE if tiny else y
    y = _ZERO if x < _LOWEST else y
    y = _INF if x > _HIGHEST else y
    # NaN last, from x itself: LLVM may lower the clamps above to min/max instructions,
    # which return the other operand for NaN, so a NaN x would otherwise give a number
    return x if x != x else y


def _float32_or_libm(name: str, f32, libm, doc: str):
    """The function ``name``: in compiled code ``f32`` (vectorisable) for float32 and
    ``libm`` otherwise; ``libm`` when called from Python."""

    def fn(x):
        return libm(x)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc

    @overload(fn)
    def _overload(x):
        if x == types.float32:
            return lambda x: f32(x)
        return lambda x: libm(x)

    return fn


fast_exp = _float32_or_libm(
    "fast_exp", _exp_f32, math.exp, "exp(x): vectorisable for float32, ``math.exp`` otherwise."
)


_SQRT2_M1 = np.float32(0.41421356)
_TWO = np.float32(2.0)
_THREE = np.float32(3.0)
_LN2 = np.float32(0.693147181)
_ATANH = tuple(np.float32(2.0 / k) for k in (3, 5, 7, 9))


@njit(error_model="numpy", fastmath={"contract"})  # its own flags, like _exp_f32
def _log1p_f32(x):
    """log1p(x) for x in [sqrt(1/2) - 1, 1] (what BCE needs: x = exp(-|z|) in [0, 1]; what
    ``_log_f32`` needs: [sqrt(1/2) - 1, sqrt(2) - 1]), within 2 ulp.

    1 + x = 2^k m with m in [sqrt(1/2), sqrt(2)), k in {0, 1}; log m = 2 atanh(s) with
    s = (m - 1) / (m + 1), |s| <= 0.172 (an odd series to s^9), s formed from x directly.
    """
    big = x > _SQRT2_M1
    # s = (m - 1) / (m + 1) straight from x, so that 1 + x is never rounded
    s = (x - _ONE) / (x + _THREE) if big else x / (x + _TWO)
    s2 = s * s
    series = s2 * (_ATANH[0] + s2 * (_ATANH[1] + s2 * (_ATANH[2] + s2 * _ATANH[3])))
    return (_LN2 if big else _ZERO) + ((s + s) + s * series)


_SQRT2 = np.float32(1.41421356)
_HALF = np.float32(0.5)
_SMALLEST_NORMAL = np.float32(2.0**-126)
_TWO_23 = np.float32(2.0**23)
_NAN = np.float32(np.nan)
_MANTISSA, _EXPONENT_ONE = np.int32(0x007FFFFF), np.int32(0x3F800000)


@njit(error_model="numpy", fastmath={"contract"})
def _log_f32(x):
    """log(x) for float32, within 2 ulp.

    x = 2^k m with m in [sqrt(1/2), sqrt(2)) read from x's bits (a subnormal scaled by 2^23
    first), log x = k ln 2 + log1p(m - 1), ``m - 1`` exact and ``k ln 2`` in two parts whose
    first is exact. 0 gives -inf, a negative x NaN, inf inf, NaN NaN.
    """
    tiny = x < _SMALLEST_NORMAL
    bits = _float_bits(x * _TWO_23 if tiny else x)
    m = _bits_float(np.int32((bits & _MANTISSA) | _EXPONENT_ONE))  # in [1, 2)
    big = m > _SQRT2
    k = np.float32((bits >> 23) - (150 if tiny else 127) + (1 if big else 0))
    y = k * _LN2_HI + (k * _LN2_LO + _log1p_f32((m * _HALF if big else m) - _ONE))
    y = -_INF if x == _ZERO else y
    y = _NAN if x < _ZERO else y
    y = _INF if x == _INF else y
    return x if x != x else y


fast_log = _float32_or_libm(
    "fast_log", _log_f32, math.log, "log(x): vectorisable for float32, ``math.log`` otherwise."
)
fast_log1p = _float32_or_libm(
    "fast_log1p",
    _log1p_f32,
    math.log1p,
    "log1p(x): vectorisable for float32 on [sqrt(1/2) - 1, 1], ``math.log1p`` otherwise.",
)


def leaf(fn):
    """A ``gpukernels._scalar`` leaf compiled for the CPU with ``fast_exp`` and
    ``fast_log1p`` for its ``exp`` and ``log1p``, so that loops calling it vectorise
    (callers must not use fastmath: see ``_exp_f32``). The leaves call log1p only on
    exp(-|z|), inside fast_log1p's range."""
    names = {"exp": fast_exp, "log1p": fast_log1p}
    rebound = FunctionType(fn.__code__, {**fn.__globals__, **names}, fn.__name__)
    return njit(rebound, error_model="numpy")  # float division without a zero check


sigmoid = leaf(_scalar.sigmoid)
sigmoid_derivative = leaf(_scalar.sigmoid_derivative)
