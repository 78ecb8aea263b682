"""Prompt views: chat messages for the student (question) and the teacher (context ⊕ question).

In context distillation the teacher is the same model as the student, shown worked examples
first. The teacher's view is therefore built from the student's: the context turns followed by
exactly the student's messages, so the only difference the student is trained to absorb is the
context. Views become token ids with the model's own chat template and are left-padded into
power-of-two buckets (docs/ARCHITECTURE.md, "Padding").
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cliffdistill.data.gsm8k import Example

INSTRUCTION = (
    "Solve the following math problem. Reason step by step, then give the final answer as a "
    "number on its own last line, in the form '#### <number>'."
)
CONTEXTS = ("none", "cot8", "fewshot", "passage")

Message = dict[str, str]


def _exemplar(i: int, question: str, steps: str, answer: int) -> Example:
    return Example(question=question, solution=f"{steps}\n#### {answer}", answer=str(answer),
                   uid=f"cot8:{i}")


# The eight chain-of-thought exemplars of Wei et al. (2022), "Chain-of-Thought Prompting Elicits
# Reasoning in Large Language Models", with the solutions worded for this project.
COT8_EXEMPLARS: tuple[Example, ...] = (
    _exemplar(0, "There are 15 trees in the grove. Grove workers will plant trees in the grove "
                 "today. After they are done, there will be 21 trees. How many trees did the "
                 "grove workers plant today?",
              "The grove starts with 15 trees and ends with 21.\n"
              "The workers planted the difference: 21 - 15 = 6 trees.", 6),
    _exemplar(1, "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars "
                 "are in the parking lot?",
              "3 cars are already there and 2 more arrive.\n"
              "That makes 3 + 2 = 5 cars.", 5),
    _exemplar(2, "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces "
                 "do they have left in total?",
              "Together they had 32 + 42 = 74 chocolates.\n"
              "After eating 35, they have 74 - 35 = 39 left.", 39),
    _exemplar(3, "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 "
                 "lollipops. How many lollipops did Jason give to Denny?",
              "Jason went from 20 lollipops to 12.\n"
              "He gave away 20 - 12 = 8 lollipops.", 8),
    _exemplar(4, "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. "
                 "How many toys does he have now?",
              "His mom and dad gave him 2 toys each, so 2 + 2 = 4 new toys.\n"
              "He now has 5 + 4 = 9 toys.", 9),
    _exemplar(5, "There were nine computers in the server room. Five more computers were "
                 "installed each day, from monday to thursday. How many computers are now in the "
                 "server room?",
              "Monday to Thursday is 4 days, with 5 computers installed each day: 4 * 5 = 20.\n"
              "The room now has 9 + 20 = 29 computers.", 29),
    _exemplar(6, "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he "
                 "lost 2 more. How many golf balls did he have at the end of wednesday?",
              "After Tuesday he had 58 - 23 = 35 golf balls.\n"
              "After Wednesday he had 35 - 2 = 33 golf balls.", 33),
    _exemplar(7, "Olivia has $23. She bought five bagels for $3 each. How much money does she "
                 "have left?",
              "Five bagels at $3 each cost 5 * 3 = $15.\n"
              "She has 23 - 15 = $8 left.", 8),
)


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


def _system_turn(system: str | None) -> list[Message]:
    return [] if system is None else [{"role": "system", "content": system}]


def user_turn(question: str, instruction: str = INSTRUCTION) -> Message:
    """The user message for one problem; shots and the real question share this format."""
    content = f"{instruction}\n\n{question.strip()}" if instruction else question.strip()
    return {"role": "user", "content": content}


def shot_solution(example: Example) -> str:
    """A worked solution as the assistant's turn: GSM8K calculator annotations (``<<48/2=24>>``)
    removed, since no model is asked to write them, and a final ``#### N`` line."""
    text = re.sub(r"<<[^<>]*>>", "", example.solution)
    head, marker, _ = text.rpartition("####")
    body = (head if marker else text).rstrip()
    return f"{body}\n#### {example.answer}" if body else f"#### {example.answer}"


