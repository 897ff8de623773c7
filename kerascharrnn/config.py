"""Configuration dataclasses. Flags fill them; checkpoints store them."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from kerascharrnn.errors import UserError

MODEL_TYPES = ("lstm", "gru", "rnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a char-RNN (torch-rnn's LanguageModel options)."""

    vocab_size: int
    model_type: str = "lstm"
    wordvec_size: int = 64  # D
    rnn_size: int = 128  # H
    num_layers: int = 2
    dropout: float = 0.0
    batchnorm: bool = False

    def validate(self) -> "ModelConfig":
        if self.model_type not in MODEL_TYPES:
            raise UserError(
                f"unknown --model_type {self.model_type!r}; choose one of {', '.join(MODEL_TYPES)}"
            )
        for name in ("vocab_size", "wordvec_size", "rnn_size", "num_layers"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        return self


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything train.lua's flags control, plus our additions."""

    input_h5: str
    input_json: str
    batch_size: int = 50  # N
    seq_length: int = 50  # T
    max_epochs: int = 50
    max_iters: int = 0  # 0 = no limit beyond max_epochs
    learning_rate: float = 2e-3
    grad_clip: float = 5.0
    lr_decay_every: int = 5
    lr_decay_factor: float = 0.5
    print_every: int = 1
    checkpoint_name: str = "cv/checkpoint"
    checkpoint_every: int = 1000
    init_from: str = ""
    reset_iterations: bool = True
    resume_from: str = ""
    seed: Optional[int] = None
    speed_benchmark: bool = False
    memory_benchmark: bool = False
    tensorboard_dir: str = ""

    def validate(self) -> "TrainConfig":
        positive = ("batch_size", "seq_length", "max_epochs", "lr_decay_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_iters", "print_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UserError(f"--learning_rate must be a positive number, got {self.learning_rate}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise UserError(f"--grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if not (math.isfinite(self.lr_decay_factor) and self.lr_decay_factor > 0):
            raise UserError(f"--lr_decay_factor must be positive, got {self.lr_decay_factor}")
        if self.init_from and self.resume_from:
            raise UserError("--init_from and --resume_from conflict: give one of them")
        return self


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Options of one sampling run (sample.lua's flags plus top-k/top-p)."""

    length: int = 2000
    start_text: str = ""
    sample: bool = True  # False = argmax
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    num_samples: int = 1
    seed: Optional[int] = None

    def validate(self) -> "SampleConfig":
        if self.length < 0:
            raise UserError(f"--length must be >= 0, got {self.length}")
        if self.length < len(self.start_text):
            raise UserError(
                f"--length {self.length} is shorter than --start_text ({len(self.start_text)} characters);"
                " --length counts the start text too"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UserError(f"--temperature must be a positive number, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top_k must be >= 0 (0 = off), got {self.top_k}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise UserError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            raise UserError(f"--num_samples must be at least 1, got {self.num_samples}")
        return self


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """bin/serve: torch-rnn-server's behaviour and this server's limits."""

    word_limit_short: int = 3  # completions with fewer words are redrawn (torch-rnn-server)
    word_limit_long: int = 20  # ... and with more words
    max_n: int = 10  # /generate's n is clamped to this (torch-rnn-server: 10)
    lowercase: bool = True  # lower-case the start text (the reference model was trained lower-case)
    completion_chars: int = 140  # a completion stops here if no sentence end came first
    max_start_text: int = 2000  # characters; longer start texts are refused (413)
    max_redraw_rounds: int = 8  # torch-rnn-server redrew without limit; then answer with what passed
    max_num_new_chars: int = 2000  # POST /v1/generate caps
    max_num_samples: int = 32
    max_batch_rows: int = 64  # rows one model run may merge from concurrent requests

    def validate(self) -> "ServeConfig":
        if not 0 <= self.word_limit_short <= self.word_limit_long:
            raise UserError("--word_limit_short must be >= 0 and <= --word_limit_long")
        for name in ("max_n", "completion_chars", "max_start_text", "max_redraw_rounds", "max_num_new_chars",
                     "max_num_samples", "max_batch_rows"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1")
        return self
