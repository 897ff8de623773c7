import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from kerascharrnn.inference.logits import (
    Filters,
    Knobs,
    SamplingSettings,
    filter_logits,
    filter_logits_np,
    gumbel_noise,
    next_ids,
    next_ids_np,
)
from kerascharrnn.inference.sampling import Sampler

V = 6


def knobs(rows=1, vocab_size=V, **settings) -> Knobs:
    """Knobs of `rows` rows with these settings (a list value: one per row)."""
    per_row = [{k: (v[i] if isinstance(v, (list, np.ndarray)) else v) for k, v in settings.items()}
               for i in range(rows)]
    made = [SamplingSettings(**row) for row in per_row]
    return Knobs.of(made, [s.window(10**6) for s in made], vocab_size)


def tf_knobs(k: Knobs):
    return Knobs(*(None if a is None else tf.constant(a) for a in k))


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
    k2 = filter_logits(logits, tf_knobs(knobs(top_k=2)), Filters(top_k=True)).numpy()
    assert np.isfinite(k2).tolist() == [[True, True, False, False, False, False]]
    off = filter_logits(logits, tf_knobs(knobs(top_k=0)), Filters(top_k=True)).numpy()
    assert np.isfinite(off).all()
    p = filter_logits(logits, tf_knobs(knobs(top_p=0.8)), Filters(top_p=True)).numpy()
    assert np.isfinite(p).tolist() == [[True, True, True, False, False, False]]  # 0.5+0.2 < 0.8 <= 0.85
    p_small = filter_logits(logits, tf_knobs(knobs(top_p=0.1)), Filters(top_p=True)).numpy()
    assert np.isfinite(p_small).sum() == 1
    hot = filter_logits(logits, tf_knobs(knobs(temperature=0.5)), Filters()).numpy()
    np.testing.assert_allclose(hot, logits.numpy() / 0.5)


def test_min_p_and_typical_p_masks_with_known_answers():
    probs = np.array([[0.5, 0.2, 0.15, 0.1, 0.05, 0.0001]], np.float32)
    logits = tf.math.log(tf.constant(probs))
    kept = filter_logits(logits, tf_knobs(knobs(min_p=0.25)), Filters(min_p=True)).numpy()
    assert np.isfinite(kept).tolist() == [[True, True, True, False, False, False]]  # >= 0.125
    entropy = -(probs * np.log(probs)).sum()
    order = np.argsort(np.abs(-np.log(probs[0]) - entropy), kind="stable")  # the most typical first
    for mass in (0.05, 0.3, 0.6, 0.9):
        expected = np.zeros(V, bool)
        expected[order[:int(np.searchsorted(np.cumsum(probs[0][order]), mass, side="left")) + 1]] = True
        typical = filter_logits(logits, tf_knobs(knobs(typical_p=mass)), Filters(typical_p=True)).numpy()
        assert np.isfinite(typical[0]).tolist() == expected.tolist(), mass


def test_each_row_has_its_own_filters_and_neutral_settings_change_no_logit():
    logits = tf.math.log(tf.constant([[0.5, 0.2, 0.15, 0.1, 0.05, 0.0001]] * 4))
    k = knobs(4, top_k=[2, 0, 0, 0], top_p=[1.0, 0.6, 1.0, 1.0], min_p=[0.0, 0.0, 0.35, 0.0],
              typical_p=[1.0, 1.0, 1.0, 1.0])._replace(logit_bias=np.zeros((4, V), np.float32))
    everything = Filters(top_k=True, top_p=True, min_p=True, typical_p=True, penalties=True, bias=True)
    out = filter_logits(logits, tf_knobs(k), everything, tf.zeros([4, V])).numpy()
    assert np.isfinite(out).sum(axis=1).tolist() == [2, 2, 2, V]
    np.testing.assert_array_equal(out[3], logits.numpy()[3])  # every setting neutral: the same bits


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


