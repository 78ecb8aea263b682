"""A synthetic GSM8K-style task small enough for a toy transformer trained on CPU in minutes.

Problems are templated word problems over a small vocabulary (6 names, 6 items, a dozen verb
templates) with 1-4 arithmetic steps on small integers. Solutions are terse chained equations
ending in a GSM8K-style final line, e.g.::

    Ann has 12 pens. She buys 5 more. Then she gives 7 to Ben. How many pens does Ann have now?

    12+5=17
    17-7=10
    #### 10

Every answer is correct *by construction*: the numbers rendered in the question are the ones
the solution computes with. All intermediate values stay in ``1..MAX_VALUE`` (99) and division
is exact. ``difficulty`` is the number of equation lines (``Problem.steps``).

Two variants:

``"plain"``
    Everything needed is in the question.
``"context"``
    A rule only learnable from context: the question counts in a made-up unit
    (``"Ann has 3 zorps of pens."``) whose value ``rule_value`` (in :data:`CONTEXT_RULE_RANGE`)
    is never stated; the solution's first line converts (``3*7=21``). The question text does
    not depend on the rule value at all (numbers are drawn so that every value in the range
    keeps all intermediates in bounds), so only solved examples reveal it. Pretraining uses
    *episodes* (:func:`make_episodes`): ``k`` solved examples and a query sharing one random
    value, so a model learns to read the value off its context. A context-distillation run fixes
    the value (e.g. 7): the teacher sees ``k`` solved examples before the question, the student
    only the question.

Text is written in the toy chat format of :mod:`cliffdistill.data.toy_tokenizer`
(:func:`format_example`, :func:`prompt_text`), the same format used at inference, so a model
pretrained on it answers right after the assistant marker. Deterministic under ``seed``: only
``random.Random`` instances are used, never global state. Pure Python; no heavy imports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path

from cliffdistill.data.toy_tokenizer import render_chat

VARIANTS: tuple[str, ...] = ("plain", "context")
MAX_STEPS = 4
MAX_VALUE = 99
#: Inclusive range of the context variant's hidden unit value.
CONTEXT_RULE_RANGE: tuple[int, int] = (2, 9)
#: The made-up unit word of the context variant (plural: ``zorps``).
CONTEXT_UNIT = "zorp"

NAMES: tuple[tuple[str, str], ...] = (
    ("Ann", "she"),
    ("Ben", "he"),
    ("Cal", "he"),
    ("Dee", "she"),
    ("Eve", "she"),
    ("Max", "he"),
)
ITEMS: tuple[str, ...] = ("apples", "pens", "cards", "eggs", "books", "shells")

_PLAIN_START = (2, 30)  # first count, plain variant
_UNIT_COUNT = (2, 6)  # number of units, context variant (6 * 9 = 54 <= MAX_VALUE)
_MAX_OPERAND = 20  # largest added / subtracted amount
_FACTORS = (2, 3, 4, 5)  # multipliers and divisors
_MAX_TABLE = 12  # "*" and "/" stay within the times table: a*k and (a*k)/k with a <= 12

# One template list per operation; {P} is the subject pronoun (capitalised or after "Then"),
# {O} another name, {b} the amount, {k} the factor. Each sentence is one equation line.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": ("{P} buys {b} more.", "{P} finds {b} more.", "{P} gets {b} more from {O}."),
    "-": ("{P} gives {b} to {O}.", "{P} loses {b}.", "{P} sells {b}."),
    "*": ("{P} ends up with {k} times as many.",),
    "/": ("{P} splits them into {k} equal piles and keeps one.",),
}
_HALF_TEMPLATE = "{P} gives away half of them."  # the "/" template for k == 2 only

Difficulty = int | Iterable[int] | Mapping[int, float]

#: Solution styles: ``"terse"`` (``12+5=17`` per line) and ``"worked"`` (each line restates the
#: running count, ``Ann now has 12+5=17 pens.``: about 14 tokens a line, so 2-4-step answers are
#: 30-60 tokens long and errors have room to compound over a generation).
STYLES: tuple[str, ...] = ("terse", "worked")
#: Composition splits: ``"all"``, ``"seen"`` (pretraining text) and ``"held_out"`` (evaluation).
SPLITS: tuple[str, ...] = ("all", "seen", "held_out")
#: One composition in HELD_OUT_MOD is held out (by a stable hash of :attr:`Problem.composition`).
HELD_OUT_MOD = 4


def _held_out_key(composition: str, mod: int) -> bool:
    """Stable across runs and processes: a SHA-256 of the composition, never the salted hash()."""
    return int.from_bytes(hashlib.sha256(composition.encode()).digest()[:8], "big") % mod == 0


def is_held_out(problem: "Problem", mod: int = HELD_OUT_MOD) -> bool:
    """Whether ``problem``'s composition belongs to the held-out split."""
    return _held_out_key(problem.composition, mod)


