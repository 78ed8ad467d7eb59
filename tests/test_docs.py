"""The examples in the public docstrings run and print what they say (CPU backend)."""

import doctest
import importlib

import pytest

MODULES = [
    "gpukernels",
    "gpukernels._softmax_cross_entropy",
    "gpukernels._elementwise_losses",
    "gpukernels._elementwise",
    "gpukernels._batch_sum",
    "gpukernels._composite_loss",
]


@pytest.mark.usefixtures("cpu_backend")
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
