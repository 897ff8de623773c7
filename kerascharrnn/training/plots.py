"""The loss plot a training run writes beside its checkpoints: `{checkpoint_name}_loss.png`.

matplotlib is optional (pip install 'kerascharrnn[plot]'); without it there is no plot.
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

import numpy as np

from kerascharrnn.io import files


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def smoothed(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over `window` iterations (the first points average what there is)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    with np.errstate(invalid="ignore"):  # a diverged run's Infinity: inf - inf is NaN, left off the plot
        return (sums[ends] - sums[starts]) / (ends - starts)


def write_loss_plot(path: str, train_loss: Sequence[float], val_loss: Sequence[float], val_iterations: Sequence[int],
                    learning_rates: Sequence[float], title: str = "") -> None:
    """Training loss (raw, faint, and smoothed) and validation loss against iterations, the learning rate on
    a second axis; written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = np.arange(1, len(train_loss) + 1)
    window = max(1, len(train_loss) // 50)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(iterations, train_loss, color="tab:blue", alpha=0.2, lw=0.6)
    ax.plot(iterations, smoothed(train_loss, window), color="tab:blue", label=f"train (mean of {window})")
    if len(val_loss):
        ax.plot(val_iterations, val_loss, "o-", color="tab:orange", label="validation")
    ax.set(xlabel="iteration", ylabel="loss (nats per character)", title=title)
    # the limits from the finite losses: a diverging run's NaN or Infinity is left off the scale, not fatal
    finite_train = np.asarray(train_loss, float)[np.isfinite(np.asarray(train_loss, float))]
    finite_val = np.asarray(val_loss, float)[np.isfinite(np.asarray(val_loss, float))]
    if finite_train.size:
        top = max(np.percentile(finite_train, 99), finite_val.max(initial=0.0))
        bottom = min(finite_train.min(), finite_val.min(initial=np.inf))
        if top > bottom:
            ax.set_ylim(bottom * 0.95, top * 1.02)
    rate_axis = ax.twinx()
    if len(learning_rates):
        rate_axis.plot(np.arange(1, len(learning_rates) + 1), learning_rates, color="gray", lw=0.8, ls="--",
                       label="learning rate")
    rate_axis.set_ylabel("learning rate", color="gray")
    lines = ax.get_legend_handles_labels()
    rate_lines = rate_axis.get_legend_handles_labels()
    ax.legend(lines[0] + rate_lines[0], lines[1] + rate_lines[1], loc="upper right", fontsize=8)
    fig.tight_layout()
    with files.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
