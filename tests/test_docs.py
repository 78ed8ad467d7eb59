"""The examples in the public docstrings run and print what they say (CPU backend), and
docs/API.md, the contract, covers every public name."""

import doctest
import importlib
import re
from pathlib import Path

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


ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "API.md"


def test_api_md_covers_every_public_name():
    """docs/API.md, the contract, names every public function and every op's functions."""
    import gpukernels as gk
    from gpukernels._kinds import NAMES as TERM_KINDS
    from gpukernels._ops import OPS

    text = API.read_text()
    names = set(gk.__all__) | {f for op in OPS.values() for f in op.public}
    missing = sorted(n for n in names | set(TERM_KINDS) if f"`{n}" not in text)
    assert not missing, f"docs/API.md does not mention {missing}"


def test_public_docs_point_at_the_projects_own_contract():
    import gpukernels as gk

    for text in (gk.__doc__, (ROOT / "README.md").read_text(), API.read_text()):
        mentions = set(re.findall(r"[\w./-]*API\.md", text))
        assert mentions <= {"docs/API.md"}, mentions
