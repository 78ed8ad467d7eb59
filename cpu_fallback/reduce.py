"""The canonical tile-tree sum on the CPU (order in docs/BACKENDS.md): of a vector, of each
column of a batch, and of the tiles of losses the fused kernels emit.

No fastmath here: the order of the additions is the result's definition, shared bit for bit
with the CUDA kernels.
"""

import numpy as np
from numba import njit, prange

from gpukernels._canon import TILE, tile_count

from . import CACHE, ParallelKernel, compute_view, load, widen

# Bytes of a block of columns summed together: 1024 float32 columns, (HALF, 1024) scratch of
# 512 KiB. Wide rows of vectors cost less per view than narrow ones that stay in L1: on 2
# cores (16384, 1024) float32 took 5.3 ms in blocks of 128 columns, 2.9 ms in blocks of 1024.
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


assert TILE == 256, "the levels of _eighth and tile_total are written out for TILE = 256"
HALF = TILE // 2
LANES = 16  # the values a tile is reduced to in registers: _eighth's 32 sums, paired
SCRATCH = TILE + LANES  # what tile_sum needs: a copy of a partial tile, and LANES values


@njit(cache=CACHE, inline="always")
def _eighth(t, k):
    """The halving tree's first three levels (h = 128, 64, 32) over the 8 values of the tile
    ``t`` at ``k + 32 i``: what ``s[k]`` holds after them, for ``k < 32``."""
    low = (load(t, k) + load(t, k + 128)) + (load(t, k + 64) + load(t, k + 192))
    high = (load(t, k + 32) + load(t, k + 160)) + (load(t, k + 96) + load(t, k + 224))
    return low + high


@njit(cache=CACHE)
def tile_total(t, a):
    """The halving tree over the ``TILE`` values of ``t`` (a view): s[k] += s[k + h] for
    h = TILE/2, ..., 1; returns s[0]. The first four levels come straight from ``t`` in one
    vectorised loop (``a``, ``LANES`` scratch, takes their 16 sums), the last four from
    ``a``: a loop over the levels, through a tile of scratch, ran about 2x slower."""
    for k in range(LANES):
        a[k] = _eighth(t, k) + _eighth(t, k + 16)
    for k in range(8):
        a[k] += a[k + 8]
    b0, b1, b2, b3 = a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]
    return (b0 + b2) + (b1 + b3)


@njit(cache=CACHE)
def tile_sum(x, j, s):
    """The canonical sum of tile ``j`` of the 1-D ``x`` (an absent element is 0); ``s`` is
    ``SCRATCH`` scratch, into which a partial tile is copied and padded."""
    lo = j * TILE
    count = min(TILE, x.shape[0] - lo)
    if count == TILE:
        return tile_total(x[lo : lo + TILE], s[TILE:])
    for k in range(count):
        s[k] = load(x, lo + k)
    return padded_total(s, count)


@njit(cache=CACHE)
def padded_total(s, count):
    """The canonical sum of a tile whose ``count`` values are ``s[:count]`` and whose other
    values are absent (0): ``s`` (``SCRATCH``) is padded with zeros and folded."""
    s[count:TILE] = 0
    return tile_total(s[:TILE], s[TILE:])


@njit(cache=CACHE)
def fold_tiles(partial, tiles, s):
    """The canonical tree's levels above the first: ``partial[:tiles]`` (the tile sums) folded
    tile by tile, in place, until one value is left; returns it (``s``: ``SCRATCH``). Tile
    ``j`` of a level is read before ``partial[j]`` is written, and later tiles start past
    ``j``."""
    while tiles > 1:
        level = partial[:tiles]
        tiles = (tiles + TILE - 1) // TILE
        for j in range(tiles):
            partial[j] = tile_sum(level, j, s)
    return partial[0]


@njit(cache=CACHE)
def canonical_total(x):
    """The canonical sum of the 1-D ``x`` (0 when empty), on the calling thread."""
    tiles = (x.shape[0] + TILE - 1) // TILE
    if tiles == 0:
        return x.dtype.type(0)
    s = np.empty(SCRATCH, x.dtype)
    partial = np.empty(tiles, x.dtype)
    for j in range(tiles):
        partial[j] = tile_sum(x, j, s)
    return fold_tiles(partial, tiles, s)


