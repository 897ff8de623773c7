"""Files: atomic writes and input checks, path safety, the names of a run's files and its lock, checkpoints,
the export layout, and torch-rnn's .t7 files. No TensorFlow."""
