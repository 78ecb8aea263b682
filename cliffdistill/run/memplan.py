"""Memory planner: per-device bytes of a run, from its config alone (no weights, no allocation).

    python -m cliffdistill.memplan --config configs/base.py --student_preset qwen3_4b \
        --teacher_preset qwen3_30b_a3b --hbm_gib 80 [--config.mesh.tensor=2 ...]

`plan(cfg)` reads only the models' `config.json` (or presets) and the config's shapes, and returns
a `MemoryPlan`: the bytes one device holds for each item (params, LoRA + AdamW, KV caches, activations),
the peak of each phase of a step, whether the peak fits a given HBM size and the largest rollout
batch that does. `check_fits(cfg)` raises a ValueError carrying the table when a run cannot fit;
`setup.validate_config` calls it before any weight is loaded.

The model of memory (docs/SCALING.md has the derivation and the CPU check against XLA):

* **persistent** (every phase): student base params, teacher params (0 in the context setup: the
  teacher is the same weights), LoRA params + AdamW moments (fp32, replicated), and the teacher's
  unembedding copy when a tied-embedding teacher feeds a full-vocab loss.
* **phases** (one at a time; the peak is the largest): rollout (KV cache of prompt + generation
  buckets, prefill activations; teacher seeding adds the teacher's seed cache), teacher scoring
  (one layer's no-grad forward over the teacher view + vocab-chunked log-softmax), the update
  (`loss.remat`: "full" saves every layer's residual stream [B, T, D] per forward pass, "dots"
  also its weight-matmul outputs, "none" its whole forward working set; + one layer's backward
  working set + the [B, G, vocab_chunk] fp32 logit block + LoRA grads and optimizer temporaries),
  evaluation decode, and (setup only) the off-policy teacher-sample generation.

Attention is counted as materialised (XLA's implementation; cuDNN flash attention on GPU is not,
so there this errs high), so a layer's working set holds
[B, heads, T, T] fp32 score blocks; with long teacher prompts (context distillation) these, not
the weights, decide the batch that fits.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cliffdistill.engine import methods
from cliffdistill.data.prompts import bucket_length
from cliffdistill.models import config as model_config
from cliffdistill.models import lora as lora_lib
from cliffdistill.models.lora import LoraConfig
from cliffdistill.models import sharding, transformer
from cliffdistill.models.config import ModelConfig

GiB = 1 << 30

# How many copies of each activation block live at a layer's peak. Calibrated against XLA's
# buffer assignment on CPU (docs/SCALING.md; checked by tests/test_memplan.py). XLA:GPU/TPU fuse
# elementwise chains more aggressively, so there they are expected (not measured) to err high.
ATTN_FWD_COPIES = 3  # fp32 [b, Hq, T, T]: scores, masked scores, softmax (no flash kernel)
MLP_FWD_COPIES = 3  # [b, T, F]: gate, up, silu(gate) * up
MLP_FWD_LORA_COPIES = 2  # + the LoRA deltas of gate and up before they are added
LOGIT_BLOCK_COPIES = 3  # fp32 [b, G, vocab_chunk]: logits, exp, cotangent
# The unembedding [D, V]: the chunked log-softmax pads/reshapes it into [n, D, chunk] (scoring:
# ~2 copies of the local shard; update: ~2 full copies, gathered when sharded); sampling keeps
# a gathered copy of a sharded one for the decode loop's next-token logits.
UNEMBED_SCORE_COPIES = 2
UNEMBED_UPDATE_COPIES = 2
# Update step (remat, one layer recomputed and differentiated at a time), fitted by relative
# least squares over 38 CPU compilations of `update.update_fn` (error within -7% .. +5%): per
# forward pass the saved residual stream counts 1.5 x L x [b, T, D]; the layer's backward holds
# 3.4 attention blocks, 13 [b, T, F] blocks with LoRA on the MLP (6 without), 3 [b, T, D]
# blocks; the loss head 0.7 logit blocks.
SAVED_RESIDUAL_FACTOR = 1.5
ATTN_BWD_COPIES = 3.4
MLP_BWD_COPIES, MLP_BWD_COPIES_NO_LORA = 13, 6
RESID_BWD_COPIES = 3
LOGIT_BWD_COPIES = 0.7


def _itemsize(dtype: str) -> int:
    return jnp.dtype(dtype).itemsize


# ============================================================================ shapes


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """Axis sizes only (the planner never needs devices)."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1

    @classmethod
    def of(cls, shape: Mapping[str, int]) -> MeshShape:
        unknown = set(shape) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"config field `mesh` has unknown axes {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in shape.items()})

    @property
    def devices(self) -> int:
        return self.data * self.fsdp * self.tensor * self.expert

    @property
    def data_parallel(self) -> int:
        return self.data * self.fsdp

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def split(self, n: int) -> int:
        """How many ways the tensor axis splits a dimension of size n (1 when it does not divide)."""
        return self.tensor if n % self.tensor == 0 else 1


