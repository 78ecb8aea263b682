"""The study's proposed next steps on the toy testbed (docs/EXTENSIONS.md):

    python -m cliffdistill.main --study extensions [--publish]

1. alternative objectives (size setup): the full-vocabulary generalized JSD (beta 0 / 0.5 / 1)
   as the on-policy loss, `dpo_teacher` and `reward_weighted_gkd`, beside sampled reverse KL;
2. hyper-parameter sensitivity (size setup) of `teacher_seeded` and `on_policy_gkd`
   (seed-prefix length, seed decay, LoRA rank, learning rate, number of steps), one knob at a
   time around the toy default (x1/2 or x1/3 and x2 or x3; only the knob changes);
3. retrieval-style context distillation: the context setup's teacher reads a passage that states
   the unit value instead of solved examples; four methods side by side with the few-shot teacher.

Every arm is a set of config overrides run for `SEEDS` seeds; an arm's runs are shared by every
part that uses them (the default on_policy_gkd run is the reference of parts 1 and 2). Statistics:
the seed-level interval (`stats.seed_interval`) for each arm, and each arm against its part's
reference by the paired seed-level t-test with Holm correction inside the part.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from cliffdistill import stats
from cliffdistill.run import rundir
from cliffdistill.run import config_io
from cliffdistill.engine import methods
from cliffdistill.report.aggregate import question_matrix, summarize_run
from cliffdistill.report.markdown import pp, table
from cliffdistill.stats import pct
from cliffdistill.report.plots import pyplot
from cliffdistill.study import toy_config

SEEDS = 3
#: Setup of the objective and sensitivity parts: the size setup (the study's capability-gap
#: setting, and its cheaper runs: the student is the small model); retrieval compares "context"
#: (few-shot teacher) with "retrieval" (passage teacher) on the context setup.
SETUP = "size"
RETRIEVAL_METHODS = ("on_policy_gkd", "off_policy", "teacher_seeded", "hybrid")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One configuration of a part: a label and the run-config overrides (dotted fields)."""

    part: str
    label: str
    setup: str  # "context" | "retrieval"
    overrides: tuple[tuple[str, Any], ...]
    reference: bool = False  # the part's reference arm (the others are compared with it)
    knob: str = ""  # sensitivity: the knob varied ("" for the default)
    value: float | None = None  # sensitivity: the knob's value


