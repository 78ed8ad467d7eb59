"""The canonical tile-tree sum on the CPU (order in docs/BACKENDS.md): of a vector, of each
column of a batch, and of the tiles of losses the fused kernels emit.

No fastmath here: the order of the additions is the result's definition, shared bit for bit
with the CUDA kernels.
"""

import functools

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, register_jitable

import cpu_fallback
from gpukernels._canon import TILE, tile_count

from . import CACHE, compute_view, load, parallel_kernel
from ._cache import njit

# Bytes of a block of columns summed together: 1024 float32 columns, (HALF / 2, 1024)
# scratch of 256 KiB. Wide rows of vectors cost less per view than narrow ones that stay in
# L1: on 2 cores (16384, 1024) float32 took 5.3 ms in blocks of 128 columns, 2.9 ms in blocks
# of 1024 (measured before the first two tree levels were fused).
_COLUMN_BLOCK_BYTES = 4096


@njit(cache=CACHE, inline="always")
def _add_into(a, b):
    """a += b, element by element: two views of a tile, so that the loop vectorises (indexing
    one array at two computed offsets does not)."""
    for c in range(a.shape[0]):
        a[c] += b[c]


@njit(cache=CACHE, inline="always")
def _sum_into(d, a, b):
    """d = a + b, element by element (vectorises like :func:`_add_into`)."""
    for c in range(d.shape[0]):
        d[c] = load(a, c) + load(b, c)


@njit(cache=CACHE, inline="always")
def _sum3_into(d, a, b, e):
    """d = (a + b) + e, element by element."""
    for c in range(d.shape[0]):
        d[c] = (load(a, c) + load(b, c)) + load(e, c)


@njit(cache=CACHE, inline="always")
def _sum4_into(d, a, b, e, f):
    """d = (a + b) + (e + f), element by element."""
    for c in range(d.shape[0]):
        d[c] = (load(a, c) + load(b, c)) + (load(e, c) + load(f, c))


HALF = TILE // 2
# A tile is read as TILE // LANES vectors of LANES values. Any power of two gives the same
# additions (the tree's), so the same bits; 8 float32 (256 bits, AVX2's width and Zen 4's
# datapath) streamed a 2^20 float32 sum from memory in 117 us on 2 cores, 16 (AVX-512) in
# 137-141 us, alternating in one process; from cache the two ran alike.
LANES = 8
assert LANES & (LANES - 1) == 0 and TILE % LANES == 0, "halving_sum halves LANES"
assert (TILE // LANES) & (TILE // LANES - 1) == 0, "halving_sum halves the tile's vectors"


@intrinsic
def halving_sum(typingctx, t, lo):
    """The halving tree over the ``TILE`` values ``t[lo : lo + TILE]`` of a C-contiguous 1-D
    array (float32, float64, or bfloat16 bits widened to float32): s[k] += s[k + h] for
    h = TILE/2, ..., 1, returning s[0]. The caller guarantees ``lo + TILE <= len(t)``.

    Written as vector IR, so that LLVM cannot reorder it and need not be coaxed into
    vectorising it: the tile as ``TILE / LANES`` vectors, the levels down to ``h = LANES``
    adding whole vectors (``v[i] + v[i + h / LANES]``), the last ``log2(LANES)`` adding a
    vector's upper half to its lower half. Plain ``fadd`` without fast-math flags: each
    addition is exactly one of the tree's. float32 takes 32 loads of 8 values, 34 vector adds
    and 6 shuffles a tile.
    """
    if not (
        isinstance(t, types.Array)
        and t.ndim == 1
        and t.layout == "C"
        and t.dtype in (types.float32, types.float64, types.uint16)
        and isinstance(lo, types.Integer)
    ):
        return None
    bits = t.dtype == types.uint16
    acc = types.float32 if bits else t.dtype

    def codegen(context, builder, signature, args):
        # a fast-math caller would put its flags on these adds too (Numba's fastmath pass
        # flags every float operation of the function), and reassociation reorders the tree
        assert not context.fastmath, "halving_sum inlined into a fastmath function"
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        lo = context.cast(builder, args[1], signature.args[1], types.intp)
        element = data.type.pointee
        vector_of = functools.partial(ir.VectorType, count=LANES)
        start = builder.bitcast(builder.gep(data, [lo]), vector_of(element).as_pointer())
        vectors, align = [], t.dtype.bitwidth // 8 if t.aligned else 1
        sixteen = ir.Constant(vector_of(ir.IntType(32)), [16] * LANES)
        for i in range(TILE // LANES):
            v = builder.load(builder.gep(start, [ir.Constant(lo.type, i)]), align=align)
            if bits:  # bfloat16 bits become float32's top half, as bf16_value does
                v = builder.shl(builder.zext(v, vector_of(ir.IntType(32))), sixteen)
                v = builder.bitcast(v, vector_of(ir.FloatType()))
            vectors.append(v)
        return _fold_vectors(builder, vectors)

    return acc(t, lo), codegen


def _fold_vectors(builder, vectors):
    """The halving tree over the lanes of ``vectors`` (a power of two of ``LANES``-vectors,
    lane ``j`` of vector ``i`` being element ``i * LANES + j``): the upper half of the
    vectors added to the lower half until one is left, then its upper half of lanes to its
    lower half until one lane is left."""
    while len(vectors) > 1:
        h = len(vectors) // 2
        vectors = [builder.fadd(vectors[i], vectors[i + h]) for i in range(h)]
    v, width = vectors[0], LANES
    while width > 1:
        width //= 2
        low = builder.shuffle_vector(v, v, _lanes(range(width)))
        v = builder.fadd(low, builder.shuffle_vector(v, v, _lanes(range(width, 2 * width))))
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))