def is_seen(problem: "Problem", mod: int = HELD_OUT_MOD) -> bool:
    """Whether ``problem`` may be pretraining text: neither its composition nor that of any of
    its line-aligned tails is held out. (A tail -- the solution from its i-th operation on -- is
    itself the whole solution of a shorter plain problem: without this, a held-out solution
    could appear verbatim at the end of a longer pretraining solution.)"""
    return not any(_held_out_key(k, mod) for k in (problem.composition, *problem.tails))


def _in_split(problem: "Problem", split: str, mod: int) -> bool:
    if split == "all":
        return True
    return is_held_out(problem, mod) if split == "held_out" else is_seen(problem, mod)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One solved problem.

    ``solution`` is the worked steps, one ``a<op>b=c`` equation per line, then ``#### N``;
    ``answer`` is ``N``; ``steps`` is the number of equation lines. ``rule`` is ``None`` for the
    plain variant and e.g. ``"zorp=7"`` for the context variant (``rule_value`` is then ``7``).
    """

    question: str
    solution: str
    answer: int
    steps: int
    rule: str | None = None
    rule_value: int | None = None
    ops: str = ""
    start: int = 0
    tails: tuple[str, ...] = ()  # compositions of the plain problems its solution ends like

    @property
    def composition(self) -> str:
        """The problem's *composition*: variant, operation sequence and first number (the unit
        count in the context variant). Names, items, templates and operands vary within one
        composition; the held-out split (:func:`is_held_out`) is drawn over compositions, so a
        held-out problem's worked solution never occurs in text built from the other split."""
        return f"{'context' if self.rule else 'plain'}|{self.ops}|{self.start}"


@dataclasses.dataclass(frozen=True)
class Episode:
    """A context-variant pretraining episode: ``shots`` (solved examples) and a ``query`` that
    all share one hidden ``rule_value``."""

    shots: tuple[Problem, ...]
    query: Problem
    rule_value: int


# ----------------------------------------------------------------------------- generation


def _difficulty_sampler(difficulty: Difficulty) -> Callable[[random.Random], int]:
    """int -> that many steps; Mapping {steps: weight} -> weighted; other iterable (range, list)
    -> uniform over its values."""

    def check(d) -> int:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 1 <= d <= MAX_STEPS:
            raise ValueError(
                f"difficulty: step counts must be ints in 1..{MAX_STEPS}, got {d!r} "
                f"(pass an int, a range/list of ints, or a {{steps: weight}} dict)"
            )
        return int(d)

    if isinstance(difficulty, numbers.Integral) and not isinstance(difficulty, bool):
        d = check(difficulty)
        return lambda rng: d
    if isinstance(difficulty, Mapping):
        keys = [check(k) for k in difficulty]
        weights = [float(difficulty[k]) for k in difficulty]
        if not keys or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"difficulty: a {{steps: weight}} dict needs non-negative weights with a positive "
                f"sum, got {dict(difficulty)!r}"
            )
        return lambda rng: rng.choices(keys, weights=weights)[0]
    if isinstance(difficulty, Iterable) and not isinstance(difficulty, (str, bytes)):
        values = [check(d) for d in difficulty]
        if not values:
            raise ValueError("difficulty: an empty range/list of step counts; give at least one")
        return lambda rng: rng.choice(values)
    raise ValueError(
        f"difficulty: expected an int, a range/list of ints or a {{steps: weight}} dict, "
        f"got {difficulty!r}"
    )


