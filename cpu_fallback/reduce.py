"""One level of the canonical tile-tree sum on the CPU (order in docs/BACKENDS.md).

No fastmath here: the order of the additions is the result's definition, shared bit for bit
with the CUDA kernels.
"""

import numpy as np
from numba import njit, prange

from gpukernels._canon import TILE

from . import CACHE, ParallelKernel, compute_view, per_task

_COLUMN_BLOCK = 128  # columns folded together: the (TILE / 2, 128) float32 scratch is 64 KiB


@njit(cache=CACHE, inline="always")
def _add_into(a, b):
    """a += b, element by element: two views of a tile, so that the loop vectorises (indexing
    one array at two computed offsets does not)."""
    for c in range(a.shape[0]):
        a[c] += b[c]


@njit(cache=CACHE)
def _fold(s):
    """Halving tree over a tile: s[k] += s[k + h] for h = TILE/2, ..., 1; returns s[0]."""
    h = TILE // 2
    while h >= 1:
        _add_into(s[:h], s[h : h + h])  # two views: the additions vectorise
        h //= 2
    return s[0]


@ParallelKernel
def _tile_sums_kernel(x, out, chunk):
    n, tiles = x.shape[0], out.shape[0]
    for b in prange((tiles + chunk - 1) // chunk):
        s = np.empty(TILE, out.dtype)
        for j in range(b * chunk, min(tiles, (b + 1) * chunk)):
            lo = j * TILE
            count = min(TILE, n - lo)
            s[:count] = x[lo : lo + count]
            s[count:] = 0
            out[j] = _fold(s)


@ParallelKernel
def _column_tile_sums_kernel(x, out, block):
    n, m = x.shape
    tiles, blocks = out.shape[0], (m + block - 1) // block
    half = TILE // 2
    for task in prange(tiles * blocks):
        j, c0 = task // blocks, (task % blocks) * block
        width = min(block, m - c0)
        lo = j * TILE
        rows = min(TILE, n - lo)
        s = np.empty((half, width), out.dtype)
        zero = s.dtype.type(0)
        # the tree's first level read straight from x, vectors of columns: s[r] = x[r] +
        # x[r + half], an absent row being 0 (added, not skipped: -0 + 0 is +0)
        for r in range(half):
            # 1-D row views: 2-D indexing with computed indices does not vectorise
            d, a = s[r], x[lo + r, c0 : c0 + width]
            if r + half < rows:
                b = x[lo + r + half, c0 : c0 + width]
                for c in range(width):
                    d[c] = a[c] + b[c]
            elif r < rows:
                for c in range(width):
                    d[c] = a[c] + zero
            else:
                d[:] = 0
        h = half // 2
        while h >= 1:
            for r in range(h):
                _add_into(s[r], s[r + h])
            h //= 2
        out[j, c0 : c0 + width] = s[0]


def tile_sums(x, out):
    """out[j] = canonical tree sum of x[j*TILE:(j+1)*TILE], in out's dtype."""
    _tile_sums_kernel(compute_view(x), out, tasks(x.shape[0])[1], work=x.shape[0])


def column_tile_sums(x, out):
    """out[j, c] = canonical tree sum of x[j*TILE:(j+1)*TILE, c]."""
    block = min(_COLUMN_BLOCK, max(1, x.shape[1]))
    _column_tile_sums_kernel(compute_view(x), out, block, work=x.size)


@njit(cache=CACHE)
def finish_tile(s, count, j, loss, reduce):
    """Emit tile ``j``'s ``count`` elementwise losses held in ``s``: their canonical tile sum
    into ``loss[j]`` (``reduce``), or the losses themselves into ``loss[j*TILE:]``."""
    if reduce:
        s[count:] = 0
        loss[j] = _fold(s)
    else:
        loss[j * TILE : j * TILE + count] = s[:count]


def tasks(n: int) -> tuple[int, int]:
    """(tiles, tiles per parallel task) for ``n`` elements: several tasks per thread."""
    tiles = -(-n // TILE)
    return tiles, per_task(tiles)
