import dataclasses
import json
import math
import os
import shutil
import zipfile

import keras
import numpy as np
import pytest
from conftest import run_cli, train_in_process

from kerascharrnn.config import ModelConfig
from kerascharrnn.data import batches
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.models import stack
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.presets import PRESETS
from kerascharrnn.training import loop, trainer
from kerascharrnn.vocab import Vocabulary


def test_loss_falls(trained):
    history = trained["result"].train_loss_history
    assert len(history) == 40
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.5
    assert trained["result"].val_loss_history[-1] < math.log(trained["vocab"].size)


def test_checkpoint_files_and_json_fields(trained):
    prefix = trained["prefix"]
    for tag in (20, 40, "best"):
        for ext in (".keras", ".state.npz", ".json"):
            assert os.path.exists(f"{prefix}_{tag}{ext}"), (tag, ext)
    record = json.load(open(prefix + "_40.json"))
    assert record["iteration"] == 40
    assert len(record["train_loss_history"]) == 40
    assert record["val_loss_history_it"] == [20, 40]
    assert len(record["val_loss_history"]) == 2
    assert record["model_config"]["rnn_size"] == 32 and record["train_config"]["batch_size"] == 4
    assert record["vocab"]["idx_to_token"]["1"] == trained["vocab"].tokens[0]
    best = json.load(open(prefix + "_best.json"))
    assert best["model_file"] == os.path.basename(prefix) + "_best.keras"
    assert min(record["val_loss_history"]) == best["val_loss_history"][-1]
    assert ckpt.find_latest(prefix) == prefix + "_40.json"