def _check_rule_value(rule_value: int) -> int:
    lo, hi = CONTEXT_RULE_RANGE
    if isinstance(rule_value, bool) or not isinstance(rule_value, numbers.Integral) or not (
        lo <= rule_value <= hi
    ):
        raise ValueError(
            f"rule_value must be an int in {lo}..{hi} (CONTEXT_RULE_RANGE), got {rule_value!r}"
        )
    return int(rule_value)


def _line(style: str, equation: str, name: str, items: str, verb: str = "now has") -> str:
    """One solution line: the bare equation (terse) or ``Ann now has 12+5=17 pens.`` (worked)."""
    return equation if style == "terse" else f"{name} {verb} {equation} {items}."


def _make_problem(rng: random.Random, steps: int, variant: str, rule_value: int | None,
                  style: str = "terse") -> Problem:
    """Draw one problem. For the context variant, all draws from ``rng`` are independent of
    ``rule_value``: the value is tracked symbolically as ``alpha * v + beta`` and every choice
    keeps it in bounds for *every* ``v`` in :data:`CONTEXT_RULE_RANGE`; ``rule_value`` is used
    only to render the solution."""
    name, pronoun = rng.choice(NAMES)
    others = [n for n, _ in NAMES if n != name]
    items = rng.choice(ITEMS)
    context = variant == "context"
    vmin, vmax = CONTEXT_RULE_RANGE if context else (0, 0)

    lines: list[str] = []
    ops = ""
    starts: list[int] = []  # the running count before each operation
    if context:
        alpha, beta = rng.randint(*_UNIT_COUNT), 0
        start = alpha
        sentences = [f"{name} has {alpha} {CONTEXT_UNIT}s of {items}."]
        value = alpha * rule_value
        lines.append(_line(style, f"{alpha}*{rule_value}={value}", name, items, verb="has"))
        n_ops = steps - 1
    else:
        alpha, beta = 0, rng.randint(*_PLAIN_START)
        start = beta
        sentences = [f"{name} has {beta} {items}."]
        value = beta
        n_ops = steps

    for i in range(n_ops):
        lo, hi = alpha * vmin + beta, alpha * vmax + beta
        options: dict[str, list[int]] = {}
        if hi < MAX_VALUE:
            options["+"] = list(range(1, min(_MAX_OPERAND, MAX_VALUE - hi) + 1))
        if lo >= 2:
            options["-"] = list(range(1, min(_MAX_OPERAND, lo - 1) + 1))
        muls = [k for k in _FACTORS if hi <= _MAX_TABLE and hi * k <= MAX_VALUE]
        if muls:
            options["*"] = muls
        divs = [
            k
            for k in _FACTORS
            if alpha % k == 0 and beta % k == 0 and lo >= k and hi <= _MAX_TABLE * k
        ]
        if divs:
            options["/"] = divs
        op = rng.choice(sorted(options))
        b = rng.choice(options[op])
        if op == "/" and b == 2:
            template = rng.choice((*_TEMPLATES["/"], _HALF_TEMPLATE))
        else:
            template = rng.choice(_TEMPLATES[op])
        subject = pronoun.capitalize() if i == 0 else f"Then {pronoun}"
        sentences.append(template.format(P=subject, O=rng.choice(others), b=b, k=b))

        if op == "+":
            beta, new = beta + b, value + b
        elif op == "-":
            beta, new = beta - b, value - b
        elif op == "*":
            alpha, beta, new = alpha * b, beta * b, value * b
        else:
            alpha, beta, new = alpha // b, beta // b, value // b
        lines.append(_line(style, f"{value}{op}{b}={new}", name, items))
        ops += op
        starts.append(value)
        value = new

    now = " now" if n_ops else ""
    sentences.append(f"How many {items} does {name} have{now}?")
    lines.append(f"#### {value}")
    return Problem(
        question=" ".join(sentences),
        solution="\n".join(lines),
        answer=value,
        steps=steps,
        rule=f"{CONTEXT_UNIT}={rule_value}" if context else None,
        rule_value=rule_value if context else None,
        ops=ops,
        start=start,
        tails=tuple(f"plain|{ops[i:]}|{v}" for i, v in enumerate(starts)),
    )


