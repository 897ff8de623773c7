"""Static and dynamic evaluation (bin/eval --dynamic_lr)."""

import numpy as np
from conftest import run_cli

from kerascharrnn.data import batches
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.training import evaluate


def _static_single_stream(charrnn, h5, split, num_tokens, seq_length):
    single = charrnn.with_batch_size(1)
    layout = batches.stream_layout(num_tokens, 1, seq_length, allow_fewer_streams=True)
    return evaluate.split_loss(single.model, h5, split, layout)


def test_dynamic_evaluation_predicts_before_it_adapts(trained):
    charrnn = CharRNN.from_checkpoint(trained["keras"])
    before = [w.copy() for w in charrnn.model.get_weights()]
    # one segment: scored before the SGD step, so the loss is the static one even at a large rate
    loss, count = evaluate.dynamic_split_loss(charrnn, trained["h5"], "val", 17, 16, learning_rate=1.0)
    assert count == 16
    np.testing.assert_allclose(loss, _static_single_stream(charrnn, trained["h5"], "val", 17, 16), rtol=1e-5)
    # learning rate 0: the static loss of the same single stream, over the whole split
    num_tokens = batches.split_lengths(trained["h5"])["val"]
    static = _static_single_stream(charrnn, trained["h5"], "val", num_tokens, 16)
    np.testing.assert_allclose(evaluate.dynamic_split_loss(charrnn, trained["h5"], "val", num_tokens, 16, 0.0)[0],
                               static, rtol=1e-5)
    # adapting as it reads helps a model that has never seen this text
    assert evaluate.dynamic_split_loss(charrnn, trained["h5"], "val", num_tokens, 16, 0.05)[0] < static - 0.01
    for a, b in zip(before, charrnn.model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the caller's model is not adapted


def test_eval_cli_dynamic_lr(trained):
    static = run_cli("eval", "--checkpoint", trained["keras"], "--input_h5", trained["h5"], "--seq_length", 16)
    dynamic = run_cli("eval", "--checkpoint", trained["keras"], "--input_h5", trained["h5"], "--seq_length", 16,
                      "--dynamic_lr", 0.05)
    assert static.returncode == 0 and dynamic.returncode == 0, static.stderr + dynamic.stderr
    assert "dynamic evaluation with SGD at 0.05" in dynamic.stdout
    assert float(dynamic.stdout.split()[2]) < float(static.stdout.split()[2])
    for bad in ("-1", "nan"):
        result = run_cli("eval", "--checkpoint", trained["keras"], "--input_h5", trained["h5"], "--dynamic_lr", bad)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "dynamic_lr" in result.stderr
    diverged = run_cli("eval", "--checkpoint", trained["keras"], "--input_h5", trained["h5"], "--dynamic_lr", 1e30)
    assert diverged.returncode != 0 and "diverged" in diverged.stderr and "Traceback" not in diverged.stderr
