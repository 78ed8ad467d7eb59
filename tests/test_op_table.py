"""The op table (``gpukernels/_ops.py``): each op has a module of its name in both backends
with the same launchers and the same signatures, and is used by the public API."""

import inspect

import pytest

import gpukernels as gk
from gpukernels._ops import OPS


@pytest.mark.parametrize("name", list(OPS))
def test_backends_define_the_same_launchers(name):
    op = OPS[name]
    cpu, cuda = op.module("cpu"), op.module("cuda")
    assert op.launchers
    for launcher in op.launchers:
        cpu_sig = inspect.signature(getattr(cpu, launcher))
        cuda_sig = inspect.signature(getattr(cuda, launcher))
        assert list(cpu_sig.parameters) == list(cuda_sig.parameters), (name, launcher)
    assert callable(cuda.ptx_signatures) and cuda.ptx_signatures()


@pytest.mark.parametrize("name", list(OPS))
def test_public_functions_exist(name):
    for public in OPS[name].public:
        assert public in gk.__all__ and callable(getattr(gk, public))


def test_every_public_function_is_served_by_an_op():
    served = {public for op in OPS.values() for public in op.public}
    helpers = {"LossTerm", "backend", "cuda_available"}
    assert set(gk.__all__) - helpers <= served