@pytest.mark.parametrize("settings", [
    dict(), dict(top_k=2), dict(top_p=0.8), dict(top_k=3, top_p=0.5), dict(top_p=0.1), dict(top_k=10),
    dict(min_p=0.3), dict(typical_p=0.5), dict(typical_p=0.95, min_p=0.1, top_k=4),
    dict(repetition_penalty=1.3), dict(presence_penalty=0.7, frequency_penalty=0.4),
    dict(logit_bias=((1, -3.0), (4, 2.5), (5, -np.inf))),
])
def test_numpy_filters_match_tensorflow(settings):
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05, 0.0001], [0.1, 0.1, 0.3, 0.2, 0.2, 0.1]], np.float32))
    k = knobs(2, temperature=[1.0, 0.7], **settings)
    counts = np.array([[0, 2, 1, 0, 0, 0], [1, 0, 0, 3, 0, 0]], np.float32)
    filters = Filters.for_rows([SamplingSettings(**settings)])
    expected = filter_logits(tf.constant(logits), tf_knobs(k), filters, tf.constant(counts)).numpy()
    np.testing.assert_allclose(filter_logits_np(logits, k, filters, counts), expected, rtol=1e-6)


@pytest.mark.parametrize("greedy,settings", [
    (True, dict()), (False, dict()), (False, dict(top_k=3)), (False, dict(top_p=0.7)),
    (False, dict(top_k=3, top_p=0.9)), (False, dict(min_p=0.2, typical_p=0.8)),
    (True, dict(repetition_penalty=1.5, frequency_penalty=0.3)), (False, dict(presence_penalty=1.0, top_p=0.9)),
])
def test_numpy_draw_matches_tensorflow_given_the_same_noise(greedy, settings):
    """The whole draw, not only the filters: the same logits, temperatures (one row at 0 = argmax), penalty counts
    and Gumbel noise pick the same ids in both implementations."""
    rng = np.random.default_rng(4)
    filters = dataclasses.replace(Filters.for_rows([SamplingSettings(**settings)]), greedy=greedy)
    k = knobs(32, 40, temperature=[1.0, 0.5, 2.0, 0.0] * 8, **settings)
    not_argmax = 0
    for seed in range(5):
        logits = rng.standard_normal((32, 40)).astype(np.float32)
        counts = rng.integers(0, 3, (32, 40)).astype(np.float32)
        noise = gumbel_noise(tf.constant(logits.shape), tf.constant([seed, 0], tf.int64)).numpy()
        expected = next_ids(tf.constant(logits), tf_knobs(k), tf.constant(noise), filters, tf.constant(counts)).numpy()
        got = next_ids_np(logits, k, noise, filters, counts)
        np.testing.assert_array_equal(got, expected)
        best = next_ids_np(logits, k, None, dataclasses.replace(filters, greedy=True), counts)
        not_argmax += int((got != best).sum())
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
    p = filter_logits_np(probs.astype(np.float32), knobs(top_p=0.0), Filters(top_p=True))
    assert np.isfinite(p).sum() == 1 and np.isfinite(p[0, 0])


def test_the_penalty_window_counts_the_last_ids_of_each_row():
    """update_window (TensorFlow and numpy) against counting the last `range` ids by hand, for rows of different
    ranges in a window as wide as the largest, narrower than the sequence."""
    from kerascharrnn.inference.logits import empty_window, update_window, update_window_np

    rng = np.random.default_rng(0)
    ranges, width = np.array([1, 3, 8, 5], np.int32), 8
    history, counts = empty_window(4, width, V)
    history_np, counts_np = history, counts
    seen = [[] for _ in range(4)]
    for t in range(30):
        ids = rng.integers(0, V, 4).astype(np.int32)
        positions = np.full(4, t, np.int32)
        history, counts = (np.asarray(a) for a in update_window(tf.constant(history), tf.constant(counts),
                                                                tf.constant(ids), tf.constant(positions),
                                                                tf.constant(ranges)))
        history_np, counts_np = update_window_np(history_np, counts_np, ids, positions, ranges)
        for row in range(4):
            seen[row].append(int(ids[row]))
            np.testing.assert_array_equal(counts[row], np.bincount(seen[row][-ranges[row]:], minlength=V))
        np.testing.assert_array_equal(counts, counts_np)
        np.testing.assert_array_equal(history, history_np)


