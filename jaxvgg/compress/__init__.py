"""Making models lighter: magnitude pruning, int8 post-training quantization, knowledge distillation."""
