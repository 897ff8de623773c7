"""kerascharrnn: character-level RNN language models on TensorFlow + Keras 3.

The package is importable without TensorFlow being imported: the modules that
need it (model, data pipeline, train, sampling) import it themselves, so the
command-line tools can check their inputs first and fail fast. The lite install
(pip install 'kerascharrnn[lite]') has no TensorFlow at all: bin/sample and
bin/serve run an exported model.tflite on LiteRT through inference.generation
and inference.numpy_logits; the other tools say in one line what they need.
"""

__version__ = "0.6.0"  # the one place: setup.cfg reads it (CHANGELOG.md says what each release changed)
