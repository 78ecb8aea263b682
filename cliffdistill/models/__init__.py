"""Model core: config, decoder, LoRA, HF I/O, sharding."""

from cliffdistill.models.config import (ModelConfig, PRESETS, from_hf_config, load_hf_config, preset,
                                        to_hf_config)
from cliffdistill.models.hf_io import load_hf, save_hf
from cliffdistill.models.lora import LoraConfig, LoraParams, init_lora, merge
from cliffdistill.models.transformer import (apply, count_params, decode_step, forward_hidden,
                                             init_params, param_shapes, prefill, unembed)

__all__ = [
    "ModelConfig", "PRESETS", "from_hf_config", "load_hf_config", "preset", "to_hf_config",
    "load_hf", "save_hf", "LoraConfig", "LoraParams", "init_lora", "merge", "apply", "count_params",
    "decode_step", "forward_hidden", "init_params", "param_shapes", "prefill", "unembed",
]
