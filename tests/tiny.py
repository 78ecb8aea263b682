"""A tiny student/teacher pair + synthetic data on disk, and a run config for them (engine tests)."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections

from cliffdistill import models
from cliffdistill.data import synthetic, toy_corpus, toy_tokenizer
from configs import base


def tiny_model_config(vocab: int, eos: int, pad: int, layers: int = 2, hidden: int = 32,
                      model_type: str = "qwen3") -> models.ModelConfig:
    return models.ModelConfig(
        model_type=model_type, vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=4,
        num_kv_heads=2, head_dim=8, intermediate_size=2 * hidden, tie_word_embeddings=True,
        eos_token_ids=(eos,), pad_token_id=pad, max_position_embeddings=1024)


def make_tiny_pair(root: Path, seed: int = 0) -> dict[str, Path]:
    """Writes tokenizer, student (2 layers), teacher (3 layers, wider) and data under root."""
    root = Path(root)
    tok = toy_corpus.build_toy_tokenizer(seed)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    vocab = len(tok)
    paths = {"student": root / "student", "teacher": root / "teacher", "data": root / "data"}
    for name, layers, hidden, key in (("student", 2, 32, 1), ("teacher", 3, 48, 2)):
        cfg = tiny_model_config(vocab, eos, pad, layers, hidden)
        models.save_hf(cfg, models.init_params(cfg, jax.random.key(seed * 10 + key)), paths[name])
        toy_tokenizer.save_tokenizer(tok, paths[name])
    paths["data"].mkdir(parents=True, exist_ok=True)
    synthetic.write_jsonl(synthetic.generate(60, seed=seed, difficulty=1), paths["data"] / "train.jsonl")
    synthetic.write_jsonl(synthetic.generate(20, seed=seed + 1, difficulty=1), paths["data"] / "test.jsonl")
    return paths


def tiny_run_config(paths: dict[str, Path], method: str = "on_policy_gkd", setup: str = "size",
                    steps: int = 4) -> ml_collections.ConfigDict:
    c = base.get_config()
    c.method, c.setup = method, setup
    c.student.path, c.student.dtype = str(paths["student"]), "float32"
    c.teacher.path = str(paths["teacher"]) if setup == "size" else ""
    c.teacher.dtype = "float32"
    c.lora.rank, c.lora.alpha = 4, 8.0
    c.data.path = str(paths["data"])
    c.data.n_train, c.data.n_fewshot, c.data.n_eval = 16, 4, 8
    c.data.instruction = ""
    c.data.context = "fewshot" if setup == "context" else "none"
    c.data.context_k = 2
    c.rollout.batch_size, c.rollout.max_new_tokens = 4, 8
    c.rollout.max_prompt_len, c.rollout.max_teacher_prompt_len = 64, 256
    c.off_policy.max_new_tokens, c.off_policy.gen_batch_size = 8, 8
    c.eval.max_new_tokens, c.eval.batch_size, c.eval.every = 8, 8, steps
    c.checkpoint.every, c.checkpoint.async_save = 2, False
    c.loss.vocab_chunk = 128
    c.replay.capacity = 8
    s = c.schedule
    s.num_steps, s.extended_num_steps = steps, 2 * steps
    s.hybrid_switch_step = s.reverse_switch_step = max(steps // 2, 1)
    s.seed_max_tokens, s.seed_decay_steps, s.replay_period = 4, max(steps // 2, 1), 2
    return c
