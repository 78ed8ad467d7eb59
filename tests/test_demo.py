"""The demo's parts in fast mode, with their results checked, and the composite sum rule.

Training on Numba's CUDA simulator would take hours, so every test here forces the ``cpu``
backend (NumPy arrays run the ``cpu_fallback`` kernels).
"""

import numpy as np
import pytest

from gpukernels import demo
from gpukernels.demo import descent, localize, neuron

# Training on the simulator would take hours: the demos run on the CPU kernels here.
pytestmark = pytest.mark.usefixtures("cpu_backend")


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_descent_reaches_the_minimum(tmp_path):
    result = descent.run(tmp_path, fast=True)
    assert abs(result["x"] - 2.0) <= 1e-6
    assert result["steps"] == 70  # |x_k - 2| = 6 * 0.8^k first drops below 1e-6 at k = 70
    np.testing.assert_allclose(result["iterates"][:4], [8.0, 6.8, 5.84, 5.072], rtol=1e-12)
    assert result["ok"] and _is_png(result["figure"])


def test_neuron_separates_held_out_points(tmp_path):
    result = neuron.run(tmp_path, fast=True, seed=0)
    assert result["accuracy"] >= 0.95
    assert result["costs"][-1] < 0.1 * result["costs"][0]
    assert result["ok"] and _is_png(result["figure"])


def test_localize_beats_trivial_baselines(tmp_path):
    result = localize.run(tmp_path, fast=True, seed=0)
    assert result["accuracy"] > result["majority_rate"] + 0.3
    assert result["mean_iou"] > result["baseline_iou"] + 0.2
    assert result["losses"][-1] < 0.2 * result["losses"][0]
    assert result["ok"] and _is_png(result["figure"])


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float64, 1e-13), (np.float32, 1e-6)])
def test_composite_gradient_is_the_sum_of_the_terms(dtype, rtol):
    rng = np.random.default_rng(1)
    _, target = localize.make_images(rng, 300)
    pred = rng.normal(0.0, 2.0, size=target.shape).astype(dtype)
    gap = localize.sum_rule_gap(pred, target.astype(dtype), np)
    assert gap["grad_scale"] > 1e-3  # gradients of a real size, from both terms
    assert gap["grad"] <= rtol * gap["grad_scale"]
    assert gap["loss"] <= rtol


def test_separate_terms_by_hand():
    """The sum-rule reference against the formulas of the README's localisation section."""
    rng = np.random.default_rng(2)
    pred = rng.normal(size=(6, 5))
    target = np.zeros((6, 5))
    target[[0, 3, 4], 0] = 1.0
    target[[0, 3, 4], 1:] = rng.random((3, 4))
    _, grad = localize.separate_terms(pred, target, np)
    expected = np.zeros_like(pred)
    expected[:, 0] = (1.0 / (1.0 + np.exp(-pred[:, 0])) - target[:, 0]) / 6
    rows = [0, 3, 4]
    expected[rows, 1:] = 2.0 * (pred[rows, 1:] - target[rows, 1:]) / (3 * 4)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


def test_main_runs_one_part(tmp_path, capsys):
    assert demo.main(["descent", "--fast", "--out", str(tmp_path)]) == 0
    assert "8, 6.8, 5.84, 5.072" in capsys.readouterr().out
    assert _is_png(tmp_path / "descent.png")


def test_pytorch_part_follows_torchs_loss_curve_in_bfloat16(tmp_path):
    """The drop-in replacement: a bfloat16 MLP trained with gpukernels.torch.CrossEntropyLoss
    follows the loss curve of torch.nn.CrossEntropyLoss from the same start."""
    pytest.importorskip("torch")
    from gpukernels.demo import pytorch

    result = pytorch.run(tmp_path, fast=True, seed=0)
    assert result["gap"] < 0.05
    assert result["losses"][-1] < 0.1 * result["losses"][0]
    assert (
        result["accuracy"] > 0.9 and abs(result["accuracy"] - result["reference_accuracy"]) < 0.02
    )
    assert result["ok"] and _is_png(result["figure"])


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--out", "FILE"], None, "File exists"),
        (["--out", "DIR", "--seed", "-1"], None, "--seed: must be an integer >= 0"),
        (["--out", "DIR"], "gpu", "GPUKERNELS_BACKEND must be one of"),
    ],
)
def test_usage_errors_come_before_any_part_runs(tmp_path, monkeypatch, capsys, argv, env, message):
    """A folder that cannot be made, a negative seed and a backend setting that cannot run
    the demo's arrays end the command with a usage error (exit 2) before any training."""
    (tmp_path / "FILE").touch()
    if env:
        monkeypatch.setenv("GPUKERNELS_BACKEND", env)
    paths = {"FILE": str(tmp_path / "FILE"), "DIR": str(tmp_path / "out")}
    with pytest.raises(SystemExit) as exit_:
        demo.main(["descent", "--fast", *(paths.get(a, a) for a in argv)])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and "gpukernels demo: arrays are" not in captured.out


def test_info_says_where_numpy_arrays_run(monkeypatch):
    from gpukernels import cli

    assert cli.info()["NumPy arrays run on"] == "cpu"
    monkeypatch.setenv("GPUKERNELS_BACKEND", "gpu")
    assert cli.info()["NumPy arrays run on"].startswith("nothing: GPUKERNELS_BACKEND must be")
