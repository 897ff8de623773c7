import numpy as np
import pytest
import tensorflow as tf

from kerascharrnn.inference.sampling import (
    Filters,
    Sampler,
    filter_logits,
    filter_logits_np,
    gumbel_noise,
    next_ids,
    next_ids_np,
)

V = 6


def counting_step(ids, states):
    """A fake model: after id i the most likely next id is i + 1 (mod V); the state counts steps."""
    (count,) = states
    logits = tf.one_hot((ids + 1) % V, V) * 5.0
    return logits, (count + 1.0,)


def sampler(jit_compile=False, chunk_size=4):
    return Sampler.for_tf_step(counting_step, [1], V, jit_compile=jit_compile, chunk_size=chunk_size)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_argmax_known_answer_and_prompt_kept(jit_compile):
    out = sampler(jit_compile).sample_ids([np.array([2, 3]), np.array([5])], num_new=5, greedy=True)
    assert out[0].tolist() == [2, 3, 4, 5, 0, 1, 2]
    assert out[1].tolist() == [5, 0, 1, 2, 3, 4]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_seeded_runs_repeat_and_seeds_differ(jit_compile):
    s = sampler(jit_compile)
    prompts = [np.array([1])] * 3
    a = s.sample_ids(prompts, 40, temperature=3.0, seed=7)
    b = s.sample_ids(prompts, 40, temperature=3.0, seed=7)
    c = s.sample_ids(prompts, 40, temperature=3.0, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(a[0], a[1])  # rows draw independently


def test_empty_prompt_draws_a_first_character():
    out = sampler().sample_ids([np.array([], np.int32)] * 2, num_new=3, greedy=True)
    assert [len(o) for o in out] == [3, 3]


def test_streamed_chunks_are_the_continuation():
    seen = []
    out = sampler(chunk_size=3).sample_ids([np.array([0, 1, 2, 3])], 5, greedy=True,
                                          on_chunk=lambda rows: seen.append(rows[0].tolist()))
    assert sum(seen, []) == out[0][4:].tolist() == [4, 5, 0, 1, 2]


def test_top_k_and_top_p_masks():
    logits = tf.math.log(tf.constant([[0.5, 0.2, 0.15, 0.1, 0.05, 0.0001]]))
    one = tf.constant([1.0])
    k2 = filter_logits(logits, one, tf.constant(2), tf.constant(1.0), Filters(top_k=True)).numpy()
    assert np.isfinite(k2).tolist() == [[True, True, False, False, False, False]]
    off = filter_logits(logits, one, tf.constant(0), tf.constant(1.0), Filters(top_k=True)).numpy()
    assert np.isfinite(off).all()
    p = filter_logits(logits, one, tf.constant(0), tf.constant(0.8), Filters(top_p=True)).numpy()
    assert np.isfinite(p).tolist() == [[True, True, True, False, False, False]]  # 0.5+0.2 < 0.8 <= 0.85
    p_small = filter_logits(logits, one, tf.constant(0), tf.constant(0.1), Filters(top_p=True)).numpy()
    assert np.isfinite(p_small).sum() == 1
    hot = filter_logits(logits, tf.constant([0.5]), tf.constant(0), tf.constant(1.0), Filters()).numpy()
    np.testing.assert_allclose(hot, logits.numpy() / 0.5)


def test_top_k_one_is_argmax():
    s = Sampler.for_tf_step(lambda ids, st: (tf.tile(tf.constant([[0.0, 3.0, 1.0, 2.0, 0.0, 0.0]]), [tf.shape(ids)[0], 1]), st),
                [1], V, jit_compile=False)
    out = s.sample_ids([np.array([0])] * 4, 10, top_k=1, seed=3)
    assert all((o[1:] == 1).all() for o in out)


def test_sampled_frequencies_follow_temperature():
    probs = np.array([0.6, 0.3, 0.1, 0, 0, 0]) + 1e-9
    fixed = tf.constant(np.log(probs)[None], tf.float32)
    s = Sampler.for_tf_step(lambda ids, st: (tf.tile(fixed, [tf.shape(ids)[0], 1]), st), [1], V, jit_compile=False,
                chunk_size=512)
    out = np.concatenate([o[1:] for o in s.sample_ids([np.array([0])] * 50, 400, seed=1)])
    freq = np.bincount(out, minlength=V) / out.size
    np.testing.assert_allclose(freq[:3], probs[:3], atol=0.02)


def counting_step_np(ids, states):
    (count,) = states
    return np.eye(V, dtype=np.float32)[(ids + 1) % V] * 5.0, (count + 1.0,)


def test_numpy_engine_sampler_matches_known_answer_and_repeats():
    s = Sampler.for_numpy_step(counting_step_np, [1], V, chunk_size=4)
    out = s.sample_ids([np.array([2, 3]), np.array([5])], num_new=5, greedy=True)
    assert out[0].tolist() == [2, 3, 4, 5, 0, 1, 2] and out[1].tolist() == [5, 0, 1, 2, 3, 4]
    a = s.sample_ids([np.array([1])] * 3, 30, temperature=3.0, seed=7)
    b = s.sample_ids([np.array([1])] * 3, 30, temperature=3.0, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (2, 1.0), (0, 0.8), (3, 0.5), (0, 0.1), (10, 1.0)])
