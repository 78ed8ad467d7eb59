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

from .._canon import TILE, tile_count
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
    tickets,
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
        return _shared_tree(tpb, add)

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
    def maximum(a, b):
        return max(a, b)  # fmax on a GPU (drops a NaN): the callers pass none

    # the rounded add: a contracted a * b + shfl(...) would differ between paired lanes
    return make(rounded_add(acc)), make(maximum)


@functools.cache
def drew_last():
    """Device function ``(counters, ticket, count, flag, t) -> bool``: thread 0 fences and
    takes a ticket from ``counters[ticket]`` (:func:`_cuda.tickets`); true, in every thread,
    in the block that draws the ``count``-th, which sees every other drawer's fenced writes
    and sets the counter back to 0 for the next launch on its stream. The block's writes
    that the drawers must see are thread 0's own, or come before the call through a
    ``syncthreads`` (thread 0's fence is cumulative: it orders what the barrier made visible
    to it). Every thread of the block must call it (it synchronises); ``flag`` is a shared
    ``int32[1]``."""

    @cuda.jit(device=True)
    def last_ticket(counters, ticket, count, flag, t):
        if t == 0:
            cuda.threadfence()
            last = cuda.atomic.add(counters, ticket, 1) == count - 1
            if last:
                cuda.threadfence()  # the other drawers' writes are read after the ticket
                counters[ticket] = 0
            flag[0] = last
        cuda.syncthreads()
        return flag[0] != 0

    return last_ticket


@functools.cache
def last_block():
    """Device function ``(counters, flag, t) -> bool``: whether this block finished last.

    Every thread of the block calls it after writing its partial results: each thread fences
    its writes, and the blocks draw tickets from ``counters[0]`` (:func:`drew_last`).
    """
    last_ticket = drew_last()

    @cuda.jit(device=True)
    def is_last(counters, flag, t):
        cuda.threadfence()
        cuda.syncthreads()
        return last_ticket(counters, 0, cuda.gridDim.x * cuda.gridDim.y, flag, t)

    return is_last


@functools.cache
def block_min(tpb: int):
    """Device function ``(v, ints, t) -> min``: the least ``int64`` ``v`` of a block of ``tpb``
    threads (valid in every thread); ``ints`` is a shared ``int64[tpb]``."""

    @cuda.jit(device=True)
    def minimum(a, b):
        return min(a, b)

    return _shared_tree(tpb, minimum)


def _shared_tree(tpb: int, op):
    """Device function ``(v, smem, t) -> result``: ``op`` folded over a block's ``tpb`` values
    by the halving tree in shared memory (``smem[t] = op(smem[t], smem[t + h])``); the result
    is valid in every thread, and ``smem`` is free again when it returns."""

    @cuda.jit(device=True)
    def tree(v, smem, t):
        smem[t] = v
        cuda.syncthreads()
        h = tpb // 2
        while h > 0:
            if t < h:
                smem[t] = op(smem[t], smem[t + h])
            cuda.syncthreads()
            h //= 2
        result = smem[0]
        cuda.syncthreads()  # the caller's next use reuses smem
        return result

    return tree


@functools.cache
def tile_sum(acc, tpb: int, bf16: bool):
    """Device function ``(x, n, tile, smem, r, t) -> sum``: the canonical sum of tile ``tile``
    of ``x[:n]`` (zeros past ``n``) by a block of ``tpb`` threads, valid in thread 0. Every
    thread of the block must call it (it synchronises)."""
    count = TILE // tpb
    fold, tree = register_fold(acc, count), block_tile_sum(acc, tpb)
    zero = acc_constant(acc, 0.0)
    load = element_io(acc, bf16)[0]

    @cuda.jit(device=True)
    def tile_total(x, n, tile, smem, r, t):
        first = types.int64(tile) * TILE + t
        for k in range(count):
            i = first + tpb * k
            r[k] = load(x[i]) if i < n else zero
        return tree(fold(r), smem, t)

    return tile_total


