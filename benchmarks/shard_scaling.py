"""Class-sharded cross-entropy: what crosses between shards, and Dask's time as the column
chunks multiply. ``python -m benchmarks.shard_scaling [--rows N] [--classes V]``.

Bytes exchanged per row: each shard contributes its ``(max, sum, z_target, sum z)`` stats,
4 numbers of 4 bytes (float32 stats, also for 16-bit logits), against the row's ``V`` logits
for gathering them. The timing runs ``gpukernels.dask.softmax_cross_entropy`` on the threaded
scheduler with 1 row chunk and 1, 2, 4, 8 and 16 column chunks, against the unsplit
``gk.softmax_cross_entropy`` on the same NumPy array (float32, checked to agree first).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gpukernels as gk


def exchanged_bytes(num_classes: int, shards: int, logit_bytes: int) -> tuple[int, int]:
    """Per row: ``(stats bytes over all shards, bytes of the row's logits)``."""
    return 4 * 4 * shards, num_classes * logit_bytes


def _best(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shard_scaling")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=32768)
    args = parser.parse_args(argv)
    import dask
    import dask.array as da

    import gpukernels.dask as gkd

    rng = np.random.default_rng(0)
    n, v = args.rows, args.classes
    z = rng.standard_normal((n, v)).astype(np.float32)
    y = rng.integers(0, v, n)
    want_loss, want_grad = gk.softmax_cross_entropy(z, y)
    unsplit = _best(lambda: gk.softmax_cross_entropy(z, y))
    print(
        f"rows {n}, classes {v}, float32; unsplit gk.softmax_cross_entropy: {unsplit * 1e3:.1f} ms"
    )
    print("column chunks | stats bytes/row | logits bytes/row (bf16) | dask time | vs unsplit")
    with dask.config.set(scheduler="threads"):
        for chunks in (1, 2, 4, 8, 16):
            logits = da.from_array(z, chunks=(n, -(-v // chunks)))
            loss, grad = gkd.softmax_cross_entropy(logits, y)
            got_loss, got_grad = dask.compute(loss, grad)
            np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
            np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-9)
            seconds = _best(
                lambda logits=logits: dask.compute(*gkd.softmax_cross_entropy(logits, y))
            )
            stats, row = exchanged_bytes(v, chunks, 2)
            print(
                f"{chunks:13d} | {stats:15d} | {row:23d} | {seconds * 1e3:6.1f} ms | "
                f"{seconds / unsplit:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