LANE_VECTORS = 4  # lane_sum's running vectors: four chains of additions in flight


@intrinsic
def lane_sum(typingctx, x):
    """The sum of the float32 or float64 1-D ``x`` in a fixed order, set by its length
    alone: ``B = LANE_VECTORS * LANES`` running sums, lane ``j`` adding ``x[c]`` for
    ``c = j (mod B)`` over the whole blocks of ``B`` elements, left to right; the elements
    past the last whole block added to lane 0 in turn; the lanes then folded as a halving
    tree (lane ``j`` plus lane ``j + B/2``, ..., down to one). A row's sum that vectorises
    without fast-math: under reassociation LLVM picks the order, and picked differently
    where a kernel was compiled and where Numba's cache loaded it (1-2 ulp apart).
    """
    if not (floats_1d(x) and x.dtype in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        row = context.make_array(x)(context, builder, args[0])
        n = builder.extract_value(row.shape, 0)

        def terms(c, k):
            return [read(builder, x, row, c, k)]

        (total,) = lane_sums(context, builder, n, x.dtype, 1, terms)
        return total

    return x.dtype(x), codegen


def floats_1d(x) -> bool:
    """Whether ``x`` is typed as a 1-D float array, which :func:`read` loads."""
    return isinstance(x, types.Array) and x.ndim == 1 and isinstance(x.dtype, types.Float)


def lane_sums(context, builder, n, dtype, count, terms):
    """The ``count`` sums over ``c < n`` of the terms ``terms(c, k)`` gives, each in
    :func:`lane_sum`'s order: ``terms(c, k)`` is a list of ``count`` values holding the
    terms of ``c .. c + k - 1``, as ``k``-vectors (``k = LANES``) or scalars (``k = 1``)."""
    assert not context.fastmath, "lane sums inlined into a fastmath function"
    element, intp = context.get_value_type(dtype), n.type
    block = LANE_VECTORS * LANES
    whole = builder.and_(n, ir.Constant(intp, -block))
    zero = ir.Constant(ir.VectorType(element, LANES), None)
    accs = [
        [cgutils.alloca_once_value(builder, zero) for _ in range(LANE_VECTORS)]
        for _ in range(count)
    ]
    with cgutils.for_range_slice(
        builder, ir.Constant(intp, 0), whole, ir.Constant(intp, block)
    ) as (c, _):
        for k in range(LANE_VECTORS):
            at = builder.add(c, ir.Constant(intp, k * LANES))
            for acc, v in zip(accs, terms(at, LANES), strict=True):
                builder.store(builder.fadd(builder.load(acc[k]), v), acc[k])
    lane0 = ir.Constant(ir.IntType(32), 0)
    tails = [
        cgutils.alloca_once_value(builder, builder.extract_element(builder.load(acc[0]), lane0))
        for acc in accs
    ]
    with cgutils.for_range_slice(builder, whole, n, ir.Constant(intp, 1)) as (c, _):
        for tail, v in zip(tails, terms(c, 1), strict=True):
            builder.store(builder.fadd(builder.load(tail), v), tail)
    sums = []
    for acc, tail in zip(accs, tails, strict=True):
        vectors = [builder.load(a) for a in acc]
        vectors[0] = builder.insert_element(vectors[0], builder.load(tail), lane0)
        sums.append(_fold_vectors(builder, vectors))
    return sums


def read(builder, arraytype, array, c, k):
    """Elements ``c .. c + k - 1`` of the 1-D ``array`` (of Numba type ``arraytype``): a
    ``k``-vector, or a scalar for ``k = 1``. A C-contiguous array is read as one vector
    load, another element by element at its stride."""
    element = array.data.type.pointee
    align = arraytype.dtype.bitwidth // 8 if arraytype.aligned else 1
    if arraytype.layout == "C":
        at = builder.gep(array.data, [c])
        if k == 1:
            return builder.load(at, align=align)
        at = builder.bitcast(at, ir.VectorType(element, k).as_pointer())
        return builder.load(at, align=align)
    stride = builder.extract_value(array.strides, 0)
    base = builder.ptrtoint(array.data, stride.type)
    values = ir.Constant(ir.VectorType(element, k), None) if k > 1 else None
    for j in range(k):
        index = builder.add(c, ir.Constant(c.type, j))
        at = builder.inttoptr(builder.add(base, builder.mul(index, stride)), array.data.type)
        v = builder.load(at, align=align)
        if k == 1:
            return v
        values = builder.insert_element(values, v, ir.Constant(ir.IntType(32), j))
    return values


def splat(builder, value, k):
    """The scalar ``value`` in each of ``k`` lanes (itself for ``k <= 1``)."""
    if k <= 1:
        return value
    one = builder.insert_element(
        ir.Constant(ir.VectorType(value.type, 1), None), value, ir.Constant(ir.IntType(32), 0)
    )
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(ir.IntType(32), k), None))