def naive_penalized_greedy(prompt, num_new, settings, step_np):
    """The argmax of penalized scores, one character at a time with the window counted from scratch."""
    sequence, states = list(prompt), (np.zeros((1, 1), np.float32),)
    logits = np.zeros((1, V), np.float32)
    for token in prompt:
        logits, states = step_np(np.array([token], np.int32), states)
    for _ in range(num_new):
        window = sequence[-settings.penalty_range:] if settings.penalty_range > 0 else sequence
        counts = np.bincount(window, minlength=V).astype(np.float32)
        scores = logits[0].copy()
        seen = counts > 0
        scores[seen] = np.where(scores[seen] > 0, scores[seen] / settings.repetition_penalty,
                                scores[seen] * settings.repetition_penalty)
        scores -= settings.presence_penalty * seen + settings.frequency_penalty * counts
        for token, bias in settings.logit_bias:
            scores[token] += bias
        sequence.append(int(scores.argmax()))
        logits, states = step_np(np.array([sequence[-1]], np.int32), states)
    return sequence[len(prompt):]


def noisy_step_np(ids, states):
    """A fake model whose scores depend on the id and the step: a penalty changes which id is next."""
    (count,) = states
    table = np.random.default_rng(1).standard_normal((V, V)).astype(np.float32) * 2
    return table[ids] + np.sin(count) * 0.5, (count + 1.0,)


def noisy_step(ids, states):
    (count,) = states
    table = tf.constant(np.random.default_rng(1).standard_normal((V, V)).astype(np.float32) * 2)
    return tf.gather(table, ids) + tf.sin(count) * 0.5, (count + 1.0,)


@pytest.mark.parametrize("settings", [
    SamplingSettings(temperature=0, repetition_penalty=1.8, penalty_range=4),
    SamplingSettings(temperature=0, presence_penalty=1.5, frequency_penalty=0.5, penalty_range=-1),
    SamplingSettings(temperature=0, frequency_penalty=2.0, penalty_range=9, logit_bias=((0, -np.inf), (3, 1.0))),
])
def test_penalized_argmax_matches_a_naive_loop_in_every_engine(settings):
    prompt = np.array([2, 2, 5, 1], np.int32)
    expected = naive_penalized_greedy(prompt, 40, settings, noisy_step_np)
    samplers = [Sampler.for_tf_step(noisy_step, [1], V, jit_compile=jit, chunk_size=7) for jit in (False, True)]
    samplers.append(Sampler.for_numpy_step(noisy_step_np, [1], V, chunk_size=7))
    for s in samplers:
        run = s.generate([prompt, np.array([4], np.int32)], [40, 25], [settings, SamplingSettings(temperature=0)])
        made = {0: [], 1: []}
        while not run.done:
            for row, piece in run.advance().items():
                made[row] += piece.ids.tolist()
        assert made[0] == expected
        assert made[1] == naive_penalized_greedy(np.array([4]), 25, SamplingSettings(temperature=0), noisy_step_np)


def test_a_row_joining_with_a_wider_penalty_window_keeps_the_others_windows():
    """Rows come and go (a server's batch): a row that joins later with a larger range widens every row's window,
    and each row's text is still what it would be alone."""
    first = SamplingSettings(temperature=0, frequency_penalty=1.5, penalty_range=5)
    later = SamplingSettings(temperature=0, repetition_penalty=2.0, penalty_range=300)
    s = Sampler.for_tf_step(noisy_step, [1], V, jit_compile=False)
    run = s.generate([np.array([1, 2], np.int32)], 60, first, drop_finished=True)
    made = {0: [], 1: []}
    for row, piece in run.advance(9).items():
        made[row] += piece.ids.tolist()
    # the later row starts at step 9 of the batch: its own model state starts afresh, as the naive loop's
    run.add([np.array([3], np.int32)], 40, later)
    while not run.done:
        for row, piece in run.advance(11).items():
            made[row] += piece.ids.tolist()
    assert made[0] == naive_penalized_greedy(np.array([1, 2]), 60, first, noisy_step_np)