def student_messages(question: str, system: str | None = None,
                     instruction: str = INSTRUCTION) -> list[Message]:
    """The student's view: optional system turn, then the question."""
    return _system_turn(system) + [user_turn(question, instruction)]


def teacher_messages(question: str, shots: Sequence[Example], system: str | None = None,
                     instruction: str = INSTRUCTION) -> list[Message]:
    """The teacher's view: the student's view with each shot inserted before the question as a
    previous user/assistant exchange. No shots -> exactly the student's view. (A retrieved
    passage, context "passage", is the teacher's system turn: `build_views(teacher_system=)`.)"""
    context: list[Message] = []
    for shot in shots:
        context += [user_turn(shot.question, instruction),
                    {"role": "assistant", "content": shot_solution(shot)}]
    return _system_turn(system) + context + [user_turn(question, instruction)]


def context_shots(context: str, k: int | None = None, fewshot_pool: Sequence[Example] = (),
                  seed: int = 0) -> list[Example]:
    """The teacher's context: ``"none"``; ``"cot8"`` (the first k of the 8 Wei et al. exemplars,
    all 8 by default); or ``"fewshot"`` (k examples drawn from the few-shot split). The draw is
    one fixed context per seed, shared by every question, as a long fixed prompt would be."""
    if context in ("none", "passage"):  # a passage is text, not solved examples
        return []
    if context == "cot8":
        k = len(COT8_EXEMPLARS) if k is None else k
        if not 0 <= k <= len(COT8_EXEMPLARS):
            raise ValueError(f"context='cot8' has {len(COT8_EXEMPLARS)} exemplars; got k={k}")
        return list(COT8_EXEMPLARS[:k])
    if context == "fewshot":
        if k is None or not 0 <= k <= len(fewshot_pool):
            raise ValueError(f"context='fewshot' needs 0 <= k <= {len(fewshot_pool)} (the size of "
                             f"the few-shot split; raise n_fewshot to draw more); got k={k}")
        return random.Random(f"cliffdistill:{seed}:context").sample(list(fewshot_pool), k)
    raise ValueError(f"unknown context {context!r}; choose one of {', '.join(CONTEXTS)}")


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------


def _as_id_list(encoded: Any) -> list[int]:
    """``apply_chat_template`` returns a BatchEncoding in transformers 5, a list in 4.x."""
    if isinstance(encoded, Mapping):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        if len(encoded) != 1:
            raise ValueError(f"expected one rendered conversation, got {len(encoded)}")
        encoded = encoded[0]
    return [int(token) for token in encoded]


def render(tokenizer: Any, messages: Sequence[Message], chat_template: str | None = None,
           **template_kwargs: Any) -> list[int]:
    """Token ids of ``messages`` under the model's chat template, ending with the generation
    prompt so the completion starts right after. ``template_kwargs`` reach the template
    (e.g. ``enable_thinking=False`` for Qwen3)."""
    if chat_template is None and getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no chat template; set 'chat_template' in its "
            f"tokenizer_config.json (or add chat_template.jinja next to it), or pass a Jinja "
            f"template through the run config's chat_template field")
    if chat_template is not None:
        template_kwargs["chat_template"] = chat_template
    encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                            tokenize=True, **template_kwargs)
    return _as_id_list(encoded)


_SENTINEL = "cliffdistill-system-probe"


def template_has_system_role(tokenizer: Any, chat_template: str | None = None,
                             **template_kwargs: Any) -> bool:
    """Whether the chat template renders a system turn. Gemma's raises on one ("System role not
    supported") and some templates drop it silently; both answer False (the probe's text must
    appear in the rendered prompt)."""
    if chat_template is not None:
        template_kwargs["chat_template"] = chat_template
    probe = [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "?"}]
    try:
        text = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False,
                                             **template_kwargs)
    except Exception:  # noqa: BLE001 - jinja's raise_exception is a TemplateError of any kind
        return False
    return _SENTINEL in text


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """A leading system turn moved into the first user turn (its text, a blank line, then the
    user's): where a template has no system role, the context still comes first, as Gemma 3's
    own template does with a system message."""
    if not messages or messages[0]["role"] != "system":
        return list(messages)
    system, rest = messages[0]["content"], list(messages[1:])
    first_user = next(i for i, m in enumerate(rest) if m["role"] == "user")
    rest[first_user] = {"role": "user", "content": f"{system}\n\n{rest[first_user]['content']}"}
    return rest


