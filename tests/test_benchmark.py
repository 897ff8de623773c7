"""bin/benchmark runs on one tiny configuration and prints well-formed tables (figures are not checked:
speed is measured by running the benchmark, not by tests)."""

import re

from conftest import run_cli


def test_benchmark_tiny_run_prints_tables_and_plot(keras_home, tmp_path):
    result = run_cli("benchmark", "--grid", "1x16", "--iters", 3, "--warmup", 1, "--batch_size", 4, "--seq_length", 8,
                     "--what", "train", "--what", "preprocess", "--preprocess_mb", 1, "--model_type", "lstm",
                     "--model_type", "gru",
                     "--output_md", tmp_path / "b.md", "--output_png", tmp_path / "b.png",
                     env={"KERAS_HOME": keras_home})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith("Machine: ") and "Command: `bin/benchmark --grid 1x16" in out
    for model_type in ("lstm", "gru"):  # median [quartiles], tokens/s, memory
        assert re.search(rf"^\| 1 x 16 {model_type} \| [\d.]+ \[[\d.]+–[\d.]+\] \| [\d,]+ \| -?\d+ \(-?\d+\) \|$",
                         out, re.M), out
    assert re.search(r"^\| 1 MB \| [\d.]+ \| [\d.]+ \| \d+ \|$", out, re.M), out
    assert (tmp_path / "b.md").read_text().strip() == out.strip()
    for model_type in ("lstm", "gru"):
        assert (tmp_path / f"b_{model_type}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_bad_grid_is_one_line():
    result = run_cli("benchmark", "--grid", "2by128")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and "--grid" in result.stderr


def test_runs_alternate_and_quartiles_pool_the_repeats(monkeypatch):
    from kerascharrnn.speed import report

    calls = []
    monkeypatch.setattr(report, "measure", lambda name, config: calls.append(name) or
                        {"times_ms": [len(calls)], "tokens_per_step": 1})
    ours, peer = report.measure_row({}, peer=True, repeats=3, first=1)
    assert calls == ["torch", "tf", "tf", "torch", "torch", "tf"]  # who goes first alternates too
    assert len(ours.runs) == len(peer.runs) == 3

    timing = report.Timing([{"times_ms": [1, 2, 3], "tokens_per_step": 10}, {"times_ms": [4, 5], "tokens_per_step": 10}])
    assert (timing.percentile(25), timing.median_ms, timing.percentile(75)) == (2, 3, 4)
    assert timing.tokens_per_s == 10 / 3 * 1000


def test_calibrate_records_this_machines_paths_and_auto_follows(keras_home, tmp_path, monkeypatch):
    """bin/benchmark --what calibrate times both paths per row and writes the calibration file that
    --fused auto reads (KERASCHARRNN_CALIBRATION points both at a private file)."""
    import json

    from kerascharrnn import resources
    from kerascharrnn.training import calibration

    path = tmp_path / "calibration.json"
    env = {"KERAS_HOME": keras_home, "KERASCHARRNN_CALIBRATION": str(path)}
    result = run_cli("benchmark", "--what", "calibrate", "--grid", "1x16", "--model_type", "gru", "--iters", 2,
                     "--warmup", 1, "--batch_size", 4, "--seq_length", 8, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^\| 1 x 16 gru \| [\d.]+ \[[\d.]+–[\d.]+\] \| [\d.]+ \[[\d.]+–[\d.]+\] \| (fused|Keras) \|$",
                     result.stdout, re.M), result.stdout
    (rows,) = json.loads(path.read_text()).values()
    assert [(r["kind"], r["num_layers"], r["rnn_size"]) for r in rows] == [("gru", 1, 16)]
    # a second measurement of another row is added beside it (and replaces only its own row)
    row = dict(rows[0], num_layers=2, rnn_size=8)
    calibration.record([row], str(path))
    (rows,) = json.loads(path.read_text()).values()
    assert [(r["kind"], r["num_layers"], r["rnn_size"]) for r in rows] == [("gru", 1, 16), ("gru", 2, 8)]
    assert {r["fused_path"] for r in rows} == {"split" if resources.cpu_cores() >= 2 else "on"}
    assert all(r["fused_ms"] > 0 and r["keras_ms"] > 0 for r in rows)
    monkeypatch.setenv("KERASCHARRNN_CALIBRATION", str(path))
    fused_path = rows[0]["fused_path"]  # split on two cores or more
    assert calibration.measured_choice("gru", 1, 20, fused_path) == rows[0]
    assert calibration.measured_choice("lstm", 1, 16, fused_path) is None
    assert calibration.measured_choice("gru", 1, 20, {"on": "split", "split": "on"}[fused_path]) is None