@functools.cache
def tile_level(acc, tpb: int, bf16: bool):
    """Device function ``(x, n, out, smem, r, t, start, step)``: ``out[j]`` = the canonical
    sum of tile ``j`` of ``x[:n]`` for the tiles ``start, start + step, ...``, by a block of
    ``tpb`` threads. ``out`` may be ``x`` itself (a level folded in place by one block: tile
    ``j`` is read before ``out[j]`` is written, and later tiles start past ``j``)."""
    one_tile = tile_sum(acc, tpb, bf16)

    @cuda.jit(device=True)
    def level(x, n, out, smem, r, t, start, step):
        for tile in range(start, (n + TILE - 1) // TILE, step):
            v = one_tile(x, n, tile, smem, r, t)
            if t == 0:
                out[tile] = v
            cuda.syncthreads()

    return level


@functools.cache
def fold_partials(acc, tpb: int):
    """Device function ``(partial, tiles, smem, r, t) -> total``: in one block (the last),
    the tile sums ``partial[:tiles]`` folded level by level, in place, to the canonical
    total (valid in every thread)."""
    level = tile_level(acc, tpb, False)

    @cuda.jit(device=True)
    def fold(partial, tiles, smem, r, t):
        while tiles > 1:
            level(partial, tiles, partial, smem, r, t, 0, 1)
            tiles = (tiles + TILE - 1) // TILE
        return partial[0]

    return fold


@functools.cache
def group_filled():
    """Device function ``(counters, tile, tiles, stride, offset, flag, t) -> bool``: counts
    the finished tile ``tile`` of ``tiles`` on its group's counter and says, in every
    thread, whether this block finished the group (:func:`drew_last`).

    Tiles go in groups of ``TILE``, the tiles of the canonical tree's second level; group
    ``g`` counts on ``counters[1 + g * stride + offset]`` (a launch with several counted
    sequences, such as column blocks, gives each its ``offset`` below ``stride``;
    :func:`tile_counters` sizes the array). A lone tile is a total: it is not counted, and
    no group is ever filled.
    """
    last_ticket = drew_last()

    @cuda.jit(device=True)
    def filled(counters, tile, tiles, stride, offset, flag, t):
        if tiles < 2:
            return False
        group = tile // TILE
        ticket = 1 + group * stride + offset
        return last_ticket(counters, ticket, min(TILE, tiles - group * TILE), flag, t)

    return filled


def tile_counters(tiles: int, stride: int = 1):
    """The current stream's counters for a launch that counts ``tiles`` tile sums with
    :func:`group_filled` in ``stride`` sequences: the blocks' (``[0]``) and one for each
    group of tiles of each sequence."""
    return tickets(1 + tile_count(tiles) * stride)


@functools.cache
def tile_counted(acc, tpb: int):
    """Device function ``(partial, tile, tiles, counters, smem, r, flag, t)``: the second
    level of the canonical sum, folded as its tiles fill up, in parallel.

    Every thread of a block calls it once thread 0 has written ``partial[tile]`` (one of the
    ``tiles`` tile sums). The block that fills the tile's group (:func:`group_filled`) folds
    the group at once (the fences order every block's tile sum before its count, and the
    count before the fold's reads) and writes its sum over the group's first tile sum,
    ``partial[g * TILE]``, which no other fold reads. The last block then folds only
    ``partial[::TILE]`` (:func:`fold_counted`), instead of every tile sum alone.
    """
    one_tile, filled = tile_sum(acc, tpb, False), group_filled()

    @cuda.jit(device=True)
    def counted(partial, tile, tiles, counters, smem, r, flag, t):
        if filled(counters, tile, tiles, 1, 0, flag, t):
            group = tile // TILE
            v = one_tile(partial, tiles, group, smem, r, t)
            if t == 0:
                partial[group * TILE] = v

    return counted


@functools.cache
def fold_counted(acc, tpb: int):
    """Device function ``(partial, tiles, smem, r, t) -> total``: in the last block, the
    second level that :func:`tile_counted` left in ``partial[::TILE]`` folded on to the
    canonical total of the ``tiles`` tile sums (valid in every thread)."""
    fold = fold_partials(acc, tpb)

    @cuda.jit(device=True)
    def total(partial, tiles, smem, r, t):
        return fold(partial[::TILE], (tiles + TILE - 1) // TILE, smem, r, t)

    return total


@functools.cache
def _total_kernel(acc, tpb: int, bf16: bool):
    count = TILE // tpb
    one_tile, counted = tile_sum(acc, tpb, bf16), tile_counted(acc, tpb)
    fold, is_last = fold_counted(acc, tpb), last_block()

    @cuda.jit
    def _total_kernel(x, out, partial, divisor, fixed, counters):
        smem = cuda.shared.array(tpb, acc)
        flag = cuda.shared.array(1, types.int32)
        r = cuda.local.array(count, acc)
        t = cuda.threadIdx.x
        n, tiles = x.shape[0], partial.shape[0]
        for tile in range(cuda.blockIdx.x, tiles, cuda.gridDim.x):
            v = one_tile(x, n, tile, smem, r, t)
            if t == 0:
                partial[tile] = v
            counted(partial, tile, tiles, counters, smem, r, flag, t)
        if is_last(counters, flag, t):
            total = fold(partial, tiles, smem, r, t)
            if t == 0:  # dividing by 1 is exact: a sum keeps its bits
                out[0] = total / (divisor[0] if divisor.shape[0] > 0 else acc(fixed))

    return _total_kernel


@functools.cache
def _column_tile(acc, cx: int, ry: int, bf16: bool):
    """Device function ``(x, n, out, smem, r, tx, ty, cb, tile)``: ``out[tile, c]`` = the
    canonical sum of tile ``tile`` of column ``c`` of ``x[:n]``, for the ``cx`` columns of
    column block ``cb``, by a block of ``cx`` by ``ry`` threads (``out`` may be ``x``, or rows
    of it). Every thread of the block must call it (it synchronises)."""
    count = TILE // ry
    fold, add = register_fold(acc, count), rounded_add(acc)
    zero = acc_constant(acc, 0.0)
    load = element_io(acc, bf16)[0]

    @cuda.jit(device=True)
    def column_tile(x, n, out, smem, r, tx, ty, cb, tile):
        m = x.shape[1]
        col = types.int64(cb) * cx + tx
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

    return column_tile


@functools.cache
def _column_totals_kernel(acc, cx: int, ry: int, bf16: bool):
    count, size = TILE // ry, cx * ry  # shared.array wants a constant, not an expression
    first_tile, acc_tile = _column_tile(acc, cx, ry, bf16), _column_tile(acc, cx, ry, False)
    is_last, filled = last_block(), group_filled()

    @cuda.jit
    def _column_totals_kernel(x, out, partial, counters):
        smem = cuda.shared.array(size, acc)
        flag = cuda.shared.array(1, types.int32)
        r = cuda.local.array(count, acc)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        t = ty * cx + tx
        n, (tiles, m) = x.shape[0], partial.shape
        column_blocks, groups = (m + cx - 1) // cx, (tiles + TILE - 1) // TILE
        upper = partial[::TILE]  # the second level: each group's sums over its first row
        for cb in range(cuda.blockIdx.x, column_blocks, cuda.gridDim.x):
            for j in range(cuda.blockIdx.y, tiles, cuda.gridDim.y):
                first_tile(x, n, partial, smem, r, tx, ty, cb, j)
                # as tile_counted: the groups of TILE tiles of each column block counted
                if filled(counters, j, tiles, column_blocks, cb, flag, t):
                    acc_tile(partial, tiles, upper, smem, r, tx, ty, cb, j // TILE)
        if is_last(counters, flag, t):
            levels = groups
            while levels > 1:
                for cb in range(column_blocks):
                    for j in range((levels + TILE - 1) // TILE):
                        acc_tile(upper, levels, upper, smem, r, tx, ty, cb, j)
                levels = (levels + TILE - 1) // TILE
            for c in range(t, out.shape[0], cx * ry):
                out[c] = partial[0, c]

    return _column_totals_kernel


def total(x, out, partial) -> None:
    """``out[0]`` = the canonical sum of the 1-D ``x`` (any float dtype, any stride), in one
    launch; ``partial`` ``(ceil(n / TILE),)`` acc is scratch for the tile sums."""
    total_divided(x, out, partial, partial[:0])


def total_divided(x, out, partial, divisor, fixed: float = 1.0) -> None:
    """:func:`total` divided by ``divisor[0]`` (a device ``(1,)`` acc: a mean whose divisor
    another kernel computed) or, when ``divisor`` is empty, by ``fixed``."""
    if partial.shape[0] == 0:
        out[...] = 0
        return
    tpb = POLICY.tile_threads
    kernel = _total_kernel(accumulator(out.dtype), tpb, is_bf16(x.dtype))
    arrays = (bits(x), out, partial, divisor)
    tiles = partial.shape[0]
    launch(kernel, tile_grid(tiles), tpb, 0, *arrays, float(fixed), tile_counters(tiles))


def column_totals(x, out, partial) -> None:
    """``out[c]`` = the canonical sum of column ``c`` of ``x`` ``(n, m)`` (any float dtype,
    any strides), in one launch; ``partial`` ``(ceil(n / TILE), m)`` acc is scratch. A
    block is ``cx`` adjacent columns (coalesced reads) by ``ry`` threads down each column."""
    num_tiles, m = partial.shape
    if num_tiles == 0 or m == 0:
        out[...] = 0
        return
    cx, ry = POLICY.column_block
    kernel = _column_totals_kernel(accumulator(out.dtype), cx, ry, is_bf16(x.dtype))
    gx = tile_grid(-(-m // cx))
    gy = min(num_tiles, 65535, max(1, POLICY.max_blocks // gx))
    counters = tile_counters(num_tiles, -(-m // cx))  # groups of each column block
    launch(kernel, (gx, gy), (cx, ry), 0, bits(x), out, partial, counters)


def ptx_signatures():
    """``(kernel, argument types)`` of every launch this module makes on a GPU."""
    tpb, (cx, ry) = GPU_POLICY.tile_threads, GPU_POLICY.column_block
    counter = types.int32[::1]
    sigs = []
    for acc in ACCUMULATOR_TYPES:
        vec = acc[::1]
        for dtype in STORAGE:
            element, bf16 = kernel_type(dtype), is_bf16(dtype)
            for layout in ("C", "A"):
                vector, matrix = types.Array(element, 1, layout), types.Array(element, 2, layout)
                total_args = (vector, vec, vec, vec, types.float64, counter)
                sigs.append((_total_kernel(acc, tpb, bf16), total_args))
                column_args = (matrix, vec, acc[:, ::1], counter)
                sigs.append((_column_totals_kernel(acc, cx, ry, bf16), column_args))
    return sigs