def _lanes(indices: range) -> ir.Constant:
    """A shufflevector mask taking ``indices``."""
    return ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), list(indices))


@njit(cache=CACHE)
def tile_sums(x, out, j0, j1):
    """``out[j]`` = the canonical sum of tile ``j`` of the 1-D ``x``, for
    ``j0 <= j < j1 <= ceil(len(x) / TILE)`` (an absent element is 0). Full tiles go straight
    to :func:`halving_sum` in a loop of their own (a branch per tile, or an array of scratch
    passed along, ran at half the speed); the last tile, when partial, is copied and
    padded."""
    full = min(j1, x.shape[0] // TILE)
    for j in range(j0, full):
        out[j] = halving_sum(x, j * TILE)
    for j in range(max(j0, full), j1):  # at most one: the partial last tile
        out[j] = _last_tile_sum(x, j * TILE, out)


@njit(cache=CACHE)
def _last_tile_sum(x, lo, like):
    """The canonical sum of the partial tile ``x[lo:]``, in ``like``'s dtype."""
    s = np.empty(TILE, like.dtype)
    count = x.shape[0] - lo
    for k in range(count):
        s[k] = load(x, lo + k)
    return padded_total(s, count)


@njit(cache=CACHE)
def padded_total(s, count):
    """The canonical sum of a tile whose ``count`` values are ``s[:count]`` and whose other
    values are absent (0): ``s`` (``TILE`` values) is padded with zeros and folded."""
    s[count:TILE] = 0
    return halving_sum(s, 0)


@njit(cache=CACHE)
def fold_tiles(partial, tiles):
    """The canonical tree's levels above the first: ``partial[:tiles]`` (the tile sums) folded
    tile by tile, in place, until one value is left; returns it. Tile ``j`` of a level is read
    before ``partial[j]`` is written, and later tiles start past ``j``."""
    while tiles > 1:
        level = partial[:tiles]
        tiles = (tiles + TILE - 1) // TILE
        tile_sums(level, partial, 0, tiles)
    return partial[0]


@njit(cache=CACHE)
def canonical_total(x):
    """The canonical sum of the 1-D ``x`` (0 when empty), on the calling thread."""
    tiles = (x.shape[0] + TILE - 1) // TILE
    if tiles == 0:
        return x.dtype.type(0)
    partial = np.empty(tiles, x.dtype)
    tile_sums(x, partial, 0, tiles)
    return fold_tiles(partial, tiles)


@parallel_kernel
def _total_kernel(x, out, chunk):
    tiles = out.shape[0]
    for b in prange((tiles + chunk - 1) // chunk):
        tile_sums(x, out, b * chunk, min(tiles, (b + 1) * chunk))
    out[0] = fold_tiles(out, tiles)


@njit(cache=CACHE)
def first_level(rows):
    """The halving tree's first level that adds, over a tile of ``rows >= 2`` present rows:
    ``h`` with ``h < rows <= 2h``."""
    h = HALF
    while h >= rows:
        h //= 2
    return h


@njit(cache=CACHE)
def scratch_rows(rows):
    """Rows of scratch :func:`_column_tile_sum` writes for a tile of ``rows >= 2`` present
    rows: those of the second level that adds (one, where the first is the last)."""
    return max(1, first_level(rows) // 2)


@njit(cache=CACHE)
def _column_tile_sum(x, lo, rows, c0, c1, s, out):
    """``out[c0:c1]`` = the canonical sum of each of the columns ``c0:c1`` over the tile of
    rows ``lo : lo + TILE`` of the 2-D ``x``, whose rows from ``lo + rows`` on are absent
    (0), in vectors of columns; ``s`` is ``(scratch_rows(rows), >= c1 - c0)``
    scratch (unused when ``rows`` is 1).

    A subtree whose rows are all absent (in the halving tree, ``s[k]`` with ``k >= rows``)
    is skipped rather than added, and one 0 is added at the end instead: a tree's sum is -0
    only when every addend is -0, and 0 added to a nonzero value leaves it, so the bits are
    those of the whole tree. The first level that adds (``h < rows <= 2h``) and the next
    are computed together from ``x`` (``(x[k] + x[k + h]) + (x[k + h/2] + x[k + h/2 + h])``,
    a pair where row ``k + h`` is present, the row alone where not), so rows that stand
    alone at the first level are not copied, and only the second level is written; the
    levels above the first, where every subtree is absent, are skipped.
    """
    w = c1 - c0
    zero = s.dtype.type(0) if rows < TILE else s.dtype.type(-0.0)
    if rows == 1:
        for c in range(w):
            out[c0 + c] = load(x, (lo, c0 + c)) + zero
        return
    h = first_level(rows)
    pairs = rows - h  # at level h, rows k < pairs add row k + h; the others stand alone
    if h == 1:
        _sum_into(s[0, :w], x[lo, c0:c1], x[lo + 1, c0:c1])
    else:  # levels h and q = h / 2 at once: s[k] = s_h[k] + s_h[k + q], read from x
        q = h // 2
        for k in range(pairs - q):
            _sum4_into(
                s[k, :w],
                x[lo + k, c0:c1],
                x[lo + k + h, c0:c1],
                x[lo + k + q, c0:c1],
                x[lo + k + q + h, c0:c1],
            )
        for k in range(max(0, pairs - q), min(pairs, q)):
            _sum3_into(s[k, :w], x[lo + k, c0:c1], x[lo + k + h, c0:c1], x[lo + k + q, c0:c1])
        for k in range(pairs, q):
            _sum_into(s[k, :w], x[lo + k, c0:c1], x[lo + k + q, c0:c1])
        h = q
    h //= 2
    while h >= 1:
        for k in range(h):
            _add_into(s[k, :w], s[k + h, :w])
        h //= 2
    for c in range(w):
        out[c0 + c] = s[0, c] + zero


@parallel_kernel
def _column_totals_kernel(x, partial, block):
    n, m = x.shape
    tiles, blocks = partial.shape[0], (m + block - 1) // block
    tallest = scratch_rows(max(2, min(TILE, n)))
    for task in prange(tiles * blocks):
        j, c0 = task // blocks, (task % blocks) * block
        s = np.empty((tallest, block), partial.dtype)
        lo = j * TILE
        _column_tile_sum(x, lo, min(TILE, n - lo), c0, min(m, c0 + block), s, partial[j])
    # the levels above the tiles, block by block: level j's sum into partial[j], after
    # _column_tile_sum has read the rows (tile j of a level starts at row j * TILE >= j)
    for b in prange(blocks if tiles > 1 else 0):
        c0 = b * block
        s = np.empty((scratch_rows(TILE), block), partial.dtype)
        level = tiles
        while level > 1:
            groups = (level + TILE - 1) // TILE
            for j in range(groups):
                lo = j * TILE
                _column_tile_sum(
                    partial, lo, min(TILE, level - lo), c0, min(m, c0 + block), s, partial[j]
                )
            level = groups


def total(x, out, partial):
    """``out[0]`` = the canonical sum of the 1-D C-contiguous ``x``, in one call; ``partial``
    ``(ceil(n / TILE),)`` acc is scratch for the tile sums (empty for an empty ``x``)."""
    if partial.shape[0] == 0:
        out[0] = 0
        return
    _total_kernel(compute_view(x), partial, work=x.shape[0], items=tile_count(x.shape[0]))
    out[0] = partial[0]


def column_totals(x, out, partial):
    """``out[c]`` = the canonical sum of column ``c`` of ``x`` ``(n, m)``, in one call;
    ``partial`` ``(ceil(n / TILE), m)`` acc is scratch for the column tile sums."""
    if partial.shape[0] == 0:
        out[...] = 0
        return
    tiles, m = partial.shape
    block = column_block(m, partial.itemsize)
    tasks = tiles * -(-m // block)
    _column_totals_kernel(compute_view(x), partial, block, work=x.size, tasks=tasks)
    out[...] = partial[0]


@register_jitable
def column_block(m, itemsize):
    """How many of ``m`` columns of ``itemsize`` bytes are summed together."""
    return max(1, min(m, _COLUMN_BLOCK_BYTES // itemsize))


def numpy_sum(x: np.ndarray, axis: int | None) -> np.ndarray | None:
    """``batch_sum(x, axis=axis)`` of the float32 or float64 NumPy array ``x``, its result
    and scratch allocated here, where that applies: every element of a C-contiguous ``x``
    (``axis`` None) or the columns of a 2-D ``x`` (``axis`` 0, checked by the caller).
    ``None`` elsewhere. Less work than ``PARALLEL_MIN_WORK`` runs in one compiled call on
    the calling thread, more through :func:`total` or :func:`column_totals`.

    The same kernels in the same order as the general path, so the same bits. That path's
    ``Call``, checks, allocations and reshapes cost 3-5 us in Python (docs/BACKENDS.md):
    more than a 10^4-element sum itself, and a tenth of a 2^20-element one.
    """
    serial = x.size < cpu_fallback.PARALLEL_MIN_WORK  # read at each call, as the launchers do
    if axis is None and x.flags.c_contiguous:
        out = np.empty((), x.dtype)
        if serial:
            serial_total(x, out)
        else:
            total(x.reshape(x.size), out.reshape(1), np.empty(tile_count(x.size), x.dtype))
        return out
    if axis is not None and x.ndim == 2:
        out = np.empty(x.shape[1], x.dtype)
        if serial:
            serial_column_totals(x, out)
        else:
            column_totals(x, out, np.empty((tile_count(x.shape[0]), x.shape[1]), x.dtype))
        return out
    return None


_serial_column_totals_kernel = _column_totals_kernel.serial  # a name Numba can type


@njit(cache=CACHE)
def serial_total(x, out):
    """``out[()]`` = the canonical sum of every element of the C-contiguous ``x``, on the
    calling thread."""
    out[()] = canonical_total(x.reshape(x.size))


@njit(cache=CACHE)
def serial_column_totals(x, out):
    """``out[c]`` = the canonical sum of column ``c`` of the 2-D ``x``, on the calling
    thread: :func:`column_totals` with its scratch allocated here (none for one tile of rows,
    whose sums are the result)."""
    n, m = x.shape
    tiles = (n + TILE - 1) // TILE
    if tiles == 0:
        out[:] = 0
        return
    partial = out.reshape(1, m) if tiles == 1 else np.empty((tiles, m), out.dtype)
    _serial_column_totals_kernel(x, partial, column_block(m, out.itemsize))
    out[:] = partial[0]


@njit(cache=CACHE)
def finish_tile(s, count, j, loss, reduce):
    """Emit tile ``j``'s ``count`` elementwise losses held in ``s[:count]`` (``s``:
    ``TILE`` values): their canonical tile sum into ``loss[j]`` (``reduce``), or the losses
    themselves into ``loss[j*TILE:]``."""
    if reduce:
        loss[j] = padded_total(s, count)
    else:
        loss[j * TILE : j * TILE + count] = s[:count]
