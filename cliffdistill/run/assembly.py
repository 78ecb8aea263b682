"""A run's setup: config checks, prompt views, models and data — everything before step 0.

`validate_config` runs every check that needs no weights (field values, vocab agreement, the
mesh, the memory plan) so a bad config fails in seconds with the field named. `make_setup` then
builds the mesh, tokenizer, prompt views (student / teacher, left-padded to power-of-two buckets)
and loads the models. `optim_config` turns the config into the update step's plain values, so the update
(`cliffdistill.engine.update`) never sees ml_collections; the adapters' is
`models.lora.LoraConfig.from_section`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cliffdistill.engine import methods, update
from cliffdistill.engine.defects import ABLATIONS
from cliffdistill.run import memplan, validation
from cliffdistill.data import gsm8k, prompts
from cliffdistill.models import config as model_config
from cliffdistill.models import hf_io, sharding
from cliffdistill.models.lora import LoraConfig
from cliffdistill.models.config import ModelConfig

SETUPS = ("size", "context")
ON_POLICY_LOSSES = ("sampled_rkl", "jsd")
OFF_POLICY_LOSSES = ("nll", "forward_kl")
# ============================================================================ config checks


def _dtype(name: str, field: str) -> Any:
    try:
        return jnp.dtype(name)
    except TypeError:
        raise ValueError(f"config field `{field}`={name!r} is not a dtype (use bfloat16 or float32)")


def _check_prompt_samples(cfg: ml_collections.ConfigDict, plan: methods.PlanSummary) -> None:
    """A schedule that draws K completions per prompt (StepPlan.prompt_samples, from
    `schedule.dpo_samples`) fills the rollout batch with batch_size / K distinct prompts."""
    batch = cfg.rollout.batch_size
    ks = plan.prompt_samples
    for k in sorted(ks):
        if batch % k:
            raise ValueError(
                f"config field `schedule.dpo_samples`={k} does not divide `rollout.batch_size`="
                f"{batch}: method {cfg.method!r} fills the rollout batch with batch_size / "
                f"dpo_samples distinct prompts, each sampled dpo_samples times; set "
                f"`schedule.dpo_samples` to a divisor of {batch} or `rollout.batch_size` to a "
                f"multiple of {k}")


def validate_config(cfg: ml_collections.ConfigDict) -> tuple[ModelConfig, ModelConfig]:
    """Every check that needs no weights, run before any compute. Returns (student, teacher) configs.

    First the declared range of every field (`validation.RULES`: temperature >= 0, lr > 0, batch
    >= 1, ...), so a nonsensical value fails here, naming the field, not later inside JAX."""
    validation.check_config(cfg)
    if cfg.setup not in SETUPS:
        raise ValueError(f"config field `setup`={cfg.setup!r}; choose one of {SETUPS}")
    plan = methods.plan_summary(cfg.method, cfg.schedule)  # unknown method -> lists the known ones
    _check_prompt_samples(cfg, plan)
    if cfg.loss.on_policy not in ON_POLICY_LOSSES:
        raise ValueError(f"config field `loss.on_policy`={cfg.loss.on_policy!r}; choose one of "
                         f"{ON_POLICY_LOSSES}")
    if cfg.loss.off_policy not in OFF_POLICY_LOSSES:
        raise ValueError(f"config field `loss.off_policy`={cfg.loss.off_policy!r}; choose one of "
                         f"{OFF_POLICY_LOSSES}")
    unknown = sorted(set(cfg.ablation) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"config field `ablation` has unknown switch(es) {unknown}; known: {ABLATIONS}")
    if cfg.ablation.study_eval and cfg.eval.study_n > cfg.data.n_train:
        raise ValueError(f"config field `eval.study_n`={cfg.eval.study_n} exceeds `data.n_train`="
                         f"{cfg.data.n_train}: the study's protocol scores the first train "
                         "questions; lower eval.study_n")
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
                             "'fewshot', 'cot8' or 'passage'")
        if cfg.data.context == "passage" and not cfg.data.passage:
            raise ValueError("data.context='passage' needs the retrieved text in `data.passage`")
        teacher = student
    if cfg.setup == "size" and (teacher.vocab_size != student.vocab_size
                                or _has_tokenizer(cfg.teacher.path)):
        check_shared_tokenizer(cfg, student, teacher)
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
    memplan.check_fits(cfg, student, teacher)
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


def _pad_views(ids: list[list[int]], pad_id: int, limit: int, field: str,
               multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads to the longest prompt's power-of-two bucket, or (multiple > 0) to the longest
    prompt rounded up to `multiple` (config `rollout.trim_multiple`)."""
    longest = max(len(r) for r in ids)
    if longest > limit:
        raise ValueError(f"a prompt has {longest} tokens but config field `{field}`={limit}: the "
                         f"prompt is longer than the KV cache's prompt budget; raise `{field}`")
    return prompts.pad_left(ids, pad_id, prompts.prompt_width(longest, multiple))


def load_tokenizer(cfg: ml_collections.ConfigDict, path: str | None = None) -> Any:
    """The run's tokenizer (`tokenizer_path`, else the student's), or the one at `path`."""
    import transformers  # heavy (torch-adjacent); only a real setup needs a tokenizer

    return transformers.AutoTokenizer.from_pretrained(path or cfg.tokenizer_path or cfg.student.path)


