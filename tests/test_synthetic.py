"""The synthetic GSM8K-style task and the toy tokenizer (the embedded default's data)."""

from __future__ import annotations

import collections
import re
import statistics

import pytest

from cliffdistill.data import gsm8k, synthetic, toy_corpus, toy_tokenizer
from cliffdistill.data.synthetic import CONTEXT_RULE_RANGE, Problem

SETTINGS = [(v, d) for v in synthetic.VARIANTS for d in range(1, synthetic.MAX_STEPS + 1)]
_EQUATION = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)$")


# --------------------------------------------------------------------- an independent solver


def solve_question(question: str, rule_value: int | None) -> int:
    """Reads a question's English (not its solution) and computes the answer; every sentence
    must be one the task is documented to use, or this fails."""
    sentences = re.findall(r"[^.?]+[.?]", question)
    assert "".join(sentences).replace(". ", ".").replace("? ", "?") == question.replace(". ", ".")
    first = sentences[0].strip()
    if m := re.fullmatch(r"(\w+) has (\d+) zorps of (\w+)\.", first):
        assert rule_value is not None, "a zorp question needs the rule value"
        name, x, items = m.group(1), int(m.group(2)) * rule_value, m.group(3)
    else:
        m = re.fullmatch(r"(\w+) has (\d+) (\w+)\.", first)
        assert m, first
        name, x, items = m.group(1), int(m.group(2)), m.group(3)
    assert "zorp" not in " ".join(sentences[1:])
    for s in sentences[1:-1]:
        s = re.sub(r"^(Then (she|he)|She|He) ", "", s.strip())
        if m := re.fullmatch(r"(?:buys|finds) (\d+) more\.|gets (\d+) more from \w+\.", s):
            x += int(m.group(1) or m.group(2))
        elif m := re.fullmatch(r"(?:gives (\d+) to \w+|loses (\d+)|sells (\d+))\.", s):
            x -= int(next(g for g in m.groups() if g))
        elif m := re.fullmatch(r"ends up with (\d+) times as many\.", s):
            x *= int(m.group(1))
        elif m := re.fullmatch(r"splits them into (\d+) equal piles and keeps one\.", s):
            k = int(m.group(1))
            assert x % k == 0, f"inexact division {x}/{k} in {question!r}"
            x //= k
        elif s == "gives away half of them.":
            assert x % 2 == 0, question
            x //= 2
        else:
            raise AssertionError(f"unknown sentence {s!r} in {question!r}")
        assert 1 <= x <= synthetic.MAX_VALUE, question
    m = re.fullmatch(r"How many (\w+) does (\w+) have( now)?\?", sentences[-1].strip())
    assert m and m.group(1) == items and m.group(2) == name, sentences[-1]
    assert bool(m.group(3)) == (len(sentences) > 2)
    return x


def check_solution(p: Problem) -> None:
    """Every line is a true equation, each starts from the previous result, values stay small,
    and the final ``#### N`` is the last result and the answer."""
    *lines, final = p.solution.split("\n")
    assert final == f"#### {p.answer}"
    assert len(lines) == p.steps
    prev = None
    for line in lines:
        m = _EQUATION.fullmatch(line)
        assert m, f"not an 'a<op>b=c' line: {line!r}"
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if prev is not None:
            assert a == prev, f"{line!r} does not continue from {prev}"
        if op == "/":
            assert a % b == 0, line
        expected = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else None}[op]
        assert c == expected, f"wrong arithmetic {line!r}"
        assert 1 <= c <= synthetic.MAX_VALUE and a <= synthetic.MAX_VALUE
        prev = c
    assert prev == p.answer


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("variant,difficulty", SETTINGS)
def test_answers_correct_by_construction(variant, difficulty):
    problems = synthetic.generate(400, seed=difficulty, difficulty=difficulty, variant=variant)
    ops = collections.Counter()
    for p in problems:
        check_solution(p)
        assert p.steps == difficulty
        assert solve_question(p.question, p.rule_value) == p.answer, p
        assert gsm8k.extract_answer(p.solution) == str(p.answer)
        assert gsm8k.is_correct(gsm8k.extract_answer(p.solution), str(p.answer))
        ops.update(_EQUATION.fullmatch(line).group(2)
                   for line in p.solution.split("\n")[int(variant == "context"):-1])
    # every operation shows up (after a context problem's conversion, values exceed the
    # times-table bound for "*" until a division brings them down)
    if difficulty >= (2 if variant == "plain" else 3):
        assert set(ops) == set("+-*/"), ops


