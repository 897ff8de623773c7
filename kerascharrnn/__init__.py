"""kerascharrnn: character-level RNN language models on TensorFlow + Keras 3.

The package is importable without TensorFlow being imported: the modules that
need it (model, data pipeline, train, sampling) import it themselves, so the
command-line tools can check their inputs first and fail fast.
"""

__version__ = "0.2.0.dev0"
