"""bin/benchmark runs on one tiny configuration and prints well-formed tables (figures are not checked:
speed is measured by running the benchmark, not by tests)."""

import re

from conftest import run_cli


def test_benchmark_tiny_run_prints_tables_and_plot(keras_home, tmp_path):
    result = run_cli("benchmark", "--grid", "1x16", "--iters", 2, "--warmup", 1, "--batch_size", 4, "--seq_length", 8,
                     "--what", "train", "--what", "preprocess", "--preprocess_mb", 1,
                     "--output_md", tmp_path / "b.md", "--output_png", tmp_path / "b.png",
                     env={"KERAS_HOME": keras_home})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith("Machine: ") and "Command: `bin/benchmark --grid 1x16" in out
    assert re.search(r"^\| 1 x 16 lstm \| [\d.]+ ± [\d.]+ \| [\d,]+ \| -?\d+ \(-?\d+\) \|$", out, re.M), out
    assert re.search(r"^\| 1 MB \| [\d.]+ \| [\d.]+ \| \d+ \|$", out, re.M), out
    assert (tmp_path / "b.md").read_text().strip() == out.strip()
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_bad_grid_is_one_line():
    result = run_cli("benchmark", "--grid", "2by128")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and "--grid" in result.stderr
