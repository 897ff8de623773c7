"""Configuration dataclasses: each setting is defined once, here, with its default, help and bounds.

The command-line flags are generated from these fields (kerascharrnn.cli.common.define_flags);
checkpoints store them. Every config checks itself in `__post_init__`, so no caller can skip validation.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Dict, Optional, Sequence, Tuple

from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.sampling_settings import BOUNDS, SEED_MAX


@dataclasses.dataclass(frozen=True)
class RecurrentKind:
    """A recurrent layer type, written once for the whole package: its --model_type name, the stock Keras layer
    that runs it (keras.layers.<layer>), how many gates its weights hold side by side, and its step form's state
    tensors (h first). models/stack.py, models/recurrence.py (its arithmetic), resources.py, the checkpoint
    readers and export/runtime.js read it from here."""

    name: str
    layer: str
    gates: int
    state_parts: Tuple[str, ...]


RECURRENT_KINDS = {kind.name: kind for kind in (
    RecurrentKind("lstm", "LSTM", 4, ("h", "c")),
    RecurrentKind("gru", "GRU", 3, ("h",)),
    RecurrentKind("rnn", "SimpleRNN", 1, ("h",)),
)}
MODEL_TYPES = tuple(RECURRENT_KINDS)
# An integer setting without a bound of its own stops here: past it, the value meets TensorFlow as an
# int32 (shapes, steps, k) and fails there, with a traceback, instead of here with one line.
INT32_MAX = 2**31 - 1
MINUTES_A_YEAR = 525_960.0  # a time budget beyond it is a typo
# Each layer is built, traced and compiled in turn: 100,000 would build for many minutes in silence.
MAX_LAYERS = 128
FUSED_CHOICES = ("auto", "split", "on", "off")
LOWERCASE_CHOICES = ("auto", "1", "0")
LR_SCHEDULES = ("step", "cosine")
ONE_DEVICE, MIRRORED, MULTI_WORKER = "one_device", "mirrored", "multi_worker"
STRATEGY_CHOICES = (ONE_DEVICE, MIRRORED, MULTI_WORKER)


def setting(default: Any, help: str, *, lower: Optional[float] = None, upper: Optional[float] = None,
            above: Optional[float] = None, choices: Optional[Sequence[str]] = None, flag: bool = True,
            flag_type: Optional[type] = None, resumable: bool = False):
    """A dataclass field that is also a command-line flag.

    Args:
      default: the default value (also the flag's).
      help: the flag's one-line help: unit and default meaning.
      lower, upper: inclusive bounds, checked by the config and by the flag parser.
      above: an exclusive lower bound (a learning rate must be > 0).
      choices: the allowed strings.
      flag: False for fields that are stored but never set from the command line.
      flag_type: `int` for a bool that torch-rnn spells 0/1 (absl bool flags do not take `0`).
      resumable: a resumed run may change it (how long, how often, where the data is); every other
        setting comes from the checkpoint.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "lower": lower, "upper": upper, "above": above,
        "choices": tuple(choices) if choices else None, "flag": flag, "flag_type": flag_type,
        "resumable": resumable})