def test_checkpoint_loads_in_plain_keras_and_carries_vocab(trained):
    model = keras.models.load_model(trained["keras"])
    assert model.inputs[0].shape == (4, None)
    assert model(np.zeros((4, 1), np.int32)).shape == (4, 1, trained["vocab"].size)
    with zipfile.ZipFile(trained["keras"]) as archive:
        assert ckpt.VOCAB_ENTRY in archive.namelist()
    assert ckpt.read_vocab(trained["keras"]) == trained["vocab"]
    assert ckpt.stored_model_config(trained["keras"]) == trained["model_config"]
    charrnn = CharRNN.from_checkpoint(trained["keras"])
    assert (charrnn.config, charrnn.vocab, charrnn.batch_size) == (trained["model_config"], trained["vocab"], 4)
    single = charrnn.with_batch_size(1)
    assert single.batch_size == 1 and single.config == charrnn.config
    for a, b in zip(single.model.get_weights(), charrnn.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_model_without_json_is_ignored(trained, tmp_path):
    prefix = str(tmp_path / "c")
    for ext in (".keras", ".state.npz", ".json"):
        with open(trained["prefix"] + "_20" + ext, "rb") as src, open(f"{prefix}_20{ext}", "wb") as dst:
            dst.write(src.read().replace(b"checkpoint_20", b"c_20") if ext == ".json" else src.read())
    with open(trained["keras"], "rb") as src, open(prefix + "_40.keras", "wb") as dst:
        dst.write(src.read())  # a run killed before its .json: incomplete
    assert ckpt.find_latest(prefix) == prefix + "_20.json"


def test_validation_leaves_training_state_untouched(trained):
    config = trained["config"]
    layouts = batches.layouts_for(batches.split_lengths(config.input_h5), config.batch_size, config.seq_length)
    charrnn = CharRNN.build(trained["model_config"], trained["vocab"], config.batch_size)
    model = charrnn.model
    one_device = trainer.Trainer(config, charrnn, layouts)
    inputs, targets = next(iter(batches.minibatches(config.input_h5, "train", layouts["train"])))
    one_device.train_step(inputs, targets)
    before = stack.get_states(model)
    assert one_device.evaluate(config.input_h5, "val") > 0
    for a, b in zip(before, stack.get_states(model)):
        np.testing.assert_array_equal(a, b)


def test_interrupted_and_resumed_run_matches_uninterrupted(trained, tmp_path):
    from kerascharrnn.data.preprocess import preprocess

    with open(trained["config"].input_h5.replace(".h5", ".txt"), encoding="utf-8") as f:
        (tmp_path / "mini.txt").write_text(f.read()[:3000], encoding="utf-8")
    preprocess(str(tmp_path / "mini.txt"), str(tmp_path / "mini.h5"), str(tmp_path / "mini.json"), quiet=True)
    base = dataclasses.replace(trained["config"], max_iters=0, max_epochs=2, checkpoint_every=20,
                               checkpoint_name=str(tmp_path / "full"), lr_decay_every=1,
                               input_h5=str(tmp_path / "mini.h5"), input_json=str(tmp_path / "mini.json"))
    model_config = dataclasses.replace(trained["model_config"], dropout=0.2)
    vocab = Vocabulary.load(base.input_json)
    model_config = dataclasses.replace(model_config, vocab_size=vocab.size)
    lengths = batches.split_lengths(base.input_h5)
    layouts = batches.layouts_for(lengths, base.batch_size, base.seq_length)
    num_train = layouts["train"].num_batches
    full = train_in_process(base, model_config)
    assert len(full.train_loss_history) == 2 * num_train

    stop_at = num_train + 3  # mid-way through the second epoch, after a learning-rate decay
    part = dataclasses.replace(base, checkpoint_name=str(tmp_path / "part"), max_iters=stop_at)
    train_in_process(part, model_config)
    record = ckpt.read_record(str(tmp_path / f"part_{stop_at}.json"))
    charrnn = CharRNN.from_checkpoint(record.model_path, batch_size=base.batch_size)
    resumed = train_in_process(dataclasses.replace(record.train_config, max_iters=0), model_config, charrnn=charrnn,
                               resume=record)
    assert len(resumed.train_loss_history) == len(full.train_loss_history)
    np.testing.assert_allclose(resumed.train_loss_history, full.train_loss_history, atol=1e-6, rtol=0)
    np.testing.assert_allclose(resumed.val_loss_history[-1], full.val_loss_history[-1], atol=1e-6)


def test_parameter_advice_says_which_way_the_risk_lies():
    assert "memorise" in loop.parameter_advice(3_000_000, 100_000)
    assert "underfits" in loop.parameter_advice(10_000, 1_000_000)
    assert "within an order of magnitude" in loop.parameter_advice(1_000_000, 900_000)


def test_resume_is_exact_with_cosine_warmup_weight_decay_and_embedding_dropout(trained, tmp_path):
    """The new schedule and regularisers keep resume exact (state and schedule position restored)."""
    base = dataclasses.replace(trained["config"], max_iters=30, checkpoint_every=10, lr_schedule="cosine",
                               warmup_iters=5, min_learning_rate=1e-4, weight_decay=0.1,
                               checkpoint_name=str(tmp_path / "full"))
    model_config = dataclasses.replace(trained["model_config"], embedding_dropout=0.2, dropout=0.1)
    full = train_in_process(base, model_config)
    assert ckpt.read_record(str(tmp_path / "full_10.json")).train_config.lr_schedule_iters == 30  # resolved
    # the same run stopped at 10 (as by Ctrl-C): its schedule still ends at 30
    part = dataclasses.replace(base, checkpoint_name=str(tmp_path / "part"), max_iters=10, lr_schedule_iters=30)
    train_in_process(part, model_config)
    record = ckpt.read_record(str(tmp_path / "part_10.json"))
    charrnn = CharRNN.from_checkpoint(record.model_path, batch_size=base.batch_size)
    assert charrnn.config.embedding_dropout == 0.2
    resumed = train_in_process(dataclasses.replace(record.train_config, max_iters=30), model_config,
                               charrnn=charrnn, resume=record)
    np.testing.assert_allclose(resumed.train_loss_history, full.train_loss_history, atol=1e-6, rtol=0)
    full_record = ckpt.read_record(str(tmp_path / "full_30.json"))
    lr = full_record.history["learning_rate_history"]
    assert len(lr) == 30 and lr[0] < lr[4] and lr[-1] < lr[10]  # warm-up, then the cosine falls
    assert os.path.exists(str(tmp_path / "full_loss.png"))


def test_weight_decay_uses_adamw_on_matrices_only(trained):
    config = dataclasses.replace(trained["config"], weight_decay=0.1)
    charrnn = CharRNN.build(trained["model_config"], trained["vocab"], config.batch_size)
    layouts = batches.layouts_for(batches.split_lengths(config.input_h5), config.batch_size, config.seq_length)
    adamw = trainer.Trainer(config, charrnn, layouts).optimizer
    assert isinstance(adamw, keras.optimizers.AdamW)
    decayed = {v.path for v in charrnn.model.trainable_variables if adamw._use_weight_decay(v)}
    assert decayed == {v.path for v in charrnn.model.trainable_variables if len(v.shape) == 2}
    assert isinstance(trainer.Trainer(trained["config"], charrnn, layouts).optimizer, keras.optimizers.Adam)


class TickingClock:
    """A clock that moves `tick` seconds each time it is read, the tick growing by `growth` each time: the
    training loop reads it once per iteration (and again after a validation), so a run on it runs at a
    known speed (growth > 1: slowing down)."""

    def __init__(self, tick: float, growth: float = 1.0):
        self.now, self.tick, self.growth = 0.0, tick, growth

    def __call__(self) -> float:
        self.now += self.tick
        self.tick *= self.growth
        return self.now


def _budget_run(trained, tmp_path, name, clock, **changes):
    config = dataclasses.replace(trained["config"], lr_schedule="cosine", max_minutes=0.25, max_iters=0,
                                 max_epochs=1000, checkpoint_name=str(tmp_path / name), **changes)
    lines = []
    result = train_in_process(config, trained["model_config"], clock=clock, log=lines.append)
    return result, "\n".join(lines)


def test_time_budget_stops_cleanly_and_fits_the_cosine_to_it(trained, tmp_path):
    """A 15 s budget on a clock that runs at a constant speed: the run stops once the budget is spent, and
    the cosine schedule, fitted to the speed measured after the first (compiling) step, ends there."""
    result, log = _budget_run(trained, tmp_path, "c", TickingClock(0.05), checkpoint_every=0)
    assert "Time budget of 0.25 minutes spent at iteration" in log
    assert "the cosine schedule ends at iteration" in log
    record = ckpt.read_record(result.checkpoint_json)
    assert 15 <= record.elapsed_seconds < 15.5  # stopped once the budget was spent
    end = record.train_config.lr_schedule_iters
    assert end > loop.SPEED_PROBE_ITERS
    assert abs(end - record.iteration) <= 2  # the speed was constant: the fit is exact but for the last step
    rates = record.history["learning_rate_history"]
    assert rates[0] == rates[loop.SPEED_PROBE_ITERS] == pytest.approx(5e-3)  # held until the length was known
    assert rates[-1] < 5e-3 * 0.05  # annealed to the end of the budget
    assert "training characters" in log and "parameters" in log


def test_time_budget_refits_the_cosine_at_every_checkpoint(trained, tmp_path):
    """The speed drifts over a run (here it slows): the cosine's end is estimated again at each checkpoint."""
    result, _ = _budget_run(trained, tmp_path, "r", TickingClock(0.03, growth=1.003), checkpoint_every=25)
    records = sorted((ckpt.read_record(str(p)) for p in tmp_path.glob("r_[0-9]*.json")), key=lambda r: r.iteration)
    assert len(records) >= 4
    ends = [r.train_config.lr_schedule_iters for r in records[:-1]]
    assert len(set(ends[1:])) > 1  # refitted, not fixed once
    assert all(end >= r.iteration for end, r in zip(ends[1:], records[1:]))
    assert ends[-1] < ends[1]  # a slower run: fewer iterations fit the budget


def test_speed_probe_and_the_schedule_fit():
    probe = loop.SpeedProbe(budget_s=100.0)
    assert not probe.due(50, now=5.0, share_of_budget=0.02)  # not started
    probe.start(1, now=0.0)
    probe.start(5, now=1.0)  # already started: a no-op
    assert not probe.due(loop.SPEED_PROBE_ITERS, 1.0, 0.01)  # too few iterations
    assert probe.due(loop.SPEED_PROBE_ITERS + 1, 1.0, 0.01) and not probe.due(loop.SPEED_PROBE_ITERS + 1, 1.0, 0.02)
    assert probe.seconds_per_iteration(11, now=1.0) == pytest.approx(0.1)
    assert loop.fitted_schedule_end(iteration=100, seconds_per_iteration=0.5, remaining_s=10.0,
                                    last_iteration=1000) == 120
    assert loop.fitted_schedule_end(100, 0.5, 10.0, last_iteration=110) == 110
    assert loop.fitted_schedule_end(100, 0.5, -3.0, last_iteration=1000) == 100
    assert [loop.checkpoint_due(i, 10, at_end=False) for i in (9, 10, 11)] == [False, True, False]
    assert loop.checkpoint_due(3, 0, at_end=True) and not loop.checkpoint_due(20, 0, at_end=False)


def test_throughput_counts_the_steps_since_the_last_report():
    throughput = loop.Throughput(tokens_per_step=100, now=0.0)
    for _ in range(4):
        throughput.step()
    assert throughput.report(now=2.0) == 200.0
    throughput.step()
    assert throughput.report(now=3.0) == 100.0


def test_preset_values_apply_and_explicit_flags_win(small_corpus, tmp_path):
    _, h5, _ = small_corpus
    result = run_cli("train", "--input_h5", h5, "--preset", "cpu_15min", "--rnn_size", 16, "--batch_size", 4,
                     "--seq_length", 16, "--max_iters", 2, "--checkpoint_name", tmp_path / "p")
    assert result.returncode == 0, result.stderr
    record = ckpt.read_record(str(tmp_path / "p_2.json"))
    preset = PRESETS["cpu_15min"]
    assert record.model_config.rnn_size == 16 and record.train_config.batch_size == 4  # given explicitly
    assert record.model_config.num_layers == preset["num_layers"]
    assert record.model_config.embedding_dropout == preset["embedding_dropout"]
    assert (record.model_config.copy_memory, record.model_config.copy_reset) == (512, 0.1)  # copy attention
    assert record.train_config.lr_schedule == "cosine" and record.train_config.weight_decay == preset["weight_decay"]
    unknown = run_cli("train", "--preset", "tpu_huge")
    assert unknown.returncode != 0 and "--preset" in unknown.stderr


def test_a_preset_with_its_copy_attention_turned_off_trains(small_corpus, tmp_path):
    """--copy_memory 0 leaves the preset's --copy_reset unused, not a model that disagrees with its config."""
    _, h5, _ = small_corpus
    result = run_cli("train", "--input_h5", h5, "--preset", "cpu_15min", "--copy_memory", 0, "--rnn_size", 16,
                     "--batch_size", 4, "--seq_length", 16, "--max_iters", 1, "--checkpoint_name", tmp_path / "p")
    assert result.returncode == 0, result.stderr
    assert run_cli("sample", "--checkpoint", tmp_path / "p_1.keras", "--length", 5).returncode == 0
    assert ModelConfig(copy_reset=0.1).canonical() == ModelConfig()
    assert ModelConfig(copy_memory=8, copy_reset=0.1).canonical() != ModelConfig(copy_memory=8)


def test_a_checkpoint_is_checked_once_per_load(trained, monkeypatch):
    """bin/sample checks a .keras before TensorFlow loads and then loads it: the archive is read and its
    CRCs checked once (it was seven times), whatever asks for its vocabulary or config."""
    calls = []
    original = zipfile.ZipFile.testzip
    monkeypatch.setattr(zipfile.ZipFile, "testzip", lambda self: calls.append(1) or original(self))
    shutil.copyfile(trained["keras"], trained["keras"] + ".copy.keras")  # a file no test read before
    result = run_cli("sample", "--checkpoint", trained["keras"] + ".copy.keras", "--length", 20, "--seed", 1)
    assert result.returncode == 0, result.stderr
    assert len(calls) == 1
    os.utime(trained["keras"] + ".copy.keras", ns=(1, 1))  # another version of the file: read again
    ckpt.read_vocab(trained["keras"] + ".copy.keras")
    assert len(calls) == 2


def test_a_run_is_a_library_call_planned_without_tensorflow(small_corpus, tmp_path):
    """training/plan.py resolves a run with no TensorFlow imported (a fresh interpreter checks); training/run.py
    executes the plan: bin/train without its flags, and the same checkpoints."""
    import subprocess
    import sys

    from kerascharrnn.errors import UserError
    from kerascharrnn.training import plan, run

    _, h5, _ = small_corpus
    settings = dict(input_h5=h5, batch_size=4, seq_length=16, max_iters=6, checkpoint_every=6, print_every=0,
                    seed=1, rnn_size=16, wordvec_size=8, num_layers=1, checkpoint_name=str(tmp_path / "lib"))
    planned = plan.plan(plan.Request.of(**settings))
    assert planned.model_config.vocab_size == planned.vocab.size and planned.train_config.input_json.endswith(".json")
    assert planned.resume is None and planned.fine_tune is None and not planned.size_model
    result = run.execute(planned, log=lambda line: None)
    assert result.iteration == 6 and os.path.exists(str(tmp_path / "lib_6.keras"))
    cli = run_cli("train", *[f"--{k}={v}" for k, v in {**settings, "checkpoint_name": tmp_path / "cli"}.items()])
    assert cli.returncode == 0, cli.stderr
    assert json.load(open(tmp_path / "cli_6.json"))["train_loss_history"] == \
        json.load(open(tmp_path / "lib_6.json"))["train_loss_history"]
    with pytest.raises(UserError, match="unknown setting 'rnn_sise'"):
        plan.Request.of(rnn_sise=3)
    assert all(plan.preset_values(name) for name in PRESETS)  # every preset's keys are settings
    with pytest.raises(ValueError, match="'rnn_sise', which is no setting"):
        PRESETS["typo"] = {"rnn_sise": 3}
        try:
            plan.preset_values("typo")
        finally:
            del PRESETS["typo"]
    fresh = subprocess.run([sys.executable, "-c", "import sys; from kerascharrnn.training import plan; "
                            f"plan.plan(plan.Request.of(input_h5={h5!r}, checkpoint_name={str(tmp_path / 'x')!r})); "
                            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"],
                           capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr


def test_progress_reads_against_the_budget_when_there_is_one():
    from kerascharrnn.config import TrainConfig

    plain = TrainConfig(max_epochs=50)
    assert loop.progress_line(1600, 500, plain, 25000, 90.0) == "Epoch 4.20 / 50, i = 1600 / 25000"
    budget = TrainConfig(max_minutes=15, max_epochs=1000)
    assert loop.progress_line(1600, 500, budget, 500000, 192.0, schedule_end=4480) == \
        "Epoch 4.20, i = 1600 of ~4480 (the schedule's end), 3.2 of 15 minutes"
    assert loop.progress_line(50, 500, budget, 500000, 6.0) == "Epoch 1.10, i = 50, 0.1 of 15 minutes"
