import math

import keras
import numpy as np
import pytest

from kerascharrnn.config import TrainConfig
from kerascharrnn.errors import UserError
from kerascharrnn.training.schedule import TrainingSchedule


def rates(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_step_is_torch_rnns_decay_bit_for_bit():
    config = TrainConfig(learning_rate=2e-3, lr_decay_every=2, lr_decay_factor=0.7)
    reference = keras.optimizers.schedules.ExponentialDecay(2e-3, decay_steps=2 * 13, decay_rate=0.7, staircase=True)
    steps = range(0, 200, 7)
    np.testing.assert_array_equal(rates(TrainingSchedule(config, 13), steps), rates(reference, steps))


def test_cosine_with_warmup_known_points():
    config = TrainConfig(lr_schedule="cosine", learning_rate=1e-2, min_learning_rate=1e-3, warmup_iters=10,
                         lr_schedule_iters=110)
    schedule = TrainingSchedule(config, 50)
    got = rates(schedule, [0, 4, 9, 10, 60, 110, 500])
    expected = [1e-3, 5e-3, 1e-2, 1e-2, 1e-3 + 0.5 * 9e-3, 1e-3, 1e-3]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.all(np.diff(rates(schedule, range(10, 111))) <= 1e-9)  # falls monotonically


def test_cosine_holds_until_its_length_is_known_then_follows_it():
    schedule = TrainingSchedule(TrainConfig(lr_schedule="cosine", learning_rate=1e-2), 50)
    assert float(schedule(1000)) == pytest.approx(1e-2)
    schedule.total.assign(2000)  # a time-budgeted run, once it has measured its speed
    assert float(schedule(1000)) == pytest.approx(0.5e-2, rel=1e-5)
    assert float(schedule(2000)) == pytest.approx(0.0, abs=1e-9)


def test_warmup_applies_to_step_too():
    schedule = TrainingSchedule(TrainConfig(warmup_iters=4, learning_rate=1e-3), 100)
    np.testing.assert_allclose(rates(schedule, [0, 1, 3, 50]), [2.5e-4, 5e-4, 1e-3, 1e-3], rtol=1e-6)


def test_bad_schedule_settings():
    with pytest.raises(UserError, match="^lr_schedule 'linear'"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(UserError, match="^min_learning_rate"):
        TrainConfig(learning_rate=1e-3, min_learning_rate=1e-2)
    with pytest.raises(UserError, match="^max_minutes"):
        TrainConfig(max_minutes=-1)
    assert not math.isnan(TrainConfig(max_minutes=0.5).max_minutes)
