"""The canonical summation order shared by both backends (see docs/BACKENDS.md).

A sum is a tree of tiles of ``TILE`` values, each tile folded by halving
(``s[i] += s[i + h]`` for ``h = TILE/2, ..., 1``), the tile sums folded again until one value
is left. CUDA blocks of any power-of-two width reproduce it exactly, so results are the same
bits on every run, every launch shape and both backends.
"""

TILE = 256


def tile_count(n: int) -> int:
    """Number of tiles (and so of partial sums) for ``n`` values."""
    return -(-n // TILE)
