"""cli/common.py: what every tool shares: its one-line errors and exit codes, the missing-extra line, what a
stop signal does to it (with stopping.py), and the configs made from flags (a preset's values under the flags
given)."""

import dataclasses
import os
import signal
import sys
import threading
import time
import weakref

import pytest
from absl import flags

from kerascharrnn import stopping
from kerascharrnn.cli import common
from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.io import files


def _tool(run, define=lambda flag_values: flags.DEFINE_integer("n", 1, "a number", flag_values=flag_values)):
    return lambda argv: common.main(argv, define, run, "a tool for tests")


def test_a_user_error_is_one_line_naming_settings_as_flags(capsys):
    def run(flag_values, argv):
        raise UserError(f"{ref('rnn_size')} must be positive")

    assert _tool(run)(["bin/mytool"]) == 1
    assert capsys.readouterr().err == "mytool: error: --rnn_size must be positive\n"


@pytest.mark.parametrize("argv, code, said", [(["t", "--n=x"], 2, "error: flag --n=x"),
                                              (["t", "--nope=1"], 2, "Unknown command line flag 'nope'"),
                                              (["t", "stray"], 2, "unexpected argument(s): stray")])
def test_flags_that_do_not_parse_exit_2_in_one_line(capsys, argv, code, said):
    assert _tool(lambda flag_values, argv: 0)(argv) == code
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1


def test_a_missing_extra_is_named_with_the_install_that_brings_it(capsys):
    def run(flag_values, argv):
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    assert _tool(run)(["t"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("t: error: this tool needs TensorFlow, which this install lacks:")
    assert "pip install 'kerascharrnn[tf]'" in line
    assert "pip install 'kerascharrnn[lite]'" in common.lacking("ai_edge_litert", "--tflite")


def test_anything_else_is_an_internal_error_with_its_details_in_a_log(capsys, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the crash log goes

    def run(flag_values, argv):
        raise ZeroDivisionError("boom")

    assert _tool(run)(["t", "--n=3"]) == 70
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("t: error: internal error: ZeroDivisionError") and str(tmp_path) in line
    [log] = tmp_path.glob("kerascharrnn-crash-t-*.log")
    assert "ZeroDivisionError: boom" in log.read_text() and "--n=3" in log.read_text()


def test_ctrl_c_exits_130_and_help_exits_0(capsys):
    def run(flag_values, argv):
        raise KeyboardInterrupt

    assert _tool(run)(["t"]) == 130 and capsys.readouterr().err == "t: interrupted\n"
    assert _tool(run)(["t", "--help"]) == 0 and "a tool for tests" in capsys.readouterr().out


def _signal_swallowed_by_c_code(signum):
    """Sends `signum` to this process inside a weakref callback, which CPython calls from C and whose exception
    it prints and drops ("Exception ignored in ..."): how a stop raised inside TensorFlow's C code got lost."""
    class Thing:
        pass

    thing = Thing()
    reference = weakref.ref(thing, lambda _: os.kill(os.getpid(), signum))
    del thing
    return reference


def test_a_stop_that_c_code_swallowed_still_stops_the_tool_before_it_commits_a_write(capsys, tmp_path, monkeypatch):
    assert threading.current_thread() is threading.main_thread()  # else the signal would end the test's process
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    out = tmp_path / "out.txt"

    def run(flag_values, argv):
        with files.atomic_path(str(out)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            _signal_swallowed_by_c_code(signal.SIGTERM)
        return 0

    assert _tool(run)(["t"]) == 128 + signal.SIGTERM
    assert [d.exc_type for d in dropped] == [stopping.Stopped]  # CPython did drop what the handler raised
    assert capsys.readouterr().err == "t: stopped by SIGTERM (what it was writing is removed)\n"
    assert os.listdir(tmp_path) == []  # neither the output nor its temporary
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler before the tool's is back


def test_a_stop_swallowed_after_the_last_write_says_the_work_is_complete(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", lambda dropped: None)
    def run(flag_values, argv):
        files.write_text_atomic(str(tmp_path / "out.txt"), "all")
        _signal_swallowed_by_c_code(signal.SIGHUP)

    assert _tool(run)(["t"]) == 128 + signal.SIGHUP
    assert capsys.readouterr().err == "t: stopped by SIGHUP (after it had finished: what it wrote is complete)\n"
    assert (tmp_path / "out.txt").read_text() == "all"


def test_a_stop_that_comes_out_as_another_exception_is_a_stop_not_an_internal_error(capsys):
    def run(flag_values, argv):  # as TensorFlow's C code does: "returned a result with an exception set"
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)  # never reached: the handler raises on the next bytecode
        except stopping.Stopped as e:
            raise SystemError("<built-in function __import__> returned a result with an exception set") from e

    assert _tool(run)(["t"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "t: stopped by SIGTERM (what it was writing is removed)\n"


def test_a_signal_the_process_ignores_stays_ignored(capsys):
    """nohup ignores SIGHUP, a shell SIGINT for a background job: a tool, and a training run, keep that."""
    seen = {}

    def run(flag_values, argv):
        seen["tool"] = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)
        with stopping.StopSignals():
            seen["training"] = signal.getsignal(signal.SIGHUP)

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert _tool(run)(["t"]) == 0
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert seen["tool"][0] == seen["training"] == signal.SIG_IGN and seen["tool"][1] not in (signal.SIG_DFL, None)


def test_a_tool_run_off_the_main_thread_leaves_the_signals_alone(capsys):
    results = []

    def run(flag_values, argv):
        results.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=lambda: results.append(_tool(run)(["t"])))
    thread.start()
    thread.join()
    assert results == [signal.SIG_DFL, 0]


def test_a_config_takes_the_flags_given_over_a_presets_values():
    flag_values = flags.FlagValues()
    common.define_flags(flag_values, ModelConfig)
    common.define_flags(flag_values, TrainConfig)
    flag_values(["t", "--rnn_size=64", "--batchnorm=1"])
    preset = {"rnn_size": 384, "num_layers": 3, "learning_rate": 3e-3}
    model = common.config_from_flags(flag_values, ModelConfig, preset)
    train = common.config_from_flags(flag_values, TrainConfig, preset)
    assert (model.rnn_size, model.num_layers, model.batchnorm) == (64, 3, True)  # given, preset's, given (a bool)
    assert train.learning_rate == 3e-3 and train.batch_size == TrainConfig().batch_size  # preset's, default
    assert common.given(flag_values) == {"rnn_size": 64, "batchnorm": True}
    assert dataclasses.replace(model, rnn_size=128) != model
