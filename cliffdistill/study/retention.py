"""The toy retention benchmark: arithmetic both toy models learned in pretraining, as a
multiple-choice task of the benchmark layer (`choice_jsonl`), scored by log-likelihood.

Every document is one equation of a held-out plain problem's worked solution, cut after its
`=`: the context is the student's prompt (the toy chat format, as the runs render it) plus the
solution up to that point, e.g. `...<|assistant|>Ben now has 13-1=`, and the choices are the
true result and three near misses (±1, ±2, ±10, inside 1..99), in a shuffled order. Both toy
models pretrained on plain problems, so this is a skill the student has before distillation;
whether a run keeps it is the retention the study never measured. The runs score it at step 0
and at their end (`eval.benchmarks`); the report pairs the two on the same documents.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Sequence

from cliffdistill.data import gsm8k, prompts, synthetic
from cliffdistill.data.toy_tokenizer import render_chat
from cliffdistill.run import rundir

TASK = "choice_jsonl"
FILE = "toy_arithmetic.jsonl"
_EQUATION = re.compile(r"\d+[-+*/]\d+=(\d+)")
_OFFSETS = (1, -1, 2, -2, 10, -10)


def distractors(value: int, rng: random.Random, k: int = 3) -> list[int]:
    """`k` distinct wrong results near `value`, each inside the task's 1..MAX_VALUE range."""
    near = [value + d for d in _OFFSETS if 1 <= value + d <= synthetic.MAX_VALUE]
    rng.shuffle(near)
    return near[:k]


def documents(examples: Sequence[gsm8k.Example], n_docs: int, seed: int = 0,
              instruction: str = "") -> list[dict[str, Any]]:
    """`choice_jsonl` rows: the i-th example gives the equation i mod (its equation count)."""
    rng = random.Random(seed)
    rows = []
    for i, ex in enumerate(examples[:n_docs]):
        eqs = list(_EQUATION.finditer(ex.solution))
        if not eqs:
            raise ValueError(f"example {ex.uid}: no equation in its solution {ex.solution!r}")
        eq = eqs[i % len(eqs)]
        value = int(eq.group(1))
        choices = [value] + distractors(value, rng)
        rng.shuffle(choices)
        prompt = render_chat(prompts.student_messages(ex.question, instruction=instruction),
                             add_generation_prompt=True)
        rows.append({"context": prompt + ex.solution[:eq.start(1)],
                     "choices": [str(c) for c in choices], "gold": choices.index(value),
                     "delimiter": ""})
    return rows


def write_benchmark(plain_data: Path, out_dir: Path, n_docs: int, seed: int = 0,
                    instruction: str = "") -> str:
    """Writes OUT_DIR/toy_arithmetic.jsonl from the plain task's held-out questions and returns
    the `eval.benchmarks.tasks` value that scores it."""
    examples = gsm8k.load_jsonl(Path(plain_data) / "test.jsonl")
    path = Path(out_dir) / FILE
    rundir.write_jsonl(path, documents(examples, n_docs, seed, instruction))
    return f"{TASK}={path}"
