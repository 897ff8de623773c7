import numpy as np
import pytest

from kerascharrnn import checkpoint as ckpt
from kerascharrnn import generate
from kerascharrnn.config import SampleConfig
from kerascharrnn.errors import UserError


@pytest.fixture(scope="module")
def engine(trained):
    return generate.KerasEngine(ckpt.load_model(trained["keras"]), trained["vocab"])


def test_seeded_sampling_repeats_and_keeps_start_text(engine):
    config = SampleConfig(length=120, start_text="ROMEO:", seed=5, num_samples=3)
    a = generate.generate_texts(engine, config)
    b = generate.generate_texts(engine, config)
    assert a == b
    assert len(a) == 3 and all(t.startswith("ROMEO:") and len(t) == 120 for t in a)
    assert len(set(a)) > 1


def test_argmax_is_the_models_most_likely_path(engine, trained):
    import tensorflow as tf

    from kerascharrnn import model as model_lib

    config = SampleConfig(length=30, start_text="The", sample=False)
    text, = generate.generate_texts(engine, config)
    # recompute greedily with the whole-sequence Keras model, one character at a time
    model = ckpt.load_model(trained["keras"])
    vocab = trained["vocab"]
    ids = list(vocab.encode("The"))
    while len(ids) < 30:
        model_lib.reset_states(model)
        batch = np.tile(np.array(ids, np.int32)[None], (model.inputs[0].shape[0], 1))
        ids.append(int(tf.argmax(model(batch)[0, -1])))
    assert text == vocab.decode(ids)


def test_unknown_start_characters_rejected(engine):
    with pytest.raises(UserError, match="'€'"):
        generate.generate_texts(engine, SampleConfig(length=10, start_text="€uro"))


def test_top_k_top_p_and_temperature_run(engine):
    texts = generate.generate_texts(engine, SampleConfig(length=50, top_k=3, top_p=0.9, temperature=0.7, seed=1,
                                                         num_samples=2))
    assert [len(t) for t in texts] == [50, 50]


def test_length_equal_to_start_text_gives_just_the_start(engine):
    assert generate.generate_texts(engine, SampleConfig(length=5, start_text="First")) == ["First"]


def test_length_shorter_than_start_text_is_an_error():
    with pytest.raises(UserError, match="shorter than --start_text"):
        SampleConfig(length=3, start_text="First").validate()