def arms(steps: int, max_new_tokens: int, lr: float, rank: int) -> list[Arm]:
    """Every arm of the three parts, for the toy run budget (steps, completion budget, lr, rank)."""
    ref = (("method", "on_policy_gkd"),)
    out = [Arm("objectives", "sampled reverse KL (on_policy_gkd)", SETUP, ref, reference=True)]
    for beta in (0.0, 0.5, 1.0):
        out.append(Arm("objectives", f"JSD beta={beta:g} (on_policy_gkd)", SETUP,
                       ref + (("loss.on_policy", "jsd"), ("loss.jsd_beta", beta))))
    out += [Arm("objectives", m, SETUP, (("method", m),))
            for m in methods.EXTENSION_METHODS]

    def knob_arms(method: str, knob: str, field: str, values: Sequence[Any],
                  default: Any) -> list[Arm]:
        return [Arm(f"sensitivity: {method}", f"{knob}={v:g}", SETUP,
                    (("method", method), *(((field, v), *_valid_schedule(field, v, steps))
                                           if v != default else ())),
                    reference=v == default, knob=knob, value=float(v)) for v in values]

    seed_max = methods.seed_tokens(methods.STUDY_SEED_FRACTION, max_new_tokens)
    for method in ("teacher_seeded", "on_policy_gkd"):
        if method == "teacher_seeded":
            out += knob_arms(method, "seed prefix tokens", "schedule.seed_max_tokens",
                             (seed_max // 2, seed_max, 2 * seed_max), seed_max)
            out += knob_arms(method, "seed decay steps", "schedule.seed_decay_steps",
                             (steps // 4, steps // 2, steps), steps // 2)
        out += knob_arms(method, "LoRA rank", "lora.rank", (rank // 2, rank, 2 * rank), rank)
        out += knob_arms(method, "learning rate", "optim.lr", (lr / 3, lr, 3 * lr), lr)
        out += knob_arms(method, "steps", "schedule.num_steps", (steps // 2, steps, 2 * steps),
                         steps)
    for m in RETRIEVAL_METHODS:
        out.append(Arm("retrieval vs few-shot", f"{m}: few-shot teacher", "context",
                       (("method", m),), reference=True))
        out.append(Arm("retrieval vs few-shot", f"{m}: passage teacher", "retrieval",
                       (("method", m),)))
    return out


def _valid_schedule(field: str, value: Any, steps: int) -> tuple[tuple[str, Any], ...]:
    """Fewer steps than the toy's phase boundaries would make the schedule config invalid (a
    switch after the last step): such a knob value also moves the boundaries other methods use
    (hybrid / reverse curriculum; not the seeding decay) to its last step -- nothing else."""
    if field != "schedule.num_steps":
        return ()
    bounds = {"schedule.hybrid_switch_step": steps // 2, "schedule.reverse_switch_step": int(0.7 * steps)}
    return tuple((f, value) for f, b in bounds.items() if b > value)


def normal_form(setup: str, values: Mapping[str, Any], base: ml_collections.ConfigDict) -> tuple:
    """(setup label, the fields that differ from `base`, plus the method): arms with equal normal
    forms share their runs, and a finished run is matched to its arms by it."""
    return (setup, tuple(sorted((f, v) for f, v in values.items()
                                if f == "method" or v != config_io.get_field(base, f))))


def arm_base(base_overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The toy run config with the sweep-wide overrides: what an arm varies from (the varied
    fields -- method, losses, schedule, LoRA, optimizer -- are the same in every toy setup)."""

    base = toy_config.get_config(SETUP)
    for field, value in base_overrides.items():
        config_io.set_field(base, field, value)
    return base


def sweep_config(root: Path, all_arms: Sequence[Arm], context_values: Sequence[int],
                 base_overrides: Mapping[str, Any], seeds: int = SEEDS) -> ml_collections.ConfigDict:
    """One zip row per (distinct arm configuration, seed); every row sets every varied field
    (fields an arm leaves alone take the toy config's value)."""

    base = arm_base(base_overrides)
    distinct = list(dict.fromkeys(normal_form(a.setup, dict(a.overrides), base) for a in all_arms))
    fields = sorted({f for _, ov in distinct for f, _ in ov} | {"method"})
    zipped: dict[str, list] = {}
    for setup, overrides in distinct:
        values = dict(overrides)
        for seed in range(seeds):
            row = {f: values.get(f, config_io.get_field(base, f)) for f in fields}
            v = int(context_values[seed % len(context_values)])
            # every row sets the fields only some setups change (zip rows are uniform)
            row.update({"seed": seed, "setup": "size" if setup == "size" else "context",
                        "setup_label": "", "data.passage": "",
                        **toy_config.toy_paths(str(root), setup, v)})
            for f, value in row.items():
                zipped.setdefault(f, []).append(value)
    c = ml_collections.ConfigDict()
    c.name = "toy study: the study's next steps"
    c.base_config = "configs/toy.py"
    c.base_overrides = config_io.nest(dict(base_overrides))
    c.order = ("setup", "setup_label", "method", "seed")
    c.name_fields = tuple(f for f in zipped if f not in (
        "student.path", "teacher.path", "data.path", "data.passage", "data.context",
        "schedule.hybrid_switch_step", "schedule.reverse_switch_step"))  # follow num_steps
    c.zip = config_io.nest({k: tuple(v) for k, v in zipped.items()})
    c.baselines = True
    return c


# ============================================================================ analysis


VARIED = ("method", "loss.on_policy", "loss.jsd_beta", "schedule.seed_max_tokens",
          "schedule.seed_decay_steps", "lora.rank", "optim.lr", "schedule.num_steps",
          "schedule.hybrid_switch_step", "schedule.reverse_switch_step")


def analyze(workdir: Path, all_arms: Sequence[Arm], base_overrides: Mapping[str, Any],
            thresholds: ml_collections.ConfigDict | None = None) -> list[dict[str, Any]]:
    """Per arm: its runs' step-0 and final accuracy, the seed-level CI, and (non-reference arms)
    the paired difference to the part's reference with a Holm-adjusted p inside the part
    (`thresholds`: `eval.claims` -- alpha; default `stats.default_claim_thresholds`)."""
    t = thresholds or stats.default_claim_thresholds()
    base = arm_base(base_overrides)
    runs = []
    for entry in json.loads((workdir / rundir.SWEEP_FILE).read_text())["runs"]:
        cfg = ml_collections.ConfigDict(rundir.read_json(
            workdir / rundir.RUNS_SUBDIR / entry["name"] / rundir.CONFIG_FILE) or {})
        if "method" not in cfg:
            continue  # never started
        key = normal_form(cfg.get("setup_label") or cfg.setup, {f: config_io.get_field(cfg, f) for f in VARIED},
                          base)
        runs.append((key, summarize_run(workdir, {"name": entry["name"]}, {})))
    rows = []
    for arm in all_arms:
        key = normal_form(arm.setup, dict(arm.overrides), base)
        mine = [s for k, s in runs if k == key and s["state"] == "done" and s["final_per_question"]]
        mine.sort(key=lambda s: s["seed"])
        row = {"part": arm.part, "label": arm.label, "setup": arm.setup, "reference": arm.reference,
               "knob": arm.knob, "value": arm.value, "n_seeds": len(mine),
               "start": float(np.mean([s["start_accuracy"] for s in mine])) if mine else None}
        mat = question_matrix([s["final_per_question"] for s in mine])
        if mat is not None:
            r = stats.seed_interval(mat)
            row["final"], row["low"], row["high"], row["_final"] = r["mean"], r["low"], r["high"], mat
        rows.append(row)
    for part in dict.fromkeys(r["part"] for r in rows):
        _compare(rows, part, t.alpha)
    for r in rows:
        r.pop("_final", None)
    return rows


def _compare(rows: list[dict[str, Any]], part: str, alpha: float) -> None:
    """Each arm of `part` against the part's reference arm (for retrieval: the same method's
    few-shot arm), a paired seed-level t-test (seed i with seed i, same questions); Holm over the
    part's comparisons that have a p-value (one seed: descriptive, never significant)."""
    arms_ = [r for r in rows if r["part"] == part and "_final" in r]
    refs = [r for r in arms_ if r["reference"]]
    tests = []
    for r in arms_:
        if r["reference"]:
            continue
        ref = _reference_for(r, refs)
        if ref is None or ref["_final"].shape[1] != r["_final"].shape[1]:
            continue
        k = min(len(ref["_final"]), len(r["_final"]))
        res = stats.seed_interval(r["_final"][:k] - ref["_final"][:k])
        r["vs"] = ref["label"]
        r.update(diff=res["mean"], diff_low=res["low"], diff_high=res["high"], p=res["p"])
        if stats.finite(res["p"]):
            tests.append(r)
    for r, p_adj in zip(tests, stats.holm([r["p"] for r in tests]) if tests else []):
        r["p_holm"] = float(p_adj)
        r["significant"] = bool(p_adj <= alpha)


def _reference_for(row: Mapping[str, Any], refs: Sequence[Mapping[str, Any]]) -> Any:
    if row["part"].startswith("retrieval"):
        method = row["label"].split(":")[0]
        return next((r for r in refs if r["label"].split(":")[0] == method), None)
    if row["knob"]:
        return next((r for r in refs if r["knob"] == row["knob"]), None)
    return refs[0] if refs else None


# ============================================================================ report


def _ci(r: Mapping[str, Any]) -> str:
    if r.get("final") is None:
        return "no finished run"
    return f"{pct(r['final'])} [{pct(r['low'])}, {pct(r['high'])}]"


def _vs(r: Mapping[str, Any]) -> str:
    if r["reference"]:
        return "reference"
    if "diff" not in r:
        return "-"
    if "p_holm" not in r:
        return f"{pp(r['diff'])} (one seed: descriptive)"
    mark = " **significant**" if r.get("significant") else ""
    return (f"{pp(r['diff'])} [{pp(r['diff_low'])}, {pp(r['diff_high'])}], "
            f"p_Holm {r['p_holm']:.3f}{mark}")


def markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One table per part: step 0, final accuracy with its seed-level CI, and the paired
    difference to the part's reference (Holm inside the part)."""
    out: list[str] = []
    for part in dict.fromkeys(r["part"] for r in rows):
        mine = [r for r in rows if r["part"] == part]
        out += [f"### {part}", ""]
        out += table(["arm", "setup", "step 0 (%)", "final (%), 95% CI (seed level)",
                      "vs reference: paired difference, 95% CI, Holm p", "seeds"],
                     [[r["label"], r["setup"], pct(r["start"]), _ci(r), _vs(r), r["n_seeds"]]
                      for r in mine])
        out.append("")
    return out


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Final accuracy with 95% CIs: one panel per part (sensitivity: one line per knob)."""
    plt = pyplot()
    parts = list(dict.fromkeys(r["part"] for r in rows))
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4.8), squeeze=False)
    for ax, part in zip(axes[0], parts):
        mine = [r for r in rows if r["part"] == part and r.get("final") is not None]
        if part.startswith("sensitivity"):
            knobs = list(dict.fromkeys(r["knob"] for r in mine))
            for k, knob in enumerate(knobs):
                pts = sorted((r for r in mine if r["knob"] == knob), key=lambda r: r["value"])
                xs = [i + 0.06 * (k - len(knobs) / 2) for i in range(len(pts))]
                ax.errorbar(xs, [100 * r["final"] for r in pts], marker="o", capsize=3, label=knob,
                            yerr=[[100 * (r["final"] - r["low"]) for r in pts],
                                  [100 * (r["high"] - r["final"]) for r in pts]])
            ax.set_xticks([0, 1, 2], ["low (x1/2, 1/3)", "default", "high (x2, x3)"])
            ax.legend(fontsize=7)
        else:
            xs = np.arange(len(mine))
            ax.bar(xs, [100 * r["final"] for r in mine], capsize=3,
                   yerr=[[100 * (r["final"] - r["low"]) for r in mine],
                         [100 * (r["high"] - r["final"]) for r in mine]],
                   color=["tab:gray" if r["reference"] else "tab:blue" for r in mine])
            ax.set_xticks(xs, [r["label"] for r in mine], rotation=35, ha="right", fontsize=7)
        ax.set_title(part, fontsize=9)
        ax.set_ylabel("held-out accuracy (%)")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
