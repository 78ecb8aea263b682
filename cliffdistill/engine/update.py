"""The update step: one optimizer step on a weighted sum of the step's loss terms.

Plain JAX/optax over pytrees — no ml_collections, no files — so the trainer and the throughput
benchmark run the same compiled program. What is static (`UpdateSpec`: model configs, which loss
terms a step has, the optimizer's hyper-parameters) is hashable and keys the compile cache; what
a schedule changes every step (loss weights, anchor beta: `plan_arrays`) enters as arrays, so a
run compiles at most one update per combination of active terms (e.g. `hybrid`: off-only,
on-only).

The train state is a plain pytree (what a checkpoint holds):
    {"step", "lora" (adapter layers), "opt_state", "rng" (key data), "data_pos",
     "replay": {"items" [capacity] int32, "size", "ptr"}}
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cliffdistill.engine import losses, scoring
from cliffdistill.models import lora as lora_lib
from cliffdistill.models import sharding, transformer
from cliffdistill.models.config import ModelConfig
from cliffdistill.models.lora import LoraParams

if TYPE_CHECKING:  # a StepPlan is plain numbers; importing methods would pull in ml_collections
    from cliffdistill.engine.methods import StepPlan

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW + global-norm clipping + a learning-rate schedule (configs/base.py `optim`)."""

    lr: float = 3e-4
    schedule: str = "constant"  # "constant" | "cosine" | "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    final_lr_fraction: float = 0.0  # cosine: the learning rate it decays to, as a fraction of lr


def make_optimizer(o: OptimConfig, num_steps: int) -> optax.GradientTransformation:
    if o.schedule == "constant":
        lr = optax.constant_schedule(o.lr)
    elif o.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, o.lr, max(o.warmup_steps, 1), max(num_steps, 2),
                                                o.lr * o.final_lr_fraction)
    elif o.schedule == "linear":
        lr = optax.linear_schedule(o.lr, 0.0, max(num_steps, 1))
    else:
        raise ValueError(f"config field `optim.schedule`={o.schedule!r}; choose one of {SCHEDULES}")
    if o.schedule != "cosine" and o.warmup_steps > 0:
        lr = optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), lr],
                                  [o.warmup_steps])
    return optax.chain(optax.clip_by_global_norm(o.grad_clip),
                       optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))


def init_state(student_cfg: ModelConfig, student_params: Any, lcfg: lora_lib.LoraConfig,
               mesh: jax.sharding.Mesh, optimizer: optax.GradientTransformation, *, seed: int,
               lora_dtype: str, replay_capacity: int) -> dict[str, Any]:
    """The step-0 train state: fresh adapters (`b` = 0), optimizer state, run key, empty replay."""
    lora = lora_lib.init_lora(student_cfg, lcfg, jax.random.key(seed), student_params,
                              dtype=jnp.dtype(lora_dtype))
    layers = jax.device_put(lora.layers, sharding.replicated(mesh))
    return {
        "step": np.asarray(0, np.int64),
        "lora": layers,
        # every leaf on the mesh (optax's step counter would otherwise land on one device and the
        # second update would recompile for the changed input sharding)
        "opt_state": jax.device_put(jax.jit(optimizer.init)(layers), sharding.replicated(mesh)),
        "rng": np.asarray(jax.random.key_data(jax.random.key(seed + 1_000_003))),
        "data_pos": np.asarray(0, np.int64),
        "replay": {"items": np.zeros((replay_capacity,), np.int32),
                   "size": np.asarray(0, np.int64), "ptr": np.asarray(0, np.int64)},
    }


def plan_arrays(plan: StepPlan, *, kl_discount: float, jsd_beta: float, dpo_beta: float,
                confidence_temperature: float) -> dict[str, jax.Array]:
    """A step's plan numbers (and the loss config's numbers) as f32 scalars: changing them never
    recompiles the update."""
    return {"on_weight": jnp.float32(plan.on_weight), "off_weight": jnp.float32(plan.off_weight),
            "anchor_beta": jnp.float32(plan.anchor_beta), "kl_discount": jnp.float32(kl_discount),
            "jsd_beta": jnp.float32(jsd_beta), "dpo_weight": jnp.float32(plan.dpo_weight),
            "dpo_beta": jnp.float32(dpo_beta),
            "confidence_temperature": jnp.float32(confidence_temperature)}


