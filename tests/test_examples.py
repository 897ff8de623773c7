"""examples/cos_regression.py: its pieces, a shrunk training run that must beat an untrained model and
a constant-zero guess, the norm-stabiliser option, the plot, seeding and the command line.

The example is not part of the package, so it is imported by path, relative to this file.
"""

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "cos_regression.py")

# Shrunk from the default (2000 iterations, 64 units, 200 steps) to a couple of seconds of training.
# Seed 0 gives a prediction mse near 0.008 on CPU; seeds 0-4 all stay under 0.05, while an untrained
# model and the constant-zero guess score about 0.5.
SMALL = dict(iters=500, hidden=32, lr=0.01, predict_steps=100, seed=0)
MSE_BOUND = 0.1


def _load_example():
    spec = importlib.util.spec_from_file_location("cos_regression", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cos():
    return _load_example()


@pytest.fixture(scope="module")
def trained(cos, tmp_path_factory):
    png = str(tmp_path_factory.mktemp("cos") / "prediction.png")
    return cos.run(**SMALL, output_png=png)


def test_streams_continue_across_batches(cos):
    batches = cos.cos_streams(streams=6, rho=4, rng=np.random.default_rng(1))
    x1, y1, carry1 = next(batches)
    x2, y2, carry2 = next(batches)
    assert x1.shape == y1.shape == (6, 4, 1) and x1.dtype == np.float32
    np.testing.assert_array_equal(y1[:, :-1], x1[:, 1:])  # targets: the inputs one step ahead
    np.testing.assert_array_equal(x2[:, 0], y1[:, -1])  # row i goes on where it stopped
    np.testing.assert_array_equal(carry1, 1)
    np.testing.assert_array_equal(carry2, 1)
    assert len({float(v) for v in x1[:, 0, 0]}) > 1, "streams should start at different offsets"
    # Each row is the tutorial's cos(linspace(0, 200, 2000)) from some sample on.
    table = np.cos(np.arange(2000 + 4) * 200 / 1999)
    for row in x1[:, :, 0]:
        assert any(np.allclose(row, table[o:o + 4], atol=1e-6) for o in range(2000)), row


def test_restarted_streams_say_so(cos):
    batches = cos.cos_streams(streams=200, rho=3, rng=np.random.default_rng(2), restart_every=4)
    _, y1, _ = next(batches)
    x2, _, carry = next(batches)
    assert set(np.unique(carry)) == {0.0, 1.0}
    assert 20 < (carry == 0).sum() < 80  # about a quarter
    kept = carry == 1
    np.testing.assert_array_equal(x2[kept, 0], y1[kept, -1])
    assert not np.array_equal(x2[~kept, 0], y1[~kept, -1])


def test_norm_stabilizer_penalty(cos):
    import tensorflow as tf

    # Norms 0 (carried in), 1, 1, 3: squared differences 1, 0, 4, mean 5/3.
    prev = tf.zeros((1, 2))
    seq = tf.constant([[[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]]])
    assert float(cos.norm_stabilizer_penalty(prev, seq)) == pytest.approx(5 / 3, rel=1e-5)
    # Rotating without changing length costs nothing.
    prev = tf.constant([[2.0, 0.0]])
    seq = tf.constant([[[0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]]])
    assert float(cos.norm_stabilizer_penalty(prev, seq)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_trained_model_predicts_far_better_than_baselines(cos, trained):
    untrained = cos.run(**{**SMALL, "iters": 0})
    zeros_mse = float(np.mean(np.square(trained.truth[10:])))
    assert trained.prediction.shape == (SMALL["predict_steps"],)
    assert trained.truth.shape == (10 + SMALL["predict_steps"],)
    np.testing.assert_allclose(trained.truth, np.cos(trained.times), atol=1e-6)
    assert trained.times[0] == 0.0  # seeded with the first true values, as the tutorial
    # The baselines must fail the bound, or the test could not fail.
    assert untrained.mse > 3 * MSE_BOUND and zeros_mse > 3 * MSE_BOUND
    assert trained.mse < MSE_BOUND, f"trained {trained.mse}, untrained {untrained.mse}, zeros {zeros_mse}"
    assert np.mean(trained.train_mse[-50:]) < 0.01 * np.mean(trained.train_mse[:10])


@pytest.mark.slow
def test_norm_stabilizer_lowers_the_penalty(cos, trained):
    stabilised = cos.run(**SMALL, norm_stabilizer=1.0)
    plain_late = np.mean(trained.norm_penalty[-50:])
    late = np.mean(stabilised.norm_penalty[-50:])
    assert plain_late > 0 and late > 0
    assert late < np.mean(stabilised.norm_penalty[:50]), "the penalty should fall while it is trained on"
    assert late < 0.6 * plain_late, f"beta=1: {late}, beta=0: {plain_late}"
    assert stabilised.mse != trained.mse


@pytest.mark.slow
def test_output_png(cos, trained):
    assert trained.png and os.path.getsize(trained.png) > 10_000
    with open(trained.png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_matplotlib_no_plot(cos, tmp_path, monkeypatch, capsys):
    result = cos.Result(0.0, np.zeros(3), np.zeros(3), np.zeros(2), [], [], 0.0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    path = str(tmp_path / "none.png")
    assert cos.plot(result, 1, path) is None
    assert not os.path.exists(path)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "matplotlib" in out


@pytest.mark.slow
def test_seed_repeats_exactly(cos):
    tiny = dict(iters=30, hidden=8, predict_steps=20, norm_stabilizer=0.5)
    first, again, other = cos.run(**tiny, seed=3), cos.run(**tiny, seed=3), cos.run(**tiny, seed=4)
    assert first.train_mse == again.train_mse and first.norm_penalty == again.norm_penalty
    np.testing.assert_array_equal(first.prediction, again.prediction)
    assert first.mse == again.mse
    assert first.train_mse != other.train_mse


@pytest.mark.slow
def test_command_line(tmp_path):
    png = tmp_path / "cli.png"
    proc = subprocess.run([sys.executable, EXAMPLE, "--iters", "20", "--hidden", "8", "--predict_steps", "30",
                           "--print_every", "10", "--norm_stabilizer", "1", "--output_png", str(png)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"prediction mse: \d+(\.\d+)?(e[-+]\d+)?", lines[-1]), lines[-1]
    assert float(lines[-1].split(":")[1]) > 0
    assert sum(line.startswith("iter ") for line in lines) == 2
    assert png.exists()
