"""The study's scale-up pairs (its Priority 3), size distillation on GSM8K, one config per pair:

    python -m cliffdistill.train --config configs/scaleup.py:mixtral --workdir DIR \
        --config.student.path=/models/Mistral-7B-Instruct-v0.2 \
        --config.teacher.path=/models/Mixtral-8x7B-Instruct-v0.1
    python -m cliffdistill.memplan --config configs/scaleup.py:qwen25 --student_preset qwen25_32b \
        --teacher_preset qwen25_72b --hbm_gib 79.6 --smallest_mesh

Pairs (student <- teacher, the preset names the memory planner knows them by):
  mixtral   Mistral-7B-Instruct-v0.2 <- Mixtral-8x7B-Instruct-v0.1  (mistral_7b <- mixtral_8x7b)
  qwen25    Qwen2.5-32B-Instruct <- Qwen2.5-72B-Instruct            (qwen25_32b <- qwen25_72b)
  llama405  Llama-3.1-70B-Instruct <- Llama-3.1-405B-Instruct       (llama33_70b <- llama31_405b)
  gemma3    gemma-3-1b-it <- gemma-3-27b-it (its language model)     (gemma3_1b <- gemma3_27b)

The Gemma 3 pair shares a tokenizer but not an embedding size (262,144 vs 262,208 rows, the
27B's extra rows are image tokens): `vocab_size` is set to the 1B's 262,144 rows, so logits,
losses and sampling cover only ids both models have; the run refuses it, naming the field, if
the tokenizer has more ids.

The study's settings (as configs/qwen_size.py): LoRA rank 32, rollout batch 64 x 512 new tokens.
`mesh` is the smallest H100 (80 GB) mesh the planner finds for the pair as configured; the
other platforms' meshes and the memory tables are in docs/SCALING.md. Where a chat template has
no system role (some Mistral template versions), a system prompt or passage goes into the first
user turn (`prompts.fold_system`).
"""

import ml_collections

from cliffdistill.run import defaults

PAIRS = {
    "mixtral": dict(student="/models/Mistral-7B-Instruct-v0.2",
                    teacher="/models/Mixtral-8x7B-Instruct-v0.1",
                    mesh=dict(data=1, fsdp=1, tensor=4, expert=1)),
    "qwen25": dict(student="/models/Qwen2.5-32B-Instruct", teacher="/models/Qwen2.5-72B-Instruct",
                   mesh=dict(data=1, fsdp=2, tensor=4, expert=1)),
    "llama405": dict(student="/models/Llama-3.1-70B-Instruct",
                     teacher="/models/Llama-3.1-405B-Instruct",
                     mesh=dict(data=1, fsdp=4, tensor=8, expert=1)),
    "gemma3": dict(student="/models/gemma-3-1b-it", teacher="/models/gemma-3-27b-it",
                   mesh=dict(data=1, fsdp=1, tensor=1, expert=1), vocab_size=262144),
}


def get_config(pair: str = "mixtral") -> ml_collections.ConfigDict:
    if pair not in PAIRS:
        raise ValueError(f"configs/scaleup.py:{pair}: unknown pair; choose one of {sorted(PAIRS)}")
    p = PAIRS[pair]
    c = defaults.get_config()
    c.setup = "size"
    c.student.path, c.teacher.path = p["student"], p["teacher"]
    c.data.update(source="jsonl", path="../shared/data/gsm8k", n_train=2000, n_eval=1319,
                  context="none")
    c.rollout.update(batch_size=64, max_new_tokens=512, max_prompt_len=512)
    c.off_policy.update(max_new_tokens=512, gen_batch_size=64)
    c.eval.update(every=25, max_new_tokens=1024, batch_size=128)
    c.mesh.update(p["mesh"])
    c.vocab_size = p.get("vocab_size", 0)
    return c