def test_deterministic_and_seed_dependent():
    a = synthetic.generate(50, seed=3, difficulty=range(1, 5))
    assert a == synthetic.generate(50, seed=3, difficulty=range(1, 5))
    assert a[:20] == synthetic.generate(20, seed=3, difficulty=range(1, 5))
    b = synthetic.generate(50, seed=4, difficulty=range(1, 5))
    assert sum(x != y for x, y in zip(a, b)) > 40
    c = synthetic.generate(50, seed=3, difficulty=range(1, 5), variant="context")
    assert c == synthetic.generate(50, seed=3, difficulty=range(1, 5), variant="context")
    # generation must not touch (or depend on) global random state
    import random

    random.seed(0)
    state = random.getstate()
    synthetic.generate(10, seed=1)
    synthetic.make_episodes(3, seed=1)
    assert random.getstate() == state


def test_varied_and_small():
    problems = synthetic.generate(2000, seed=0, difficulty=2)
    assert len({p.question for p in problems}) > 1900
    assert {p.question.split()[0] for p in problems} == {n for n, _ in synthetic.NAMES}
    assert max(p.answer for p in problems) <= synthetic.MAX_VALUE
    assert min(p.answer for p in problems) >= 1


def test_difficulty_controls_steps():
    for d in range(1, 5):
        for v in synthetic.VARIANTS:
            problems = synthetic.generate(100, seed=1, difficulty=d, variant=v)
            assert {p.steps for p in problems} == {d}
    mixed = synthetic.generate(600, seed=2, difficulty=range(1, 3))
    counts = collections.Counter(p.steps for p in mixed)
    assert set(counts) == {1, 2} and min(counts.values()) > 200
    weighted = collections.Counter(
        p.steps for p in synthetic.generate(1000, seed=2, difficulty={1: 0.8, 4: 0.2}))
    assert set(weighted) == {1, 4} and 700 < weighted[1] < 900
    for bad in (0, 5, [], [1, 7], "2", {2: 0.0}, 1.5, True):
        with pytest.raises(ValueError, match="difficulty"):
            synthetic.generate(3, seed=0, difficulty=bad)
    with pytest.raises(ValueError, match="variant"):
        synthetic.generate(3, seed=0, variant="fancy")


def test_exclude_keeps_sets_disjoint():
    test = synthetic.generate(300, seed=100, difficulty=1)
    train = synthetic.generate(3000, seed=0, difficulty=1, exclude={p.question for p in test})
    assert len(train) == 3000
    assert not {p.question for p in train} & {p.question for p in test}
    with pytest.raises(ValueError, match="exclude"):
        everything = {p.question for p in synthetic.generate(20000, seed=1, difficulty=1,
                                                             variant="context", rule_value=2)}
        synthetic.generate(10, seed=5, difficulty=1, variant="context", rule_value=2,
                           exclude=everything)


# ----------------------------------------------------------------------------- context variant


def test_context_rule_used_and_never_stated():
    lo, hi = CONTEXT_RULE_RANGE
    by_value = {v: synthetic.generate(200, seed=9, difficulty=range(1, 5), variant="context",
                                      rule_value=v) for v in range(lo, hi + 1)}
    for v, problems in by_value.items():
        for p in problems:
            assert p.rule_value == v and p.rule == f"zorp={v}"
            first = p.solution.split("\n")[0]
            count = int(re.search(r"has (\d+) zorps of", p.question).group(1))
            assert first == f"{count}*{v}={count * v}"
            assert "zorp" in p.question and "=" not in p.question
    # The question text does not depend on the rule value at all: only solutions reveal it.
    questions = {v: [p.question for p in ps] for v, ps in by_value.items()}
    assert all(q == questions[lo] for q in questions.values())
    assert by_value[lo][0].solution != by_value[hi][0].solution
    # Unfixed: one value per problem, covering the range, with the same questions.
    free = synthetic.generate(200, seed=9, difficulty=range(1, 5), variant="context")
    assert [p.question for p in free] == questions[lo]
    assert {p.rule_value for p in free} == set(range(lo, hi + 1))
    for p in free:
        check_solution(p)
    for p in synthetic.generate(50, seed=9):
        assert p.rule is None and p.rule_value is None and "zorp" not in p.question
    with pytest.raises(ValueError, match="rule_value"):
        synthetic.generate(3, seed=0, variant="context", rule_value=hi + 1)
    with pytest.raises(ValueError, match="rule_value"):
        synthetic.generate(3, seed=0, variant="plain", rule_value=7)


