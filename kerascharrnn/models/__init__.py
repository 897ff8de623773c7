"""The model: the Keras layer stack and how each layer runs in every form, the fused recurrence, and the
CharRNN that carries model, vocabulary and config together."""
