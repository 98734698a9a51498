"""Training: optimizers and schedules, the state pytree, pure steps, checkpoints, the epoch loop."""