def test_episodes():
    episodes = synthetic.make_episodes(200, seed=1, k=3, difficulty=range(1, 3))
    assert episodes == synthetic.make_episodes(200, seed=1, k=3, difficulty=range(1, 3))
    lo, hi = CONTEXT_RULE_RANGE
    assert {e.rule_value for e in episodes} == set(range(lo, hi + 1))
    for e in episodes:
        assert len(e.shots) == 3
        assert all(p.rule_value == e.rule_value for p in (*e.shots, e.query))
        assert e.query.question not in {s.question for s in e.shots}
        for p in (*e.shots, e.query):
            check_solution(p)
        text = synthetic.episode_text(e)
        prompt = synthetic.episode_prompt_text(e)
        assert text == prompt + e.query.solution + toy_tokenizer.END
        assert text.count(toy_tokenizer.ASSISTANT) == 4 and text.count(toy_tokenizer.USER) == 4
        assert f"*{e.rule_value}=" in prompt  # the shots reveal the value
    fixed = synthetic.make_episodes(20, seed=2, k=2, rule_value=7)
    assert {e.rule_value for e in fixed} == {7}


# ----------------------------------------------------------------------------- formats


def test_formats_and_jsonl(tmp_path):
    problems = synthetic.generate(30, seed=0, difficulty=range(1, 5))
    p, shots = problems[0], problems[1:3]
    assert synthetic.format_example(p) == (
        f"{toy_tokenizer.USER}{p.question}{toy_tokenizer.END}"
        f"{toy_tokenizer.ASSISTANT}{p.solution}{toy_tokenizer.END}")
    assert synthetic.prompt_text(p) == (
        f"{toy_tokenizer.USER}{p.question}{toy_tokenizer.END}{toy_tokenizer.ASSISTANT}")
    full = synthetic.format_example(p, shots, system="Solve.")
    assert full.startswith(f"{toy_tokenizer.SYSTEM}Solve.{toy_tokenizer.END}")
    assert full.startswith(synthetic.prompt_text(p, shots, system="Solve."))
    records = synthetic.to_gsm8k_records(problems)
    assert records[0] == {"question": p.question, "answer": p.solution}
    path = synthetic.write_jsonl(problems, tmp_path / "sub" / "train.jsonl")
    loaded = gsm8k.load_jsonl(path)
    assert [e.question for e in loaded] == [q.question for q in problems]
    assert [e.answer for e in loaded] == [str(q.answer) for q in problems]
    assert [e.solution for e in loaded] == [q.solution for q in problems]
    with pytest.raises(ValueError, match="role"):
        toy_tokenizer.render_chat([{"role": "tool", "content": "x"}])


# ----------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tok():
    return toy_corpus.build_toy_tokenizer(seed=0)


