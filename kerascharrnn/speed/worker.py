"""One benchmark measurement in a process of its own (run by kerascharrnn.speed.report).

    python3 -m kerascharrnn.speed.worker tf|torch '{"model_type": "lstm", "num_layers": 2, ...}'

Prints one JSON line: every timed train-step time (after warm-up), and peak RSS growth above this
framework's idle baseline (RSS once the framework is imported; the kernel's peak counter is reset
there, so the import's own peak does not count): over the whole run (warm-up, hence tracing and XLA
compilation, included) and over the timed steps only (steady state).
"""

import json
import sys
import time

import numpy as np


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def batches(h5_path: str, batch_size: int, seq_length: int):
    """Consecutive torch-rnn minibatches of the train split, cycling (both frameworks read the same)."""
    import h5py

    from kerascharrnn.data import batches

    with h5py.File(h5_path, "r") as f:
        tokens = f["train"][:]
    layout = batches.stream_layout(len(tokens), batch_size, seq_length, allow_fewer_streams=False)
    while True:
        yield from batches.batch_arrays(tokens, layout)


def tf_step_fn(config: dict, vocab_size: int):
    from kerascharrnn.config import ModelConfig, TrainConfig
    from kerascharrnn.data import batches
    from kerascharrnn.models.charrnn import CharRNN
    from kerascharrnn.training import trainer
    from kerascharrnn.vocab import Vocabulary

    model_config = ModelConfig(vocab_size=vocab_size, model_type=config["model_type"], wordvec_size=64,
                               rnn_size=config["rnn_size"], num_layers=config["num_layers"])
    train_config = TrainConfig(batch_size=config["batch_size"], seq_length=config["seq_length"],
                               fused=config.get("fused", "auto"))
    vocab = Vocabulary(tuple(chr(0x100 + i) for i in range(vocab_size)))  # speed does not depend on it
    charrnn = CharRNN.build(model_config, vocab, train_config.batch_size)
    layout = batches.StreamLayout(train_config.batch_size, train_config.batch_size, train_config.seq_length, 1000)
    one_device = trainer.Trainer(train_config, charrnn, {"train": layout})
    return lambda x, y: float(one_device.train_step(x, y))


def main(argv):
    framework, config = argv[1], json.loads(argv[2])
    if framework == "tf":
        from kerascharrnn import devices  # imports TensorFlow: the idle baseline includes the framework

        devices.configure_xla()  # as bin/train's set-up does
    else:
        import torch  # noqa: F401
    import h5py

    with h5py.File(config["h5"], "r") as f:
        vocab_size = int(max(f["train"][:].max(), f["val"][:].max() if len(f["val"]) else 0))
    data_iter = batches(config["h5"], config["batch_size"], config["seq_length"])
    baseline = rss_mb()
    reset_peak_rss()
    if framework == "tf":
        step = tf_step_fn(config, vocab_size)
    else:
        from kerascharrnn.speed import torch_peer

        step = torch_peer.train_step_fn(config, vocab_size)
    for _ in range(config["warmup"]):
        step(*next(data_iter))
    warmup_peak = rss_mb("VmHWM")  # includes one-off costs: tracing, XLA compilation
    reset_peak_rss()
    times = []
    for _ in range(config["iters"]):
        x, y = next(data_iter)
        started = time.perf_counter()
        step(x, y)  # returns a Python float: the step has finished
        times.append(time.perf_counter() - started)
    times = np.array(times)
    tokens = config["batch_size"] * config["seq_length"]
    gpu_peak_mb = None
    if framework == "tf":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            gpu_peak_mb = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    else:
        import torch

        if torch.cuda.is_available():
            gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({"times_ms": [1000 * t for t in times], "tokens_per_step": tokens, "baseline_rss_mb": baseline,
                      "peak_growth_mb": max(warmup_peak, rss_mb("VmHWM")) - baseline,
                      "steady_growth_mb": rss_mb("VmHWM") - baseline, "gpu_peak_mb": gpu_peak_mb}))


if __name__ == "__main__":
    main(sys.argv)
