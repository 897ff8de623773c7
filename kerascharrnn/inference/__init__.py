"""Generating text: the sampler over any step function, and the engines behind it (a checkpoint, a
SavedModel, a TFLite model)."""
