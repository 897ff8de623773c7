"""Named flag sets for bin/train (`--preset NAME`); flags given on the command line override them.

Each preset is a plain dict of bin/train flag values, so `bin/train --helpfull` documents every key; a key that
names no setting is an error (training/plan.py, tests/test_train.py checks every preset).
"""

# The recipe of the budgeted presets (and cpu_15min's model when no budget is given): with --max_minutes,
# training/sizing.py replaces the model's size, its dropout and the checkpoint interval with what this
# machine's measured speed, the budget and the corpus call for (docs/quality.md, round 5).
_CPU_RECIPE = dict(model_type="lstm", num_layers=2, rnn_size=384, wordvec_size=64, dropout=0.1,
                   embedding_dropout=0.1, copy_memory=512, copy_reset=0.1, batch_size=32, seq_length=100,
                   learning_rate=3e-3, min_learning_rate=1e-4, lr_schedule="cosine", warmup_iters=100,
                   weight_decay=0.05, grad_clip=5.0, checkpoint_every=500, print_every=50, max_epochs=1000)

PRESETS = {
    # About 1 MB of text in 15 minutes on a 2-core CPU (bin/train --preset cpu_15min --max_minutes 15): with
    # --max_minutes, sized for the budget as auto is. Without it: a 2 x 384 LSTM (~2M parameters) over long
    # windows, regularised (dropout after each layer and on the embeddings, decoupled weight decay) and
    # annealed to the end of the run with a cosine schedule, with copy attention over the last 512
    # characters (copy_attention.py: copies the names and words of the scene so far, which a recurrent state
    # cannot), its memory emptied in 10% of the training windows so that it also learns short memories
    # (sampling after a short prompt). Measured in docs/quality.md: the copy attention takes tiny-shakespeare's
    # test loss from 1.615 to 1.47 in 15 minutes on the AVX-512 machine.
    "cpu_15min": _CPU_RECIPE,
    # The same recipe, sized for any --max_minutes (required) on any CPU, 5 minutes to hours (sizing.py).
    "auto": _CPU_RECIPE,
    # A larger model for a GPU (cuDNN LSTM) and a corpus of tens of MB. Not measured here (no GPU on the
    # machines this project is developed on): a starting point, to be checked against its val loss.
    "gpu_large": dict(model_type="lstm", num_layers=3, rnn_size=1024, wordvec_size=128, dropout=0.3,
                      embedding_dropout=0.1, batch_size=128, seq_length=200, learning_rate=2e-3,
                      min_learning_rate=1e-5, lr_schedule="cosine", warmup_iters=500, weight_decay=0.1,
                      grad_clip=5.0, checkpoint_every=2000, print_every=100, max_epochs=30),
}

# Presets whose model a time budget (--max_minutes) sizes (training/sizing.py).
BUDGETED = ("cpu_15min", "auto")

# What each preset is for, in a line: bin/train --help shows these
SUMMARIES = {
    "auto": "the CPU recipe with the model sized for --max_minutes (required) from this machine's measured speed"
            " and the corpus (docs/quality.md)",
    "cpu_15min": "the same recipe, sized the same way when --max_minutes is given (15 for its name), else a fixed"
                 " 2 x 384 LSTM with copy attention",
    "gpu_large": "a 3 x 1024 LSTM for a GPU and a corpus of tens of MB (not measured here)",
}

# A budgeted preset with --init_from fine-tunes the base model on (usually little) text instead of sizing a new
# one: these values replace the recipe's (docs/quality.md, round 6, measured them). The validation interval is
# an epoch of the text, within FINE_TUNE_VALIDATION iterations: a small text is overfitted within a few epochs,
# and the early stopping needs to see it happen.
FINE_TUNE = dict(learning_rate=1e-3, min_learning_rate=1e-5, warmup_iters=20, dropout=0.2, embedding_dropout=0.1,
                 early_stopping=5)
FINE_TUNE_VALIDATION = (10, 500)
