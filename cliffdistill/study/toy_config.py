"""The toy's run config: toy Qwen3 teacher/student on the synthetic task, CPU-sized
(`configs/toy.py` is this config as a file for `--config`).

    python -m cliffdistill.train --config configs/toy.py:size --workdir /tmp/toy_size
    python -m cliffdistill.train --config configs/toy.py:context --workdir /tmp/toy_ctx

The argument picks the setup; model and data paths point into the toy testbed that
`python -m cliffdistill.main` (or `cliffdistill.study.toy.prepare`) builds in `TOY_CACHE`. The study's
100-step schedule is scaled to 40 steps with every phase boundary at the same fraction
(switch at 50%, seeding decays over the first 50%, reverse curriculum switches at 70%), and its
teacher-seeded prefix to the same fraction (20/256) of the completion budget. The run budget
(LoRA rank, lr, steps, batch, completion budget) is `cliffdistill.study.toy.run_budget()`: the
testbed's oracle check is measured with exactly it.
"""

import os

import ml_collections

from cliffdistill.engine import methods
from cliffdistill.study import testbed, toy_data
from cliffdistill.data import synthetic
from cliffdistill.run import defaults

TOY_CACHE = os.environ.get("CLIFFDISTILL_CACHE", os.path.expanduser("~/.cache/cliffdistill"))



def run_budget() -> ml_collections.ConfigDict:
    """The distillation-run budget the testbed is calibrated for.

    `configs/toy.py` reads it, and the oracle check trains with it, so "the oracle can move the
    student" is a statement about the very budget the methods get.
    """
    return ml_collections.ConfigDict(dict(
        lora_rank=8, lora_alpha=16.0, lr=3e-3, steps=40, batch_size=32,
        max_new_tokens=128,  # completion budget of rollouts, teacher samples and evals
        trim_multiple=32,  # prompt views / each step's completions padded to a multiple of 32
        seed_fraction=methods.STUDY_SEED_FRACTION,  # teacher-seeded prefix: 20/256 of it
        n_fewshot=64, split_seed=0))


def default_prepare_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.difficulty = {"2": 1.0, "3": 1.0, "4": 1.0}  # equation lines per problem -> weight
    c.style = "worked"  # synthetic.STYLES: worked solutions are ~14 tokens a line
    c.held_out_mod = synthetic.HELD_OUT_MOD  # 1 in this many compositions is held out
    c.n_eval = 512  # held-out eval problems per setup (and per context value)
    c.n_dev = 256  # held-out dev problems (student snapshot choice; never evaluated on)
    c.n_train_prompts = 256  # distillation prompts per setup (train split)
    c.context_k = 2  # solved examples in the context-distillation teacher's prompt
    c.context_values = (3, 5, 8)  # hidden unit values of the context setup (one per run seed)
    c.format_episode_fraction = 0.25  # pretraining episodes whose shots are format-only
    # pretraining episodes that state the value in a retrieved passage (a system turn) instead of
    # solved examples: the retrieval-style context variant's teacher can read one
    c.passage_episode_fraction = 0.2
    # The size setup's task: unit problems whose value (a zorp is `size_value` units) the teacher
    # learned in pretraining and the student never saw -- knowledge a few supervised steps can
    # transfer -- on top of the capacity gap (the student's arithmetic stays weaker). A plain
    # arithmetic gap alone gives no headroom: LoRA on the runs' budget cannot teach arithmetic
    # (measured: ground-truth oracle +0.8..+5.5 pp at 40-100 steps, any learning rate).
    c.size_value = 6  # not one of context_values
    c.unit_fraction = 0.25  # share of a plain pretraining batch that is zero-shot unit problems
    # 1000 pretraining steps (prepare's critical path: 330 s vs 435 s for 1500, cold, 2 cores). It
    # costs teacher accuracy, measured: size 97.9% -> 77.3%, context 90.7% -> 59.2% (1500 -> 1000
    # steps); both setups still pass the headroom checks (docs/PERFORMANCE.md)
    c.teacher = ml_collections.ConfigDict(dict(
        layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, mlp=192, steps=1000, batch=32,
        lr=3e-3, episode_every=4, knows_size_value=True))
    # Half the width, so ~4.3x fewer parameters (the embedding is shared by every width); two
    # layers, because locating the i-th operand and carrying the running count needs depth.
    # Its zero-shot unit problems use every value but size_value: it knows the format, not the fact.
    c.student = ml_collections.ConfigDict(dict(
        layers=2, hidden=32, heads=2, kv_heads=1, head_dim=16, mlp=64, steps=2500, batch=32,
        lr=3e-3, episode_every=0, knows_size_value=False, snapshots=(2500,), max_accuracy=0.30))
    c.seq_len = 128  # pretraining sequence length of plain problems (episodes use 3x)
    # each pretraining batch is cut to its longest row rounded up to this (0: seq_len / 3 x
    # seq_len): attention's cost is quadratic in the padding, which changes no real token
    c.pretrain_pad_multiple = 16
    c.run = run_budget()
    c.checks = testbed.default_checks()
    c.eval_batch_size = 256
    return c


