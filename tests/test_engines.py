import numpy as np
import pytest

from kerascharrnn.config import SampleConfig
from kerascharrnn.errors import UserError
from kerascharrnn.inference import engines
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.vocab import Vocabulary


@pytest.fixture(scope="module")
def engine(trained):
    return engines.open_engine("checkpoint", trained["keras"])


def test_seeded_sampling_repeats_and_keeps_start_text(engine):
    config = SampleConfig(length=120, start_text="ROMEO:", seed=5, num_samples=3)
    a = engines.sample_texts(engine, config)
    b = engines.sample_texts(engine, config)
    assert a == b
    assert len(a) == 3 and all(t.startswith("ROMEO:") and len(t) == 120 for t in a)
    assert len(set(a)) > 1


def test_argmax_is_the_models_most_likely_path(engine, trained):
    import tensorflow as tf

    from kerascharrnn.models import stack

    config = SampleConfig(length=30, start_text="The", sample=False)
    text, = engines.sample_texts(engine, config)
    # recompute greedily with the whole-sequence Keras model, one character at a time
    model = CharRNN.from_checkpoint(trained["keras"]).model
    vocab = trained["vocab"]
    ids = list(vocab.encode("The"))
    while len(ids) < 30:
        stack.reset_states(model)
        batch = np.tile(np.array(ids, np.int32)[None], (model.inputs[0].shape[0], 1))
        ids.append(int(tf.argmax(model(batch)[0, -1])))
    assert text == vocab.decode(ids)


def test_streamed_pieces_make_up_the_first_sample(engine):
    pieces = []
    config = SampleConfig(length=300, start_text="The", seed=3, num_samples=2)
    texts = engines.sample_texts(engine, config, on_text=pieces.append)
    assert pieces[0] == "The" and len(pieces) > 1
    assert "".join(pieces) == texts[0]


def test_unknown_start_characters_rejected(engine):
    with pytest.raises(UserError, match="'€'"):
        engines.sample_texts(engine, SampleConfig(length=10, start_text="€uro"))


def test_top_k_top_p_and_temperature_run(engine):
    texts = engines.sample_texts(engine, SampleConfig(length=50, top_k=3, top_p=0.9, temperature=0.7, seed=1,
                                                      num_samples=2))
    assert [len(t) for t in texts] == [50, 50]


def test_length_equal_to_start_text_gives_just_the_start(engine):
    assert engines.sample_texts(engine, SampleConfig(length=5, start_text="First")) == ["First"]


def test_length_is_checked_in_tokens_by_the_library_call(engine):
    with pytest.raises(UserError, match="^length 3 is shorter than start_text"):
        engines.sample_texts(engine, SampleConfig(length=3, start_text="First"))
    # a bytes vocabulary: "é" is one character but two tokens, so length 1 asks for -1 new tokens
    byte_engine = engines.Engine(Vocabulary(tuple(range(256)), "bytes"), engine.sampler)
    with pytest.raises(UserError, match=r"\(2 tokens\)"):
        engines.sample_texts(byte_engine, SampleConfig(length=1, start_text="é"))
    with pytest.raises(ValueError, match="num_new"):
        engine.sample_ids([np.zeros(2, np.int32)], -1)


def test_unknown_engine_kind_is_an_error(trained):
    with pytest.raises(ValueError, match="unknown engine kind 'onnx'"):
        engines.open_engine("onnx", trained["keras"])
    with pytest.raises(ValueError, match="vocabulary"):
        engines.open_engine("tflite", "model.tflite")


def test_beam_size_one_is_argmax_and_wider_beams_find_likelier_text(engine, trained):
    greedy = engines.sample_texts(engine, SampleConfig(length=80, start_text="The", sample=False))
    beam_one = engines.sample_texts(engine, SampleConfig(length=80, start_text="The", beam_size=1))
    assert beam_one == greedy

    import tensorflow as tf

    charrnn = CharRNN.from_checkpoint(trained["keras"])
    step = charrnn.step_fn()

    def log_likelihood(text):
        ids = charrnn.vocab.encode(text)
        states = tuple(tf.zeros((1, size)) for size in charrnn.state_sizes)
        total = 0.0
        for t in range(len(ids) - 1):
            logits, states = step(tf.constant(ids[t:t + 1]), states)
            if t >= 2:  # the continuation after "The"
                total += float(tf.nn.log_softmax(logits)[0, ids[t + 1]])
        return total

    beam_five = engines.sample_texts(engine, SampleConfig(length=80, start_text="The", beam_size=5))[0]
    assert beam_five.startswith("The") and len(beam_five) == 80
    assert log_likelihood(beam_five) >= log_likelihood(greedy[0]) - 1e-4


def test_beam_search_takes_one_sample():
    with pytest.raises(UserError, match="with num_samples 1"):
        SampleConfig(beam_size=3, num_samples=2)