def _check_fields(config) -> None:
    """Bounds and choices from the field metadata, named as the flag the user typed."""
    for field in dataclasses.fields(config):
        value, meta = getattr(config, field.name), field.metadata
        if value is None or not meta:
            continue
        name = ref(field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
        if meta.get("choices") and value not in meta["choices"]:
            raise UserError(f"{name} {value!r}: choose one of {', '.join(meta['choices'])}")
        if meta.get("lower") is not None and value < meta["lower"]:
            raise UserError(f"{name} must be >= {meta['lower']:g}, got {value}")
        if meta.get("above") is not None and not value > meta["above"]:
            raise UserError(f"{name} must be > {meta['above']:g}, got {value}")
        if meta.get("upper") is not None and value > meta["upper"]:
            raise UserError(f"{name} must be <= {meta['upper']:g}, got {value}")
        if meta.get("upper") is None and isinstance(value, int) and not isinstance(value, bool) and value > INT32_MAX:
            raise UserError(f"{name} must be <= {INT32_MAX} (2^31 - 1), got {value}")


def _type_problem(cls, name: str, value) -> str:
    """Why a stored value cannot be field `name` of `cls` ("" if it can): a float where an int belongs
    would pass the bounds and fail deep in Keras."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return ""
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        ok = isinstance(value, bool) or value in (0, 1) and type(value) is int
    elif hint is int:
        ok = type(value) is int
    elif hint is float:
        ok = type(value) in (int, float)
    elif hint is str:
        ok = isinstance(value, str)
    else:
        ok = True
    return "" if ok else f"must be {hint.__name__}, got {type(value).__name__} {value!r}"[:200]


def from_dict(cls, values: dict, source: str):
    """A config from a stored dict (a checkpoint record); unknown keys or bad values -> UserError."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: {cls.__name__} is not a JSON object")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{source}: unexpected {cls.__name__} field(s): {', '.join(unknown)}")
    for name, value in values.items():
        problem = _type_problem(cls, name, value)
        if problem:
            raise UserError(f"{source}: {cls.__name__} field {name!r} {problem}")
    try:
        return cls(**values)
    except TypeError as e:
        raise UserError(f"{source}: {cls.__name__}: {e}") from None
    except UserError as e:
        raise e.prefixed(f"{source}: ") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a char-RNN (torch-rnn's LanguageModel options)."""

    vocab_size: int = setting(1, "V: tokens in the vocabulary (from the data).", lower=1, flag=False)
    model_type: str = setting("lstm", "Recurrent cell: lstm, gru or rnn (SimpleRNN).", choices=MODEL_TYPES)
    wordvec_size: int = setting(64, "D: embedding size.", lower=1)
    rnn_size: int = setting(128, "H: hidden units per recurrent layer.", lower=1)
    num_layers: int = setting(2, f"Recurrent layers (at most {MAX_LAYERS}).", lower=1, upper=MAX_LAYERS)
    dropout: float = setting(0.0, "Dropout after each recurrent layer (0 = none).", lower=0.0, upper=0.99)
    embedding_dropout: float = setting(0.0, "Dropout on the character embeddings, before the first recurrent layer"
                                       " (0 = none, torch-rnn's model).", lower=0.0, upper=0.99)
    batchnorm: bool = setting(False, "1 = batch normalisation after each recurrent layer.", flag_type=int)
    copy_memory: int = setting(0, "Copy attention over the last this many characters (0 = none, torch-rnn's model):"
                               " the top layer's output attends to the states before recent characters and"
                               " adds the character that followed (copies names seen a few lines up).",
                               lower=0)
    copy_heads: int = setting(4, "--copy_memory: attention heads.", lower=1)
    copy_head_size: int = setting(32, "--copy_memory: width of each head.", lower=1)
    copy_reset: float = setting(0.0, "--copy_memory: in training, the chance that a stream's memory starts a window"
                                " empty, so that the model also learns from short memories (as after a short"
                                " sampling prompt); 0 = only at a stream's start.", lower=0.0, upper=1.0)

    def __post_init__(self):
        _check_fields(self)

    def canonical(self) -> "ModelConfig":
        """The same architecture with the settings it does not use at their defaults (the copy attention's,
        without one), for comparing two configs."""
        if self.copy_memory:
            return self
        return dataclasses.replace(self, copy_heads=ModelConfig.copy_heads, copy_head_size=ModelConfig.copy_head_size,
                                   copy_reset=ModelConfig.copy_reset)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything train.lua's flags control, plus our additions."""

    input_h5: str = setting("", "HDF5 file from bin/preprocess (or torch-rnn). Empty: the --corpus.", resumable=True)
    input_json: str = setting("", "JSON vocabulary beside --input_h5. Empty: --input_h5 with .json.", resumable=True)
    batch_size: int = setting(50, "N: parallel streams per minibatch.", lower=1)
    seq_length: int = setting(50, "T: characters per stream per minibatch (truncated BPTT length).", lower=1)
    max_epochs: int = setting(50, "Passes over the training split.", lower=1, resumable=True)
    max_iters: int = setting(0, "Stop after this many iterations in all (0 = only --max_epochs limits).", lower=0,
                             resumable=True)
    max_minutes: float = setting(0.0, "Stop after this many minutes of training (validation included), then validate"
                                 " and checkpoint (0 = no time limit; at most a year). Counts across resumes.",
                                 lower=0.0, upper=MINUTES_A_YEAR, resumable=True)
    learning_rate: float = setting(2e-3, "Adam learning rate.", above=0.0)
    grad_clip: float = setting(5.0, "Clamp each gradient element to [-grad_clip, grad_clip] (0 = off).", lower=0.0)
    lr_decay_every: int = setting(5, "Multiply the learning rate by --lr_decay_factor every this many epochs.",
                                  lower=1)
    lr_decay_factor: float = setting(0.5, "Learning-rate decay factor.", above=0.0)
    lr_schedule: str = setting("step", "step = torch-rnn's (--lr_decay_every/--lr_decay_factor); cosine = anneal to"
                               " --min_learning_rate at the end of the run (--max_iters, --max_epochs, or the"
                               " iterations --max_minutes allows, estimated from the measured speed).",
                               choices=LR_SCHEDULES)
    min_learning_rate: float = setting(0.0, "cosine: the learning rate at the end of the run.", lower=0.0)
    warmup_iters: int = setting(0, "Raise the learning rate linearly from 0 over this many iterations (0 = none).",
                                lower=0)
    lr_schedule_iters: int = setting(0, "cosine: the iteration at which the schedule ends (resolved at the start, or"
                                     " once the speed is measured).", lower=0, flag=False)
    weight_decay: float = setting(0.0, "Decoupled weight decay (AdamW) on the kernels and embeddings; 0 = Adam, as"
                                  " torch-rnn.", lower=0.0)
    print_every: int = setting(1, "Print the training loss every this many iterations (0 = never).", lower=0,
                               resumable=True)
    checkpoint_name: str = setting("cv/checkpoint", "Checkpoint prefix: writes {name}_{iter}.keras/.state.npz/.json.")
    checkpoint_every: int = setting(1000, "Validate and checkpoint every this many iterations (and at the end).",
                                    lower=0, resumable=True)
    early_stopping: int = setting(0, "Stop when this many validations in a row found no lower val loss than the"
                                  " lowest so far, kept as {name}_best (0 = never stop early).", lower=0,
                                  resumable=True)
    init_from: str = setting("", "Checkpoint whose weights and architecture to start from (fine-tuning): .json or"
                             " .keras, or a torch-rnn .t7.")
    reset_iterations: bool = setting(True, "With --init_from: 1 = restart the iteration counter, 0 = keep it.",
                                     flag_type=int)
    resume_from: str = setting("", "Continue a run exactly: a checkpoint .json, or 'latest' for the newest complete"
                               " one of --checkpoint_name, or 'auto': the newest if there is one, else a new run"
                               " (a command that starts and restarts, as a container's).")
    seed: Optional[int] = setting(None, "Seed every RNG and make ops deterministic (same numbers on CPU).",
                                  lower=0, upper=2**32 - 1, flag_type=int)
    speed_benchmark: bool = setting(False, "1 = time every step (synchronised) and store the times.", flag_type=int,
                                    resumable=True)
    memory_benchmark: bool = setting(False, "1 = record peak memory after every step.", flag_type=int, resumable=True)
    tensorboard_dir: str = setting("", "Write TensorBoard scalars (losses, learning rate, tokens/s) here.",
                                   resumable=True)
    fused: str = setting("auto", "Training path on a CPU: on = the fused XLA kernel (fused.py), split = the same"
                         " with the batch in two halves computed at once (one per core; not with --batchnorm or"
                         " --copy_memory), off = the plain Keras layers, auto = the one measured faster for this"
                         " size (on this machine if bin/benchmark --what calibrate ran here), split where it can."
                         " The choice is stored in the checkpoint, so a resumed run keeps it.", choices=FUSED_CHOICES)
    # --- scale-out (kerascharrnn/training/distributed/, docs/distributed.md) ---
    strategy: str = setting("one_device", "one_device = today's single-device training; mirrored = every GPU of this"
                            " host (or --cpu_replicas CPU devices); multi_worker = the cluster in TF_CONFIG (run the"
                            " same command on every worker). --batch_size stays the global number of streams.",
                            choices=STRATEGY_CHOICES, resumable=True)
    cpu_replicas: int = setting(0, "With --strategy mirrored on a host without GPUs: split the CPU into this many"
                                " logical devices, one replica each (0 = off).", lower=0, upper=1024, resumable=True)
    worker_timeout: int = setting(120, "multi_worker: seconds to wait for an unreachable or lost worker before"
                                  " stopping with an error.", lower=1, upper=86400, resumable=True)
    replicas: int = setting(1, "Replicas the run trained on (resolved and recorded, not a flag).", lower=1,
                            upper=2**31 - 1, flag=False)
    sized_by: str = setting("", "What a budgeted preset chose and why (sizing.py; recorded, not a flag).",
                            flag=False)

    def __post_init__(self):
        _check_fields(self)
        if self.init_from and self.resume_from:
            raise UserError(f"{ref('init_from')} and {ref('resume_from')} conflict: give one of them")
        if self.min_learning_rate > self.learning_rate:
            raise UserError(f"{ref('min_learning_rate')} must not exceed {ref('learning_rate')}")
        _check_strategy(self)

    def resumed_with(self, given: Dict[str, Any]) -> "TrainConfig":
        """This run's recorded settings, continued: only the resumable settings in `given` (those the user
        set) change; the architecture and the training recipe stay the checkpoint's."""
        changes = {name: value for name, value in given.items() if name in RESUMABLE}
        if "input_h5" in changes and "input_json" not in changes:
            changes["input_json"] = ""  # the vocabulary beside the new input_h5, never the checkpoint's old one
        return dataclasses.replace(self, init_from="", **changes)


def _check_strategy(config: "TrainConfig") -> None:
    if config.strategy == MULTI_WORKER and config.max_minutes:
        # each worker would measure its own clock and stop (or end its cosine) at its own iteration
        raise UserError(f"{ref('max_minutes')} does not work with {ref('strategy')} {MULTI_WORKER} (the workers'"
                        f" clocks would disagree on when to stop); give {ref('max_iters')} or {ref('max_epochs')}"
                        " instead")
    if config.cpu_replicas and config.strategy != MIRRORED:
        raise UserError(f"{ref('cpu_replicas')} needs {ref('strategy')} {MIRRORED} (got {ref('strategy')}"
                        f" {config.strategy})")
    if config.cpu_replicas:
        check_replicas(config.batch_size, config.cpu_replicas)


def check_replicas(batch_size: int, replicas: int) -> None:
    """Each replica carries an equal share of the batch's streams."""
    if batch_size % replicas:
        raise UserError(f"{ref('batch_size')} {batch_size} does not divide by the {replicas} replicas: each replica"
                        f" carries an equal share of the streams; give a multiple of {replicas}")


# Settings a resumed run may change; everything else comes from its checkpoint.
RESUMABLE = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resumable"])


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Options of one sampling run (sample.lua's flags plus top-k/top-p)."""

    length: int = setting(2000, "Tokens (characters) of output in all, the start text included (a run whose"
                          " --num_samples x --length, ~12 bytes each, exceeds half the free memory is refused).",
                          lower=0, upper=10**9)
    start_text: str = setting("", "Text to prime the model with; the output starts with it.")
    sample: bool = setting(True, "1 = sample from the distribution, 0 = take the most likely character (argmax).",
                           flag_type=int)
    temperature: float = setting(1.0, "Softmax temperature (> 0, at most 1e6: beyond it every character is equally"
                                 " likely anyway, and float32 overflows); lower is more conservative.", above=0.0,
                                 upper=BOUNDS["temperature"].high)
    top_k: int = setting(0, "Sample only among the k most likely characters (0 = off; a k above the vocabulary"
                         " size is clamped to it, i.e. off).", lower=0, upper=BOUNDS["top_k"].high)
    top_p: float = setting(1.0, "Nucleus sampling: the smallest set with this much probability (1 = off).",
                           above=0.0, upper=BOUNDS["top_p"].high)
    num_samples: int = setting(1, "Independent samples to generate, as one batched run.", lower=1, upper=100_000)
    seed: Optional[int] = setting(None, "Seed for the draws: the same seed gives the same text.", lower=0,
                                  upper=SEED_MAX, flag_type=int)
    beam_size: int = setting(0, "Beam search with this many beams: the most likely text instead of a sample (no"
                             " temperature or draws; 1 = argmax, as --sample 0). 0 = off.", lower=0, upper=1000)

    def __post_init__(self):
        _check_fields(self)
        if self.beam_size and self.num_samples > 1:
            raise UserError(f"{ref('beam_size')} gives the one most likely text: use it with {ref('num_samples')} 1")

    def new_tokens(self, prompt_tokens: int) -> int:
        """Tokens to generate after a start text of `prompt_tokens` tokens (`length` counts it too)."""
        if self.length < prompt_tokens:
            raise UserError(f"{ref('length')} {self.length} is shorter than {ref('start_text')} ({prompt_tokens}"
                            f" tokens); {ref('length')} counts the start text too")
        return self.length - prompt_tokens


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """bin/serve: torch-rnn-server's behaviour and this server's limits."""

    word_limit_short: int = setting(3, "GET /generate: redraw completions with fewer words (torch-rnn-server: 3).",
                                    lower=0)
    word_limit_long: int = setting(20, "GET /generate: redraw completions with more words (torch-rnn-server: 20).",
                                   lower=0)
    max_n: int = setting(10, "GET /generate: a larger n is clamped to this (torch-rnn-server: 10).", lower=1)
    lowercase: str = setting("auto", "GET /generate: lower-case the start text? auto = only when the model's"
                             " vocabulary has no upper-case letters (torch-rnn-server always did: its reference model"
                             " was trained on lower-case text); 1 = always; 0 = never.", choices=LOWERCASE_CHOICES)
    completion_chars: int = setting(140, "GET /generate: a completion stops here if no sentence end came first.",
                                    lower=1, flag=False)
    max_start_text: int = setting(2000, "Longest start text, in characters: rnn-writer's and our JSON API answer a"
                                  " longer one 413; the writers' APIs (OpenAI, Ollama, KoboldCpp, llama.cpp) read a"
                                  " longer prompt from its end, as those servers keep what fits their context.",
                                  lower=1)
    max_redraw_rounds: int = setting(8, "GET /generate: batched redraw rounds before answering with the completions"
                                     " that passed (torch-rnn-server redrew without limit).", lower=1)
    max_num_new_chars: int = setting(2000, "Most characters one completion makes, in every API (a request for more, or"
                                     " for -1 or no limit, gets this many; POST /v1/generate refuses more).",
                                     lower=1)
    max_num_samples: int = setting(32, "Most completions one request asks for, in every API (prompts x n).", lower=1)
    max_batch_rows: int = setting(64, "Rows one model run may hold from concurrent requests.", lower=1, flag=False)
    max_waiting: int = setting(256, "Requests that may wait for the model; beyond, a request gets 429 with"
                               " Retry-After at once.", lower=1)
    request_timeout: float = setting(30.0, "Seconds a request may take, waiting included; past it, it is dropped"
                                     " and answered 503.", above=0.0, upper=86400.0)
    max_body_bytes: int = setting(1 << 20, "Largest request body read, in bytes (larger: 413 before parsing).",
                                  lower=1024, upper=1 << 30)
    max_idle_connections: int = setting(512, "Connections still sending a request head at once; beyond, the oldest"
                                        " of them is closed (stalled clients cannot crowd out real ones).", lower=1,
                                        upper=1 << 20)
    head_timeout: float = setting(10.0, "Seconds a connection may take to send a request's line and headers (a"
                                  " slow or stalled client is then disconnected).", above=0.0, upper=3600.0)
    body_timeout: float = setting(10.0, "Seconds a request's body may take to arrive once its head did (longer: 408,"
                                  " the connection closed).", above=0.0, upper=3600.0)
    allowed_hosts: str = setting("", "Names a request may be sent to (its Host header), comma-separated, beside this"
                                 " machine's own names and loopback addresses, which are always answered: a proxy's"
                                 " public name, say; local = no more. Checked on a loopback --host, and on any --host"
                                 " once given; * = any name.")
    docs: bool = setting(False, "Serve FastAPI's /docs page (it loads its script from a CDN); /openapi.json is"
                         " always served.", flag_type=int)
    cors_origins: str = setting("local", "Web pages (origins) that may use the model, comma-separated: local = pages"
                                " on this machine's loopback addresses and local apps, and pages opened from a file"
                                " when --api_key is set; null = pages opened from a file (and sandboxed frames on"
                                " any site); * = every page; none; or origins such as https://writer.example or"
                                " http://192.168.1.20:* (any port).")

    def __post_init__(self):
        _check_fields(self)
        if self.word_limit_short > self.word_limit_long:
            raise UserError(f"{ref('word_limit_short')} must be <= {ref('word_limit_long')}")
