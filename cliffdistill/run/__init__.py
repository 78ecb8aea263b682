"""One run from a config: validation, assembly (models, data, prompt views), the memory plan,
off-policy data, the run directory, the train loop, evaluation and export."""
