"""Is a testbed able to answer the study's question?  Method-neutral headroom checks.

The study explains its cliff by a *capability gap*.  A testbed can only test that (and tell the
methods apart) when (a) the teacher is much better than the student, (b) a method-neutral
oracle -- the student with the runs' LoRA rank and step budget, trained by supervised NLL on the
*ground-truth* solutions of the training prompts -- can move the student, and (c) one evaluation
is precise enough to see the difference.  These checks never look at a distillation method's
result: the testbed is calibrated by them alone, never by which method wins.

`testbed.json` (written by `cliffdistill.study.toy.prepare`, copied next to the results) records the
measurements and, per setup, ``testable`` with the failed checks; :func:`gate_claims` turns every
verdict on a setup that is not testable into ``not testable``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

TESTBED_JSON = "testbed.json"
NOT_TESTABLE = "not testable"
_Z95 = 1.959963984540054  # two-sided 95% normal quantile


def default_checks() -> ml_collections.ConfigDict:
    """Thresholds of the headroom checks (DESIGN issue #14)."""
    c = ml_collections.ConfigDict()
    c.min_gap = 0.40  # teacher (with its context) minus student accuracy, both setups
    c.min_oracle_gain = 0.15  # accuracy gain of the ground-truth oracle over the student
    c.max_ci_halfwidth = 0.045  # 95% half-width of one evaluation at p = 0.5
    c.max_overlap = 0.0  # fraction of eval solutions found verbatim in the pretraining stream
    return c


def ci_halfwidth(n: int, p: float = 0.5) -> float:
    """95% normal half-width of an accuracy measured on ``n`` questions (worst case p = 0.5):
    the precision of ONE evaluation, before any seed noise."""
    if n < 1:
        raise ValueError(f"ci_halfwidth needs n >= 1 questions, got {n}")
    return _Z95 * math.sqrt(p * (1.0 - p) / n)


def failed_checks(setup: Mapping[str, Any], shared: Mapping[str, Any],
                  checks: ml_collections.ConfigDict) -> list[str]:
    """The checks a setup fails, as sentences (empty: testable).

    setup: {"teacher": {"accuracy"}, "student": {"accuracy"}, "oracle_gain"};
    shared: {"eval_ci_halfwidth", "eval_pretrain_overlap"} (the same eval design for both setups).
    """
    out = []
    gap = setup["teacher"]["accuracy"] - setup["student"]["accuracy"]
    if gap < checks.min_gap:
        out.append(f"teacher - student = {gap:+.1%} < {checks.min_gap:.0%}: no capability gap")
    if setup["oracle_gain"] < checks.min_oracle_gain:
        out.append(f"oracle gain {setup['oracle_gain']:+.1%} < {checks.min_oracle_gain:.0%}: "
                   "the run budget cannot move the student even with ground truth")
    if shared["eval_ci_halfwidth"] > checks.max_ci_halfwidth:
        out.append(f"eval 95% half-width {shared['eval_ci_halfwidth']:.1%} > "
                   f"{checks.max_ci_halfwidth:.1%}: too few eval questions")
    if shared["eval_pretrain_overlap"] > checks.max_overlap:
        out.append(f"{shared['eval_pretrain_overlap']:.1%} of eval solutions occur verbatim in "
                   "pretraining: the eval measures recall")
    return out


SETUPS = ("size", "context", "retrieval")  # "retrieval": the context setup with a passage


def setups(testbed: Mapping[str, Any]) -> list[str]:
    """The setups a testbed.json measured (older ones have no "retrieval")."""
    return [name for name in SETUPS if name in testbed]


def judge(testbed: dict[str, Any], checks: ml_collections.ConfigDict) -> dict[str, Any]:
    """Adds ``testable`` and ``failed_checks`` to each setup of ``testbed`` (in place; returned)."""
    for name in setups(testbed):
        failed = failed_checks(testbed[name], testbed, checks)
        testbed[name]["failed_checks"] = failed
        testbed[name]["testable"] = not failed
    testbed["checks"] = checks.to_dict()
    return testbed


def loud_lines(testbed: Mapping[str, Any]) -> list[str]:
    """What to print after prepare: a banner for every setup that is not testable."""
    lines = []
    for name in setups(testbed):
        s = testbed[name]
        if s["testable"]:
            lines.append(f"testbed: setup {name!r} passes the headroom checks")
            continue
        bar = "!" * 78
        lines += [bar, f"!!! setup {name!r} is NOT TESTABLE: the report gives it no verdicts",
                  *(f"!!!   - {reason}" for reason in s["failed_checks"]), bar]
    return lines


def read(path: str | Path) -> dict[str, Any] | None:
    """testbed.json from a directory (or the file itself); None when absent."""
    path = Path(path)
    path = path / TESTBED_JSON if path.is_dir() else path
    return json.loads(path.read_text()) if path.exists() else None


def gate_claims(verdicts: Sequence[Mapping[str, Any]], testbed: Mapping[str, Any] | None
                ) -> list[dict[str, Any]]:
    """Verdicts with every claim on a not-testable setup replaced by ``not testable``.

    Why: on a setup without headroom every method looks alike, so a "supported" or
    "contradicted" there would be noise presented as a finding. No testbed.json: unchanged.
    """
    out = []
    for v in verdicts:
        v = dict(v)
        setup = (testbed or {}).get(v.get("setup"))
        if setup is not None and not setup.get("testable", True):
            v["evidence"] = ("testbed fails: " + "; ".join(setup.get("failed_checks", []))
                             + (f" (measured: {v['evidence']})" if v.get("evidence") else ""))
            v["verdict"] = NOT_TESTABLE
        out.append(v)
    return out