@dataclasses.dataclass(frozen=True)
class UpdateSpec:
    """Everything static about an update: hashable, so equal specs share one compilation."""

    student: ModelConfig
    teacher: ModelConfig
    scale: float
    has_on: bool
    has_off: bool
    has_anchor: bool
    on_loss: str
    off_loss: str
    shift_off: bool
    vocab_chunk: int
    remat: str  # "full" | "dots" | "none" (transformer.remat_policy)
    moe_impl: str
    optim: OptimConfig
    num_steps: int  # 0 for a constant schedule: runs of any length share the compile
    has_dpo: bool = False  # DPO on teacher-ranked (chosen, rejected) pairs: batch["dpo"]
    confidence_weighted: bool = False  # on-policy rows weighted by the teacher's confidence
    # The study's defects (ablations, off by default; DESIGN §1):
    two_step_mixture: bool = False  # on- and off-policy terms as two optimizer steps, not one sum
    zero_kl_anchor: bool = False  # the KL anchor compares the policy with itself: value, grad 0


def loss_terms(spec: UpdateSpec, lora_layers: Any, base: Any, teacher_unembed: jax.Array | None,
                batch: dict[str, Any], plan: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
    """(total loss, aux) of one step. batch["on"] / batch["off"]: prompt [B, P], prompt_mask,
    completion [B, G], loss_mask [B, G] (+ lp_old, lp_teacher [B, G] or teacher_h [B, G, D]).
    batch["dpo"]: the same four fields over [2B', ...] rows -- B' chosen completions, then their
    B' rejected partners -- and valid [B'] (False for a tied pair)."""
    lora = LoraParams(layers=lora_layers, scale=spec.scale)
    w = transformer.unembed_matrix(spec.student, base)
    cap_s, cap_t = spec.student.final_logit_softcapping, spec.teacher.final_logit_softcapping
    token_lp = lambda h, tokens: scoring.chunked_token_logprobs(  # noqa: E731
        h, w, tokens, spec.vocab_chunk, cap_s)
    hidden = functools.partial(scoring.completion_hidden, spec.student, base, remat=spec.remat,
                               moe_impl=spec.moe_impl)
    total = jnp.zeros((), jnp.float32)
    aux: dict[str, jax.Array] = {}
    anchor_batch = None
    if spec.has_on:
        b = batch["on"]
        h = hidden(b["prompt"], b["prompt_mask"], b["completion"], lora)
        seq_w = (losses.teacher_confidence_weights(b["lp_teacher"], b["loss_mask"],
                                                   plan["confidence_temperature"])
                 if spec.confidence_weighted else None)  # [B]
        if spec.on_loss == "sampled_rkl":
            lp = token_lp(h, b["completion"])
            l_on = losses.sampled_reverse_kl(lp, b["lp_old"], b["lp_teacher"], b["loss_mask"],
                                             plan["kl_discount"], seq_weights=seq_w)
            aux.update({f"is/{k}": v for k, v in losses.sampled_reverse_kl_stats(
                lp, b["lp_old"], b["lp_teacher"], b["loss_mask"]).items()
                if k.startswith("ratio")})
        else:
            l_on = losses.generalized_jsd_chunked(
                h, w, b["teacher_h"], teacher_unembed, b["loss_mask"], plan["jsd_beta"],
                spec.vocab_chunk, seq_weights=seq_w, student_softcap=cap_s, teacher_softcap=cap_t)
        if seq_w is not None:
            aux["confidence/weight_max"] = jnp.max(seq_w)
        aux["loss/on"] = l_on
        total = total + plan["on_weight"] * l_on
        anchor_batch = (b, h)
    if spec.has_off:
        b = batch["off"]
        h = hidden(b["prompt"], b["prompt_mask"], b["completion"], lora, shift=spec.shift_off)
        if spec.off_loss == "nll":
            lp = token_lp(h, b["completion"])
            mask = b["loss_mask"]
            l_off = -jnp.sum(jnp.where(mask, lp, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
        else:
            l_off = losses.generalized_jsd_chunked(h, w, b["teacher_h"], teacher_unembed,
                                                   b["loss_mask"], 0.0, spec.vocab_chunk,
                                                   student_softcap=cap_s, teacher_softcap=cap_t)
        aux["loss/off"] = l_off
        total = total + plan["off_weight"] * l_off
        anchor_batch = (b, h)
    if spec.has_dpo:
        # Reference = pi_0, the same base weights with the adapters off (no second model copy).
        b = batch["dpo"]
        args = (b["prompt"], b["prompt_mask"], b["completion"])
        lp = token_lp(hidden(*args, lora), b["completion"])  # [2B', G]
        ref = jax.lax.stop_gradient(token_lp(hidden(*args, None), b["completion"]))
        n, m = b["valid"].shape[0], b["loss_mask"]
        l_dpo = losses.dpo_loss(lp[:n], lp[n:], ref[:n], ref[n:], m[:n], m[n:], plan["dpo_beta"],
                                valid=b["valid"])
        aux["loss/dpo"] = l_dpo
        total = total + plan["dpo_weight"] * l_dpo
    if spec.has_anchor:
        # KL(pi_theta || pi_0) on the step's off-policy batch (else its on-policy batch), where
        # pi_0 is the same base weights with the adapters off: no second copy of the model.
        b, h = anchor_batch
        if spec.zero_kl_anchor:  # the study's defect: pi_0 := stop_gradient(pi_theta)
            h0 = jax.lax.stop_gradient(h)
        else:
            h0 = jax.lax.stop_gradient(hidden(b["prompt"], b["prompt_mask"], b["completion"], None,
                                              shift=spec.shift_off if spec.has_off else True))
        l_anchor = losses.generalized_jsd_chunked(h, w, h0, w, b["loss_mask"], 1.0, spec.vocab_chunk,
                                                  student_softcap=cap_s, teacher_softcap=cap_s)
        aux["loss/anchor"] = l_anchor
        total = total + plan["anchor_beta"] * l_anchor
    aux["loss/total"] = total
    return total, aux


def update_parts(spec: UpdateSpec) -> tuple[UpdateSpec, ...]:
    """The loss terms of one training step, as the optimizer steps that apply them.

    Correct: one step on the weighted sum of every term. With the `two_step_mixture` defect (the
    study's `mixture`), a step that has both an on- and an off-policy batch becomes two optimizer
    steps, the on-policy term first, then the off-policy term (with the anchor, if any) at the
    updated adapters -- with Adam each step moves the adapters by ~lr whatever the term's weight,
    so the 0.3 / 0.7 weighting is largely lost. A DPO term, if any, goes with the second step.
    """
    if not (spec.two_step_mixture and spec.has_on and spec.has_off):
        return (spec,)
    return (dataclasses.replace(spec, has_off=False, has_anchor=False, has_dpo=False),
            dataclasses.replace(spec, has_on=False))


_UPDATE_CACHE: dict[UpdateSpec, Callable] = {}


def update_fn(spec: UpdateSpec) -> Callable:
    """The jitted update for `spec` (memoised: runs of a sweep share the compiled program)."""
    if spec in _UPDATE_CACHE:
        return _UPDATE_CACHE[spec]
    optimizer = make_optimizer(spec.optim, max(spec.num_steps, 1))

    def update(lora_layers, opt_state, base, teacher_unembed, batch, plan):
        aux: dict[str, jax.Array] = {}
        for part in update_parts(spec):  # one part unless the two-step-mixture defect is on
            grads, part_aux = jax.grad(loss_terms, argnums=1, has_aux=True)(
                part, lora_layers, base, teacher_unembed, batch, plan)
            updates, opt_state = optimizer.update(grads, opt_state, lora_layers)
            lora_layers = optax.apply_updates(lora_layers, updates)
            total = aux.get("loss/total", 0.0) + part_aux["loss/total"]
            aux.update(part_aux)
            aux["loss/total"], aux["grad_norm"] = total, optax.tree.norm(grads)
        return lora_layers, opt_state, aux

    _UPDATE_CACHE[spec] = jax.jit(update, donate_argnums=(0, 1))
    return _UPDATE_CACHE[spec]


@functools.partial(jax.jit, static_argnames=("cfg", "moe_impl"))
def teacher_hidden(cfg: ModelConfig, params: Any, prompt: jax.Array, prompt_mask: jax.Array,
                   completion: jax.Array, moe_impl: str = "ragged") -> jax.Array:
    """The teacher's final hidden states over a completion [B, G, D] (full-vocab losses)."""
    return scoring.completion_hidden(cfg, params, prompt, prompt_mask, completion, None,
                                     moe_impl=moe_impl)
