r"""Canonical tile sums on the GPU, and the block reductions every CUDA kernel shares.

The canonical sum of ``TILE`` values ``s`` (docs/BACKENDS.md) folds by halving:

.. math::
    s_i \leftarrow s_i + s_{i+h}, \quad i < h, \qquad h = \mathrm{TILE}/2, \ldots, 2, 1

and returns ``s_0``. A block of ``tpb`` threads computes it with thread ``t`` holding
``s[t + tpb k]`` for ``k < TILE / tpb``: the levels ``h >= tpb`` pair two values of the same
thread (the register fold), the levels ``h < tpb`` pair threads ``t`` and ``t + h`` (a
shared-memory tree, or on a GPU ``shfl_down`` for ``h <= 16``, which pairs lane ``i`` with
lane ``i + h`` just the same). The additions are the same, so the bits do not depend on
``tpb``. Every addition of the tree is ``__fadd_rn`` / ``__dadd_rn`` on a GPU: NVVM contracts
``a * b + c`` into an FMA by default, and a product feeding the tree (a fused loss) would
otherwise be summed unrounded and differ from the sum of the stored losses.

This module is the one place that picks the simulator's shared-memory reductions or the GPU's
warp shuffles (the simulator has no shuffles).
"""

from __future__ import annotations

import functools

from numba import cuda
from numba.core import types
from numba.cuda import libdevice

from .._canon import TILE
from ._cuda import (
    ACCUMULATOR_TYPES,
    GPU_POLICY,
    POLICY,
    SIMULATOR,
    STORAGE,
    acc_constant,
    accumulator,
    bits,
    element_io,
    is_bf16,
    kernel_type,
    launch,
    tile_grid,
)

_FULL_MASK = 0xFFFFFFFF


@functools.cache
def rounded_add(acc):
    """``a + b`` rounded to ``acc``, never fused with a multiply (the canonical tree's add)."""
    if not SIMULATOR:
        return libdevice.dadd_rn if acc == types.float64 else libdevice.fadd_rn

    @cuda.jit(device=True)
    def add(a, b):
        return a + b

    return add


def _fold_level(add, h):
    @cuda.jit(device=True)
    def level(r):
        for k in range(h):
            r[k] = add(r[k], r[k + h])

    return level


def _then(level, rest):
    @cuda.jit(device=True)
    def fold(r):
        level(r)
        return rest(r)

    return fold


@functools.cache
def register_fold(acc, count: int):
    """Device function folding a thread's ``count`` values ``r`` by halving; returns ``r[0]``.

    Built as a chain of fixed-size levels so that every index is a constant and the local
    array can live in registers.
    """

    @cuda.jit(device=True)
    def first(r):
        return r[0]

    fold, h = first, 1
    while h < count:
        fold = _then(_fold_level(rounded_add(acc), h), fold)
        h *= 2
    return fold


@functools.cache
def block_tile_sum(acc, tpb: int):
    """Device function ``(v, smem, t) -> sum``: the canonical tree over a block's ``tpb`` values.

    ``v`` is thread ``t``'s folded value, ``smem`` a shared array of ``tpb`` ``acc``. The sum
    is valid in thread 0. Every thread of the block must call it (it synchronises).
    """
    add = rounded_add(acc)
    if SIMULATOR:

        @cuda.jit(device=True)
        def tree(v, smem, t):
            smem[t] = v
            cuda.syncthreads()
            h = tpb // 2
            while h > 0:
                if t < h:
                    smem[t] = add(smem[t], smem[t + h])
                cuda.syncthreads()
                h //= 2
            total = smem[0]
            cuda.syncthreads()  # the caller's next tile reuses smem
            return total

        return tree

    lanes = min(tpb, 32)
    mask = _FULL_MASK if tpb >= 32 else (1 << tpb) - 1

    @cuda.jit(device=True)
    def tree_shfl(v, smem, t):
        if tpb > 32:
            smem[t] = v
            cuda.syncthreads()
            h = tpb // 2
            while h >= 32:
                if t < h:
                    smem[t] = add(smem[t], smem[t + h])
                cuda.syncthreads()
                h //= 2
            if t < 32:
                v = smem[t]
        if t < 32:
            h = lanes // 2
            while h > 0:
                # lane i adds lane i + h: the pairing of the shared-memory tree
                v = add(v, cuda.shfl_down_sync(mask, v, h))
                h //= 2
        cuda.syncthreads()
        return v

    return tree_shfl