def build_views(tokenizer: Any, examples: Sequence[Example], shots: Sequence[Example],
                system: str | None = None, instruction: str = INSTRUCTION,
                chat_template: str | None = None, teacher_system: str | None = None,
                **template_kwargs: Any) -> tuple[list[list[int]], list[list[int]]]:
    """(student ids, teacher ids) per example: the two prompt views of the same questions.
    `teacher_system` (a retrieved passage) replaces `system` in the teacher's view only. A
    template without a system role gets the system text folded into the first user turn
    (`fold_system`), in both views alike, and a warning says so."""
    t_system = system if teacher_system is None else teacher_system
    fold = (system is not None or t_system is not None) and not template_has_system_role(
        tokenizer, chat_template, **template_kwargs)
    if fold:
        logging.warning("the chat template has no system role: the system prompt / passage is "
                        "put at the start of the first user turn instead (prompts.fold_system)")
    view = fold_system if fold else list

    student = [render(tokenizer, view(student_messages(e.question, system, instruction)),
                      chat_template, **template_kwargs) for e in examples]
    teacher = [render(tokenizer, view(teacher_messages(e.question, shots, t_system, instruction)),
                      chat_template, **template_kwargs) for e in examples]
    return student, teacher


def bucket_length(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum): few distinct shapes, so few recompilations."""
    if n < 0 or minimum < 1:
        raise ValueError(
            f"bucket_length needs n >= 0 and minimum >= 1; got n={n}, minimum={minimum}")
    return 1 << (max(n, minimum) - 1).bit_length()


def trimmed_length(n: int, multiple: int, cap: int) -> int:
    """Columns for rows of at most `n` real tokens: `n` rounded up to a multiple of `multiple`,
    never more than `cap` (the static bucket); `multiple` = 0 keeps `cap`.

    Padding columns cost compute in every forward pass (attention is quadratic in them) but
    change no real token's value, so cutting them changes results only by float rounding. Each
    distinct length compiles its own program once: the multiple bounds how many there are."""
    if multiple < 0 or n < 0 or n > cap:
        raise ValueError(f"trimmed_length needs 0 <= n <= cap and multiple >= 0; got n={n}, "
                         f"cap={cap}, multiple={multiple}")
    if multiple == 0:
        return cap
    return min(cap, max(multiple, -(-n // multiple) * multiple))


def prompt_width(longest: int, multiple: int) -> int:
    """Columns of a prompt view whose longest prompt has `longest` tokens: its power-of-two
    bucket, or (multiple > 0, config `rollout.trim_multiple`) `longest` rounded up to `multiple`."""
    return trimmed_length(longest, multiple, bucket_length(longest))


def pad_left(rows: Sequence[Sequence[int]], pad_id: int,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads to ``[B, P]`` int32 tokens and a bool mask, so every completion starts at
    column P. ``length`` defaults to the longest row."""
    width = max((len(row) for row in rows), default=0) if length is None else length
    if width < 0:
        raise ValueError(f"pad_left: length={width} must be >= 0")
    tokens = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"prompt row {i} has {len(row)} tokens but the prompt bucket "
                             f"(KV-cache prompt length) is {width}; raise max_prompt_len in the "
                             f"config, or shorten the system prompt / context")
        tokens[i, width - len(row):] = np.asarray(row, dtype=np.int32)
        mask[i, width - len(row):] = True
    return tokens, mask


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """Prompts of a step: consecutive slices of per-epoch permutations (pure function of step)."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset:offset + batch_size - len(out)].tolist())
    return np.asarray(out, np.int64)
