"""Prompt views, chat-template rendering and left padding (cliffdistill.data.prompts)."""

from __future__ import annotations

import numpy as np
import pytest

from cliffdistill.data.gsm8k import Example, extract_answer
from cliffdistill.data.prompts import (
    COT8_EXEMPLARS,
    INSTRUCTION,
    bucket_length,
    trimmed_length,
    build_views,
    context_shots,
    fold_system,
    pad_left,
    prompt_width,
    render,
    shot_solution,
    student_messages,
    teacher_messages,
    template_has_system_role,
)

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")

SHOTS = [
    Example("Ann has 2 pens and buys 3. How many pens?",
            "She has 2 + 3 = <<2+3=5>>5 pens.\n#### 5", "5", "train:0"),
    Example("A box holds 1,000 nails; 1 is lost. How many are left?",
            "1000 - 1 = <<1000-1=999>>999\n#### 999", "999", "train:1"),
]


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer trained in memory: any text encodes, nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([INSTRUCTION] + [s.question + s.solution for s in SHOTS], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                  name_or_path="tiny-test-tokenizer")
    tok.chat_template = TEMPLATE
    return tok


# ------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------


def test_student_messages():
    assert student_messages("  What is 1+1? ") == [
        {"role": "user", "content": f"{INSTRUCTION}\n\nWhat is 1+1?"}]
    with_system = student_messages("Q?", system="Be brief.", instruction="")
    assert with_system == [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Q?"}]


def test_teacher_without_shots_is_the_student_view():
    assert teacher_messages("Q?", []) == student_messages("Q?")
    assert teacher_messages("Q?", [], system="S") == student_messages("Q?", system="S")


def test_teacher_view_is_context_turns_then_student_view():
    student = student_messages("How many eggs?", system="S")
    teacher = teacher_messages("How many eggs?", SHOTS, system="S")
    context = teacher[1:-1]
    assert teacher[:1] + teacher[-1:] == student
    assert [m["role"] for m in context] == ["user", "assistant"] * len(SHOTS)
    for shot, (user, assistant) in zip(SHOTS, zip(context[::2], context[1::2])):
        assert user == student_messages(shot.question)[0]
        assert assistant["content"].endswith(f"\n#### {shot.answer}")
        assert "<<" not in assistant["content"]
        assert extract_answer(assistant["content"]) == shot.answer


def test_shot_solution_strips_annotations_and_normalizes_final_line():
    assert shot_solution(SHOTS[0]) == "She has 2 + 3 = 5 pens.\n#### 5"
    raw = Example("Q", "Twelve hundred.\n#### 1,200", "1200", "u")
    assert shot_solution(raw) == "Twelve hundred.\n#### 1200"


def test_cot8_exemplars():
    assert len(COT8_EXEMPLARS) == 8
    assert len({e.uid for e in COT8_EXEMPLARS}) == len({e.question for e in COT8_EXEMPLARS}) == 8
    assert [e.answer for e in COT8_EXEMPLARS] == ["6", "5", "39", "8", "9", "29", "33", "8"]
    for exemplar in COT8_EXEMPLARS:
        assert exemplar.solution.endswith(f"\n#### {exemplar.answer}")
        assert extract_answer(exemplar.solution) == exemplar.answer


def test_context_shots():
    pool = [Example(f"Q{i}?", f"#### {i}", str(i), f"train:{i}") for i in range(20)]
    assert context_shots("none") == []
    assert context_shots("cot8") == list(COT8_EXEMPLARS)
    assert context_shots("cot8", k=3) == list(COT8_EXEMPLARS[:3])
    drawn = context_shots("fewshot", k=5, fewshot_pool=pool, seed=1)
    assert len(set(drawn)) == 5 and set(drawn) <= set(pool)
    assert drawn == context_shots("fewshot", k=5, fewshot_pool=pool, seed=1)
    assert drawn != context_shots("fewshot", k=5, fewshot_pool=pool, seed=2)


@pytest.mark.parametrize("args, message", [
    (dict(context="cot8", k=9), "8 exemplars"),
    (dict(context="fewshot", k=4, fewshot_pool=()), "n_fewshot"),
    (dict(context="fewshot"), "k=None"),
    (dict(context="tenshot"), "none, cot8, fewshot"),
])
def test_context_shots_errors(args, message):
    with pytest.raises(ValueError, match=message):
        context_shots(**args)


# ------------------------------------------------------------------------------------------
# Tokens
# ------------------------------------------------------------------------------------------


def test_render_matches_the_template_text(tokenizer):
    messages = student_messages("How many pens?")
    ids = render(tokenizer, messages)
    text = f"<|user|>{messages[0]['content']}<eos><|assistant|>"
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert isinstance(ids, list) and all(type(t) is int for t in ids)
    assert tokenizer.decode(ids) == text


def test_render_without_chat_template(tokenizer):
    bare = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer,
                               name_or_path="org/base-model-no-template")
    assert bare.chat_template is None
    with pytest.raises(ValueError, match=r"'org/base-model-no-template' has no chat template.*"
                                         r"tokenizer_config\.json.*chat_template"):
        render(bare, student_messages("Q?"))
    assert render(bare, student_messages("Q?"), chat_template=TEMPLATE) == render(
        tokenizer, student_messages("Q?"))