def _has_tokenizer(path: str) -> bool:
    return any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def _tokenizer_identity(tokenizer: Any) -> tuple[dict[str, int], tuple[str, ...]]:
    return tokenizer.get_vocab(), tuple(sorted(map(str, tokenizer.all_special_tokens)))


def check_shared_tokenizer(cfg: ml_collections.ConfigDict, student: ModelConfig,
                           teacher: ModelConfig) -> None:
    """The teacher must read the student's token ids as the same strings. Embeddings of
    different sizes are accepted only when they pad one tokenizer: the run's
    tokenizer and the teacher checkpoint's have the same token -> id table and special tokens,
    and both embeddings hold every id (`logit_vocab_size` then cuts both to the real tokens).
    A real tokenizer mismatch is refused: on-policy distillation scores the student's token ids
    under the teacher, so the ids must mean the same strings."""
    sizes = (f"teacher.path has vocab_size={teacher.vocab_size}, student.path has "
             f"vocab_size={student.vocab_size}")
    run_path = cfg.tokenizer_path or cfg.student.path
    if not _has_tokenizer(cfg.teacher.path):
        raise ValueError(f"{sizes}, and teacher.path={cfg.teacher.path!r} has no tokenizer "
                         "(tokenizer.json / tokenizer_config.json) to check that both share one "
                         "tokenizer; add the teacher's tokenizer files or pick a pair that "
                         "shares one tokenizer")
    ours, theirs = load_tokenizer(cfg), load_tokenizer(cfg, cfg.teacher.path)
    if _tokenizer_identity(ours) != _tokenizer_identity(theirs):
        raise ValueError(f"teacher/student tokenizer mismatch ({sizes}): the tokenizer of "
                         f"{run_path!r} and of teacher.path={cfg.teacher.path!r} map tokens to "
                         "different ids; on-policy distillation scores the student's token ids "
                         "under the teacher, so both must share one tokenizer")
    logit_vocab_size(cfg, ours, student, teacher)


def logit_vocab_size(cfg: ml_collections.ConfigDict, tokenizer: Any, student: ModelConfig,
                     teacher: ModelConfig) -> int:
    """The logits' width V: config `vocab_size`, 0 = the tokenizer's size (padded rows cut)."""
    n = cfg.vocab_size or len(tokenizer)
    smallest = min(student.vocab_size, teacher.vocab_size)
    if n > smallest:
        raise ValueError(f"config field `vocab_size`={cfg.vocab_size} (0 = len(tokenizer) = "
                         f"{len(tokenizer)}) asks for {n} logits but the smaller embedding has "
                         f"{smallest} rows (student {student.vocab_size}, teacher "
                         f"{teacher.vocab_size}): the tokenizer has ids a model cannot embed; "
                         f"set `vocab_size` <= {smallest} or fix `tokenizer_path`")
    return n


def build_views(cfg: ml_collections.ConfigDict, tokenizer: Any, examples: list[gsm8k.Example],
                shots: list[gsm8k.Example], pad_id: int) -> Views:
    instruction = prompts.INSTRUCTION if cfg.data.instruction is None else cfg.data.instruction
    student_ids, teacher_ids = prompts.build_views(
        tokenizer, examples, shots, system=cfg.data.system, instruction=instruction,
        chat_template=cfg.chat_template,
        teacher_system=cfg.data.passage if cfg.data.context == "passage" else None,
        **dict(cfg.data.template_kwargs))
    r = cfg.rollout
    s, sm = _pad_views(student_ids, pad_id, r.max_prompt_len, "rollout.max_prompt_len",
                       r.trim_multiple)
    t, tm = _pad_views(teacher_ids, pad_id, r.max_teacher_prompt_len,
                       "rollout.max_teacher_prompt_len", r.trim_multiple)
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

    @functools.cached_property
    def plan(self) -> methods.PlanSummary:
        """What the run's schedule uses (on/off-policy, seeding, replay, ...), once per run."""
        return methods.plan_summary(self.cfg.method, self.cfg.schedule)


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


def make_setup(cfg: ml_collections.ConfigDict) -> Setup:
    """Validates `cfg`, then builds the mesh, tokenizer, prompt views and models of a run."""
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
    kernels = {"attention_impl": cfg.attention_impl, "moe_capacity_factor": cfg.moe_capacity_factor,
               "real_vocab_size": logit_vocab_size(cfg, tokenizer, scfg, tcfg)}
    scfg, tcfg = dataclasses.replace(scfg, **kernels), dataclasses.replace(tcfg, **kernels)
    return Setup(cfg, mesh, tokenizer, scfg, sparams, tcfg, tparams, train_views, eval_views,
                 eos_ids, pad_id)


# ============================================================================ config -> plain values


def optim_config(cfg: ml_collections.ConfigDict) -> update.OptimConfig:
    """`cfg.optim` as the update step's plain, hashable hyper-parameters."""
    return update.OptimConfig(**cfg.optim.to_dict())


def init_state(s: Setup, num_steps: int) -> dict[str, Any]:
    """The run's step-0 train state (what a checkpoint holds), from its config."""
    cfg = s.cfg
    return update.init_state(
        s.student_cfg, s.student_params, LoraConfig.from_section(cfg.lora), s.mesh,
        update.make_optimizer(optim_config(cfg), num_steps), seed=cfg.seed,
        lora_dtype=cfg.lora.dtype, replay_capacity=cfg.replay.capacity)