@ParallelKernel
def _total_kernel(x, out, chunk):
    tiles = out.shape[0]
    for b in prange((tiles + chunk - 1) // chunk):
        s = np.empty(SCRATCH, out.dtype)
        for j in range(b * chunk, min(tiles, (b + 1) * chunk)):
            out[j] = tile_sum(x, j, s)
    out[0] = fold_tiles(out, tiles, np.empty(SCRATCH, out.dtype))


@njit(cache=CACHE)
def first_level(rows):
    """The halving tree's first level that adds, over a tile of ``rows >= 2`` present rows:
    ``h`` with ``h < rows <= 2h``; it writes ``h`` rows of scratch."""
    h = HALF
    while h >= rows:
        h //= 2
    return h


@njit(cache=CACHE)
def _column_tile_sum(x, lo, rows, c0, c1, s, out):
    """``out[c0:c1]`` = the canonical sum of each of the columns ``c0:c1`` over the tile of
    rows ``lo : lo + TILE`` of the 2-D ``x``, whose rows from ``lo + rows`` on are absent
    (0), in vectors of columns; ``s`` is ``(first_level(rows), >= c1 - c0)``
    scratch (unused when ``rows`` is 1).

    A subtree whose rows are all absent (in the halving tree, ``s[k]`` with ``k >= rows``)
    is skipped rather than added, and one 0 is added at the end instead: a tree's sum is -0
    only when every addend is -0, and 0 added to a nonzero value leaves it, so the bits are
    those of the whole tree. The first level that adds (``h < rows <= 2h``) reads ``x``
    itself; the levels above it, where every subtree is absent, are skipped.
    """
    w = c1 - c0
    zero = s.dtype.type(0) if rows < TILE else s.dtype.type(-0.0)
    if rows == 1:
        for c in range(w):
            out[c0 + c] = load(x, (lo, c0 + c)) + zero
        return
    h = first_level(rows)
    for k in range(rows - h):
        _sum_into(s[k, :w], x[lo + k, c0:c1], x[lo + k + h, c0:c1])
    for k in range(rows - h, h):
        widen(x[lo + k, c0:c1], s[k, :w])
    h //= 2
    while h >= 1:
        for k in range(h):
            _add_into(s[k, :w], s[k + h, :w])
        h //= 2
    for c in range(w):
        out[c0 + c] = s[0, c] + zero


@ParallelKernel
def _column_totals_kernel(x, partial, block):
    n, m = x.shape
    tiles, blocks = partial.shape[0], (m + block - 1) // block
    scratch_rows = first_level(max(2, min(TILE, n)))  # the tallest tile's
    for task in prange(tiles * blocks):
        j, c0 = task // blocks, (task % blocks) * block
        s = np.empty((scratch_rows, block), partial.dtype)
        lo = j * TILE
        _column_tile_sum(x, lo, min(TILE, n - lo), c0, min(m, c0 + block), s, partial[j])
    # the levels above the tiles, block by block: level j's sum into partial[j], after
    # _column_tile_sum has read the rows (tile j of a level starts at row j * TILE >= j)
    for b in prange(blocks if tiles > 1 else 0):
        c0 = b * block
        s = np.empty((HALF, block), partial.dtype)
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
    """``out[0]`` = the canonical sum of the 1-D ``x``, in one call; ``partial``
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
    block = max(1, min(m, _COLUMN_BLOCK_BYTES // partial.itemsize))
    tasks = tiles * -(-m // block)
    _column_totals_kernel(compute_view(x), partial, block, work=x.size, tasks=tasks)
    out[...] = partial[0]


@njit(cache=CACHE)
def finish_tile(s, count, j, loss, reduce):
    """Emit tile ``j``'s ``count`` elementwise losses held in ``s[:count]`` (``s``:
    ``SCRATCH``): their canonical tile sum into ``loss[j]`` (``reduce``), or the losses
    themselves into ``loss[j*TILE:]``."""
    if reduce:
        loss[j] = padded_total(s, count)
    else:
        loss[j * TILE : j * TILE + count] = s[:count]
