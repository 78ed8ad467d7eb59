"""One level of the canonical tile-tree sum on the CPU (order in docs/BACKENDS.md).

No fastmath here: the order of the additions is the result's definition, shared bit for bit
with the CUDA kernels.
"""

import numpy as np
from numba import njit, prange

from gpukernels._canon import TILE

from . import CACHE, ParallelKernel, compute_view, per_task

_COLUMN_BLOCK = 64  # columns folded together: a (TILE, 64) float32 tile is 64 KiB


@njit(cache=CACHE)
def _fold(s):
    """Halving tree over a tile: s[k] += s[k + h] for h = TILE/2, ..., 1; returns s[0]."""
    h = TILE // 2
    while h >= 1:
        for k in range(h):
            s[k] += s[k + h]
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
            for k in range(count):
                s[k] = x[lo + k]
            s[count:] = 0
            out[j] = _fold(s)


@ParallelKernel
def _column_tile_sums_kernel(x, out, block):
    n, m = x.shape
    tiles, blocks = out.shape[0], (m + block - 1) // block
    for task in prange(tiles * blocks):
        j, c0 = task // blocks, (task % blocks) * block
        width = min(block, m - c0)
        lo = j * TILE
        rows = min(TILE, n - lo)
        s = np.zeros((TILE, width), out.dtype)
        for r in range(rows):
            for c in range(width):
                s[r, c] = x[lo + r, c0 + c]
        h = TILE // 2
        while h >= 1:
            for r in range(h):
                for c in range(width):
                    s[r, c] += s[r + h, c]
            h //= 2
        for c in range(width):
            out[j, c0 + c] = s[0, c]


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
