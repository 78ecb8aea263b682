"""cliffdistill: on-policy and off-policy LLM distillation in JAX, done correctly."""