@functools.cache
def group_reducers(acc):
    """Device functions ``group_sum`` and ``group_max`` ``(v, buf, tx, ty, tx_n) -> result``.

    A block holds rows ``ty`` of ``tx_n`` threads each (``tx_n`` a power of two; on a GPU a
    block of whole warps). Each returns, in every thread of the row, the sum (a fixed tree)
    or the max of the row's ``v``. ``buf`` is shared scratch of at least ``rows * tx_n``
    ``acc``. Every thread of the block must call them.
    """
    if SIMULATOR:

        def make(op):
            @cuda.jit(device=True)
            def reduce_row(v, buf, tx, ty, tx_n):
                base = ty * tx_n
                buf[base + tx] = v
                cuda.syncthreads()
                h = tx_n // 2
                while h > 0:
                    if tx < h:
                        buf[base + tx] = op(buf[base + tx], buf[base + tx + h])
                    cuda.syncthreads()
                    h //= 2
                result = buf[base]
                cuda.syncthreads()
                return result

            return reduce_row

    else:

        def make(op):
            @cuda.jit(device=True)
            def reduce_row_shfl(v, buf, tx, ty, tx_n):
                # a butterfly leaves the same bits in every lane (each pair is commutative)
                h = min(tx_n, 32) // 2
                while h > 0:
                    v = op(v, cuda.shfl_xor_sync(_FULL_MASK, v, h))
                    h //= 2
                if tx_n > 32:
                    base = ty * tx_n
                    if tx % 32 == 0:
                        buf[base + tx // 32] = v
                    cuda.syncthreads()
                    v = buf[base]
                    for w in range(1, tx_n // 32):
                        v = op(v, buf[base + w])
                    cuda.syncthreads()
                return v

            return reduce_row_shfl

    @cuda.jit(device=True)
    def add(a, b):
        return a + b

    @cuda.jit(device=True)
    def maximum(a, b):
        return max(a, b)

    return make(add), make(maximum)


@functools.cache
def _tile_sums_kernel(acc, tpb: int, bf16: bool):
    count = TILE // tpb
    fold, tree = register_fold(acc, count), block_tile_sum(acc, tpb)
    zero = acc_constant(acc, 0.0)
    load = element_io(acc, bf16)[0]

    @cuda.jit
    def _tile_sums_kernel(x, out):
        smem = cuda.shared.array(tpb, acc)
        r = cuda.local.array(count, acc)
        t = cuda.threadIdx.x
        n = x.shape[0]
        for tile in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
            first = types.int64(tile) * TILE + t
            for k in range(count):
                i = first + tpb * k
                r[k] = load(x[i]) if i < n else zero
            v = tree(fold(r), smem, t)
            if t == 0:
                out[tile] = v

    return _tile_sums_kernel


@functools.cache
def _column_tile_sums_kernel(acc, cx: int, ry: int, bf16: bool):
    count, size = TILE // ry, cx * ry  # shared.array wants a constant, not an expression
    fold, add = register_fold(acc, count), rounded_add(acc)
    zero = acc_constant(acc, 0.0)
    load = element_io(acc, bf16)[0]

    @cuda.jit
    def _column_tile_sums_kernel(x, out):
        smem = cuda.shared.array(size, acc)
        r = cuda.local.array(count, acc)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        n, m = x.shape
        for cb in range(cuda.blockIdx.x, (m + cx - 1) // cx, cuda.gridDim.x):
            col = types.int64(cb) * cx + tx
            for tile in range(cuda.blockIdx.y, out.shape[0], cuda.gridDim.y):
                first = types.int64(tile) * TILE + ty
                for k in range(count):
                    i = first + ry * k
                    r[k] = load(x[i, col]) if i < n and col < m else zero
                smem[ty * cx + tx] = fold(r)
                cuda.syncthreads()
                h = ry // 2
                while h > 0:  # the column's tree over its ry threads
                    if ty < h:
                        smem[ty * cx + tx] = add(smem[ty * cx + tx], smem[(ty + h) * cx + tx])
                    cuda.syncthreads()
                    h //= 2
                if ty == 0 and col < m:
                    out[tile, col] = smem[tx]
                cuda.syncthreads()

    return _column_tile_sums_kernel


def tile_sums(x, out) -> None:
    """``out[j]`` = canonical sum of ``x[j*TILE:(j+1)*TILE]`` in ``out.dtype`` (the acc).

    ``x``: 1-D float16/32/64, any stride; ``out``: ``(ceil(n / TILE),)`` float32/float64.
    """
    num_tiles = out.shape[0]
    if num_tiles == 0:
        return
    tpb = POLICY.tile_threads
    kernel = _tile_sums_kernel(accumulator(out.dtype), tpb, is_bf16(x.dtype))
    launch(kernel, tile_grid(num_tiles), tpb, 0, bits(x), out)


def column_tile_sums(x, out) -> None:
    """``out[j, c]`` = canonical sum of ``x[j*TILE:(j+1)*TILE, c]`` for every column ``c``.

    ``x``: ``(n, m)`` float16/32/64, any strides; ``out``: ``(ceil(n / TILE), m)`` acc. A block
    is ``cx`` adjacent columns (coalesced reads) by ``ry`` threads down each column.
    """
    num_tiles, m = out.shape
    if num_tiles == 0 or m == 0:
        return
    cx, ry = POLICY.column_block
    kernel = _column_tile_sums_kernel(accumulator(out.dtype), cx, ry, is_bf16(x.dtype))
    gx = tile_grid(-(-m // cx))
    gy = min(num_tiles, 65535, max(1, POLICY.max_blocks // gx))
    launch(kernel, (gx, gy), (cx, ry), 0, bits(x), out)


def ptx_signatures():
    """``(kernel, argument types)`` of every launch this module makes on a GPU."""
    tpb, (cx, ry) = GPU_POLICY.tile_threads, GPU_POLICY.column_block
    sigs = []
    for acc in ACCUMULATOR_TYPES:
        for dtype in STORAGE:
            element, bf16 = kernel_type(dtype), is_bf16(dtype)
            for layout in ("C", "A"):
                vector, matrix = types.Array(element, 1, layout), types.Array(element, 2, layout)
                sigs.append((_tile_sums_kernel(acc, tpb, bf16), (vector, acc[::1])))
                sigs.append((_column_tile_sums_kernel(acc, cx, ry, bf16), (matrix, acc[:, ::1])))
    return sigs