def _per_device(n_global_rows: int, mesh: MeshShape) -> int:
    return -(-n_global_rows // mesh.data_parallel)


@functools.lru_cache(maxsize=64)
def param_bytes_per_device(mcfg: ModelConfig, mesh: MeshShape, dtype: str) -> int:
    """Base-param bytes one device holds under the default sharding rules (shapes only)."""
    shapes = transformer.param_shapes(mcfg, dtype)
    axes = sharding.param_logical_axes(mcfg)
    mesh_shape = mesh.as_dict()
    leaves_axes = jax.tree_util.tree_leaves(axes, is_leaf=lambda t: isinstance(t, tuple))
    total = 0
    for ax, s in zip(leaves_axes, jax.tree_util.tree_leaves(shapes)):
        spec = sharding.logical_to_spec(ax, s.shape, mesh_shape)
        n = 1
        for dim, part in zip(s.shape, tuple(spec) + (None,) * (len(s.shape) - len(spec))):
            parts = () if part is None else ((part,) if isinstance(part, str) else tuple(part))
            n *= dim // math.prod(mesh_shape[p] for p in parts)
        total += n * s.dtype.itemsize
    return total


def lora_bytes(mcfg: ModelConfig, lcfg: Any, dtype: str) -> int:
    """LoRA adapter bytes (replicated on every device)."""
    return _lora_bytes(mcfg, LoraConfig.from_section(lcfg), str(dtype))


@functools.lru_cache(maxsize=64)
def _lora_bytes(mcfg: ModelConfig, conf: LoraConfig, dtype: str) -> int:
    shapes = transformer.param_shapes(mcfg, dtype)
    tree = jax.eval_shape(lambda: lora_lib.init_lora(mcfg, conf, jax.random.key(0), shapes,
                                                     dtype=dtype))
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def lora_on_mlp(mcfg: ModelConfig, lcfg: Any) -> bool:
    """Whether the adapters touch the (dense or expert) MLP: their deltas add [b, T, F] blocks."""
    conf = LoraConfig.from_section(lcfg)
    return bool(set(conf.target_names(mcfg)) & {"gate_proj", "up_proj", "down_proj"})


def layer_weights_bytes(m: ModelConfig, mesh: MeshShape, a: int) -> int:
    """One layer's weights as the layer scan materialises them: the slice of the stacked [L, ...]
    params (with fsdp, all-gathered over fsdp; still split over tensor/expert)."""
    D = m.hidden_size
    # the loader splits the flattened [heads * hd] dimension whenever `tensor` divides it (even
    # where it does not divide the heads: Qwen3-30B's 4 kv heads at tensor=8)
    q, kv = (n * m.head_dim // mesh.split(n * m.head_dim) for n in (m.num_heads, m.num_kv_heads))
    attn = D * (2 * q + 2 * kv) + (q + 2 * kv) * m.qkv_bias
    mlp = 3 * D * _ffn(m, mesh)
    if m.is_moe:  # experts split over `expert`, each expert's F over `tensor`; + the router
        mlp = mlp * m.num_experts // _split(m.num_experts, mesh.expert) + D * m.num_experts
    return (attn + mlp) * a


def _attn_block(m: ModelConfig, b: int, Tq: int, Tk: int, mesh: MeshShape) -> int:
    """Bytes of one fp32 [b, Hq, Tq, Tk] score block on one device."""
    return b * _heads(m, mesh)[0] * Tq * Tk * 4


def _unembed_bytes(m: ModelConfig, a: int) -> int:
    return m.vocab_size * m.hidden_size * a


def _unembed_sharded(m: ModelConfig, mesh: MeshShape) -> bool:
    """Whether the [V, D] embedding / [D, V] head is split over devices (vocab over tensor,
    embed over fsdp), so that the decode loop has to gather it."""
    return (mesh.tensor > 1 and m.vocab_size % mesh.tensor == 0) or (
        mesh.fsdp > 1 and m.hidden_size % mesh.fsdp == 0)


def _heads(m: ModelConfig, mesh: MeshShape) -> tuple[int, int]:
    """(query heads, kv heads) per device: split over `tensor` when it divides them."""
    return m.num_heads // mesh.split(m.num_heads), m.num_kv_heads // mesh.split(m.num_kv_heads)


def _split(n: int, ways: int) -> int:
    """How many ways a mesh axis of size `ways` splits a dimension of size n (1: replicated)."""
    return ways if n % ways == 0 else 1


def _ffn(m: ModelConfig, mesh: MeshShape) -> int:
    """The MLP width on one device: dense F, or one expert's F, split over `tensor` (the
    "mlp" logical axis of both)."""
    f = m.moe_intermediate_size if m.is_moe else m.intermediate_size
    return f // mesh.split(f)


def _moe_extra(m: ModelConfig, N: int, a: int, platform: str, passes: int = 1) -> int:
    """MoE blocks besides the expert FFN: router logits/probs [N, E] fp32, the token copies sorted
    by expert and their outputs [N*k, D]; on CPU, `lax.ragged_dot` has no native kernel and JAX
    expands each call densely to [E, N*k, in] (masked), which dominates there."""
    if not m.is_moe:
        return 0
    NK = N * m.num_experts_per_tok
    extra = 2 * N * m.num_experts * 4 + 2 * NK * m.hidden_size * a
    if platform == "cpu":
        extra += passes * NK * m.num_experts * max(m.hidden_size, m.moe_intermediate_size) * a
    return extra


def forward_layer_bytes(m: ModelConfig, b: int, T: int, mesh: MeshShape, a: int, *,
                        lora_mlp: bool = False, platform: str = "gpu") -> int:
    """Peak working set of one layer's no-grad forward over T tokens (b rows on this device),
    besides the residual stream it reads: the attention half (score blocks, v and the attention
    output) or the MLP half (gate, up, their product, LoRA deltas), whichever is larger, + the
    layer's weights."""
    hq, hkv = _heads(m, mesh)
    N = b * T
    tokens = N * (m.num_experts_per_tok if m.is_moe else 1)
    attn = ATTN_FWD_COPIES * _attn_block(m, b, T, T, mesh) + N * (hq + hkv) * m.head_dim * a
    copies = MLP_FWD_COPIES + (MLP_FWD_LORA_COPIES if lora_mlp else 0)
    mlp = copies * tokens * _ffn(m, mesh) * a + _moe_extra(m, N, a, platform)
    return max(attn, mlp) + layer_weights_bytes(m, mesh, a)


def backward_layer_bytes(m: ModelConfig, b: int, T: int, mesh: MeshShape, a: int, *,
                         lora_mlp: bool = True, platform: str = "gpu") -> int:
    """Peak working set of one rematerialised layer's forward + backward (b rows, T tokens): the
    recomputed attention and MLP residuals and their cotangents live together."""
    N = b * T
    tokens = N * (m.num_experts_per_tok if m.is_moe else 1)
    mlp_copies = MLP_BWD_COPIES if lora_mlp else MLP_BWD_COPIES_NO_LORA
    return int(ATTN_BWD_COPIES * _attn_block(m, b, T, T, mesh)
               + mlp_copies * tokens * _ffn(m, mesh) * a
               + RESID_BWD_COPIES * N * m.hidden_size * a
               + _moe_extra(m, N, a, platform, passes=2) + layer_weights_bytes(m, mesh, a))


def kv_cache_bytes(m: ModelConfig, b: int, S: int, mesh: MeshShape, a: int) -> int:
    """k and v [L, b, S, Hkv, hd] (+ the [b, S] validity mask) on one device."""
    _, hkv = _heads(m, mesh)
    return m.num_layers * b * S * 2 * hkv * m.head_dim * a + b * S


def rollout_bytes(m: ModelConfig, b: int, P: int, G: int, mesh: MeshShape, a: int, *,
                  lora_mlp: bool = False, platform: str = "gpu") -> dict[str, int]:
    """KV cache and transient peak of `sampling.generate_arrays` (b rows per device).

    Prefill runs the prompt layer by layer, stacking its k/v [L, b, P, ...] (a scan output), and
    only then pads them into the S = P + G cache; the decode loop updates that cache in place.
    So the peak is the largest of: prefill (prompt k/v + residual stream + one layer's forward
    at T = P), the pad (prompt k/v + cache), and a decode step (cache + one layer's k/v read
    out of it + next-token logits [b, V] fp32 with their log-softmax/sort copies + one layer's
    weights). Returned as {"cache": ..., "working": peak - cache}.
    """
    S = P + G
    cache = kv_cache_bytes(m, b, S, mesh, a)
    prompt_kv = kv_cache_bytes(m, b, P, mesh, a)
    prefill = (prompt_kv + b * P * m.hidden_size * a
               + forward_layer_bytes(m, b, P, mesh, a, lora_mlp=lora_mlp, platform=platform))
    decode = (cache + cache // m.num_layers + 4 * b * m.vocab_size * 4
              + ATTN_FWD_COPIES * _attn_block(m, b, 1, S, mesh) + layer_weights_bytes(m, mesh, a)
              + _moe_extra(m, b, a, platform))
    pad = prompt_kv + cache
    if _unembed_sharded(m, mesh):  # the gathered head stays for the decode loop's logits; the
        gathered = _unembed_bytes(m, a)  # prefill also holds the all-gather's own buffer
        prefill, pad, decode = prefill + 2 * gathered, pad + gathered, decode + gathered
    peak = max(prefill, pad, decode)
    return {"cache": cache, "working": peak - cache}


def score_bytes(m: ModelConfig, b: int, P: int, G: int, mesh: MeshShape, a: int, vocab_chunk: int, *,
                platform: str = "gpu") -> int:
    """Transient peak of `scoring.score` (no LoRA): one layer's forward over P + G tokens next
    to the residual stream, or the chunked log-softmax over the G completion positions."""
    T = P + G
    trunk = b * T * m.hidden_size * a + forward_layer_bytes(m, b, T, mesh, a, platform=platform)
    head = (b * G * m.hidden_size * a
            + LOGIT_BLOCK_COPIES * b * G * min(vocab_chunk, m.vocab_size) * 4
            + UNEMBED_SCORE_COPIES * _unembed_bytes(m, a) // mesh.split(m.vocab_size))
    return max(trunk, head)


def dots_saved_bytes(m: ModelConfig, N: int, mesh: MeshShape, a: int) -> int:
    """What remat="dots" saves per layer besides its input, for N tokens on this device: the
    outputs of the weight matmuls, q/k/v [N, (Hq + 2 Hkv) hd], o [N, D], gate/up [N k, F] and down
    [N k, D] (k experts per token for MoE). LoRA's rank-r intermediates are small and not counted."""
    hq, hkv = _heads(m, mesh)
    tokens = N * (m.num_experts_per_tok if m.is_moe else 1)
    attn = N * ((hq + 2 * hkv) * m.head_dim + m.hidden_size)
    mlp = tokens * (2 * _ffn(m, mesh) + m.hidden_size)
    return (attn + mlp) * a


def update_bytes(m: ModelConfig, b: int, P: int, G: int, mesh: MeshShape, a: int, vocab_chunk: int, *,
                 passes: int = 1, remat: bool | str = "full", lora_mlp: bool = True,
                 platform: str = "gpu") -> dict[str, int]:
    """Transients of the update step (`update.update_fn`), b rows per device, T = P + G tokens.

    passes: forward passes whose residuals are alive together (on- and off-policy batches of a
    `mixture` step: 2). With remat the scan saves only each layer's input [b, T, D]; without it
    every layer keeps its whole forward working set; remat="dots" adds the weight-matmul
    outputs of every layer to the saved inputs (`dots_saved_bytes`; counted, not calibrated
    against XLA like the other two). Then one layer at a time is recomputed and differentiated,
    and the loss head works on [b, G, vocab_chunk] fp32 blocks.
    """

    T = P + G
    N = b * T
    policy = transformer.remat_policy(remat)
    if policy != "none":
        saved = int(passes * SAVED_RESIDUAL_FACTOR * m.num_layers * N * m.hidden_size * a)
        if policy == "dots":
            saved += passes * m.num_layers * dots_saved_bytes(m, N, mesh, a)
    else:
        saved = passes * m.num_layers * (N * m.hidden_size * a + forward_layer_bytes(
            m, b, T, mesh, a, lora_mlp=lora_mlp, platform=platform))
    layer = backward_layer_bytes(m, b, T, mesh, a, lora_mlp=lora_mlp, platform=platform)
    head = int(LOGIT_BWD_COPIES * b * G * min(vocab_chunk, m.vocab_size) * 4
               + UNEMBED_UPDATE_COPIES * _unembed_bytes(m, a))
    return {"saved": saved, "layer": layer + head}


# ============================================================================ the plan


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The static shapes of a run (global rows; token buckets)."""

    rows: int  # rollout rows per step: batch_size * n_samples
    prompt: int  # student prompt bucket P
    teacher_prompt: int  # teacher view bucket
    gen: int  # rollout generation bucket G
    seed: int  # teacher-seed bucket (0: no teacher seeding)
    eval_rows: int
    eval_gen: int
    off_rows: int  # off-policy generation batch (setup time)
    off_gen: int


@dataclasses.dataclass
class MemoryPlan:
    """Per-device bytes of a run. `items` are the table rows, `phases` the peak of each phase
    (persistent items + that phase's transients); `total` is the largest phase."""

    items: dict[str, int]
    phases: dict[str, int]
    persistent: int
    total: int
    peak_phase: str
    hbm_bytes: int | None
    fits: bool
    max_batch: int | None
    batch_size: int
    mesh: dict[str, int]
    buckets: Buckets
    student: str
    teacher: str
    setup: str
    method: str
    platform: str = "gpu"

    def table(self) -> str:
        def gib(n: int) -> str:
            return f"{n / GiB:10.3f}"

        b = self.buckets
        lines = [
            (f"memory plan (per device, GiB) | {self.setup} | {self.method} | student "
             f"{self.student} <- teacher {self.teacher} | platform {self.platform}"),
            (f"mesh {self.mesh} ({math.prod(self.mesh.values())} devices) | rollout batch "
             f"{self.batch_size} ({b.rows} rows) | prompt {b.prompt} / teacher prompt "
             f"{b.teacher_prompt} / gen {b.gen}" + (f" / seed {b.seed}" if b.seed else "")
             + f" | eval {b.eval_rows} x {b.eval_gen}"),
            f"{'item':<44}{'GiB':>10}",
        ]
        lines += [f"{k:<44}{gib(v)}" for k, v in self.items.items()]
        lines.append(f"{'-- phase peaks (persistent + transients)':<44}")
        lines += [f"{'  ' + k:<44}{gib(v)}" + ("  <- peak" if k == self.peak_phase else "")
                  for k, v in self.phases.items()]
        lines.append(f"{'peak':<44}{gib(self.total)}")
        if self.hbm_bytes:
            verdict = "fits" if self.fits else "DOES NOT FIT"
            lines.append(f"{'HBM per device':<44}{gib(self.hbm_bytes)}  -> {verdict}")
            mb = (str(self.max_batch) if self.max_batch else
                  f"none (even batch {self.mesh_dp} does not fit)")
            lines.append(f"largest rollout batch that fits (rollout, scoring, update): {mb}")
        return "\n".join(lines)

    @property
    def mesh_dp(self) -> int:
        return self.mesh.get("data", 1) * self.mesh.get("fsdp", 1)

    def markdown(self) -> str:
        rows = ["| item | GiB / device |", "|---|---:|"]
        rows += [f"| {k} | {v / GiB:.2f} |" for k, v in self.items.items()]
        rows += [f"| *phase: {k}* | *{v / GiB:.2f}* |" for k, v in self.phases.items()]
        rows.append(f"| **peak ({self.peak_phase})** | **{self.total / GiB:.2f}** |")
        if self.hbm_bytes:
            rows.append(f"| HBM | {self.hbm_bytes / GiB:.2f} ({'fits' if self.fits else 'does not fit'}) |")
            rows.append(f"| largest rollout batch that fits | {self.max_batch or 'none'} |")
        return "\n".join(rows)


def model_configs(cfg: Any, student: ModelConfig | str | None = None,
                  teacher: ModelConfig | str | None = None) -> tuple[ModelConfig, ModelConfig]:
    """(student, teacher) from presets/ModelConfigs when given, else the config.json of the paths."""
    def get(x: ModelConfig | str | None, path: str, field: str) -> ModelConfig:
        if isinstance(x, ModelConfig):
            return x
        if isinstance(x, str) and x:
            return model_config.preset(x)
        if not path:
            raise ValueError(f"config field `{field}` is empty: point it at an HF checkpoint dir "
                             "(or pass a preset, e.g. --student_preset qwen3_4b)")
        return model_config.load_hf_config(path)

    s = get(student, cfg.student.path, "student.path")
    if cfg.setup == "context":
        return s, s
    return s, get(teacher, cfg.teacher.path, "teacher.path")


def buckets(cfg: Any, prompt_len: int | None = None, teacher_prompt_len: int | None = None,
            batch_size: int | None = None) -> Buckets:
    """Static shapes: prompt buckets from the measured prompt lengths when given, else from the
    config's `rollout.max_prompt_len` / `max_teacher_prompt_len` (the upper bound)."""
    r = cfg.rollout
    P = bucket_length(prompt_len or r.max_prompt_len)
    teacher_view_differs = cfg.setup == "context" or cfg.data.context != "none"
    Pt = bucket_length(teacher_prompt_len or r.max_teacher_prompt_len) if teacher_view_differs else P
    uses = methods.plan_summary(cfg.method, cfg.schedule)
    bs = int(batch_size if batch_size is not None else r.batch_size)
    return Buckets(
        rows=bs * int(r.n_samples), prompt=P, teacher_prompt=Pt,
        gen=bucket_length(r.max_new_tokens, 1),
        seed=bucket_length(cfg.schedule.seed_max_tokens, 1) if uses.seed else 0,
        eval_rows=int(cfg.eval.batch_size), eval_gen=bucket_length(cfg.eval.max_new_tokens, 1),
        off_rows=int(cfg.off_policy.gen_batch_size) if uses.off else 0,
        off_gen=bucket_length(cfg.off_policy.max_new_tokens, 1))


def _items(cfg: Any, s: ModelConfig, t: ModelConfig, mesh: MeshShape, bk: Buckets, platform: str
           ) -> tuple[dict[str, int], dict[str, int], int]:
    a_s, a_t = _itemsize(cfg.student.dtype), _itemsize(cfg.teacher.dtype)
    uses = methods.plan_summary(cfg.method, cfg.schedule)
    full_vocab = cfg.loss.on_policy == "jsd" or cfg.loss.off_policy == "forward_kl"
    chunk = int(cfg.loss.vocab_chunk)
    lmlp = lora_on_mlp(s, cfg.lora)
    b = _per_device(bk.rows, mesh)
    items: dict[str, int] = {}
    items["student params"] = param_bytes_per_device(s, mesh, cfg.student.dtype)
    # context distillation: the teacher is the student's base weights with LoRA off
    items["teacher params"] = (0 if cfg.setup == "context"
                               else param_bytes_per_device(t, mesh, cfg.teacher.dtype))
    lora = lora_bytes(s, cfg.lora, cfg.lora.dtype)
    items["LoRA params (fp32, replicated)"] = lora
    items["AdamW moments (2 x LoRA)"] = 2 * lora
    if full_vocab and t.tie_word_embeddings:  # `unembed_matrix` of a tied teacher is a transpose
        items["teacher unembedding copy"] = (t.vocab_size * t.hidden_size * a_t
                                             // mesh.split(t.vocab_size))
    persistent = sum(items.values())

    phases: dict[str, int] = {}
    # ---- rollout (+ teacher seeding) and teacher scoring
    if uses.rollout:
        ro = rollout_bytes(s, b, bk.prompt, bk.gen, mesh, a_s, lora_mlp=lmlp, platform=platform)
        items["rollout KV cache (student)"] = ro["cache"]
        items["rollout prefill/decode activations"] = ro["working"]
        rollout = ro["cache"] + ro["working"]
        if bk.seed:  # the teacher writes the first tokens from its own view, then the student
            tro = rollout_bytes(t, b, bk.teacher_prompt, bk.seed, mesh, a_t, platform=platform)
            items["teacher seed KV cache"] = tro["cache"]
            items["teacher seed prefill activations"] = tro["working"]
            # one program: the teacher's prefix is returned before the student's cache is built
            rollout = max(rollout, tro["cache"] + tro["working"])
        phases["rollout"] = persistent + rollout
        sc = score_bytes(t, b, bk.teacher_prompt, bk.gen, mesh, a_t, chunk, platform=platform)
        items["teacher scoring activations"] = sc
        phases["teacher scoring"] = persistent + sc
    # ---- update (one optimizer step over the weighted sum of the step's loss terms)
    up = update_bytes(s, b, bk.prompt, bk.gen, mesh, a_s, chunk, passes=uses.passes,
                      remat=cfg.loss.remat, lora_mlp=lmlp, platform=platform)
    extra = 0
    if full_vocab:  # the teacher's hidden states [b, G, Dt] and its logit chunks next to ours
        extra += b * bk.gen * t.hidden_size * a_t + LOGIT_BLOCK_COPIES * b * bk.gen * min(
            chunk, t.vocab_size) * 4
    if uses.anchor:  # pi_0's hidden states [b, G, D] (no grad) and its logit chunks
        extra += b * bk.gen * s.hidden_size * a_s + LOGIT_BLOCK_COPIES * b * bk.gen * min(
            chunk, s.vocab_size) * 4

    items[_SAVED_ITEM[transformer.remat_policy(cfg.loss.remat)]] = up["saved"]
    items["update: one layer fwd+bwd, loss head"] = up["layer"] + extra
    items["update: LoRA grads + optimizer temps"] = 2 * lora
    phases["update"] = persistent + up["saved"] + up["layer"] + extra + 2 * lora
    # ---- evaluation (greedy decode of eval.batch_size rows)
    eb = _per_device(bk.eval_rows, mesh)
    ev = rollout_bytes(s, eb, bk.prompt, bk.eval_gen, mesh, a_s, lora_mlp=lmlp, platform=platform)
    items["eval KV cache"] = ev["cache"]
    items["eval prefill/decode activations"] = ev["working"]
    phases["eval"] = persistent + ev["cache"] + ev["working"]
    # ---- off-policy teacher samples (generated once, at setup)
    if uses.off and bk.off_rows:
        ob = _per_device(bk.off_rows, mesh)
        off = rollout_bytes(t, ob, bk.teacher_prompt, bk.off_gen, mesh, a_t, platform=platform)
        items["off-policy sampling KV cache (setup)"] = off["cache"]
        items["off-policy sampling activations (setup)"] = off["working"]
        phases["off-policy sampling (setup)"] = persistent + off["cache"] + off["working"]
    return items, phases, persistent


def plan(cfg: Any, hbm_bytes: int | None = None, *, student: ModelConfig | str | None = None,
         teacher: ModelConfig | str | None = None, prompt_len: int | None = None,
         teacher_prompt_len: int | None = None, batch_size: int | None = None,
         platform: str = "gpu") -> MemoryPlan:
    """The per-device memory plan of run config `cfg` (pure: reads config.json at most).

    student/teacher: a ModelConfig or preset name instead of the config's checkpoint paths.
    prompt_len/teacher_prompt_len: measured longest prompts (default: the config's budgets).
    batch_size: plan for this rollout batch instead of `cfg.rollout.batch_size`.
    hbm_bytes: per-device memory; when given, `fits` and `max_batch` are filled in.
    platform: "gpu"/"tpu" (grouped `ragged_dot` for MoE) or "cpu" (JAX's dense expansion).
    """
    s, t = model_configs(cfg, student, teacher)
    mesh = MeshShape.of(dict(cfg.mesh))
    bs = int(batch_size if batch_size is not None else cfg.rollout.batch_size)
    shapes = functools.partial(buckets, cfg, prompt_len, teacher_prompt_len)
    items, phases, persistent = _items(cfg, s, t, mesh, shapes(bs), platform)
    peak_phase = max(phases, key=phases.__getitem__)
    total = phases[peak_phase]
    fits, max_batch = True, None
    if hbm_bytes:
        fits = total <= hbm_bytes
        max_batch = _max_batch(cfg, s, t, mesh, shapes, hbm_bytes, platform)
    name = lambda m: f"{m.model_type} L{m.num_layers} D{m.hidden_size}"
    return MemoryPlan(items=items, phases=phases, persistent=persistent, total=total,
                peak_phase=peak_phase, hbm_bytes=hbm_bytes, fits=fits, max_batch=max_batch,
                batch_size=bs, mesh=mesh.as_dict(), buckets=shapes(bs), student=name(s),
                teacher=name(t) if cfg.setup == "size" else "(student weights + context)",
                setup=cfg.setup, method=cfg.method, platform=platform)


def _max_batch(cfg: Any, s: ModelConfig, t: ModelConfig, mesh: MeshShape, shapes: Any,
               hbm: int, platform: str) -> int:
    """Largest rollout batch (a multiple of the data axes) for which the phases that scale with
    it (rollout, teacher scoring, update) fit; 0 if none does. The eval and off-policy sampling
    phases have their own batch sizes and are reported by `check_fits` separately."""
    dp = mesh.data_parallel

    def peak(bs: int) -> int:
        phases = _items(cfg, s, t, mesh, shapes(bs), platform)[1]
        return max(v for k, v in phases.items() if k in BATCH_PHASES)

    if peak(dp) > hbm:
        return 0
    lo, hi = 1, 2  # in units of dp
    while peak(hi * dp) <= hbm and hi < (1 << 20):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak(mid * dp) <= hbm else (lo, mid)
    return lo * dp


# ============================================================================ the fit check


def device_hbm_bytes(cfg: Any = None) -> int | None:
    """Per-device memory: `cfg.hbm_bytes_per_device` when > 0, else the device's reported
    `bytes_limit` (GPU/TPU), else None (CPU reports none)."""
    configured = int(getattr(cfg, "hbm_bytes_per_device", 0) or 0) if cfg is not None else 0
    if configured > 0:
        return configured
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


_SAVED_ITEM = {"full": "update: saved residuals",
               "dots": "update: saved residuals + matmul outputs (remat=dots)",
               "none": "update: saved activations (no remat)"}
BATCH_PHASES = ("rollout", "teacher scoring", "update")
_KNOBS = {
    "rollout": "`rollout.batch_size`, `rollout.max_new_tokens`",
    "teacher scoring": "`rollout.batch_size`, `rollout.max_teacher_prompt_len`",
    "update": "`rollout.batch_size`, `loss.remat` (\"full\" saves the least)",
    "eval": "`eval.batch_size`, `eval.max_new_tokens`",
    "off-policy sampling (setup)": "`off_policy.gen_batch_size`",
}


def check_fits(cfg: Any, student: ModelConfig | None = None, teacher: ModelConfig | None = None
               ) -> MemoryPlan | None:
    """Raises ValueError (with the planner's table) when the run's peak exceeds per-device HBM.

    HBM: `cfg.hbm_bytes_per_device` (> 0), else the device's `memory_stats()["bytes_limit"]`;
    when neither exists (CPU) or `hbm_bytes_per_device` < 0 (explicit opt-out) nothing is checked.
    Returns the plan when it was checked, else None.
    """
    if int(getattr(cfg, "hbm_bytes_per_device", 0) or 0) < 0:
        return None
    hbm = device_hbm_bytes(cfg)
    if not hbm:
        return None
    p = plan(cfg, hbm, student=student, teacher=teacher, platform=jax.devices()[0].platform)
    if p.fits:
        return p
    over = [k for k, v in p.phases.items() if v > hbm]
    largest = max(p.items, key=p.items.__getitem__)
    if p.persistent > hbm:
        hint = ("the weights and optimizer state alone exceed it: shard the models over more "
                "devices (config field `mesh`, e.g. --config.mesh.tensor=8 or --config.mesh.fsdp=N)")
    else:
        fixes = []
        if any(k in BATCH_PHASES for k in over):
            fixes.append(f"the largest rollout batch that fits is {p.max_batch}: lower "
                         "`rollout.batch_size`" if p.max_batch else
                         "even the smallest rollout batch does not fit: shard the models over "
                         "more devices (config field `mesh`)")
        fixes += [f"{k} does not fit: lower {_KNOBS[k]}" for k in over if k not in BATCH_PHASES]
        hint = "; ".join(fixes)
    raise ValueError(
        f"memory plan: the run needs {p.total / GiB:.2f} GiB per device at its peak "
        f"({p.peak_phase}) but a device has {hbm / GiB:.2f} GiB (config field "
        f"`hbm_bytes_per_device`, or the device's limit); the largest term is {largest!r} "
        f"({p.items[largest] / GiB:.2f} GiB); {hint}. On GPUs JAX claims only 75% "
        f"of memory by default: XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 raises the limit. Set "
        f"`hbm_bytes_per_device=-1` to skip this check.\n{p.table()}")


# ============================================================================ the smallest mesh


def candidate_meshes(n_devices: int, max_tensor: int = 8, experts: int = 0) -> list[MeshShape]:
    """Every power-of-two split of n_devices into data x fsdp x tensor (x expert for MoE),
    tensor <= max_tensor (a tensor-parallel group should stay inside one host's fast links)."""
    out = []
    powers = [1 << i for i in range(n_devices.bit_length()) if n_devices % (1 << i) == 0]
    for tensor in (t for t in powers if t <= max_tensor):
        for expert in (e for e in powers if e == 1 or (experts and experts % e == 0)):
            for fsdp in powers:
                data = n_devices // (tensor * expert * fsdp)
                if data >= 1 and data * tensor * expert * fsdp == n_devices:
                    out.append(MeshShape(data=data, fsdp=fsdp, tensor=tensor, expert=expert))
    return out


def smallest_mesh(cfg: Any, hbm_bytes: int, *, student: ModelConfig | str | None = None,
                  teacher: ModelConfig | str | None = None, max_devices: int = 512,
                  max_tensor: int = 8, platform: str = "gpu") -> tuple[MeshShape, MemoryPlan]:
    """The fewest devices (powers of two) on which the run fits as configured; among those
    meshes the largest `tensor` axis (fsdp gathers every layer's weights on every decode step,
    tensor parallelism does not), then the lowest peak. The batches must divide by data x fsdp.
    Memory only: the planner does not model speed. Raises
    ValueError when nothing up to `max_devices` fits, naming the largest term there."""
    s, _ = model_configs(cfg, student, teacher)
    n, best = 1, None
    while n <= max_devices:
        for mesh in candidate_meshes(n, max_tensor, s.num_experts):
            if cfg.rollout.batch_size % mesh.data_parallel or any(
                    cfg[f.split(".")[0]][f.split(".")[1]] % mesh.data_parallel
                    for f in ("eval.batch_size", "off_policy.gen_batch_size")):
                continue
            trial = cfg.copy_and_resolve_references()
            trial.mesh.update(mesh.as_dict())
            p = plan(trial, student=student, teacher=teacher, platform=platform)  # no max_batch
            rank = (-mesh.tensor, p.total)
            if p.total <= hbm_bytes and (best is None or rank < best[2]):
                best = (trial, p, rank)
            last = p
        if best is not None:  # the winner's full plan: fits, and the largest batch that does
            return MeshShape.of(dict(best[0].mesh)), plan(
                best[0], hbm_bytes, student=student, teacher=teacher, platform=platform)
        n *= 2
    largest = max(last.items, key=last.items.__getitem__)
    raise ValueError(f"no mesh of up to {max_devices} devices with {hbm_bytes / GiB:.1f} GiB each "
                     f"fits this run as configured (on {last.mesh}: peak {last.total / GiB:.1f} "
                     f"GiB, largest term {largest!r} {last.items[largest] / GiB:.1f} GiB); lower "
                     "`rollout.batch_size` or `eval.batch_size`, or raise max_devices")
