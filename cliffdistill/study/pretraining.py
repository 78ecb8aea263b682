"""Pretraining a toy model from scratch: its config, and next-token training on answer tokens.

The optimizer is the runs' own (`engine.update.make_optimizer`). The loss is the answer-token NLL
here, not `engine.losses.off_policy_nll`: the two agree in value, but that one rounds its
log-softmax differently, which would change every toy model's bits and so the testbed the
published results were measured on.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cliffdistill.engine import update
from cliffdistill.models import config as model_config
from cliffdistill.models import transformer
from cliffdistill.study.toy_data import Batch


def model_cfg(m: ml_collections.ConfigDict, vocab: int, eos: int, pad: int) -> model_config.ModelConfig:
    return model_config.ModelConfig(
        model_type="qwen3", vocab_size=vocab, hidden_size=m.hidden, num_layers=m.layers,
        num_heads=m.heads, num_kv_heads=m.kv_heads, head_dim=m.head_dim, intermediate_size=m.mlp,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        max_position_embeddings=1024, eos_token_ids=(eos,), pad_token_id=pad)


def pretrain(mcfg: model_config.ModelConfig, batch_fn: Callable[[int], Batch],
             steps: int, lr: float, seed: int, log_every: int = 100,
             progress: Callable[[int, float], None] | None = None,
             snapshot: Callable[[int, dict[str, Any]], None] | None = None,
             snapshot_steps: Sequence[int] = ()) -> dict[str, Any]:
    """Next-token training from scratch on answer tokens (AdamW, warmup + cosine). Returns params;
    `snapshot(step, params)` is called after each of `snapshot_steps` (1-based)."""
    params = transformer.init_params(mcfg, jax.random.key(seed))
    opt = update.make_optimizer(update.OptimConfig(
        lr=lr, schedule="cosine", warmup_steps=min(100, steps // 10 + 1), weight_decay=0.01,
        final_lr_fraction=0.05), steps)
    opt_state = opt.init(params)

    @jax.jit
    def step_fn(params, opt_state, tokens, mask):
        def loss_fn(p):
            return answer_nll(transformer.apply(mcfg, p, tokens[:, :-1]), tokens, mask)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for i in range(steps):
        tokens, mask = batch_fn(i)
        params, opt_state, loss = step_fn(params, opt_state, tokens, mask)
        if progress is not None and (i % log_every == 0 or i == steps - 1):
            progress(i, float(loss))
        if snapshot is not None and i + 1 in snapshot_steps:
            snapshot(i + 1, params)
    return params


def answer_nll(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean next-token NLL of the answer tokens (targets shifted by one)."""
    lp = jax.nn.log_softmax(logits)
    tgt = jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1)[..., 0]
    m = mask[:, 1:]
    return -jnp.sum(tgt * m) / jnp.maximum(m.sum(), 1)
