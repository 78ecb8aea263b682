"""Context distillation: Llama-3.1-8B-Instruct with vs without a 10-shot GSM8K context.

One copy of the base weights: the teacher is the base model (LoRA off) reading 10 solved
examples before the question; the student is the same base + LoRA reading only the question.

    python -m cliffdistill.train --config configs/llama_context.py --workdir DIR \
        --config.student.path=/models/Llama-3.1-8B-Instruct --config.method=hybrid
"""

import ml_collections

from cliffdistill.run import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.setup = "context"
    c.student.path = "/models/Llama-3.1-8B-Instruct"
    c.teacher.path = ""  # the student's base weights with the context
    c.data.update(source="jsonl", path="../shared/data/gsm8k", n_train=2000, n_fewshot=64,
                  n_eval=1319, context="fewshot", context_k=10)
    c.rollout.update(batch_size=64, max_new_tokens=512, max_prompt_len=512,
                     max_teacher_prompt_len=4096)
    c.off_policy.update(max_new_tokens=512, gen_batch_size=64)
    c.eval.update(every=25, max_new_tokens=1024, batch_size=128)
    c.mesh.update(data=1, fsdp=1, tensor=1)
    return c
