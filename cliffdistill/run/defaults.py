"""Every knob of a distillation run, with its default and what it means.

Experiment configs (`configs/*.py`) start from `get_config()` here and override fields;
`configs/base.py` is this config as a file for `--config`:

    python -m cliffdistill.train --config configs/qwen_size.py --workdir DIR --config.method=hybrid
"""

import ml_collections

from cliffdistill import stats
from cliffdistill.engine import methods
from cliffdistill.run import distributed


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = ""  # free-form run name (sweeps set it)
    c.setup = "size"  # "size": student <- larger teacher; "context": teacher = base model + context
    c.setup_label = ""  # the report's name for the setup ("" -> `setup`), e.g. "retrieval"
    c.method = "on_policy_gkd"  # one of cliffdistill.engine.methods.METHODS
    c.seed = 0  # run seed: rollout randomness, LoRA init, data order
    c.schedule = methods.default_schedule_config()  # phase lengths, seeding decay, weights, ...

    # ---------------------------------------------------------------- models
    c.student = ml_collections.ConfigDict(dict(path="", dtype="bfloat16"))
    # size: a separate checkpoint. context: leave path "" -> the student's base weights, LoRA off.
    c.teacher = ml_collections.ConfigDict(dict(path="", dtype="bfloat16"))
    c.tokenizer_path = ""  # "" -> the student checkpoint directory
    # logits cover token ids [0, vocab_size): 0 -> len(tokenizer), so padded embedding rows (and
    # a teacher padded differently from the student, same tokenizer) are never sampled or scored
    c.vocab_size = 0
    c.chat_template = ml_collections.FieldReference(None, field_type=str)  # overrides the tokenizer's
    # "auto" (ragged on TPU, grouped elsewhere) | "ragged" (lax.ragged_dot) | "grouped" (capacity-
    # based einsums, models.transformer._moe_grouped) | "dense" (reference: every expert, every token)
    c.moe_impl = "auto"
    c.moe_capacity_factor = 2.0  # "grouped": expert buffer = factor x the even share (no dropping)
    # attention kernel of prefill, scoring and the update: "auto" (cudnn on GPU for bf16/fp16,
    # xla otherwise) | "xla" | "cudnn"
    c.attention_impl = "auto"
    c.lora = ml_collections.ConfigDict(dict(
        rank=32, alpha=32.0, targets=("q", "k", "v", "o", "gate", "up", "down"),
        include_experts=False, dtype="float32"))

    # ---------------------------------------------------------------- data and prompt views
    c.data = ml_collections.ConfigDict(dict(
        source="jsonl",  # "jsonl" | "hf" | "tfds"
        path="",  # jsonl: dir with {train,test}.jsonl (or a file); hf: dataset name; tfds: data_dir
        train_split="train",
        eval_split="test",  # held-out questions; never the training split
        n_train=1000,  # training prompts
        n_fewshot=64,  # few-shot pool (disjoint from train and eval)
        n_eval=500,
        split_seed=0,  # fixed across runs so every method/seed sees the same prompts
        system=ml_collections.FieldReference(None, field_type=str),
        instruction=ml_collections.FieldReference(None, field_type=str),  # None -> prompts.INSTRUCTION
        template_kwargs={},  # passed to the chat template, e.g. {"enable_thinking": False} (Qwen3)
        context="none",  # teacher's extra context: "none" | "fewshot" | "cot8" | "passage"
        passage="",  # context="passage": a retrieved document, the teacher's system turn
        context_k=10,  # shots in the teacher's context ("fewshot")
    ))

    # ---------------------------------------------------------------- rollout
    c.rollout = ml_collections.ConfigDict(dict(
        batch_size=64,  # prompts per step (global); must divide by the mesh's data axes
        n_samples=1,  # completions per prompt
        max_new_tokens=256,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_prompt_len=512,  # prompt budget of the KV cache (student view)
        max_teacher_prompt_len=4096,  # ... and of the teacher's view (context + question)
        # 0: prompt views padded to a power of two, scoring and updates over the whole
        # completion bucket (one compiled shape). k > 0: views padded to their longest prompt
        # rounded up to k, and each step's completions cut to its longest row rounded up to k
        # (less compute, up to max_new_tokens / k compiled shapes; float rounding differs).
        trim_multiple=0,
        # a step's on- and off-policy batches padded to one width (the wider): with
        # trim_multiple > 0 a mixed update then compiles once per width, not once per pair of
        # widths (worth it where a compile costs more than the padding: small models, short runs)
        match_update_widths=False,
    ))

    # ---------------------------------------------------------------- losses
    c.loss = ml_collections.ConfigDict(dict(
        on_policy="sampled_rkl",  # "sampled_rkl" (Tinker recipe) | "jsd" (full-vocab GKD)
        jsd_beta=1.0,  # for on_policy="jsd": 0 forward KL, 1 reverse KL
        kl_discount=0.0,  # gamma of the sampled reverse KL advantage
        dpo_beta=0.1,  # dpo_teacher: beta of the DPO loss (strength of the pull from the reference)
        confidence_temperature=1.0,  # reward_weighted_gkd: softmax temperature of the row weights
        off_policy="nll",  # "nll" | "forward_kl" (to the teacher's full distribution)
        vocab_chunk=16384,  # vocabulary chunk of log-softmax / divergences
        remat="full",  # update layers: "full" (recompute) | "dots" (save matmul outputs) | "none"
    ))

    # ---------------------------------------------------------------- off-policy data
    c.off_policy = ml_collections.ConfigDict(dict(
        temperature=1.0,  # teacher samples y ~ p_T(.|x~), generated once and cached on disk
        max_new_tokens=256,
        seed=0,  # the samples' key (with per_run_seed: plus the run's `seed`)
        # False: every method and run seed of a sweep reuses one set of teacher samples (cheap);
        # True: each run seed draws its own (seed-level variance includes the samples')
        per_run_seed=False,
        batch_size=64,  # prompts per off-policy batch
        cache_dir="",  # "" -> <workdir>/../offpolicy_cache (shared by a sweep's runs)
        gen_batch_size=64,  # prompts per generation call when building the cache
    ))
    c.replay = ml_collections.ConfigDict(dict(capacity=256))  # bounded buffer of teacher samples

    # ---------------------------------------------------------------- the study's defects (off!)
    c.ablation = ml_collections.ConfigDict(dict(
        unshifted_off_policy=False,  # off-policy targets not shifted by one (model copies its input)
        on_policy_no_prompt=False,  # on-policy student forward without the prompt
        teacher_no_context=False,  # teacher scores without its context (context setup)
        two_step_mixture=False,  # mixture as two optimizer steps (on, then off), not one sum
        zero_kl_anchor=False,  # kl_anchored's KL term compares the policy with itself (always 0)
        # evaluation protocol, not training: every eval ALSO scores the first `eval.study_n`
        # *training* questions with `eval.study_max_new_tokens` (the study's 50 / 256), recorded
        # beside the held-out eval as `study` (the same checkpoints, two protocols)
        study_eval=False,
    ))

    # ---------------------------------------------------------------- optimisation
    c.optim = ml_collections.ConfigDict(dict(
        lr=3e-4, schedule="constant",  # "constant" | "cosine" | "linear"
        warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0,
        final_lr_fraction=0.0))  # cosine: decays to final_lr_fraction * lr

    # ---------------------------------------------------------------- evaluation / checkpoints
    c.eval = ml_collections.ConfigDict(dict(
        every=25,  # also at step 0 (the untrained student) and at the last step
        max_new_tokens=1024,
        batch_size=64,
        study_n=50,  # ablation.study_eval: the study's protocol scored the first 50 train questions
        study_max_new_tokens=256,  # ... with 256-token answers
        # ... at the first and the final eval (what the report reads); N > 0: also at every eval
        # whose step is a multiple of N (a curve under the study's protocol)
        study_every=0,
        # The step-0 eval is the base student's (the adapters start as the zero update), the
        # same for every run of a setup: "" -> computed once in <workdir>/../eval_cache and
        # reused by the sweep's other runs; "none" -> always computed.
        step0_cache_dir="",
        status=stats.default_status_thresholds(),
        claims=stats.default_claim_thresholds(),  # the report's verdict thresholds
        # benchmarks scored at step 0 and at the end (`cliffdistill.run.benchmarks`): retention
        benchmarks=ml_collections.ConfigDict(dict(
            tasks="",  # "TASK=PATH,TASK=PATH" (cliffdistill.tasks.runner.TASKS); "" = none
            num_fewshot=0,
            limit=0,  # 0 = every document (MMLU: per subject)
            batch_size=32,  # requests per scoring call
            max_new_tokens=512,  # completion budget of code tasks
        )),
    ))
    c.checkpoint = ml_collections.ConfigDict(dict(every=25, keep=3, async_save=True))
    c.log_every = 1

    # ---------------------------------------------------------------- parallelism / cost
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, expert=1))
    c.distributed = distributed.config_fields()  # multi-host layout; see docs/LAUNCH.md
    c.cost = ml_collections.ConfigDict(dict(
        usd_per_device_hour=0.0,  # your price; reports show device-hours either way
        peak_flops_per_device=0.0,  # 0 -> looked up from the device kind (MFU left empty if unknown)
    ))
    c.hbm_bytes_per_device = 0  # 0 -> the device's reported memory (memory planner check)
    return c