def test_numpy_filters_match_tensorflow(top_k, top_p):
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05, 0.0001], [0.1, 0.1, 0.3, 0.2, 0.2, 0.1]], np.float32))
    temperature = np.array([1.0, 0.7], np.float32)
    expected = filter_logits(tf.constant(logits), tf.constant(temperature), tf.constant(top_k), tf.constant(top_p),
                             Filters(top_k=True, top_p=True)).numpy()
    np.testing.assert_allclose(filter_logits_np(logits, temperature, top_k, top_p), expected, rtol=1e-6)


@pytest.mark.parametrize("greedy,top_k,top_p", [(True, 0, 1.0), (False, 0, 1.0), (False, 3, 1.0), (False, 0, 0.7),
                                                 (False, 3, 0.9)])
def test_numpy_draw_matches_tensorflow_given_the_same_noise(greedy, top_k, top_p):
    """The whole draw, not only the filters: the same logits, temperatures (one row at 0 = argmax) and
    Gumbel noise pick the same ids in both implementations."""
    rng = np.random.default_rng(4)
    filters = Filters(greedy=greedy, top_k=top_k > 0, top_p=top_p < 1.0)
    temperature = np.array([1.0, 0.5, 2.0, 0.0] * 8, np.float32)
    not_argmax = 0
    for seed in range(5):
        logits = rng.standard_normal((32, 40)).astype(np.float32)
        noise = gumbel_noise(tf.constant(logits.shape), tf.constant([seed, 0], tf.int64)).numpy()
        expected = next_ids(tf.constant(logits), tf.constant(temperature), tf.constant(top_k), tf.constant(top_p),
                            tf.constant(noise), filters).numpy()
        got = next_ids_np(logits, temperature, top_k, top_p, noise, filters)
        np.testing.assert_array_equal(got, expected)
        not_argmax += int((got != logits.argmax(axis=1)).sum())
    assert (not_argmax == 0) == greedy  # when sampling, the noise mattered: not every row took its argmax


def test_zero_temperature_rows_take_the_argmax():
    probs = np.log(np.array([0.4, 0.35, 0.25, 1e-9, 1e-9, 1e-9]))[None]
    for s in (Sampler.for_tf_step(lambda ids, st: (tf.tile(tf.constant(probs, tf.float32), [tf.shape(ids)[0], 1]), st),
                                  [1], V, jit_compile=False),
              Sampler.for_numpy_step(lambda ids, st: (np.tile(probs.astype(np.float32), (len(ids), 1)), st), [1], V)):
        out = s.sample_ids([np.array([5])] * 2, 200, temperature=np.array([0.0, 1.0]), seed=2)
        assert (out[0][1:] == 0).all() and len(set(out[1][1:].tolist())) == 3


@pytest.mark.parametrize("jit_compile", [False, True])
def test_numbers_that_vanish_in_float32_still_sample_the_argmax(jit_compile):
    """A top_p or a temperature that float32 (or XLA's flush of denormals to zero) makes 0 keeps the most likely
    id, in the TensorFlow loop and in its numpy twin: never a mask of every id, never logits / 0."""
    probs = np.log(np.array([0.4, 0.35, 0.25, 1e-9, 1e-9, 1e-9]))[None]
    samplers = (Sampler.for_tf_step(lambda ids, st: (tf.tile(tf.constant(probs, tf.float32), [tf.shape(ids)[0], 1]),
                                                     st), [1], V, jit_compile=jit_compile),
                Sampler.for_numpy_step(lambda ids, st: (np.tile(probs.astype(np.float32), (len(ids), 1)), st), [1], V))
    for s in samplers:
        for options in ({"top_p": 1e-40}, {"top_p": 1e-45}, {"temperature": 1e-40}, {"temperature": 1e-30},
                        {"temperature": 5e-7}, {"top_p": 1e-40, "top_k": 2}):
            out = s.sample_ids([np.array([5])] * 3, 50, seed=4, **options)
            assert all((o[1:] == 0).all() for o in out), (options, out)
    p = filter_logits_np(probs.astype(np.float32), np.array([1.0], np.float32), 0, 0.0)
    assert np.isfinite(p).sum() == 1 and np.isfinite(p[0, 0])
