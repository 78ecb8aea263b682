"""Size distillation: Llama-3.1-8B-Instruct <- Llama-3.3-70B-Instruct on GSM8K.

The 70B teacher (141 GB in bf16) does not fit one GPU: params are sharded over the `tensor`
axis (8 GPUs of one host, or a TPU slice: e.g. --config.mesh.tensor=4 --config.mesh.fsdp=4 on
a v5p-32). Each device reads only its slice of the safetensors files.

    python -m cliffdistill.train --config configs/llama_size.py --workdir DIR \
        --config.student.path=/models/Llama-3.1-8B-Instruct \
        --config.teacher.path=/models/Llama-3.3-70B-Instruct
"""

import ml_collections

from cliffdistill.run import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.setup = "size"
    c.student.path = "/models/Llama-3.1-8B-Instruct"
    c.teacher.path = "/models/Llama-3.3-70B-Instruct"
    c.data.update(source="jsonl", path="../shared/data/gsm8k", n_train=2000, n_eval=1319,
                  context="none")
    c.rollout.update(batch_size=64, max_new_tokens=512, max_prompt_len=512)
    c.off_policy.update(max_new_tokens=512, gen_batch_size=64)
    c.eval.update(every=25, max_new_tokens=1024, batch_size=128)
    c.mesh.update(data=1, fsdp=1, tensor=8)
    return c
