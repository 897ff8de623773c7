"""Size and memory estimates (kerascharrnn.resources), checked against models Keras really builds."""

import pytest

from kerascharrnn import resources
from kerascharrnn.config import ModelConfig
from kerascharrnn.errors import UserError
from kerascharrnn.models import stack


@pytest.mark.parametrize("model_type", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_parameter_count_is_exactly_what_keras_builds(model_type, batchnorm):
    config = ModelConfig(vocab_size=6, model_type=model_type, wordvec_size=4, rnn_size=5, num_layers=2,
                         batchnorm=batchnorm)
    assert resources.parameter_count(config) == stack.build_model(config, 2).count_params()


@pytest.mark.parametrize("vocab_size,heads,head_size", [(6, 2, 3), (5000, 8, 32)])
def test_parameter_count_with_copy_attention_is_exactly_what_keras_builds(vocab_size, heads, head_size):
    """A large vocabulary and a small model: the value embeddings (V, heads x head_size) dominate."""
    config = ModelConfig(vocab_size=vocab_size, wordvec_size=4, rnn_size=8, num_layers=1, copy_memory=16,
                         copy_heads=heads, copy_head_size=head_size)
    assert resources.parameter_count(config) == stack.build_model(config, 2).count_params()


def test_training_too_large_is_refused_with_the_estimate():
    config = ModelConfig(vocab_size=65, rnn_size=1024, num_layers=3)
    need = resources.training_bytes(config, 50, 50)
    resources.check_training_fits(config, 50, 50, available=need)
    with pytest.raises(UserError, match=r"training needs at least .* GiB .* is available"):
        resources.check_training_fits(config, 50, 50, available=need - 1)


def test_a_tensor_beyond_int32_is_refused_whatever_the_memory():
    with pytest.raises(UserError, match="TensorFlow's kernels"):
        resources.check_training_fits(ModelConfig(vocab_size=65, rnn_size=10**9), 1, 1, available=2**80)


def test_sampling_and_inference_estimates():
    resources.check_sampling_fits(10, 1000, available=10**9)
    with pytest.raises(UserError, match="^num_samples 100000 x length 1000000000"):
        resources.check_sampling_fits(100_000, 10**9, available=64 * 2**30)
    config = ModelConfig(vocab_size=59, wordvec_size=10**6, rnn_size=8)
    with pytest.raises(UserError, match="100,000 rows x 1 steps"):
        resources.check_inference_fits(config, 100_000, 1, "--num_samples", available=22 * 2**30)