class _StubTokenizer:
    """Returns ids in the shapes other transformers versions use."""

    chat_template = "stub"
    name_or_path = "stub"

    def __init__(self, encoded):
        self.encoded = encoded

    def apply_chat_template(self, messages, add_generation_prompt, tokenize, **kwargs):
        assert add_generation_prompt and tokenize
        return self.encoded


@pytest.mark.parametrize("encoded", [
    [1, 2, 3],
    [[1, 2, 3]],
    np.array([1, 2, 3], dtype=np.int64),
    {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1]},
    {"input_ids": np.array([[1, 2, 3]])},
])
def test_render_return_types(encoded):
    ids = render(_StubTokenizer(encoded), student_messages("Q?"))
    assert ids == [1, 2, 3] and all(type(t) is int for t in ids)


def test_build_views(tokenizer):
    examples = [Example("How many pens?", "#### 1", "1", "test:0"),
                Example("How many nails?", "#### 2", "2", "test:1")]
    student, teacher = build_views(tokenizer, examples, SHOTS)
    assert student == [render(tokenizer, student_messages(e.question)) for e in examples]
    assert teacher == [render(tokenizer, teacher_messages(e.question, SHOTS)) for e in examples]
    for s, t in zip(student, teacher):
        # With a per-turn template, the teacher's tokens are its context turns' tokens followed
        # by exactly the student's tokens.
        assert len(t) > len(s) and t[-len(s):] == s
    assert build_views(tokenizer, examples, []) == (student, student)
    # a retrieved passage is the teacher's system turn; the student's view is unchanged
    s2, t2 = build_views(tokenizer, examples, [], teacher_system="1 zorp = 5.")
    assert s2 == student
    assert t2 == [render(tokenizer, student_messages(e.question, "1 zorp = 5.")) for e in examples]
    assert context_shots("passage") == []


def test_bucket_length():
    sizes = (0, 1, 16, 17, 100, 128, 129)
    assert [bucket_length(n) for n in sizes] == [16, 16, 16, 32, 128, 128, 256]
    assert bucket_length(3, minimum=1) == 4
    assert bucket_length(0, minimum=1) == 1
    with pytest.raises(ValueError, match="n >= 0"):
        bucket_length(-1)