def _ids(encoded) -> list[int]:
    """apply_chat_template(tokenize=True) gives a BatchEncoding in transformers 5, a list in 4."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def test_tokenizer_vocab_and_specials(tok):
    assert 100 <= len(tok) <= 300
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|end|>"
    assert tok.pad_token_id != tok.eos_token_id
    for t in toy_tokenizer.SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(t) < len(toy_tokenizer.SPECIAL_TOKENS)
    # digits one per token, with no digit merged into anything
    vocab = tok.get_vocab()
    assert not [t for t in vocab if any(ch.isdigit() for ch in t) and len(t) > 1]
    assert tok.convert_ids_to_tokens(tok.encode("90210")) == list("90210")
    # every word of the task is a single token: one token per pre-token
    pre = tok.backend_tokenizer.pre_tokenizer
    for p in synthetic.generate(300, seed=11, difficulty=range(1, 5)) + synthetic.generate(
            300, seed=11, difficulty=range(1, 5), variant="context"):
        for text in (p.question, p.solution):
            assert len(tok.encode(text)) == len(pre.pre_tokenize_str(text)), text
    # unknown characters are visible, not silently dropped
    assert tok.unk_token_id in tok.encode("Ann has ✓ pens.")


def test_tokenizer_round_trip(tok):
    for p in synthetic.generate(300, seed=5, difficulty=range(1, 5), variant="context"):
        for text in (p.question, p.solution, synthetic.format_example(p)):
            assert tok.decode(tok.encode(text)) == text
        decoded = tok.decode(tok.encode(p.solution + toy_tokenizer.END), skip_special_tokens=True)
        assert gsm8k.extract_answer(decoded) == str(p.answer)
    text = "Solve this:\n\tAnn has 12 pens (and 3 more)! #### 15 "
    assert tok.decode(tok.encode(text)) == text


def test_chat_template_few_shot(tok):
    episode = synthetic.make_episodes(1, seed=4, k=3, difficulty=2)[0]
    msgs = synthetic.chat_messages(episode.query, episode.shots, system="Solve.", with_answer=False)
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert rendered == toy_tokenizer.render_chat(msgs, add_generation_prompt=True)
    assert rendered == synthetic.prompt_text(episode.query, episode.shots, system="Solve.")
    assert rendered.endswith(f"{episode.query.question}<|end|><|assistant|>")
    ids = _ids(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert ids.count(tok.eos_token_id) == 8
    assert ids.count(tok.convert_tokens_to_ids("<|user|>")) == 4
    no_gen = _ids(tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=True))
    assert no_gen == ids[:-1]
    # the assistant mask covers exactly the solutions and their <|end|>
    full = synthetic.chat_messages(episode.query, episode.shots)
    enc = tok.apply_chat_template(full, tokenize=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    expected = []
    for p in (*episode.shots, episode.query):
        expected += tok.encode(p.solution) + [tok.eos_token_id]
    assert masked == expected


def test_save_load_round_trip(tok, tmp_path):
    from transformers import AutoTokenizer

    toy_tokenizer.save_tokenizer(tok, tmp_path / "tok")
    for loaded in (AutoTokenizer.from_pretrained(tmp_path / "tok"),
                   toy_tokenizer.load_tokenizer(tmp_path / "tok")):
        assert loaded.get_vocab() == tok.get_vocab()
        assert loaded.chat_template == tok.chat_template == toy_tokenizer.CHAT_TEMPLATE
        assert (loaded.pad_token_id, loaded.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
        assert set(loaded.all_special_tokens) == set(toy_tokenizer.SPECIAL_TOKENS)
        msgs = synthetic.chat_messages(synthetic.generate(1, seed=0)[0], with_answer=False)
        assert _ids(loaded.apply_chat_template(msgs, add_generation_prompt=True)) == _ids(
            tok.apply_chat_template(msgs, add_generation_prompt=True))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        toy_tokenizer.load_tokenizer(tmp_path / "missing")


def test_same_seed_same_vocab(tok):
    again = toy_corpus.build_toy_tokenizer(seed=0)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    with pytest.raises(ValueError, match="vocab_size"):
        toy_tokenizer.train_tokenizer(["abc"], vocab_size=50)


def test_token_lengths(tok):
    """Short enough for the CPU toy run: prompt <= 48 and solution (+EOS) <= 32 tokens at
    difficulty <= 2. Prints the distribution (pytest -s)."""
    report = []
    for variant, d in SETTINGS:
        problems = synthetic.generate(300, seed=21, difficulty=d, variant=variant)
        prompts = [len(_ids(tok.apply_chat_template(synthetic.chat_messages(p, with_answer=False),
                                                    add_generation_prompt=True)))
                   for p in problems]
        solutions = [len(tok.encode(p.solution)) + 1 for p in problems]
        report.append(f"{variant:7s} d={d}: prompt mean {statistics.mean(prompts):5.1f} max "
                      f"{max(prompts):3d} | solution+eos mean {statistics.mean(solutions):5.1f} "
                      f"max {max(solutions):3d}")
        assert min(prompts) >= 10 and min(solutions) >= 5  # not degenerate
        if d <= 2:
            assert max(prompts) <= 48 and max(solutions) <= 32, report[-1]
        assert max(prompts) <= 80 and max(solutions) <= 48, report[-1]
    print("\n".join(report))


# ----------------------------------------------------------------------------- held-out compositions

_WORKED = re.compile(r"^(\w+) (?:now )?has (\d+[-+*/]\d+=\d+) (\w+)\.$")


@pytest.mark.parametrize("variant", synthetic.VARIANTS)
def test_worked_style_is_the_terse_solution_restated(variant):
    kw = dict(difficulty=range(1, 5), variant=variant)
    terse = synthetic.generate(200, seed=5, **kw)
    worked = synthetic.generate(200, seed=5, style="worked", **kw)
    for t, w in zip(terse, worked):
        assert (w.question, w.answer, w.composition) == (t.question, t.answer, t.composition)
        *lines, final = w.solution.split("\n")
        equations = []
        for line in lines:
            m = _WORKED.fullmatch(line)
            assert m, line
            assert m.group(1) in w.question and m.group(3) in w.question
            equations.append(m.group(2))
        assert "\n".join(equations + [final]) == t.solution
    with pytest.raises(ValueError, match="style"):
        synthetic.generate(1, seed=0, style="verbose")


def test_composition_is_variant_ops_and_start():
    p = synthetic.generate(1, seed=3, difficulty=3)[0]
    lines = [_EQUATION.fullmatch(line) for line in p.solution.split("\n")[:-1]]
    ops = "".join(m.group(2) for m in lines)
    assert p.composition == f"plain|{ops}|{lines[0].group(1)}" and p.start == int(lines[0].group(1))
    # each tail is the composition of the plain problem the solution ends like
    assert p.tails == tuple(f"plain|{ops[i:]}|{m.group(1)}" for i, m in enumerate(lines))
    q = synthetic.generate(1, seed=3, difficulty=3, variant="context", rule_value=4)[0]
    assert q.composition.startswith("context|") and q.composition.endswith(f"|{q.start}")
    assert q.solution.startswith(f"{q.start}*4=")


@pytest.mark.parametrize("variant", synthetic.VARIANTS)
def test_splits_partition_compositions(variant):
    kw = dict(difficulty={2: 1, 3: 1, 4: 1}, variant=variant, style="worked")
    held = synthetic.generate(300, seed=1, split="held_out", **kw)
    seen = synthetic.generate(300, seed=1, split="seen", **kw)
    assert all(synthetic.is_held_out(p) for p in held)
    assert not any(synthetic.is_held_out(p) for p in seen)
    assert all(synthetic.is_seen(p) for p in seen)
    # no held-out composition occurs in a seen problem, whole or as the tail of its solution
    seen_keys = {k for p in seen for k in (p.composition, *p.tails)}
    assert not {p.composition for p in held} & seen_keys
    everything = synthetic.generate(2000, seed=2, **kw)
    share = sum(map(synthetic.is_held_out, everything)) / len(everything)
    assert 0.15 < share < 0.35  # about 1 in HELD_OUT_MOD compositions
    with pytest.raises(ValueError, match="split"):
        synthetic.generate(1, seed=0, split="eval")


def test_format_only_episodes_show_no_unit_value():
    for e in synthetic.make_episodes(50, seed=4, k=2, difficulty=2, shot_variant="plain"):
        assert all(s.rule is None and "zorp" not in s.question for s in e.shots)
        assert e.query.rule_value == e.rule_value and "zorp" in e.query.question
    with pytest.raises(ValueError, match="shot_variant"):
        synthetic.make_episodes(1, seed=0, shot_variant="other")


def test_worked_token_lengths(tok):
    """The testbed's task: 2-4-step answers of roughly 30-60 tokens (+EOS), ~45 on average."""
    for variant in synthetic.VARIANTS:
        problems = synthetic.generate(300, seed=7, difficulty={2: 1, 3: 1, 4: 1}, variant=variant,
                                      style="worked")
        n = [len(tok.encode(p.solution)) + 1 for p in problems]
        assert 26 <= min(n) and max(n) <= 66, (variant, min(n), max(n))
        assert 40 <= statistics.mean(n) <= 50, (variant, statistics.mean(n))
