"""Size distillation: Qwen3-4B-Instruct-2507 <- Qwen3-30B-A3B-Instruct-2507 on GSM8K (one H200).

    python -m cliffdistill.train --config configs/qwen_size.py --workdir DIR \
        --config.student.path=/models/Qwen3-4B-Instruct-2507 \
        --config.teacher.path=/models/Qwen3-30B-A3B-Instruct-2507 --config.method=teacher_seeded

The study's settings: 100 steps (200 for extended_on_policy), LoRA rank 32, lr 3e-4.
"""

import ml_collections

from cliffdistill.run import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.setup = "size"
    c.student.path = "/models/Qwen3-4B-Instruct-2507"
    c.teacher.path = "/models/Qwen3-30B-A3B-Instruct-2507"
    c.data.update(source="jsonl", path="../shared/data/gsm8k", n_train=2000, n_eval=1319,
                  context="none")
    c.rollout.update(batch_size=64, max_new_tokens=512, max_prompt_len=512)
    c.off_policy.update(max_new_tokens=512, gen_batch_size=64)
    c.eval.update(every=25, max_new_tokens=1024, batch_size=128)
    c.mesh.update(data=1, fsdp=1, tensor=1)
    return c
