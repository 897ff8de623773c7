"""Training: the trainer and its loop, the learning-rate schedule, evaluation, the loss plot, the fused CPU
path and the choice of it, and distributed training."""