BUDGET = run_budget()
STEPS = BUDGET.steps
#: The context setup's hidden unit value when none is chosen (a sweep picks one per seed).
DEFAULT_CONTEXT_VALUE = default_prepare_config().context_values[0]


def toy_paths(root: str, setup: str, context_value: int = DEFAULT_CONTEXT_VALUE) -> dict:
    """Overrides that point a run at a prepared toy testbed (see cliffdistill.study.toy.prepare).
    "retrieval" is the context setup whose teacher reads a passage stating the unit value
    instead of solved examples (the study's RAG -> no-RAG next step)."""
    if setup == "retrieval":
        return {**toy_paths(root, "context", context_value), "data.context": "passage",
                "data.passage": synthetic.passage_text(context_value), "setup": "context",
                "setup_label": "retrieval"}
    if setup == "size":
        return {"student.path": f"{root}/student", "teacher.path": f"{root}/teacher",
                "data.path": str(toy_data.size_dir(root)), "data.context": "none"}
    if setup == "context":  # teacher = the toy teacher's base weights WITH k solved examples
        return {"student.path": f"{root}/teacher", "teacher.path": "",
                "data.path": str(toy_data.context_dir(root, context_value)), "data.context": "fewshot"}
    raise ValueError(f"configs/toy.py:<setup> needs 'size', 'context' or 'retrieval', got {setup!r}")


def get_config(arg: str = "size") -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.setup = arg
    root = ""
    if os.path.isdir(TOY_CACHE):  # the newest prepared testbed, if any
        roots = sorted((e for e in os.scandir(TOY_CACHE) if e.name.startswith("toy-")),
                       key=lambda e: e.stat().st_mtime)
        root = roots[-1].path if roots else ""
    for field, value in toy_paths(root or f"{TOY_CACHE}/<run cliffdistill.main first>", arg).items():
        if "." in field:
            section, key = field.split(".")
            c[section][key] = value
        else:
            c[field] = value
    b, prep = BUDGET, default_prepare_config()
    c.student.dtype = c.teacher.dtype = "float32"
    c.lora.update(rank=b.lora_rank, alpha=b.lora_alpha)
    c.data.update(n_train=prep.n_train_prompts, n_fewshot=b.n_fewshot, n_eval=prep.n_eval,
                  split_seed=b.split_seed, instruction="", context_k=prep.context_k)
    # match_update_widths: every new pair of (on, off) widths would compile a mixed update
    # again, ~4-10 s on 2 CPU cores against ~0.3-1 s per toy step (docs/PERFORMANCE.md).
    # trim_multiple: answers average ~44 of the 128-token budget and the context teacher's view
    # ~183 real tokens, so scoring and updates skip most padding (docs/PERFORMANCE.md)
    c.rollout.update(batch_size=b.batch_size, max_new_tokens=b.max_new_tokens, max_prompt_len=128,
                     max_teacher_prompt_len=512, trim_multiple=b.trim_multiple,
                     match_update_widths=True)
    # per_run_seed: each seed draws its own teacher samples, so the seed-level intervals include
    # the samples' variance (#29; shared samples understate it)
    c.off_policy.update(max_new_tokens=b.max_new_tokens, gen_batch_size=64, per_run_seed=True)
    c.replay.capacity = 128
    c.loss.update(vocab_chunk=4096, remat="none")
    c.optim.update(lr=b.lr)
    # study_eval: the study's 256-token budget is the toy's whole completion budget
    c.eval.update(every=10, max_new_tokens=b.max_new_tokens, batch_size=prep.eval_batch_size,
                  study_max_new_tokens=b.max_new_tokens)
    c.checkpoint.update(every=20, keep=2, async_save=False)
    s = c.schedule
    s.num_steps, s.extended_num_steps = STEPS, 2 * STEPS
    s.hybrid_switch_step = STEPS // 2
    s.seed_max_tokens = methods.seed_tokens(b.seed_fraction, b.max_new_tokens)
    s.seed_decay_steps = STEPS // 2
    s.replay_period = 5
    s.reverse_switch_step = int(0.7 * STEPS)
    return c