def test_logprobs_per_row_are_cut_to_what_each_row_asked():
    s = Sampler.for_tf_step(noisy_step, [1], V, jit_compile=False)
    run = s.generate([np.array([1], np.int32)], 5, SamplingSettings(temperature=0), logprobs=2, drop_finished=True)
    run.add([np.array([1], np.int32)], 5, SamplingSettings(temperature=0), logprobs=0)
    run.add([np.array([1], np.int32)], 5, SamplingSettings(temperature=0), logprobs=3)
    pieces = run.advance(5)
    assert pieces[0].logprobs[1].shape == (4, 2) and pieces[1].logprobs is None
    assert pieces[2].logprobs[2].shape == (4, 3)
    np.testing.assert_array_equal(pieces[0].logprobs[2], pieces[2].logprobs[2][:, :2])


def test_rows_of_one_prompt_read_it_once_and_make_what_rows_added_apart_make():
    """n rows added together with one prompt: the model steps the prompt for one row (counted through the step
    function), and each row's text, log-probabilities and penalties are those of the rows added one by one (which
    read it n times), for a seeded run."""
    stepped = []

    def counting(ids, states):
        stepped.append(len(ids))
        return noisy_step_np(ids, states)

    prompt = np.array([1, 2, 3, 4, 5, 0, 1], np.int32)
    settings = [SamplingSettings(temperature=1.5, repetition_penalty=1.3),
                SamplingSettings(temperature=0.7, repetition_penalty=1.3),
                SamplingSettings(temperature=0, repetition_penalty=1.3, logit_bias=((2, 1.0),))]
    together = Sampler.for_numpy_step(counting, [1], V).generate([prompt] * 3, 10, settings, seed=3)
    assert len(together.rows) == 1  # the others wait for the prompt to be read
    while not together.done:
        together.advance(4)
    assert sum(stepped) == len(prompt) + 3 * 10  # not 3 * (len(prompt) + 10)

    def made(run):
        rows = {}
        while not run.done:
            for row, piece in run.advance(4).items():
                ids, values = rows.get(row, ([], []))
                rows[row] = (ids + piece.ids.tolist(), values + piece.logprobs[0].tolist())
        return rows

    s = Sampler.for_tf_step(noisy_step, [1], V, jit_compile=False)  # its draws do not depend on the chunks
    together = s.generate([prompt] * 3, 10, settings, seed=3, logprobs=2, include_prompt=True, drop_finished=True)
    apart = s.generate([prompt], 10, settings[0], seed=3, logprobs=2, include_prompt=True, drop_finished=True)
    apart.add([prompt], 10, settings[1], logprobs=2)
    apart.add([prompt], 10, settings[2], logprobs=2)
    assert made(together) == made(apart)


def test_a_leader_leaving_before_the_prompt_is_read_leaves_its_copies_reading_it():
    s = Sampler.for_tf_step(noisy_step, [1], V, jit_compile=False)
    prompt = np.array([3, 1, 4, 1, 5], np.int32)
    run = s.generate([prompt] * 3, 6, SamplingSettings(temperature=0), include_prompt=True)
    first = run.advance(2)
    assert sorted(first) == [0, 1, 2] and all(first[row].ids.tolist() == [3, 1] for row in first)
    run.drop([0])
    assert run.rows == [1, 2] and run.steps_to_new([1, 2]) == 3
    rows = {1: first[1].ids.tolist(), 2: first[2].ids.tolist()}
    while not run.done:
        for row, piece in run.advance(4).items():
            rows[row] += piece.ids.tolist()
    alone = s.sample_ids([prompt], 6, greedy=True)[0].tolist()
    assert rows == {1: alone, 2: alone}
