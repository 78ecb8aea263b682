"""The distillation trainer: plan -> rollout -> score -> update -> (eval, checkpoint), one loop.

    python -m cliffdistill.train --config configs/qwen_size.py --workdir DIR [--config.method=hybrid]

Read top to bottom: config checks (before any weight is loaded), setup (mesh, models, prompt
views, cached teacher samples), the jitted pieces (rollout, teacher scoring, the one-optimizer-step
update), then `run`, the loop. Every method is a schedule (`cliffdistill.methods`) that only
decides the numbers of a `StepPlan`; this file never branches on the method's name.

What is static and what is an array: the model configs, shapes (batch, prompt/generation buckets)
and *which* loss terms a step has are static; loss weights, the anchor beta, the teacher-seed
length and the sampling temperature are arrays, so a schedule never triggers a recompile. A run
compiles at most one update per combination of active terms (e.g. `hybrid`: off-only, on-only).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
import numpy as np
import optax

from cliffdistill import evaluate, losses, methods, sampling, scoring, stats
from cliffdistill.data import gsm8k, prompts
from cliffdistill.models import config as model_config
from cliffdistill.models import flops as flops_lib
from cliffdistill.models import hf_io, lora as lora_lib, sharding, transformer
from cliffdistill.models.config import ModelConfig
from cliffdistill.models.lora import LoraParams

log = logging.getLogger(__name__)

SETUPS = ("size", "context")
ON_POLICY_LOSSES = ("sampled_rkl", "jsd")
OFF_POLICY_LOSSES = ("nll", "forward_kl")
ABLATIONS = ("unshifted_off_policy", "on_policy_no_prompt", "teacher_no_context")


class Preempted(Exception):
    """Raised after a SIGTERM-triggered checkpoint, so callers (sweeps) stop cleanly."""


# ============================================================================ config checks


def _dtype(name: str, field: str) -> Any:
    try:
        return jnp.dtype(name)
    except TypeError:
        raise ValueError(f"config field `{field}`={name!r} is not a dtype (use bfloat16 or float32)")


def validate_config(cfg: ml_collections.ConfigDict) -> tuple[ModelConfig, ModelConfig]:
    """Every check that needs no weights, run before any compute. Returns (student, teacher) configs."""
    if cfg.setup not in SETUPS:
        raise ValueError(f"config field `setup`={cfg.setup!r}; choose one of {SETUPS}")
    methods.get(cfg.method, cfg.schedule)  # unknown method -> error listing the known ones
    if cfg.loss.on_policy not in ON_POLICY_LOSSES:
        raise ValueError(f"config field `loss.on_policy`={cfg.loss.on_policy!r}; choose one of "
                         f"{ON_POLICY_LOSSES}")
    if cfg.loss.off_policy not in OFF_POLICY_LOSSES:
        raise ValueError(f"config field `loss.off_policy`={cfg.loss.off_policy!r}; choose one of "
                         f"{OFF_POLICY_LOSSES}")
    unknown = sorted(set(cfg.ablation) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"config field `ablation` has unknown switch(es) {unknown}; known: {ABLATIONS}")
    for field in ("student.dtype", "teacher.dtype", "lora.dtype"):
        _dtype(cfg[field.split(".")[0]][field.split(".")[1]], field)
    if not cfg.student.path:
        raise ValueError("config field `student.path` is empty: point it at an HF checkpoint dir")
    student = model_config.load_hf_config(cfg.student.path)
    if cfg.setup == "size":
        if not cfg.teacher.path:
            raise ValueError("setup='size' needs config field `teacher.path` (an HF checkpoint dir)")
        teacher = model_config.load_hf_config(cfg.teacher.path)
    else:
        if cfg.teacher.path and Path(cfg.teacher.path).resolve() != Path(cfg.student.path).resolve():
            raise ValueError("setup='context' uses the student's base weights as the teacher; leave "
                             "`teacher.path` empty (or equal to `student.path`)")
        if cfg.data.context == "none" and not cfg.ablation.teacher_no_context:
            raise ValueError("setup='context' needs a teacher context: set `data.context` to "
                             "'fewshot' or 'cot8'")
        teacher = student
    if teacher.vocab_size != student.vocab_size:
        raise ValueError(
            f"teacher/student vocab mismatch: teacher.path has vocab_size={teacher.vocab_size}, "
            f"student.path has vocab_size={student.vocab_size}; on-policy distillation scores the "
            "student's token ids under the teacher, so both must share one tokenizer")
    mesh_shape = dict(cfg.mesh)
    n_dev = math.prod(mesh_shape.values())
    if n_dev > jax.device_count():
        raise ValueError(f"config field `mesh` {mesh_shape} needs {n_dev} devices but "
                         f"{jax.device_count()} are available; shrink the mesh")
    data_par = mesh_shape.get("data", 1) * mesh_shape.get("fsdp", 1)
    for field in ("rollout.batch_size", "eval.batch_size", "off_policy.gen_batch_size"):
        value = cfg[field.split(".")[0]][field.split(".")[1]]
        if value % data_par:
            raise ValueError(f"config field `{field}`={value} is not divisible by the mesh's data "
                             f"axes (data*fsdp = {data_par}); use a multiple of {data_par}")
    for field in ("rollout.max_new_tokens", "off_policy.max_new_tokens", "eval.max_new_tokens"):
        if cfg[field.split(".")[0]][field.split(".")[1]] < 1:
            raise ValueError(f"config field `{field}` must be >= 1")
    # memory plan vs per-device HBM, before any weight is loaded (no-op without an HBM size)
    from cliffdistill.plan import check_fits

    check_fits(cfg, student, teacher)
    return student, teacher


# ============================================================================ setup


@dataclasses.dataclass
class Views:
    """Tokenized prompt views, left-padded to power-of-two buckets (host numpy)."""

    student: np.ndarray  # [N, Ps]
    student_mask: np.ndarray
    teacher: np.ndarray  # [N, Pt] (context setup: context + question)
    teacher_mask: np.ndarray
    questions: list[str]
    golds: list[str]


def _pad_views(ids: list[list[int]], pad_id: int, limit: int, field: str) -> tuple[np.ndarray, np.ndarray]:
    longest = max(len(r) for r in ids)
    if longest > limit:
        raise ValueError(f"a prompt has {longest} tokens but config field `{field}`={limit}: the "
                         f"prompt is longer than the KV cache's prompt budget; raise `{field}`")
    return prompts.pad_left(ids, pad_id, prompts.bucket_length(longest))


def load_tokenizer(cfg: ml_collections.ConfigDict) -> Any:
    import transformers

    path = cfg.tokenizer_path or cfg.student.path
    return transformers.AutoTokenizer.from_pretrained(path)


def build_views(cfg: ml_collections.ConfigDict, tokenizer: Any, examples: list[gsm8k.Example],
                shots: list[gsm8k.Example], pad_id: int) -> Views:
    instruction = prompts.INSTRUCTION if cfg.data.instruction is None else cfg.data.instruction
    student_ids, teacher_ids = prompts.build_views(
        tokenizer, examples, shots, system=cfg.data.system, instruction=instruction,
        chat_template=cfg.chat_template, **dict(cfg.data.template_kwargs))
    s, sm = _pad_views(student_ids, pad_id, cfg.rollout.max_prompt_len, "rollout.max_prompt_len")
    t, tm = _pad_views(teacher_ids, pad_id, cfg.rollout.max_teacher_prompt_len,
                       "rollout.max_teacher_prompt_len")
    return Views(s, sm, t, tm, [e.question for e in examples], [e.answer for e in examples])


def load_splits(cfg: ml_collections.ConfigDict) -> gsm8k.Splits:
    d = cfg.data
    train_pool = gsm8k.load(d.source, d.train_split, d.path or None)
    eval_pool = gsm8k.load(d.source, d.eval_split, d.path or None)
    return gsm8k.make_splits(train_pool, eval_pool, d.n_train, d.n_fewshot, d.n_eval, d.split_seed)


@dataclasses.dataclass
class Setup:
    """Everything a run needs that is not train state."""

    cfg: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    tokenizer: Any
    student_cfg: ModelConfig
    student_params: Any
    teacher_cfg: ModelConfig
    teacher_params: Any
    train: Views
    eval: Views
    eos_ids: tuple[int, ...]
    pad_id: int


_MODEL_CACHE: dict[tuple, tuple[ModelConfig, Any]] = {}


def _load_model(path: str, dtype: str, mesh: jax.sharding.Mesh) -> tuple[ModelConfig, Any]:
    """Loads (and memoises, so a sweep's runs share one copy of the frozen base weights)."""
    key = (str(Path(path).resolve()), dtype, mesh.shape_tuple, tuple(d.id for d in mesh.devices.flat))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = hf_io.load_hf(path, dtype=jnp.dtype(dtype), mesh=mesh)
    return _MODEL_CACHE[key]


def _special_ids(tokenizer: Any, mcfg: ModelConfig) -> tuple[tuple[int, ...], int]:
    eos = set(mcfg.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    if not eos:
        raise ValueError("no EOS token: neither the tokenizer nor config.json defines eos_token_id")
    pad = tokenizer.pad_token_id
    pad = mcfg.pad_token_id if pad is None else pad
    pad = min(eos) if pad is None else pad
    return tuple(sorted(eos)), int(pad)


def setup(cfg: ml_collections.ConfigDict) -> Setup:
    student_hf, _ = validate_config(cfg)
    mesh = sharding.make_mesh(dict(cfg.mesh))
    tokenizer = load_tokenizer(cfg)
    eos_ids, pad_id = _special_ids(tokenizer, student_hf)
    splits = load_splits(cfg)
    shots = prompts.context_shots(cfg.data.context, cfg.data.context_k, splits.fewshot,
                                  cfg.data.split_seed)
    train_views = build_views(cfg, tokenizer, list(splits.train), shots, pad_id)
    eval_views = build_views(cfg, tokenizer, list(splits.eval), shots, pad_id)
    scfg, sparams = _load_model(cfg.student.path, cfg.student.dtype, mesh)
    if cfg.setup == "size":
        tcfg, tparams = _load_model(cfg.teacher.path, cfg.teacher.dtype, mesh)
    else:
        tcfg, tparams = scfg, sparams
    return Setup(cfg, mesh, tokenizer, scfg, sparams, tcfg, tparams, train_views, eval_views,
                 eos_ids, pad_id)


# ============================================================================ off-policy data


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else repr(p).encode())
    return h.hexdigest()[:20]


def _checkpoint_identity(path: str) -> tuple:
    """What identifies a teacher checkpoint: its resolved path and its files' sizes and mtimes."""
    root = Path(path).resolve()
    files = sorted(root.glob("*.safetensors")) + [root / "config.json"]
    return (str(root),) + tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def teacher_samples(s: Setup, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Teacher completions y ~ p_T(.|x~) for every training prompt, generated once and cached.

    The cache key covers the teacher checkpoint, its prompt view tokens and the sampling config;
    not the method or the run seed, so every method and seed of a sweep reuses the same samples.
    """
    c = s.cfg.off_policy
    teacher_path = s.cfg.teacher.path or s.cfg.student.path
    key = _digest(_checkpoint_identity(teacher_path), s.cfg.teacher.dtype, s.train.teacher,
                  s.train.teacher_mask, c.temperature, c.max_new_tokens, c.seed, s.eos_ids,
                  s.cfg.moe_impl)
    file = cache_dir / f"teacher_samples_{key}.npz"
    if file.exists():
        with file.open("rb") as f, np.load(f) as z:
            return z["tokens"], z["mask"]
    gen_len = prompts.bucket_length(c.max_new_tokens, 1)
    N, B = s.train.teacher.shape[0], c.gen_batch_size
    toks, masks = [], []
    for start in range(0, N, B):
        idx = np.minimum(np.arange(start, start + B), N - 1)
        out = sampling.generate_arrays(
            s.teacher_cfg, s.teacher_params, None, sharding.put_batch(s.train.teacher[idx], s.mesh),
            sharding.put_batch(s.train.teacher_mask[idx], s.mesh), jax.random.key(c.seed),
            sharding.put_batch(idx.astype(np.int32), s.mesh), jnp.asarray(c.max_new_tokens),
            jnp.asarray(c.temperature, jnp.float32), jnp.asarray(0), jnp.asarray(1.0),
            gen_len=gen_len, eos_ids=s.eos_ids, pad_id=s.pad_id, moe_impl=s.cfg.moe_impl)
        keep = min(B, N - start)
        toks.append(sharding.to_host(out.tokens)[:keep])
        masks.append(sharding.to_host(out.mask)[:keep])
    tokens, mask = np.concatenate(toks), np.concatenate(masks)
    if jax.process_index() == 0:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp.npz")
        with tmp.open("wb") as f:
            np.savez(f, tokens=tokens, mask=mask)
        tmp.replace(file)
    return tokens, mask


# ============================================================================ train state


def make_optimizer(o: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    if o.schedule == "constant":
        lr = optax.constant_schedule(o.lr)
    elif o.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, o.lr, max(o.warmup_steps, 1), max(num_steps, 2))
    elif o.schedule == "linear":
        lr = optax.linear_schedule(o.lr, 0.0, max(num_steps, 1))
    else:
        raise ValueError(f"config field `optim.schedule`={o.schedule!r}; choose constant|cosine|linear")
    if o.schedule != "cosine" and o.warmup_steps > 0:
        lr = optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), lr],
                                  [o.warmup_steps])
    return optax.chain(optax.clip_by_global_norm(o.grad_clip),
                       optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))


def init_state(s: Setup, optimizer: optax.GradientTransformation, num_steps: int) -> dict[str, Any]:
    """TrainState as a plain pytree (what the checkpoint holds)."""
    cfg = s.cfg
    lcfg = lora_lib.LoraConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                               targets=tuple(cfg.lora.targets),
                               include_experts=cfg.lora.include_experts)
    lora = lora_lib.init_lora(s.student_cfg, lcfg, jax.random.key(cfg.seed), s.student_params,
                              dtype=jnp.dtype(cfg.lora.dtype))
    layers = jax.device_put(lora.layers, sharding.replicated(s.mesh))
    return {
        "step": np.asarray(0, np.int64),
        "lora": layers,
        # every leaf on the mesh (optax's step counter would otherwise land on one device and the
        # second update would recompile for the changed input sharding)
        "opt_state": jax.device_put(jax.jit(optimizer.init)(layers), sharding.replicated(s.mesh)),
        "rng": np.asarray(jax.random.key_data(jax.random.key(cfg.seed + 1_000_003))),
        "data_pos": np.asarray(0, np.int64),
        "replay": {"items": np.zeros((cfg.replay.capacity,), np.int32),
                   "size": np.asarray(0, np.int64), "ptr": np.asarray(0, np.int64)},
    }


def lora_scale(cfg: ml_collections.ConfigDict) -> float:
    return float(cfg.lora.alpha) / float(cfg.lora.rank)


# ============================================================================ the update step


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
    remat: bool
    moe_impl: str
    optim: tuple
    num_steps: int


def _loss_terms(spec: UpdateSpec, lora_layers: Any, base: Any, teacher_unembed: jax.Array | None,
                batch: dict[str, Any], plan: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
    lora = LoraParams(layers=lora_layers, scale=spec.scale)
    w = transformer.unembed_matrix(spec.student, base)
    hidden = functools.partial(scoring.completion_hidden, spec.student, base, remat=spec.remat,
                               moe_impl=spec.moe_impl)
    total = jnp.zeros((), jnp.float32)
    aux: dict[str, jax.Array] = {}
    anchor_batch = None
    if spec.has_on:
        b = batch["on"]
        h = hidden(b["prompt"], b["prompt_mask"], b["completion"], lora)
        if spec.on_loss == "sampled_rkl":
            lp = scoring.chunked_token_logprobs(h, w, b["completion"], spec.vocab_chunk)
            l_on = losses.sampled_reverse_kl(lp, b["lp_old"], b["lp_teacher"], b["loss_mask"],
                                             plan["kl_discount"])
            aux.update({f"is/{k}": v for k, v in losses.sampled_reverse_kl_stats(
                lp, b["lp_old"], b["lp_teacher"], b["loss_mask"]).items()
                if k.startswith("ratio")})
        else:
            l_on = losses.generalized_jsd_chunked(h, w, b["teacher_h"], teacher_unembed,
                                                  b["loss_mask"], plan["jsd_beta"], spec.vocab_chunk)
        aux["loss/on"] = l_on
        total = total + plan["on_weight"] * l_on
        anchor_batch = (b, h)
    if spec.has_off:
        b = batch["off"]
        h = hidden(b["prompt"], b["prompt_mask"], b["completion"], lora, shift=spec.shift_off)
        if spec.off_loss == "nll":
            lp = scoring.chunked_token_logprobs(h, w, b["completion"], spec.vocab_chunk)
            mask = b["loss_mask"]
            l_off = -jnp.sum(jnp.where(mask, lp, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
        else:
            l_off = losses.generalized_jsd_chunked(h, w, b["teacher_h"], teacher_unembed,
                                                   b["loss_mask"], 0.0, spec.vocab_chunk)
        aux["loss/off"] = l_off
        total = total + plan["off_weight"] * l_off
        anchor_batch = (b, h)
    if spec.has_anchor:
        # KL(pi_theta || pi_0) on the step's off-policy batch (else its on-policy batch), where
        # pi_0 is the same base weights with the adapters off: no second copy of the model.
        b, h = anchor_batch
        h0 = jax.lax.stop_gradient(hidden(b["prompt"], b["prompt_mask"], b["completion"], None,
                                          shift=spec.shift_off if spec.has_off else True))
        l_anchor = losses.generalized_jsd_chunked(h, w, h0, w, b["loss_mask"], 1.0, spec.vocab_chunk)
        aux["loss/anchor"] = l_anchor
        total = total + plan["anchor_beta"] * l_anchor
    aux["loss/total"] = total
    return total, aux


_UPDATE_CACHE: dict[UpdateSpec, Callable] = {}


def update_fn(spec: UpdateSpec) -> Callable:
    """The jitted update for `spec` (memoised: runs of a sweep share the compiled program)."""
    if spec in _UPDATE_CACHE:
        return _UPDATE_CACHE[spec]
    optimizer = make_optimizer(ml_collections.ConfigDict(dict(spec.optim)), max(spec.num_steps, 1))

    def update(lora_layers, opt_state, base, teacher_unembed, batch, plan):
        grads, aux = jax.grad(_loss_terms, argnums=1, has_aux=True)(
            spec, lora_layers, base, teacher_unembed, batch, plan)
        updates, opt_state = optimizer.update(grads, opt_state, lora_layers)
        aux["grad_norm"] = optax.tree.norm(grads)
        return optax.apply_updates(lora_layers, updates), opt_state, aux

    _UPDATE_CACHE[spec] = jax.jit(update, donate_argnums=(0, 1))
    return _UPDATE_CACHE[spec]


@functools.partial(jax.jit, static_argnames=("cfg", "moe_impl"))
def teacher_hidden(cfg: ModelConfig, params: Any, prompt: jax.Array, prompt_mask: jax.Array,
                   completion: jax.Array, moe_impl: str = "ragged") -> jax.Array:
    return scoring.completion_hidden(cfg, params, prompt, prompt_mask, completion, None,
                                     moe_impl=moe_impl)


# ============================================================================ metrics and cost

class MetricsWriter:
    """metrics.jsonl (+ TensorBoard) on process 0; on resume, drops lines past the checkpoint."""

    def __init__(self, workdir: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.file = workdir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.file.exists():
            kept = [line for line in self.file.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] < resume_step]
            self.file.write_text("".join(line + "\n" for line in kept))
        if "://" in str(workdir):  # tensorboardX writes local files only
            log.warning("remote workdir %s: TensorBoard events are not written "
                        "(metrics.jsonl is)", workdir)
            return
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"))
        except ImportError:  # TensorBoard is optional; JSONL is the record
            log.warning("tensorboardX not installed: metrics go to metrics.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.file.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _masked_mean(x: np.ndarray, m: np.ndarray) -> float:
    return float((x * m).sum() / max(m.sum(), 1))


# ============================================================================ the loop


def _plan_arrays(plan: methods.StepPlan, cfg: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    return {"on_weight": jnp.float32(plan.on_weight), "off_weight": jnp.float32(plan.off_weight),
            "anchor_beta": jnp.float32(plan.anchor_beta),
            "kl_discount": jnp.float32(cfg.loss.kl_discount),
            "jsd_beta": jnp.float32(cfg.loss.jsd_beta)}


def _batch_indices(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """Prompts of a step: consecutive slices of per-epoch permutations (pure function of step)."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset:offset + batch_size - len(out)].tolist())
    return np.asarray(out, np.int64)


class _Checkpoints:
    """Orbax CheckpointManager around the train-state pytree; async saves, keep-N, resume."""

    def __init__(self, workdir: Path, cfg: ml_collections.ConfigDict):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        opts = ocp.CheckpointManagerOptions(max_to_keep=cfg.checkpoint.keep, create=True,
                                            enable_async_checkpointing=cfg.checkpoint.async_save)
        self.mngr = ocp.CheckpointManager(epath.Path(workdir) / "checkpoints", options=opts)

    def latest(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, state: dict[str, Any], wait: bool = False) -> None:
        self.mngr.save(int(state["step"]), args=self.ocp.args.StandardSave(state))
        if wait:
            self.mngr.wait_until_finished()

    def restore(self, target: dict[str, Any]) -> dict[str, Any]:
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
            if isinstance(x, jax.Array) else np.asarray(x), target)
        return self.mngr.restore(self.latest(), args=self.ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()


def _prior_wall_seconds(workdir: Path) -> float:
    """Wall seconds an earlier (preempted, failed, or finished) run in `workdir` recorded."""
    try:
        return float(json.loads((workdir / "status.json").read_text()).get("wall_seconds") or 0.0)
    except (OSError, ValueError, AttributeError):
        return 0.0


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def _uses(schedule: Callable[[int], methods.StepPlan], num_steps: int) -> dict[str, bool]:
    plans = [schedule(i) for i in range(num_steps)]
    return {"on": any(p.on_weight > 0 for p in plans), "off": any(p.off_weight > 0 for p in plans),
            "seed": any(p.seed_tokens > 0 for p in plans), "replay": any(p.replay for p in plans)}


def run(cfg: ml_collections.ConfigDict, workdir: str | Path, *, setup_obj: Setup | None = None,
        step_hook: Callable[[int, dict], None] | None = None, progress: bool = True) -> dict[str, Any]:
    """Trains one run into `workdir` (resuming from its latest checkpoint) and returns its summary."""
    # A local path (made absolute: orbax requires it) or gs://... for checkpoints, metrics, status.
    workdir = epath.Path(workdir if "://" in str(workdir) else Path(workdir).resolve())
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    prior_seconds = _prior_wall_seconds(workdir)  # earlier segments of a resumed run
    main_proc = jax.process_index() == 0
    schedule = methods.get(cfg.method, cfg.schedule)
    num_steps = methods.num_steps(cfg.method, cfg.schedule)
    s = setup_obj or setup(cfg)
    if main_proc:
        _write_json(workdir / "config.json", cfg.to_dict())
        _write_json(workdir / "status.json", {"state": "running", "error": None})
    uses = _uses(schedule, num_steps)
    off_tokens = off_mask = None
    if uses["off"]:
        cache_dir = epath.Path(cfg.off_policy.cache_dir or (workdir.parent / "offpolicy_cache"))
        t0 = time.time()
        off_tokens, off_mask = teacher_samples(s, cache_dir)
        log.info("teacher samples ready (%d, %.1fs)", len(off_tokens), time.time() - t0)

    optimizer_items = tuple(sorted(cfg.optim.to_dict().items()))
    optimizer = make_optimizer(cfg.optim, num_steps)
    state = init_state(s, optimizer, num_steps)
    ckpt = _Checkpoints(workdir, cfg)
    if ckpt.latest() is not None:
        state = ckpt.restore(state)
        log.info("resumed from step %d", int(state["step"]))
    start_step = int(state["step"])
    writer = MetricsWriter(workdir, start_step, main_proc)
    eval_file = workdir / "eval.jsonl"
    evals = [json.loads(x) for x in eval_file.read_text().splitlines()] if eval_file.exists() else []
    evals = [e for e in evals if e["step"] <= start_step]
    if main_proc:
        eval_file.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in evals))

    preempt = {"flag": False}
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: preempt.update(flag=True))

    seed_len = prompts.bucket_length(cfg.schedule.seed_max_tokens, 1) if uses["seed"] else 0
    gen_len = prompts.bucket_length(cfg.rollout.max_new_tokens, 1)
    B, n_samp = cfg.rollout.batch_size, cfg.rollout.n_samples
    n_train = s.train.student.shape[0]
    run_key = jax.random.wrap_key_data(jnp.asarray(state["rng"]))
    teacher_unembed = (transformer.unembed_matrix(s.teacher_cfg, s.teacher_params)
                       if "jsd" == cfg.loss.on_policy or cfg.loss.off_policy == "forward_kl" else None)
    peak = flops_lib.peak_flops(jax.devices()[0].device_kind, cfg.cost.peak_flops_per_device)
    n_devices = s.mesh.devices.size

    def wall_and_cost() -> dict[str, Any]:
        """Wall time of the run over all its segments (resumes), priced per device-hour."""
        wall = prior_seconds + time.time() - t_start
        hours = wall * n_devices / 3600
        return {"wall_seconds": wall, "cost": {
            "device_hours": hours, "usd": hours * float(cfg.cost.usd_per_device_hour)}}

    flops_s = 2 * flops_lib.active_params(s.student_cfg)
    flops_t = 2 * flops_lib.active_params(s.teacher_cfg)
    put = functools.partial(sharding.put_batch, mesh=s.mesh)
    start_acc = next((e["accuracy"] for e in evals if e["step"] == 0), None)

    def do_eval(step: int, state: dict) -> dict[str, Any]:
        nonlocal start_acc
        t0 = time.time()
        summary, _ = evaluate.evaluate_prompts(
            s.student_cfg, s.student_params, LoraParams(state["lora"], lora_scale(cfg)), s.tokenizer,
            s.eval.student, s.eval.student_mask, s.eval.questions, s.eval.golds,
            max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
            eos_ids=s.eos_ids, pad_id=s.pad_id, mesh=s.mesh, moe_impl=cfg.moe_impl)
        if start_acc is None:
            start_acc = summary["accuracy"]
        summary["status"] = stats.classify_status(summary["accuracy"], start_acc, cfg.eval.status)
        summary["step"] = step
        summary["seconds"] = time.time() - t0
        evals.append(summary)
        if main_proc:
            with eval_file.open("a") as f:
                f.write(json.dumps(summary, sort_keys=True) + "\n")
        return summary

    bar = None
    if progress and main_proc:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=start_step, desc=cfg.name or cfg.method, leave=False)
    try:
        with jax.set_mesh(s.mesh):
            if start_step == 0 and not evals:
                do_eval(0, state)
            for step in range(start_step, num_steps):
                t_step = time.time()
                plan = schedule(step)
                idx = _batch_indices(step, B, n_train, cfg.seed)
                rows = (idx[:, None] * n_samp + np.arange(n_samp)[None]).reshape(-1).astype(np.int32)
                prompt_idx = np.repeat(idx, n_samp)
                key = jax.random.fold_in(run_key, step)
                batch: dict[str, Any] = {}
                m: dict[str, Any] = {"step": step, "seed_tokens": plan.seed_tokens,
                                     "plan/on_weight": plan.on_weight,
                                     "plan/off_weight": plan.off_weight,
                                     "plan/anchor_beta": plan.anchor_beta}
                lora_now = LoraParams(state["lora"], lora_scale(cfg))
                timings = {"rollout": 0.0, "score": 0.0, "update": 0.0}
                counts = {"sampled": 0, "scored": 0, "trained": 0}
                flops = 0.0
                if plan.on_weight > 0:
                    t0 = time.time()
                    sp, sm = put(s.train.student[prompt_idx]), put(s.train.student_mask[prompt_idx])
                    tp, tm = put(s.train.teacher[prompt_idx]), put(s.train.teacher_mask[prompt_idx])
                    common = (key, put(rows), )
                    if uses["seed"]:
                        out = sampling.teacher_seeded_arrays(
                            s.student_cfg, s.student_params, lora_now, s.teacher_cfg,
                            s.teacher_params, None, sp, sm, tp, tm, *common,
                            jnp.asarray(plan.seed_tokens, jnp.int32),
                            jnp.asarray(cfg.rollout.max_new_tokens, jnp.int32),
                            jnp.asarray(cfg.rollout.temperature, jnp.float32),
                            jnp.asarray(cfg.rollout.top_k, jnp.int32),
                            jnp.asarray(cfg.rollout.top_p, jnp.float32), gen_len=gen_len,
                            seed_len=seed_len, eos_ids=s.eos_ids, pad_id=s.pad_id,
                            moe_impl=cfg.moe_impl)
                    else:
                        out = sampling.generate_arrays(
                            s.student_cfg, s.student_params, lora_now, sp, sm, *common,
                            jnp.asarray(cfg.rollout.max_new_tokens, jnp.int32),
                            jnp.asarray(cfg.rollout.temperature, jnp.float32),
                            jnp.asarray(cfg.rollout.top_k, jnp.int32),
                            jnp.asarray(cfg.rollout.top_p, jnp.float32), gen_len=gen_len,
                            eos_ids=s.eos_ids, pad_id=s.pad_id, moe_impl=cfg.moe_impl)
                    out = jax.block_until_ready(out)
                    timings["rollout"] = time.time() - t0
                    t0 = time.time()
                    # The teacher sees its own view (context setup: context + question) unless the
                    # study's defect is switched on.
                    t_view = (sp, sm) if cfg.ablation.teacher_no_context else (tp, tm)
                    lp_t = scoring.score(s.teacher_cfg, s.teacher_params, *t_view, out.tokens,
                                         out.mask, vocab_chunk=cfg.loss.vocab_chunk,
                                         moe_impl=cfg.moe_impl)
                    on = {"prompt": sp, "prompt_mask": sm, "completion": out.tokens,
                          "loss_mask": out.student_mask, "lp_old": out.logprobs, "lp_teacher": lp_t}
                    if cfg.loss.on_policy == "jsd":
                        on["teacher_h"] = teacher_hidden(s.teacher_cfg, s.teacher_params, *t_view,
                                                         out.tokens, moe_impl=cfg.moe_impl)
                    if cfg.ablation.on_policy_no_prompt:
                        # The study's defect: the student's forward pass without the prompt (a
                        # lone pad token stands in for it).
                        on["prompt"] = put(np.full((len(rows), 1), s.pad_id, np.int32))
                        on["prompt_mask"] = put(np.ones((len(rows), 1), bool))
                    jax.block_until_ready(lp_t)
                    timings["score"] = time.time() - t0
                    batch["on"] = on
                    # host-side rollout metrics
                    toks, lens = sharding.to_host(out.tokens), sharding.to_host(out.lengths)
                    smask = sharding.to_host(out.student_mask).astype(np.float32)
                    lp_old, lp_T = sharding.to_host(out.logprobs), sharding.to_host(lp_t)
                    empty, rep = evaluate.completion_flags(toks, lens, s.eos_ids)
                    n_tok = int(sharding.to_host(out.mask).sum())
                    m.update({
                        "teacher_score": _masked_mean(lp_T, smask),
                        "reverse_kl": _masked_mean(lp_old - lp_T, smask),
                        "entropy": _masked_mean(-lp_old, smask),
                        "response_length": float(lens.mean()),
                        "truncation_rate": float(sharding.to_host(out.truncated).mean()),
                        "empty_rate": float(empty.mean()), "repetition_rate": float(rep.mean())})
                    counts["sampled"] += n_tok
                    counts["scored"] += n_tok + int(sharding.to_host(t_view[1]).sum())
                    counts["trained"] += int(smask.sum())
                    flops += flops_s * n_tok + flops_t * counts["scored"]
                    if uses["seed"] and plan.seed_tokens > 0:
                        flops += flops_t * plan.seed_tokens * len(rows)
                if plan.off_weight > 0:
                    if plan.replay and state["replay"]["size"] > 0:
                        rng = np.random.default_rng([cfg.seed, step, 7])
                        size = int(state["replay"]["size"])
                        off_idx = state["replay"]["items"][rng.integers(0, size, len(prompt_idx))]
                    else:
                        off_idx = prompt_idx
                    off = {"prompt": put(s.train.student[off_idx]),
                           "prompt_mask": put(s.train.student_mask[off_idx]),
                           "completion": put(off_tokens[off_idx]),
                           "loss_mask": put(off_mask[off_idx])}
                    if cfg.loss.off_policy == "forward_kl":
                        off["teacher_h"] = teacher_hidden(
                            s.teacher_cfg, s.teacher_params, put(s.train.teacher[off_idx]),
                            put(s.train.teacher_mask[off_idx]), off["completion"],
                            moe_impl=cfg.moe_impl)
                    batch["off"] = off
                    counts["trained"] += int(off_mask[off_idx].sum())
                if uses["replay"]:  # the buffer collects every step's prompts (FIFO, bounded)
                    rb = state["replay"]
                    cap = len(rb["items"])
                    for i in idx:
                        rb["items"][int(rb["ptr"]) % cap] = i
                        rb["ptr"] = np.asarray(int(rb["ptr"]) + 1, np.int64)
                    rb["size"] = np.asarray(min(int(rb["size"]) + len(idx), cap), np.int64)
                spec = UpdateSpec(
                    student=s.student_cfg, teacher=s.teacher_cfg, scale=lora_scale(cfg),
                    has_on="on" in batch, has_off="off" in batch,
                    has_anchor=plan.anchor_beta > 0 and bool(batch),
                    on_loss=cfg.loss.on_policy, off_loss=cfg.loss.off_policy,
                    shift_off=not cfg.ablation.unshifted_off_policy,
                    vocab_chunk=cfg.loss.vocab_chunk, remat=cfg.loss.remat, moe_impl=cfg.moe_impl,
                    # a constant schedule does not depend on the run length: share the compile
                    optim=optimizer_items,
                    num_steps=0 if cfg.optim.schedule == "constant" else num_steps)
                if batch:
                    t0 = time.time()
                    new_lora, new_opt, aux = update_fn(spec)(
                        state["lora"], state["opt_state"], s.student_params, teacher_unembed,
                        batch, _plan_arrays(plan, cfg))
                    aux = {k: float(v) for k, v in jax.device_get(aux).items()}
                    state["lora"], state["opt_state"] = new_lora, new_opt
                    timings["update"] = time.time() - t0
                    if not all(math.isfinite(v) for v in aux.values()):
                        bad = {k: v for k, v in aux.items() if not math.isfinite(v)}
                        raise FloatingPointError(
                            f"non-finite values at step {step} ({cfg.method}): {bad}; other "
                            f"diagnostics: {({k: v for k, v in {**m, **aux}.items() if k not in bad})}")
                    m.update(aux)
                    flops += 2 * flops_s * counts["trained"] * (1.5 if spec.has_anchor else 1.0)
                state["step"] = np.asarray(step + 1, np.int64)
                state["data_pos"] = np.asarray((step + 1) * B, np.int64)
                m.update({f"time/{k}": v for k, v in timings.items()})
                m.update({f"tokens/{k}": v for k, v in counts.items()})
                m["flops"] = flops
                if (step + 1) % cfg.eval.every == 0 or step + 1 == num_steps:
                    e = do_eval(step + 1, state)
                    m["time/eval"] = e["seconds"]
                    m["eval/accuracy"] = e["accuracy"]
                if (step + 1) % cfg.checkpoint.every == 0 or step + 1 == num_steps or preempt["flag"]:
                    t0 = time.time()
                    ckpt.save(state, wait=preempt["flag"] or step + 1 == num_steps)
                    m["time/checkpoint"] = time.time() - t0
                m["time/step"] = time.time() - t_step
                if peak:
                    m["mfu"] = flops / max(m["time/step"], 1e-9) / (peak * n_devices)
                writer.write(m)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{m[key]:.3g}" for k, key in
                                     (("loss", "loss/total"), ("kl", "reverse_kl"),
                                      ("score", "teacher_score")) if key in m})
                if step_hook is not None:
                    step_hook(step, m)
                if preempt["flag"]:
                    raise Preempted(f"SIGTERM at step {step + 1}: checkpoint saved in {workdir}")
        summary = {"state": "done", "error": None, "final_step": num_steps,
                   "final_eval": evals[-1] if evals else None, **wall_and_cost()}
        if main_proc:
            _write_json(workdir / "status.json", summary)
        return summary
    except Preempted as e:
        if main_proc:
            _write_json(workdir / "status.json", {"state": "preempted", "error": str(e),
                                                   "final_step": int(state["step"]),
                                                   **wall_and_cost()})
        raise
    except BaseException as e:
        if main_proc:
            _write_json(workdir / "status.json", {
                "state": "failed", "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-4000:], "final_step": int(state["step"]),
                **wall_and_cost()})
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        ckpt.close()
        writer.close()
        if bar is not None:
            bar.close()


# ============================================================================ CLI


def main(argv: list[str]) -> None:
    del argv
    from cliffdistill import distributed

    cfg = _CONFIG.value
    distributed.initialize_from_config(cfg.distributed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save/restore at INFO
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        summary = run(cfg, _WORKDIR.value)
    except Preempted as e:
        print(f"preempted: {e}")
        return
    final = summary.get("final_eval") or {}
    print(json.dumps({"workdir": _WORKDIR.value, "accuracy": final.get("accuracy"),
                      "status": final.get("status"), "wall_seconds": summary["wall_seconds"]}))


if __name__ == "__main__":
    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "run config file", lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "run directory (local path or gs://)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
