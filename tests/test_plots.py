import numpy as np

from kerascharrnn.training import plots


def test_smoothed_is_a_trailing_mean():
    np.testing.assert_allclose(plots.smoothed([1, 2, 3, 4, 5], 2), [1, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(plots.smoothed([4.0], 10), [4.0])
    assert plots.smoothed([], 3).size == 0


def test_loss_plot_is_a_png(tmp_path):
    path = tmp_path / "run_loss.png"
    rng = np.random.default_rng(0)
    train = list(3 - np.linspace(0, 1.5, 300) + rng.normal(0, 0.1, 300))
    plots.write_loss_plot(str(path), train, [2.5, 1.9], [150, 300], list(np.linspace(2e-3, 0, 300)), title="run")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run_loss.png"]  # no temporary file left


def test_a_diverging_runs_nan_and_infinity_are_left_off_the_scale(tmp_path):
    """A run that diverged records NaN or Infinity; its checkpoint's plot is written all the same."""
    cases = {"nan": ([2.0, 1.5, float("nan")], [1.8, float("inf")]),
             "inf": ([2.0, float("inf"), 1.0], [float("-inf"), 1.2]),
             "all": ([float("nan")] * 3, [float("nan"), float("inf")]),
             "flat": ([1.0, 1.0, 1.0], [1.0, 1.0])}
    for name, (train, val) in cases.items():
        path = tmp_path / f"{name}.png"
        plots.write_loss_plot(str(path), train, val, [1, 3], [0.002] * 3)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