def generate(
    n: int,
    seed: int,
    difficulty: Difficulty = 1,
    variant: str = "plain",
    rule_value: int | None = None,
    exclude: Collection[str] = (),
    style: str = "terse",
    split: str = "all",
    held_out_mod: int = HELD_OUT_MOD,
) -> list[Problem]:
    """``n`` problems, deterministic in all arguments (and prefix-stable in ``n``).

    difficulty: number of equation lines: an int in 1..4, a range/list of ints (uniform), or a
        ``{steps: weight}`` dict (a mixture).
    variant: ``"plain"`` or ``"context"``.
    rule_value: context variant only: the hidden unit value for every problem; ``None`` draws
        one per problem from :data:`CONTEXT_RULE_RANGE` (from a separate stream, so the
        questions are the same whatever the values).
    exclude: questions to skip (e.g. the evaluation set's, to keep training data disjoint).
    style: solution style, one of :data:`STYLES`.
    split: ``"all"``, or only problems whose composition is ``"seen"`` / ``"held_out"``
        (:func:`is_held_out` with ``held_out_mod``): pretraining draws ``"seen"``, evaluation
        ``"held_out"``, so no evaluation solution occurs in the pretraining text.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if rule_value is not None:
        if variant != "context":
            raise ValueError(f"rule_value={rule_value!r} is only meaningful with variant='context'")
        rule_value = _check_rule_value(rule_value)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_style_split(style, split)
    sample_steps = _difficulty_sampler(difficulty)
    rng = random.Random(seed)
    rule_rng = random.Random(f"{seed}:rule")
    excluded = set(exclude)
    out: list[Problem] = []
    misses = 0
    while len(out) < n:
        steps = sample_steps(rng)
        v = None
        if variant == "context":
            v = rule_value if rule_value is not None else rule_rng.randint(*CONTEXT_RULE_RANGE)
        p = _make_problem(rng, steps, variant, v, style)
        if p.question in excluded or not _in_split(p, split, held_out_mod):
            misses += 1
            if misses > 100 * (n + 10):
                raise ValueError(
                    f"exclude: could not find {n} problems outside the {len(excluded)} excluded "
                    f"questions in split {split!r} (difficulty={difficulty!r}, "
                    f"variant={variant!r}); exclude fewer"
                )
            continue
        out.append(p)
    return out


def make_episodes(
    n: int,
    seed: int,
    k: int = 3,
    difficulty: Difficulty = 1,
    rule_value: int | None = None,
    style: str = "terse",
    split: str = "all",
    held_out_mod: int = HELD_OUT_MOD,
    shot_variant: str = "context",
) -> list[Episode]:
    """``n`` context-variant episodes of ``k`` solved shots plus a query, sharing one hidden
    value per episode (random from :data:`CONTEXT_RULE_RANGE` unless ``rule_value`` is given).
    The query's question differs from its shots'. Every shot and query is in ``split``.

    ``shot_variant="plain"`` gives *format-only* episodes: the shots are plain problems that show
    the answer format but not the unit value, so the query's value stays unknown."""
    if k < 0:
        raise ValueError(f"k (shots per episode) must be >= 0, got {k}")
    if shot_variant not in VARIANTS:
        raise ValueError(f"shot_variant must be one of {VARIANTS}, got {shot_variant!r}")
    _check_style_split(style, split)
    if rule_value is not None:
        rule_value = _check_rule_value(rule_value)
    sample_steps = _difficulty_sampler(difficulty)
    rng = random.Random(f"{seed}:episodes")
    def draw(variant: str, v: int, avoid: set[str]) -> Problem:
        while True:
            p = _make_problem(rng, sample_steps(rng), variant, v if variant == "context" else None,
                              style)
            if p.question not in avoid and _in_split(p, split, held_out_mod):
                return p

    out = []
    for _ in range(n):
        v = rule_value if rule_value is not None else rng.randint(*CONTEXT_RULE_RANGE)
        shots = tuple(draw(shot_variant, v, set()) for _ in range(k))
        query = draw("context", v, {s.question for s in shots})
        out.append(Episode(shots=shots, query=query, rule_value=v))
    return out


