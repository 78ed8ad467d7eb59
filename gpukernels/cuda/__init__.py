"""The CUDA backend: one module per op (kernels + launcher), twins of ``cpu_fallback``.

Imported only when a call runs on CUDA (``gpukernels._dispatch.kernels``). The modules live
in this subpackage rather than beside the public API so that importing ``mse`` or
``sigmoid`` here cannot shadow the public functions ``gpukernels.mse`` and
``gpukernels.sigmoid``. ``_cuda`` holds streams, array conversion and launch shapes.
"""
