"""The learning-rate schedule of a training run, as the optimizer evaluates it at each iteration.

  step    torch-rnn's: learning_rate * lr_decay_factor ** floor(iteration / (lr_decay_every * epoch)),
          computed by Keras's own ExponentialDecay, so seeded runs keep their numbers bit for bit.
  cosine  from learning_rate down to min_learning_rate over the run (nanoGPT's), ending at the
          iteration `total`, which is known from --max_iters / --max_epochs or, with only a time budget
          (--max_minutes), estimated from the measured speed and refitted at every checkpoint.
Both may start with a linear warm-up over --warmup_iters.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from kerascharrnn.config import TrainConfig


class TrainingSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """learning rate(iteration) for one run; `total` (the cosine's end) may be set once the run knows it."""

    def __init__(self, config: TrainConfig, num_train_batches: int):
        self.kind = config.lr_schedule
        self.base = config.learning_rate
        self.minimum = config.min_learning_rate
        self.warmup = config.warmup_iters
        self.step_decay = keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, decay_steps=config.lr_decay_every * num_train_batches,
            decay_rate=config.lr_decay_factor, staircase=True)
        # A variable, not a constant: a time-budgeted run learns its length after it has started, and the
        # compiled train step must see the new value. Not an optimizer variable: checkpoints record it in
        # the run's config (lr_schedule_iters), so a resumed run follows the same curve.
        self.total = tf.Variable(config.lr_schedule_iters, dtype=tf.int64, trainable=False, name="schedule_total")

    def __call__(self, step):
        if self.kind == "step":
            rate = self.step_decay(step)
        else:
            step_f = tf.cast(step, tf.float32)
            span = tf.maximum(tf.cast(self.total, tf.float32) - self.warmup, 1.0)
            progress = tf.clip_by_value((step_f - self.warmup) / span, 0.0, 1.0)
            progress = tf.where(self.total > 0, progress, 0.0)  # the length not known yet: hold the rate
            rate = self.minimum + 0.5 * (self.base - self.minimum) * (1.0 + tf.cos(math.pi * progress))
        if self.warmup:
            rate = rate * tf.minimum(1.0, tf.cast(step + 1, tf.float32) / self.warmup)
        return rate

    def get_config(self):
        return {"kind": self.kind, "base": self.base, "minimum": self.minimum, "warmup": self.warmup}