def _check_style_split(style: str, split: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# ----------------------------------------------------------------------------- formatting


def chat_messages(
    problem: Problem,
    shots: Sequence[Problem] = (),
    system: str | None = None,
    with_answer: bool = True,
) -> list[dict[str, str]]:
    """Chat messages: optional system turn, one user/assistant pair per solved shot, the
    problem's question and (``with_answer``) its solution."""
    msgs: list[dict[str, str]] = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    for s in shots:
        msgs.append({"role": "user", "content": s.question})
        msgs.append({"role": "assistant", "content": s.solution})
    msgs.append({"role": "user", "content": problem.question})
    if with_answer:
        msgs.append({"role": "assistant", "content": problem.solution})
    return msgs


def prompt_text(
    problem: Problem, shots: Sequence[Problem] = (), system: str | None = None
) -> str:
    """The inference prompt, ending with the assistant marker (a prefix of
    :func:`format_example` with the same arguments)."""
    messages = chat_messages(problem, shots, system, with_answer=False)
    return render_chat(messages, add_generation_prompt=True)


def format_example(
    problem: Problem, shots: Sequence[Problem] = (), system: str | None = None
) -> str:
    """A problem and its solution as pretraining text, in the inference chat format::

        <|user|>QUESTION<|end|><|assistant|>SOLUTION<|end|>

    (preceded by the shots' turns, if any). Train on the tokens after ``prompt_text``.
    """
    return render_chat(chat_messages(problem, shots, system, with_answer=True))


def episode_text(episode: Episode, system: str | None = None) -> str:
    """An episode as one pretraining text: the shots as solved turns, then the solved query."""
    return format_example(episode.query, episode.shots, system)


def episode_prompt_text(episode: Episode, system: str | None = None) -> str:
    """An episode's prompt (shots and query question, ending with the assistant marker)."""
    return prompt_text(episode.query, episode.shots, system)


def passage_text(rule_value: int) -> str:
    """A retrieved "document" that states the context variant's hidden unit value (and nothing a
    query needs besides): the retrieval-style context, instead of solved examples."""
    v = _check_rule_value(rule_value)
    return (f"Reference: {CONTEXT_UNIT}s are crates used in the shops. "
            f"1 {CONTEXT_UNIT} = {v}. Prices are not listed.")


def to_gsm8k_records(problems: Iterable[Problem]) -> list[dict[str, str]]:
    """GSM8K jsonl records: ``{"question": ..., "answer": worked solution ending "#### N"}``."""
    return [{"question": p.question, "answer": p.solution} for p in problems]


def write_jsonl(problems: Iterable[Problem], path: str | os.PathLike) -> Path:
    """Write :func:`to_gsm8k_records` to ``path`` (one JSON object per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in to_gsm8k_records(problems))
    return path


def vocabulary_texts() -> list[str]:
    """Texts that use every name, item, template and operator at least once (in the positions
    they take in generated text), for tokenizer training."""
    texts = []
    for name, pronoun in NAMES:
        other = next(n for n, _ in NAMES if n != name)
        for items in ITEMS:
            for start in (f"{name} has 12 {items}.", f"{name} has 3 {CONTEXT_UNIT}s of {items}."):
                for templates in (*_TEMPLATES.values(), (_HALF_TEMPLATE,)):
                    for t in templates:
                        first = t.format(P=pronoun.capitalize(), O=other, b=4, k=2)
                        then = t.format(P=f"Then {pronoun}", O=other, b=4, k=2)
                        texts.append(
                            f"{start} {first} {then} How many {items} does {name} have now?"
                        )
                texts.append(f"{start} How many {items} does {name} have?")
    texts.append("12+34=46\n46-5=41\n41*2=82\n82/2=41\n#### 41")
    texts.append("Ann has 3*7=21 pens.\nAnn now has 21-5=16 pens.\n#### 16")
    texts.append("3*7=21\n#### 21")
    return texts