def test_trimmed_length():
    # rounded up to the multiple, never past the cap, at least one multiple; 0 keeps the cap
    assert [trimmed_length(n, 32, 128) for n in (0, 1, 32, 33, 97, 127, 128)] == [
        32, 32, 32, 64, 128, 128, 128]
    assert trimmed_length(199, 16, 256) == 208
    assert trimmed_length(5, 0, 128) == 128
    assert trimmed_length(10, 32, 16) == 16  # the cap wins over the multiple
    with pytest.raises(ValueError, match="n <= cap"):
        trimmed_length(129, 32, 128)
    with pytest.raises(ValueError, match="multiple >= 0"):
        trimmed_length(3, -1, 128)


def test_prompt_width():
    # the power-of-two bucket (at least 16), or the longest prompt rounded up to the multiple
    assert [prompt_width(n, 0) for n in (5, 16, 17, 183)] == [16, 16, 32, 256]
    assert [prompt_width(n, 32) for n in (5, 17, 183, 192)] == [16, 32, 192, 192]


def test_pad_left():
    tokens, mask = pad_left([[5, 6, 7], [8], []], pad_id=0)
    assert tokens.dtype == np.int32 and mask.dtype == np.bool_
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [0, 0, 8], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1], [0, 0, 0]])
    tokens, mask = pad_left([[5, 6, 7], [8]], pad_id=-1, length=bucket_length(3, minimum=4))
    np.testing.assert_array_equal(tokens, [[-1, 5, 6, 7], [-1, -1, -1, 8]])
    assert mask.sum() == 4
    tokens, mask = pad_left([], pad_id=0, length=8)
    assert tokens.shape == mask.shape == (0, 8)


def test_pad_left_prompt_too_long():
    with pytest.raises(ValueError, match=r"row 1 has 5 tokens .* is 4; raise max_prompt_len"):
        pad_left([[1], [1, 2, 3, 4, 5]], pad_id=0, length=4)


# Gemma's way (raises on a system turn) and a template that silently drops one.
NO_SYSTEM_ROLE = ("{% if messages[0]['role'] == 'system' %}"
                  "{{ raise_exception('System role not supported') }}{% endif %}" + TEMPLATE)
DROPS_SYSTEM = ("{% for m in messages if m['role'] != 'system' %}<|{{ m['role'] }}|>"
                "{{ m['content'] }}<eos>{% endfor %}{% if add_generation_prompt %}<|assistant|>"
                "{% endif %}")


def test_template_has_system_role(tokenizer):
    assert template_has_system_role(tokenizer)
    assert not template_has_system_role(tokenizer, NO_SYSTEM_ROLE)
    assert not template_has_system_role(tokenizer, DROPS_SYSTEM)


def test_fold_system_puts_the_context_first_in_the_first_user_turn():
    messages = teacher_messages("Q?", SHOTS[:1], system="1 zorp = 5.")
    folded = fold_system(messages)
    assert [m["role"] for m in folded] == ["user", "assistant", "user"]
    assert folded[0]["content"] == "1 zorp = 5.\n\n" + messages[1]["content"]
    assert folded[1:] == messages[2:]
    assert fold_system(messages[1:]) == messages[1:]  # no system turn: unchanged


@pytest.mark.parametrize("template", [NO_SYSTEM_ROLE, DROPS_SYSTEM])
def test_build_views_folds_the_passage_when_the_template_has_no_system_role(
        tokenizer, template, caplog):
    examples = [Example("How many pens?", "#### 1", "1", "test:0")]
    student, teacher = build_views(tokenizer, examples, [], teacher_system="1 zorp = 5.",
                                   chat_template=template)
    question = student_messages("How many pens?")[0]["content"]
    assert tokenizer.decode(teacher[0]) == (
        f"<|user|>1 zorp = 5.\n\n{question}<eos><|assistant|>")
    assert tokenizer.decode(student[0]) == f"<|user|>{question}<eos><|assistant|>"
    assert "no system role" in caplog.text
    _, with_role = build_views(tokenizer, examples, [], teacher_system="1 zorp = 5.")
    assert tokenizer.decode(with_role[0]).startswith("<|system|>1 zorp = 5.<eos><|user|>")
