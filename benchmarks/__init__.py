"""Benchmarks of gpukernels against NumPy/CuPy expressions and PyTorch, on one device.

Run them from the repository root with ``python -m benchmarks`` (``make bench``); see
README.md here. This folder is not installed with the library, and the library never imports
it.

Layout: one module per op of the library's op table (``gpukernels._ops.OPS``, whose ``bench``
field names the module), plus the extra cases of ``runner.EXTRA_CASES``: ``column_sum``
(``batch_sum`` over the batch axis), ``overhead`` (the Python cost of one small call),
``torch_xent`` (``gpukernels.torch.cross_entropy`` on tensors), ``torch_xent_eval`` (the same
under ``torch.no_grad()``, the loss alone: time and peak memory), ``torch_mse_eval``
(``gpukernels.torch.mse_loss`` likewise) and ``linear_xent`` (the
fused output layer: time and peak memory); each holds its
byte model and its variants. ``device`` (arrays, clocks and the copy of one backend),
``harness`` (warm-up, timing, checking: the one place a case is measured), ``baselines`` (the
PyTorch bridge), ``memory`` (peak extra memory of one call, in a fresh process), ``report``
(table, JSON, plot) and ``runner`` (the command line and the run) serve them all.

An op module defines:

- ``NAME``, ``TITLE``, ``BYTES`` (the byte model in words);
- ``SIZES[backend][tier]``: shapes per tier (``small``, ``medium``, ``large``);
- ``DTYPES[backend]``: the default dtypes;
- ``shape_of(size)``: the op's shape for an explicit ``--sizes`` entry;
- ``nbytes(shape, dtype)``: the fewest bytes a call must move through memory;
- ``inputs(dev, shape, dtype, seed)``: a tuple of random arrays of the device's library;
- ``reference(dev, inputs)``: ``(loss, grad)`` in float64 (either may be ``None``; ``grad``
  may be a tuple, one gradient per differentiated argument);
- ``variants(dev)``: the implementations to time, ``gpukernels`` first.

and optionally ``HOST_CLOCK`` (time batches of calls on the host clock, no GB/s), ``MEMORY``
(measure each variant's peak extra memory), ``SIZE_DIMS`` (the ``--sizes`` shapes it takes,
default 1-D and 2-D) and ``unavailable(dev)`` (why it cannot run here, "" when it can).

A new op gets its module here and its ``bench`` entry in the op table; no list of op names is
kept in this folder.
"""
