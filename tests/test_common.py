"""cli/common.py: what every tool shares: its one-line errors and exit codes, the missing-extra line, and the
configs made from flags (a preset's values under the flags given)."""

import dataclasses

import pytest
from absl import flags

from kerascharrnn.cli import common
from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref


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
