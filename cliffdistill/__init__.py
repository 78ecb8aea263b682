"""cliffdistill: on-policy and off-policy LLM distillation in JAX, done correctly."""

import os

# transformers warns at import that PyTorch is missing. cliffdistill uses transformers only for
# tokenizers and config files (the model code is JAX), so that advice is noise for our users;
# an explicit setting of the variable by the user still wins.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
