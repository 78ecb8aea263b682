"""The toy testbed's tokenizer-training text, from the synthetic task.

Kept apart from `toy_tokenizer` (the chat format and the tokenizer machinery), which the
synthetic task itself imports for `render_chat`: the corpus needs the task, the task needs the
chat format, and neither import runs in a circle.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cliffdistill.data import synthetic, toy_tokenizer
from cliffdistill.data.toy_tokenizer import DEFAULT_VOCAB_SIZE


def toy_corpus(seed: int = 0, n_per_setting: int = 300) -> list[str]:
    """The deterministic tokenizer-training corpus: every template and word of the task, plus
    ``n_per_setting`` generated problems (question and solution, separately) for each variant
    and difficulty."""
    texts = list(synthetic.vocabulary_texts())
    for variant in synthetic.VARIANTS:
        for difficulty in range(1, synthetic.MAX_STEPS + 1):
            sub_seed = seed * 1000 + 10 * difficulty + synthetic.VARIANTS.index(variant)
            for p in synthetic.generate(n_per_setting, sub_seed, difficulty, variant=variant):
                texts.append(p.question)
                texts.append(p.solution)
    return texts


def build_toy_tokenizer(
    seed: int = 0,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    extra_texts: Iterable[str] = (),
) -> Any:
    """The toy testbed's tokenizer: :func:`toy_tokenizer.train_tokenizer` on :func:`toy_corpus` (``seed``)
    plus ``extra_texts`` (e.g. system-prompt wording, so its words get their own tokens).

    Same arguments -> identical vocabulary and merges.
    """
    return toy_tokenizer.train_tokenizer([*toy_corpus(seed), *extra_texts], vocab_size=vocab_size)
