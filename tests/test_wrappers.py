"""Every bin/ wrapper and console script, run as the process a user starts: the tests call the tools'
main() in-process, so this is where the entry points themselves are run (the tools that need TensorFlow
also run as processes where a process is the point: signals and kills in test_reliability.py, workers
in test_distribute.py, the server in conftest.py)."""

import json
import shutil
import subprocess

import pytest
from conftest import run_process, shakespeare_text

TOOLS = ("benchmark", "convert", "eval", "export", "novelty", "preprocess", "sample", "serve", "train")


@pytest.mark.parametrize("tool", TOOLS)
def test_bin_wrapper_and_console_script_run(tool, tmp_path):
    wrapper = run_process(tool, "--help")
    assert wrapper.returncode == 0 and wrapper.stdout.startswith(f"bin/{tool}:"), wrapper.stderr[-2000:]
    script = shutil.which(f"kerascharrnn-{tool}")
    assert script, f"kerascharrnn-{tool} is not installed (pip install -e '.[tf]')"
    done = subprocess.run([script, "--no_such_flag"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith(f"kerascharrnn-{tool}: error: "), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_preprocess_and_novelty_processes_end_to_end(tmp_path):
    """The two tools that never import TensorFlow, as processes, on a real corpus and a pipe."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_text()[:20_000], encoding="utf-8")
    done = run_process("preprocess", "--input_txt", corpus, "--output_h5", tmp_path / "c.h5", "--output_json",
                       tmp_path / "c.json")
    assert done.returncode == 0 and "Total vocabulary size:" in done.stdout, done.stderr
    copied = shakespeare_text()[1000:1300]
    novelty = run_process("novelty", "--input_txt", corpus, "--json", input=copied)
    assert novelty.returncode == 0, novelty.stderr
    assert json.loads(novelty.stdout)["total"]["longest_copy"]["length"] == len(copied)


def test_sample_eval_and_export_processes_on_a_trained_checkpoint(trained, tmp_path):
    """The tools that load TensorFlow, each once as a fresh process (its start-up: quiet TensorFlow, XLA's
    flags before the first compilation, one intra-op thread for sampling)."""
    sample = run_process("sample", "--checkpoint", trained["keras"], "--length", 60, "--start_text", "ROMEO:",
                         "--seed", 3, "--jsonl")
    assert sample.returncode == 0 and not sample.stderr.strip(), sample.stderr[-2000:]
    text = json.loads(sample.stdout)
    assert len(text) == 60 and text.startswith("ROMEO:")
    evaluated = run_process("eval", "--checkpoint", trained["keras"], "--input_h5", trained["h5"])
    assert evaluated.returncode == 0 and evaluated.stdout.startswith("val loss: "), evaluated.stderr[-2000:]
    exported = run_process("export", "--checkpoint", trained["keras"], "--export_dir", tmp_path / "m")
    assert exported.returncode == 0 and (tmp_path / "m" / "checkpoint" / "1" / "saved_model.pb").exists(), \
        exported.stderr[-2000:]
