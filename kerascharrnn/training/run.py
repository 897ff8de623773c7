"""Executes a planned training run (training/plan.py): holds the checkpoint name's lock, sizes the model for a
time budget where the plan says so (on this machine's measured speed), measures which path trains fastest,
builds the model (new, resumed or fine-tuned from a base) and trains it (training/loop.py).

    from kerascharrnn.training import plan, run
    result = run.execute(plan.plan(plan.Request.of(input_h5="data/my.h5", max_iters=1000)))

is bin/train without its flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable

from kerascharrnn import resources
from kerascharrnn.config import INT32_MAX, ONE_DEVICE
from kerascharrnn.errors import UserError
from kerascharrnn.io import lock
from kerascharrnn.models import transfer
from kerascharrnn.training.distributed import cluster
from kerascharrnn.training.plan import Plan, replaced


def execute(plan: Plan, gpu: int = -1, log: Callable[[str], None] = print,
            describe_error: Callable[[UserError], str] = str, start_tensorflow: Callable[[], None] = lambda: None):
    """Trains as planned; returns loop.TrainResult.

    Args:
      plan: what plan.plan resolved.
      gpu: the GPU to train on (-1: the CPU; devices.configure).
      log: where the run's lines go.
      describe_error: how an error a worker of a cluster meets is shown (a tool: one line naming its flags).
      start_tensorflow: called once the lock is held, before TensorFlow is imported (a tool silences its
        start-up chatter).
    """
    train_config, model_config = plan.train_config, plan.model_config
    with lock.held(train_config.checkpoint_name) if plan.chief else contextlib.nullcontext():
        cluster.quiet_collective_errors(train_config.strategy)
        start_tensorflow()
        from kerascharrnn import devices
        from kerascharrnn.models.charrnn import CharRNN
        from kerascharrnn.training import loop, path_choice, step_speed
        from kerascharrnn.training.distributed.strategy import make_strategy

        devices.configure(gpu, train_config.seed)
        measuring_started = time.perf_counter()
        if plan.size_model:
            model_config, train_config = sized_for_budget(plan, log)
            resources.check_training_fits(model_config, train_config.batch_size, train_config.seq_length)
        elif plan.not_sized:
            log(f"--preset {plan.preset}: not sized for the budget: {plan.not_sized}")
        planned = min(train_config.max_epochs * plan.layouts["train"].num_batches,
                      train_config.max_iters or INT32_MAX)
        if (not plan.resume and not plan.fine_tune and train_config.strategy == ONE_DEVICE and not devices.on_gpu()
                and path_choice.worth_measuring(train_config.fused, planned, train_config.max_minutes)):
            step_speed.measure_paths(model_config, train_config, log=log)
        measuring_s = time.perf_counter() - measuring_started
        if train_config.seed is not None:  # measuring builds models, which draw from the seeded generators
            devices.seed_everything(train_config.seed)
        strategy = make_strategy(train_config.strategy, train_config.cpu_replicas, train_config.worker_timeout,
                                 describe=describe_error)
        if plan.resume:
            charrnn = CharRNN.from_checkpoint(plan.resume.model_path, batch_size=train_config.batch_size)
        elif plan.fine_tune:
            base = CharRNN.from_checkpoint(train_config.init_from, batch_size=train_config.batch_size)
            charrnn = transfer.fine_tune_start(base, plan.vocab, plan.fine_tune.vocab_map, plan.fine_tune.changes,
                                               train_config.batch_size)
        else:
            charrnn = CharRNN.build(model_config, plan.vocab, train_config.batch_size)
        return loop.train_and_evaluate(
            train_config, charrnn, plan.layouts, resume=plan.resume, data_digest=plan.data_digest,
            start_iteration=plan.fine_tune.start_iteration if plan.fine_tune else 0, strategy=strategy,
            time_spent=measuring_s, fine_tuned_from=plan.fine_tune.provenance if plan.fine_tune else None)


def sized_for_budget(plan: Plan, log: Callable[[str], None] = print):
    """A budgeted preset's model and recipe for this machine, budget and corpus (training/sizing.py): the plan's
    configs with what the sizing chose, except where a value was given. Returns (model_config, train_config)."""
    from kerascharrnn.training import sizing, step_speed

    model_config, train_config = plan.model_config, plan.train_config
    corpus_sizes = sizing.Corpus(plan.lengths["train"], plan.lengths["val"], model_config.vocab_size)
    chosen = sizing.choose(model_config, train_config.batch_size, train_config.seq_length,
                           train_config.max_minutes * 60, corpus_sizes,
                           lambda model: step_speed.cached(model, train_config, log=log),
                           fixed={k: plan.given[k] for k in ("num_layers", "rnn_size") if k in plan.given})
    kept = {k: v for k, v in chosen.values.items() if k not in plan.given}
    log(f"--preset {plan.preset} for {train_config.max_minutes:g} minutes: {chosen.why}")
    return replaced(model_config, kept), dataclasses.replace(replaced(train_config, kept), sized_by=chosen.why)
