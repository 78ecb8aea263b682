"""Benchmark task layer: document rendering, scoring, lm-eval parity, executor, pass@k, CLI.

The fixtures in tests/data/benchmarks are invented items in the release formats. The parity tests
run lm-evaluation-harness's own task configs (its YAML files, pointed at the fixture files) and
its HF backend on a tiny random Llama with a byte-level BPE tokenizer trained on the fixtures.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from cliffdistill.tasks import (arc, executor, fewshot, gsm8k, hellaswag, humaneval, mbpp, mmlu,
                                multiple_choice, runner)

DATA = Path(__file__).parent / "data" / "benchmarks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- documents


def test_arc_formats_render_the_same_document(tmp_path):
    hf = arc.load(DATA / "arc.jsonl")
    assert hf[0].context == "Question: Which gas do green plants take in from the air?\nAnswer:"
    assert hf[1].gold == 0 and hf[0].gold == 1  # labels "1".."3" and "A".."D" both resolve
    rows = [json.loads(x) for x in (DATA / "arc.jsonl").read_text().splitlines()]
    foundry = tmp_path / "foundry.jsonl"
    foundry.write_text("".join(json.dumps({"query": "Question: " + r["question"],
                                           "choices": r["choices"]["text"],
                                           "gold": r["choices"]["label"].index(r["answerKey"])}) + "\n"
                               for r in rows))
    original = tmp_path / "orig.jsonl"
    original.write_text("".join(json.dumps({"question": {"stem": r["question"], "choices": [
        {"text": t, "label": l} for t, l in zip(r["choices"]["text"], r["choices"]["label"])]},
        "answerKey": r["answerKey"]}) + "\n" for r in rows))
    assert arc.load(foundry) == hf == arc.load(original)
    assert len(arc.load(foundry, limit=2)) == 2


def test_hellaswag_preprocess():
    docs = hellaswag.load(DATA / "hellaswag.jsonl")
    assert docs[0].context == "Making tea: A man fills a kettle with water. He then"
    assert docs[0].choices[1] == "throws it. out the window."
    assert docs[0].choices[2] == "drinks the cold water"
    assert docs[1].context.startswith("Home and Garden: How to water a plant. Fill a can.")
    assert docs[1].gold == 3


def test_hellaswag_text_format(tmp_path):
    f = tmp_path / "hs.txt"
    f.write_text("Cat: a cat [title] sits.\n1\nmeows\npurrs  loudly\nsleeps\n[x]runs\n")
    (doc,) = hellaswag.load(f)
    assert doc.context == "Cat: a cat. sits." and doc.gold == 1
    assert doc.choices == ("meows", "purrs loudly", "sleeps", "runs")
    f.write_text("Cat: a cat\n1\nmeows\n")
    with pytest.raises(ValueError, match="multiple of 6"):
        hellaswag.load(f)


def test_mmlu_zero_and_five_shot():
    zero = mmlu.load(DATA / "mmlu")
    assert [d.group for d in zero] == ["astronomy"] * 2 + ["high_school_macroeconomics"] * 2
    head = "The following are multiple choice questions (with answers) about astronomy.\n\n"
    assert zero[0].context == (head + "What is a comet made of?\nA. ice and dust\nB. iron\n"
                               "C. gas only\nD. plasma\nAnswer:")
    five = mmlu.load(DATA / "mmlu", num_fewshot=5)
    shot1 = "What orbits the Earth?\nA. The Moon\nB. Mars\nC. The Sun\nD. Venus\nAnswer: A\n\n"
    assert five[0].context.startswith(head + shot1)
    assert five[0].context.endswith(zero[0].context[len(head):])
    assert five[0].context.count("\nAnswer:") == 6 and five[0].choices == mmlu.LETTERS
    assert sorted(s for subjects in mmlu.CATEGORIES.values() for s in subjects) == sorted(mmlu.CATEGORY_OF)
    assert len(mmlu.CATEGORY_OF) == 57


def test_bad_files_name_file_line_and_field(tmp_path):
    f = tmp_path / "arc.jsonl"
    f.write_text((DATA / "arc.jsonl").read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"arc.jsonl:4: not valid JSON"):
        arc.load(f)
    f.write_text('{"question": "q", "choices": {"text": ["a"], "label": ["A"]}}\n')
    with pytest.raises(ValueError, match=r":1: missing field 'answerKey'"):
        arc.load(f)
    with pytest.raises(FileNotFoundError, match="no such file"):
        arc.load(tmp_path / "missing.jsonl")
    bad = tmp_path / "mmlu" / "test"
    bad.mkdir(parents=True)
    (bad / "x_test.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,d,E\n")
    with pytest.raises(ValueError, match=r"x_test.csv:2: answer 'E'"):
        mmlu.load(tmp_path / "mmlu")


# ----------------------------------------------------------------------------- scoring core


class CharTokenizer:
    """BOS + one id per character: a tokenizer whose splits are easy to check by hand."""

    def encode(self, text):
        return [1] + [3 + (ord(c) % 90) for c in text]


def test_encode_pair_moves_trailing_space_and_keeps_bos():
    ctx, cont = multiple_choice.encode_pair(CharTokenizer(), "ab  ", "c")
    assert ctx == [1] + CharTokenizer().encode("ab")[1:] and len(cont) == 3  # "  c"
    ctx2, cont2 = multiple_choice.fit_to_window(list(range(10)), [7, 8], max_len=5)
    assert ctx2 == [6, 7, 8, 9] and len(ctx2) + len(cont2) - 1 == 5


def test_choose_acc_norm_uses_character_length():
    # the long choice has the best per-character likelihood, the short one the best total
    pred, pred_norm = multiple_choice.choose([-3.0, -8.0], ["ab", "abcdefghij"])
    assert (pred, pred_norm) == (0, 1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random HF Llama + byte-level BPE tokenizer (BOS-prepending) saved to a dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    import transformers
    from tests.hf_models import make_hf_model

    text = [p.read_text() for p in sorted(DATA.rglob("*")) if p.is_file()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                                eos_token="</s>", pad_token="<pad>")
    path = tmp_path_factory.mktemp("tiny_llama")
    hf = make_hf_model("llama", vocab=len(fast), seed=3)
    hf.save_pretrained(path)
    fast.save_pretrained(path)
    return {"path": path, "hf": hf, "tokenizer": fast, "ours": runner.load_model(path)}


def test_choice_task_progress_ends_at_n_of_n(tiny_model):
    """run_task's progress counts the scored continuations (3 ARC documents: 4 + 3 + 4)."""
    calls, progress = _progress_calls()
    runner.run_task("arc_challenge", DATA / "arc.jsonl", tiny_model["ours"], batch_size=4,
                    progress=progress)
    assert calls[-1] == ("scored", 11, 11) and {c[0] for c in calls} == {"scored"}
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)


def test_batched_scores_equal_one_at_a_time(tiny_model):
    model = tiny_model["ours"]
    docs = arc.load(DATA / "arc.jsonl") + mmlu.load(DATA / "mmlu", num_fewshot=1)
    batched, _ = multiple_choice.evaluate_docs(model, docs, batch_size=4)
    single, _ = multiple_choice.evaluate_docs(model, docs, batch_size=1)
    got = np.concatenate([r["loglikelihoods"] for r in batched])
    np.testing.assert_allclose(got, np.concatenate([r["loglikelihoods"] for r in single]), atol=1e-4)
    assert np.all(got < 0) and len(set(np.round(got, 3))) > len(docs)


def test_shared_context_equals_one_row_per_choice(tiny_model, monkeypatch):
    """Each context encoded once for all its choices (prefill + cached decode) scores what one
    full-forward row per choice scores; the fixture documents all take the shared path when
    allowed (the per-row scorer is never called); a document whose context the window cuts
    differently per choice, or (by default) with a choice longer than SHARE_MAX_TOKENS, gets
    one row per choice."""
    from cliffdistill.engine import scoring

    model = tiny_model["ours"]
    docs = (arc.load(DATA / "arc.jsonl") + hellaswag.load(DATA / "hellaswag.jsonl")
            + mmlu.load(DATA / "mmlu", num_fewshot=5))
    rows, _ = multiple_choice.evaluate_docs(model, docs, batch_size=4, share_max_tokens=0)
    ref = np.concatenate([r["loglikelihoods"] for r in rows])
    rows_called = []
    per_row = scoring.score
    monkeypatch.setattr(scoring, "score", lambda *a, **k: rows_called.append(1) or per_row(*a, **k))
    shared, _ = multiple_choice.evaluate_docs(model, docs, batch_size=4, share_max_tokens=10**6)
    got = np.concatenate([r["loglikelihoods"] for r in shared])
    assert not rows_called
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert [(r["pred"], r["pred_norm"]) for r in shared] == [(r["pred"], r["pred_norm"]) for r in rows]

    # 256 positions: a context past the window loses more tokens before a longer choice.
    long_doc = multiple_choice.ChoiceDoc(0, "word " * 300 + "end", ("a", "b c d e f g"), 0)
    pairs = [multiple_choice.fit_to_window(*multiple_choice.encode_pair(
        model.tokenizer, long_doc.context, c), model.cfg.max_position_embeddings)
        for c in multiple_choice.continuations(long_doc)]
    assert multiple_choice.shared_requests(pairs) is None
    rec, _ = multiple_choice.evaluate_docs(model, [long_doc], batch_size=4, share_max_tokens=10**6)
    assert rows_called and len(rec[0]["loglikelihoods"]) == 2
    # The default rule: one-token choices share their context, longer ones get a row each.
    rows_called.clear()
    short = multiple_choice.ChoiceDoc(0, "Question: 2+2?\nAnswer:", ("4", "5"), 0)
    multiple_choice.evaluate_docs(model, [short], batch_size=4)
    assert not rows_called
    wide = multiple_choice.ChoiceDoc(0, "Question: 2+2?\nAnswer:", ("four " * 20, "five"), 0)
    multiple_choice.evaluate_docs(model, [wide], batch_size=4)
    assert rows_called


# ----------------------------------------------------------------------------- lm-eval parity

LM_EVAL_CASES = {  # task -> (official yaml under lm_eval/tasks, split key, our loader call)
    "arc_challenge": ("arc/arc_challenge.yaml", "test", lambda: arc.load(DATA / "arc.jsonl")),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation",
                  lambda: hellaswag.load(DATA / "hellaswag.jsonl")),
    "mmlu_0shot": ("mmlu/default/mmlu_astronomy.yaml", "test",
                   lambda: mmlu.load(DATA / "mmlu", 0, subjects=["astronomy"])),
    "mmlu_5shot": ("mmlu/default/mmlu_astronomy.yaml", "test",
                   lambda: mmlu.load(DATA / "mmlu", 5, subjects=["astronomy"])),
}


def _mmlu_hub_rows(split: str, subject: str) -> list[dict]:
    """The fixture CSV's rows in `cais/mmlu`'s row format."""
    rows = mmlu.read_rows(DATA / "mmlu" / split / f"{subject}_{split}.csv")
    return [{"question": q, "subject": subject, "choices": list(o), "answer": g} for q, o, g in rows]


def _mmlu_as_hf(split: str, tmp: Path) -> Path:
    """The fixture CSV rewritten in `cais/mmlu`'s row format, for lm-eval's json loader."""
    out = tmp / f"mmlu_{split}.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in _mmlu_hub_rows(split, "astronomy")))
    return out


def _lm_eval_yaml_task(yaml_file: str, data_files: dict[str, str] | None = None,
                       one_file: str | None = None):
    """lm-eval's own ConfigurableTask from its yaml under lm_eval/tasks, its dataset replaced
    by local json files: `data_files` {split: path}, or `one_file` for every split the yaml
    names; fewshot seed 1234, as the harness's evaluator sets it."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / yaml_file)
    if one_file is not None:
        data_files = {config[k]: one_file for k in ("training_split", "validation_split",
                                                    "test_split") if config.get(k)}
    config = {k: v for k, v in config.items() if k not in ("tag", "group")}
    config.update(dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": data_files})
    task = ConfigurableTask(config=config)
    task.set_fewshot_seed(1234)
    return task


def _lm_eval_task(case: str, tmp: Path):
    yaml_file, split, _ = LM_EVAL_CASES[case]
    if case.startswith("mmlu"):
        return _lm_eval_yaml_task(yaml_file, {"test": str(_mmlu_as_hf("test", tmp)),
                                              "dev": str(_mmlu_as_hf("dev", tmp))})
    one = str(DATA / ("arc.jsonl" if case == "arc_challenge" else "hellaswag.jsonl"))
    return _lm_eval_yaml_task(yaml_file, one_file=one)  # zero-shot: only `split` is read


@pytest.fixture(scope="module")
def hflm(tiny_model):
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=tiny_model["hf"], tokenizer=tiny_model["tokenizer"], batch_size=1,
                device="cpu")


@pytest.mark.parametrize("case", sorted(LM_EVAL_CASES))
def test_parity_with_lm_eval(case, tiny_model, hflm, tmp_path):
    from lm_eval.api.instance import Instance

    task = _lm_eval_task(case, tmp_path)
    shots = 5 if case == "mmlu_5shot" else 0
    ref_docs = list(task.eval_docs)
    ours = LM_EVAL_CASES[case][2]()
    assert len(ours) == len(ref_docs)
    records, _ = multiple_choice.evaluate_docs(tiny_model["ours"], ours, batch_size=2)
    worst, agree = 0.0, 0
    for doc, ref_doc, rec in zip(ours, ref_docs, records):
        ctx = task.fewshot_context(ref_doc, shots)
        assert doc.context == ctx
        assert list(doc.choices) == list(task.doc_to_choice(ref_doc))
        assert doc.gold == int(task.doc_to_target(ref_doc))
        reqs = [Instance("loglikelihood", ref_doc, (ctx, cont), i)
                for i, cont in enumerate(multiple_choice.continuations(doc))]
        assert [r.args for r in reqs] == [a.args for a in task.construct_requests(
            ref_doc, ctx, metadata=(case, 0, 1))]
        ref = hflm.loglikelihood(reqs, disable_tqdm=True)
        ref_ll = np.array([ll for ll, _ in ref])
        worst = max(worst, float(np.max(np.abs(ref_ll - rec["loglikelihoods"]))))
        metrics = task.process_results(ref_doc, ref)
        assert rec["acc"] == metrics["acc"]
        if "acc_norm" in metrics:
            assert rec["acc_norm"] == metrics["acc_norm"]
        agree += rec["pred"] == int(np.argmax(ref_ll))
    print(f"\nPARITY {case}: docs={len(ours)} max|dloglik|={worst:.2e} "
          f"pred agreement={agree}/{len(ours)}")
    assert worst <= 1e-4 and agree == len(ours)


# ----------------------------------------------------------------------------- HumanEval + executor

FAST = executor.Limits(timeout_s=2.0)


def test_canonical_solutions_pass_and_wrong_ones_fail():
    problems = humaneval.load(DATA / "humaneval.jsonl")
    good = executor.run_programs([humaneval.program(p, p.canonical_solution) for p in problems], FAST)
    assert [o.status for o in good] == [executor.PASSED] * len(problems)
    wrong = executor.run_program(humaneval.program(problems[0], "    return a - b\n"), FAST)
    assert (wrong.passed, wrong.status, wrong.error) == (False, executor.FAILED, "AssertionError")


@pytest.mark.parametrize("body,error", [
    ("    import sys; sys.exit(0)\n", "ended before its checks finished"),
    ("    import os; os._exit(0)\n", "ended before its checks finished"),
    ("    raise ValueError('boom')\n", "ValueError"),
    ("    x = bytearray(4 << 30)\n", "MemoryError"),
])
def test_early_exits_and_errors_fail(body, error):
    (p,) = humaneval.load(DATA / "humaneval.jsonl", limit=1)
    out = executor.run_program(humaneval.program(p, body), FAST)
    assert (out.passed, out.status, out.error) == (False, executor.FAILED, error)


def test_infinite_loop_and_spawned_child_are_killed(tmp_path, sandbox_root):
    (p,) = humaneval.load(DATA / "humaneval.jsonl", limit=1)
    t0 = time.monotonic()
    out = executor.run_program(humaneval.program(p, "    while True:\n        pass\n"), FAST)
    assert out.status == executor.TIMEOUT and time.monotonic() - t0 < FAST.timeout_s + 2
    # a child that keeps the output pipe open holds the program past its timeout; a detached one
    # lets it finish; either way the whole process group dies with the program
    for redirect, status in (("", executor.TIMEOUT), (", stdout=-3, stderr=-3", executor.PASSED)):
        flag = tmp_path / f"child_alive{len(redirect)}"
        inner = f"import time; time.sleep(3); open({str(flag)!r}, 'w').write('x')"
        child = (f"    import subprocess, sys\n    subprocess.Popen([sys.executable, '-c', "
                 f"{inner!r}]{redirect})\n    return a + b\n")
        assert executor.run_program(humaneval.program(p, child), FAST).status == status
        time.sleep(3.5)
        assert not flag.exists()


def _live_processes_mentioning(text: str) -> list[int]:
    """Pids of running (non-zombie) processes whose command line contains `text` (/proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode("utf-8", "replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # the process ended while we looked
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


@pytest.fixture
def sandbox_root(monkeypatch):
    """Puts the executor's per-program directories under a fresh folder, then checks that every
    one was removed and that no process started from one is still running."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="cliffdistill_sandbox_test_"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    monkeypatch.undo()
    deadline = time.monotonic() + 2.0
    while _live_processes_mentioning(str(root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left, procs = sorted(p.name for p in root.iterdir()), _live_processes_mentioning(str(root))
    root.rmdir()
    assert left == [] and procs == [], f"left behind: dirs {left}, processes {procs}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_runaway_fork_is_contained(sandbox_root):
    """64 processes (6 doublings) that never finish: stopped by the wall clock and the group
    kill (RLIMIT_NPROC bounds them too for a non-root user; it does not bind root)."""
    (p,) = humaneval.load(DATA / "humaneval.jsonl", limit=1)
    bomb = ("    import os, time\n    for _ in range(6):\n        os.fork()\n"
            "    time.sleep(30)\n    return a + b\n")
    t0 = time.monotonic()
    out = executor.run_program(humaneval.program(p, bomb), FAST)
    assert not out.passed and out.status in (executor.TIMEOUT, executor.FAILED)
    assert time.monotonic() - t0 < FAST.timeout_s + 2


def test_memory_hog_and_early_exit_leave_nothing_behind(sandbox_root):
    (p,) = humaneval.load(DATA / "humaneval.jsonl", limit=1)
    hog = executor.run_program(humaneval.program(p, "    x = [bytearray(1 << 30) for _ in "
                                                    "range(64)]\n    return a + b\n"), FAST)
    assert (hog.passed, hog.status, hog.error) == (False, executor.FAILED, "MemoryError")
    early = executor.run_program(humaneval.program(p, "    import sys; sys.exit(0)\n"), FAST)
    assert (early.passed, early.status) == (False, executor.FAILED)
    assert early.returncode == 0  # exit status 0, still a failure: the checks did not finish


def test_program_files_stay_in_its_directory(sandbox_root):
    """HOME, TMPDIR and the working directory are the program's own folder, removed afterwards.
    (Absolute paths elsewhere are NOT blocked: see the executor's docstring.)"""
    (p,) = humaneval.load(DATA / "humaneval.jsonl", limit=1)
    body = ("    import os, tempfile\n    assert os.getcwd() == os.environ['HOME'] == "
            "tempfile.gettempdir()\n    tempfile.mkstemp()\n    open('out.txt', 'w').write('x')\n"
            "    open(os.path.expanduser('~/rc'), 'w').write('x')\n    return a + b\n")
    out = executor.run_program(humaneval.program(p, body), FAST)
    assert out.status == executor.PASSED, out


def test_truncate_at_stop_sequences():
    assert humaneval.truncate("    return 1\n\ndef g():\n    pass") == "    return 1\n"
    assert humaneval.truncate("    x = 1\n# note\nif True:") == "    x = 1"
    assert humaneval.truncate("    return 2") == "    return 2"


def _pass_at_k_exact(n, c, k):
    """Independent closed form with exact rationals: 1 - C(n-c, k) / C(n, k)."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (20, 19, 2),
                                   (200, 13, 10), (200, 0, 100), (5, 2, 4)])
def test_pass_at_k_matches_closed_form(n, c, k):
    assert humaneval.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_exact(n, c, k), abs=1e-12)
    if k == 1:
        assert humaneval.pass_at_k(n, c, k) == pytest.approx(c / n)


def _write_samples(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in pairs))
    return path


def test_samples_canonical_solutions_pass_at_1(tmp_path):
    problems = humaneval.load(DATA / "humaneval.jsonl")
    f = _write_samples(tmp_path / "s.jsonl", [(p.task_id, p.canonical_solution) for p in problems])
    records, summary = runner.score_samples(DATA / "humaneval.jsonl", f)
    assert summary["pass@1"] == 1.0 and summary["n"] == len(problems) == len(records)
    assert "pass@10" not in summary and all(r["outcome"] == executor.PASSED for r in records)


def test_samples_pass_at_k_matches_closed_form(tmp_path):
    """12 samples of Fix/0 (3 right) and 10 of Fix/1 (7 right): pass@1 and pass@10 equal the
    mean of the exact closed forms; pass@100 is absent (fewer than 100 samples)."""
    p0, p1 = humaneval.load(DATA / "humaneval.jsonl")
    wrong = "    return None\n"
    pairs = ([(p0.task_id, p0.canonical_solution)] * 3 + [(p0.task_id, wrong)] * 9
             + [(p1.task_id, p1.canonical_solution)] * 7 + [(p1.task_id, wrong)] * 3)
    f = _write_samples(tmp_path / "s.jsonl", pairs)
    records, summary = runner.score_samples(DATA / "humaneval.jsonl", f)
    assert [r["passed"] for r in records] == [c != wrong for _, c in pairs]
    for k in (1, 10):
        expected = (_pass_at_k_exact(12, 3, k) + _pass_at_k_exact(10, 7, k)) / 2
        assert summary[f"pass@{k}"] == pytest.approx(expected, abs=1e-12)
    assert "pass@100" not in summary and summary["n_samples"] == 22


def test_samples_bad_lines_name_file_and_line(tmp_path):
    f = _write_samples(tmp_path / "s.jsonl", [("Fix/0", "    return a + b\n"), ("Nope/9", "")])
    with pytest.raises(ValueError, match=r"s.jsonl:2: task_id 'Nope/9' is not in"):
        runner.score_samples(DATA / "humaneval.jsonl", f)
    f.write_text('{"task_id": "Fix/0"}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:1: missing field 'completion'"):
        runner.score_samples(DATA / "humaneval.jsonl", f)
    f.write_text('{"task_id": "Fix/0", "completion": 3}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:1: field 'completion' is a int"):
        runner.score_samples(DATA / "humaneval.jsonl", f)


def test_cli_samples_without_a_model(tmp_path):
    problems = humaneval.load(DATA / "humaneval.jsonl")
    f = _write_samples(tmp_path / "s.jsonl", [(p.task_id, p.canonical_solution) for p in problems])
    out = tmp_path / "out"
    res = _cli("--tasks", "humaneval", "--samples", str(f), "--data", str(DATA / "humaneval.jsonl"),
               "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["humaneval"]["pass@1"] == 1.0
    assert len((out / "humaneval.jsonl").read_text().splitlines()) == len(problems)
    f.write_text("[1]\n")
    bad = _cli("--tasks", "humaneval", "--samples", str(f), "--data",
               str(DATA / "humaneval.jsonl"), "--out", str(out))
    assert bad.returncode == 1 and "s.jsonl:1: a JSON list" in bad.stderr


def _progress_calls() -> tuple[list[tuple[str, int, int]], runner.Progress]:
    calls: list[tuple[str, int, int]] = []
    return calls, lambda stage, done, total: calls.append((stage, done, total))


def _last_per_stage(calls):
    return {stage: (done, total) for stage, done, total in calls}


def test_humaneval_greedy_end_to_end(tiny_model):
    """A random model's completions are scored (and fail); the record carries the verdict; the
    progress callback reports both stages up to (n, n)."""
    calls, progress = _progress_calls()
    records, summary = runner.run_task("humaneval", DATA / "humaneval.jsonl", tiny_model["ours"],
                                       max_new_tokens=8, batch_size=1, progress=progress)
    assert _last_per_stage(calls) == {"generated": (2, 2), "executed": (2, 2)}
    assert [c[1] for c in calls if c[0] == "generated"] == [1, 2]  # one report per batch
    assert summary["n"] == 2 and [r["task_id"] for r in records] == ["Fix/0", "Fix/1"]
    assert all(set(r) >= {"completion", "passed", "outcome", "error"} for r in records)
    assert summary["pass@1"] == sum(r["passed"] for r in records) / 2


def test_humaneval_sampled_pass_at_k(tiny_model):
    """3 samples per problem at temperature 1: one record each, problem-major; the same seed
    repeats the completions (under another batching too), another seed changes them, and the
    samples of one problem differ from each other (distinct keys)."""
    def sampled(seed, batch_size=2):
        return runner.run_task("humaneval", DATA / "humaneval.jsonl", tiny_model["ours"],
                               max_new_tokens=8, batch_size=batch_size,
                               sampling=runner.Sampling(n_samples=3, temperature=1.0, seed=seed))

    records, summary = sampled(0)
    assert [r["task_id"] for r in records] == ["Fix/0"] * 3 + ["Fix/1"] * 3
    assert summary["n"] == 2 and summary["n_samples"] == 3 * 2
    assert (summary["temperature"], summary["seed"]) == (1.0, 0)
    assert summary["pass@1"] == sum(r["passed"] for r in records) / 6 and "pass@10" not in summary
    completions = [r["completion"] for r in records]
    assert len(set(completions[:3])) > 1 and len(set(completions[3:])) > 1
    assert [r["completion"] for r in sampled(0, batch_size=1)[0]] == completions
    assert [r["completion"] for r in sampled(1)[0]] != completions


@pytest.mark.parametrize("knobs,message", [
    (dict(n_samples=0), "--n_samples 0: at least one"),
    (dict(temperature=-0.5), "--temperature -0.5: must be >= 0"),
    (dict(n_samples=3), "--n_samples 3 with --temperature 0: greedy samples")])
def test_sampling_refusals(knobs, message):
    with pytest.raises(ValueError, match=message):
        runner.Sampling(**knobs)


# ----------------------------------------------------------------------------- real data (optional)


@pytest.mark.parametrize("name,rel", [("arc_challenge", "arc/arc_challenge_test.jsonl"),
                                      ("arc_easy", "arc/arc_easy_test.jsonl"),
                                      ("hellaswag", "hellaswag/hellaswag_val_full.txt.bz2"),
                                      ("mmlu", "mmlu")])
def test_shared_data_loads(name, rel):
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    docs = runner.CHOICE_TASKS[name](path, 5 if name == "mmlu" else 0, None)
    assert docs and all(0 <= d.gold < len(d.choices) for d in docs)
    if name == "mmlu":
        assert {d.group for d in docs} == set(mmlu.CATEGORY_OF)


def test_shared_humaneval_canonical_solutions_pass():
    path = SHARED / "humaneval" / "HumanEval.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    problems = humaneval.load(path)
    outs = executor.run_programs([humaneval.program(p, p.canonical_solution) for p in problems],
                                 executor.Limits(timeout_s=10.0), workers=2)
    assert len(problems) == 164
    assert [p.task_id for p, o in zip(problems, outs) if not o.passed] == []


# ----------------------------------------------------------------------------- hub datasets


def _fake_hub(monkeypatch, splits: dict[tuple, list[dict]]) -> list[tuple]:
    """`datasets.load_dataset` answering (path, name, split) from `splits`; returns the calls."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(path, name=None, *, split):
        calls.append((path, name, split))
        return splits[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


HUB_CASES = {  # task -> (hub (path, name, split), local fixture); the fixtures are in hub schema
    "arc_challenge": (("allenai/ai2_arc", "ARC-Challenge", "test"), "arc.jsonl"),
    "arc_easy": (("allenai/ai2_arc", "ARC-Easy", "test"), "arc.jsonl"),
    "hellaswag": (("Rowan/hellaswag", None, "validation"), "hellaswag.jsonl"),
    "humaneval": (("openai/openai_humaneval", None, "test"), "humaneval.jsonl"),
}


@pytest.mark.parametrize("task", sorted(HUB_CASES))
def test_hub_rows_give_the_local_documents(task, monkeypatch):
    source, fixture = HUB_CASES[task]
    rows = _jsonl(DATA / fixture)
    if task == "hellaswag":  # the hub rows also carry the joined ctx
        rows = [{**r, "ctx": f"{r['ctx_a']} {r['ctx_b']}"} for r in rows]
    calls = _fake_hub(monkeypatch, {source: rows})
    local = runner.load_docs(task, DATA / fixture)
    assert runner.load_docs(task, "hf") == local and len(local) == len(rows)
    assert runner.load_docs(task, "hf", limit=1) == local[:1]
    assert calls == [source, source]


def test_hub_mmlu_groups_by_subject_and_takes_dev_shots(monkeypatch):
    subjects = ("high_school_macroeconomics", "astronomy")  # not sorted, rows interleaved

    def interleaved(split):
        per_subject = [_mmlu_hub_rows(split, s) for s in subjects]
        return [r for group in zip(*per_subject) for r in group]
    test, dev = ("cais/mmlu", "all", "test"), ("cais/mmlu", "all", "dev")
    calls = _fake_hub(monkeypatch, {test: interleaved("test"), dev: interleaved("dev")})
    for shots in (0, 5):
        assert runner.load_docs("mmlu", "hf", shots) == mmlu.load(DATA / "mmlu", shots)
    assert runner.load_docs("mmlu", "hf", 1, limit=1) == mmlu.load(DATA / "mmlu", 1, limit=1)
    assert calls == [test, dev, test, dev, test]  # zero-shot reads no dev split


def test_hub_failure_names_the_dataset_and_the_local_fix(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match=r"allenai/ai2_arc \(ARC-Challenge\), split test "
                       r"for arc_challenge \(ConnectionError.*--data arc_challenge=PATH"):
        runner.load_docs("arc_challenge", "hf")
    monkeypatch.setitem(sys.modules, "datasets", None)  # the package missing
    with pytest.raises(FileNotFoundError, match=r"cais/mmlu.*ModuleNotFoundError.*--data mmlu=PATH"):
        runner.load_docs("mmlu", "hf")
    with pytest.raises(ValueError, match=r"choice_jsonl has no hub dataset.*--data choice_jsonl=PATH"):
        runner.parse_data(["choice_jsonl=hf"], ["choice_jsonl"])
    assert runner.parse_data(["mmlu=hf"], ["mmlu"]) == {"mmlu": "hf"}


# ----------------------------------------------------------------------------- CLI


def test_parse_data_errors():
    assert runner.parse_data(["x.jsonl"], ["arc_easy"]) == {"arc_easy": "x.jsonl"}
    with pytest.raises(ValueError, match="unknown task 'arc'"):
        runner.parse_data(["arc=x"], ["arc_easy"])
    with pytest.raises(ValueError, match=r"no data file for \['mmlu'\]"):
        runner.parse_data(["arc_easy=x"], ["arc_easy", "mmlu"])
    with pytest.raises(ValueError, match="TASK=PATH"):
        runner.parse_data(["x"], ["arc_easy", "mmlu"])


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "cliffdistill.evaluate", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_cli_scores_an_hf_dir(tiny_model, tmp_path):
    out = tmp_path / "out"
    res = _cli("--tasks", "arc_challenge,mmlu", "--model", str(tiny_model["path"]),
               "--data", f"arc_challenge={DATA / 'arc.jsonl'}", "--data", f"mmlu={DATA / 'mmlu'}",
               "--num_fewshot", "1", "--out", str(out))
    assert res.returncode == 1 and "arc.jsonl: the name has no 'test'" in res.stderr  # no pool
    res = _cli("--tasks", "arc_challenge,mmlu", "--model", str(tiny_model["path"]),
               "--data", f"arc_challenge={DATA / 'arc.jsonl'}", "--data", f"mmlu={DATA / 'mmlu'}",
               "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "arc_challenge" in res.stdout and "acc_norm" in res.stdout
    assert "arc_challenge scored: 100%" in res.stderr and "11/11" in res.stderr  # tqdm bars
    assert "mmlu scored: 100%" in res.stderr and "16/16" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    recs = [json.loads(x) for x in (out / "arc_challenge.jsonl").read_text().splitlines()]
    expected, _ = multiple_choice.evaluate_docs(tiny_model["ours"], arc.load(DATA / "arc.jsonl"))
    assert [r["doc_id"] for r in recs] == [0, 1, 2]
    np.testing.assert_allclose(np.concatenate([r["loglikelihoods"] for r in recs]),
                               np.concatenate([r["loglikelihoods"] for r in expected]), atol=1e-4)
    assert summary["arc_challenge"]["acc"] == np.mean([r["acc"] for r in expected])
    assert set(summary["mmlu"]["subjects"]) == {"astronomy", "high_school_macroeconomics"}
    assert set(summary["mmlu"]["categories"]) == {"stem", "social_sciences"}
    quiet = _cli("--tasks", "arc_challenge", "--model", str(tiny_model["path"]), "--noprogress",
                 "--data", str(DATA / "arc.jsonl"), "--out", str(tmp_path / "quiet"))
    assert quiet.returncode == 0 and "scored" not in quiet.stderr
    bad = _cli("--tasks", "arc_challenge", "--model", str(tiny_model["path"]),
               "--data", str(tmp_path / "nope.jsonl"), "--out", str(out))
    assert bad.returncode == 1 and "nope.jsonl: no such file" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = _cli("--tasks", "winogrande", "--model", str(tiny_model["path"]), "--out", str(out))
    assert unknown.returncode != 0 and "unknown task 'winogrande'" in unknown.stderr


def test_cli_refuses_meaningless_sampling(tmp_path):
    """Refused before any model is loaded (the --model path does not even exist)."""
    common = ("--model", str(tmp_path / "no_model"), "--out", str(tmp_path / "out"))
    greedy = _cli("--tasks", "humaneval", "--data", str(DATA / "humaneval.jsonl"),
                  "--n_samples", "3", *common)
    assert greedy.returncode != 0 and "--n_samples 3 with --temperature 0" in greedy.stderr
    choice = _cli("--tasks", "arc_challenge", "--data", str(DATA / "arc.jsonl"), "--n_samples",
                  "2", "--temperature", "1", *common)
    assert choice.returncode != 0 and "pass --tasks humaneval" in choice.stderr


# ----------------------------------------------------------------------------- GSM8K

# Invented rows in the release format (written to tmp_path; no dataset is committed).
GSM8K_TRAIN = [{"question": f"Tom has {i} apples and buys {i + 2}. How many apples?",
                "answer": f"He has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2}.\n"
                          f"#### {2 * i + 2}"} for i in range(1, 9)]
GSM8K_TEST = [{"question": "A shelf holds 1,200 books; 34 are sold. How many are left?",
               "answer": "1200 - 34 = <<1200-34=1166>>1166\n#### 1,166"},
              {"question": "Each box costs $5. What do 3 boxes cost?",
               "answer": "3 * 5 = <<3*5=15>>15\n#### 15"},
              {"question": "Half of 9 is?", "answer": "9 / 2 = 4.5\n#### 4.5"}]
# (completion, its document): strict hit; flexible only ($, comma, final period); a wrong strict
# number beside a right last number; nothing numeric
GSM8K_COMPLETIONS = [(" 1200 - 34 = 1166\n#### 1,166", 0), (" So it costs $15.", 1),
                     (" #### 4\nor 4.5", 2), (" I do not know", 0)]


def _gsm8k_dir(tmp_path: Path) -> Path:
    for name, rows in (("train", GSM8K_TRAIN), ("test", GSM8K_TEST)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _lm_eval_gsm8k(folder: Path):
    return _lm_eval_yaml_task("gsm8k/gsm8k.yaml", {"train": str(folder / "train.jsonl"),
                                                   "test": str(folder / "test.jsonl")})


@pytest.mark.parametrize("shots", [0, 5])
def test_gsm8k_prompts_and_stops_match_lm_eval(tmp_path, shots):
    task = _lm_eval_gsm8k(_gsm8k_dir(tmp_path))
    ours = gsm8k.load(tmp_path, shots)
    refs = list(task.eval_docs)
    assert len(ours) == len(refs) == len(GSM8K_TEST)
    for doc, ref in zip(ours, refs):  # in document order: the sampler's draws follow it
        ctx = task.fewshot_context(ref, shots)
        assert doc.prompt == ctx
        (request,) = [task.construct_requests(ref, ctx, metadata=("gsm8k", 0, 1))]
        assert request.args[0] == ctx and tuple(request.args[1]["until"]) == gsm8k.STOP_SEQUENCES
    assert gsm8k.load(tmp_path, shots, limit=2) == ours[:2]  # --limit keeps the first shots


def test_gsm8k_scores_match_lm_eval_filters_and_exact_match(tmp_path):
    task = _lm_eval_gsm8k(_gsm8k_dir(tmp_path))
    refs, ours = list(task.eval_docs), gsm8k.load(tmp_path, 0)
    seen = set()
    for completion, i in GSM8K_COMPLETIONS:
        inst = task.construct_requests(refs[i], task.fewshot_context(refs[i], 0),
                                       metadata=("gsm8k", i, 1))
        inst.resps = [completion]
        want = {}
        for f in task._filters:  # lm-eval's own "strict-match" and "flexible-extract"
            f.apply([inst])
            want[f.name] = task.process_results(refs[i], [inst.filtered_resps[f.name]])["exact_match"]
        got = gsm8k.score(ours[i], completion)
        assert (got["exact_match"], got["exact_match_flexible"]) == (
            want["strict-match"], want["flexible-extract"]), completion
        seen.add((got["exact_match"], got["exact_match_flexible"]))
    assert seen == {(1.0, 1.0), (0.0, 1.0), (0.0, 0.0)}  # the cases differ: the test can fail
    assert gsm8k.truncate(" 7\n\nQuestion: next") == " 7\n\n"


def test_gsm8k_end_to_end_and_bad_files(tiny_model, tmp_path):
    folder = _gsm8k_dir(tmp_path)
    calls, progress = _progress_calls()
    records, summary = runner.run_task("gsm8k", folder, tiny_model["ours"], num_fewshot=1,
                                       max_new_tokens=6, batch_size=2, progress=progress)
    assert _last_per_stage(calls) == {"generated": (3, 3)}
    assert summary["n"] == 3 and summary["exact_match"] == np.mean([r["exact_match"] for r in records])
    assert [r["gold"] for r in records] == ["1166", "15", "4.5"]
    assert "exact_match_flexible" in runner.format_table({"gsm8k": summary})
    with pytest.raises(ValueError, match=r"greedily"):
        runner.run_task("gsm8k", folder, tiny_model["ours"],
                        sampling=runner.Sampling(n_samples=2, temperature=1.0))
    with pytest.raises(ValueError, match=r"--num_fewshot 9 draws 9 rows per document from the "
                       r"few-shot pool train\.jsonl.*which has 8"):
        gsm8k.load(folder, 9)
    (folder / "test.jsonl").write_text('{"question": "q?"}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:1: missing field 'answer'"):
        gsm8k.load(folder)


# ----------------------------------------------------------------------------- ARC / HellaSwag shots

# Invented rows in the hub formats (written to tmp_path; no dataset is committed). ARC mixes
# letter and digit labels and 3-5 choices; HellaSwag has the WikiHow artifacts preprocess removes,
# and one train row equal to a validation row (the harness's eval-doc exclusion drops it).
def _arc_row(i: int) -> dict:
    n = 3 + i % 3
    labels = list("ABCDE"[:n]) if i % 2 else [str(j + 1) for j in range(n)]
    return {"id": f"Inv-{i}", "question": f"Which number is {i} plus {i % 4}?",
            "choices": {"text": [str(i + i % 4 + d - 1) for d in range(n)], "label": labels},
            "answerKey": labels[1]}


ARC_TRAIN = [_arc_row(i) for i in range(10, 19)]
ARC_TEST = [_arc_row(i) for i in range(4)]


def _hellaswag_row(i: int, split: str) -> dict:
    ctx_a, ctx_b = f"A person picks up tool {i} [title] and looks at it.", "then they"
    return {"ind": i, "activity_label": f"Task {i % 3}", "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}", "endings": [f"put tool {i} down.", f"[step] use  tool {i}.",
                                                   f"throw tool {i}.", f"sell tool {i}."],
            "source_id": f"inv~{i}", "split": split, "split_type": "indomain",
            "label": str(i % 4)}


HELLASWAG_VAL = [_hellaswag_row(i, "val") for i in range(4)]
HELLASWAG_TRAIN = [_hellaswag_row(i, "train") for i in range(20, 26)] + [dict(HELLASWAG_VAL[2])]

FEWSHOT_TASKS = {  # task -> (lm-eval yaml, eval split, our eval file name, pool rows, eval rows)
    "arc_easy": ("arc/arc_easy.yaml", "test", "arc_easy_test.jsonl", ARC_TRAIN, ARC_TEST),
    "arc_challenge": ("arc/arc_challenge.yaml", "test", "ARC-Challenge-Test.jsonl", ARC_TRAIN,
                      ARC_TEST),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation", "hellaswag_val.jsonl",
                  HELLASWAG_TRAIN, HELLASWAG_VAL),
}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fewshot_files(task: str, tmp: Path) -> tuple[Path, Path]:
    """(eval file, train file) of a task, the train file named as our loader looks for it."""
    _, _, name, pool, rows = FEWSHOT_TASKS[task]
    test = _write_jsonl(tmp / name, rows)
    train = test.with_name(hellaswag.TRAIN_FILE) if task == "hellaswag" else \
        test.with_name(name.replace("test", "train").replace("Test", "Train"))
    return test, _write_jsonl(train, pool)


def _lm_eval_fewshot(task: str, test: Path, train: Path):
    yaml_file, split, *_ = FEWSHOT_TASKS[task]
    files = {"train": str(train), split: str(test)}
    if split == "test":
        files["validation"] = str(test)  # named by the yaml, never read
    return _lm_eval_yaml_task(yaml_file, files)


@pytest.mark.parametrize("shots", [0, 1, 5])
@pytest.mark.parametrize("task", sorted(FEWSHOT_TASKS))
def test_fewshot_contexts_match_lm_eval(task, shots, tmp_path, monkeypatch):
    test, train = _fewshot_files(task, tmp_path)
    ref_task = _lm_eval_fewshot(task, test, train)
    refs = list(ref_task.eval_docs)
    ours = runner.load_docs(task, test, shots)
    assert len(ours) == len(refs) == len(FEWSHOT_TASKS[task][4])
    contexts = []
    for doc, ref in zip(ours, refs):  # in document order: the sampler's draws follow it
        ctx = ref_task.fewshot_context(ref, shots)
        contexts.append(ctx)
        assert doc.context == ctx
        assert list(doc.choices) == list(ref_task.doc_to_choice(ref))
        assert doc.gold == int(ref_task.doc_to_target(ref))
        assert [(ctx, c) for c in multiple_choice.continuations(doc)] == [
            r.args for r in ref_task.construct_requests(ref, ctx, metadata=(task, 0, 1))]
        assert doc.context.count(multiple_choice.FEWSHOT_DELIMITER) == shots
    assert runner.load_docs(task, test, shots, limit=2) == ours[:2]  # --limit keeps the shots
    assert runner.load_docs(task, test, shots, fewshot_data=train) == ours
    if shots == 5:  # the draws differ per document, and the eval-doc rule changes them
        assert len(set(contexts)) == len(contexts)
        module = hellaswag if task == "hellaswag" else arc
        monkeypatch.setattr(module, "EXCLUDES_EVAL_DOC", not module.EXCLUDES_EVAL_DOC)
        flipped = runner.load_docs(task, test, shots)
        assert [d.context for d in flipped] != contexts


def test_hellaswag_text_eval_file_takes_jsonl_shots(tmp_path):
    """The text format's contexts with the same draws as its jsonl twin (no source rows to
    compare, so the train copy of a validation row is not dropped: lm-eval cannot read it)."""
    test, train = _fewshot_files("hellaswag", tmp_path)
    text = tmp_path / "hs.txt"
    text.write_text("".join(f"{d.context}\n{d.gold}\n" + "".join(c + "\n" for c in d.choices)
                            for d in hellaswag.load(test)))
    got = hellaswag.load(text, 2, train=train)
    draws = fewshot.draws(len(HELLASWAG_TRAIN), 2, [lambda j: False] * 4, "pool")
    pool = hellaswag.load(train)
    assert [d.context for d in got] == ["".join(fewshot.shot_text(pool[j]) for j in idx)
                                        + d.context for idx, d in zip(draws, hellaswag.load(test))]


def test_fewshot_pool_refusals(tmp_path):
    test, train = _fewshot_files("arc_easy", tmp_path)
    train.unlink()
    with pytest.raises(FileNotFoundError, match=r"arc_easy_train\.jsonl: no such file: the "
                       r"few-shot pool.*--num_fewshot 1.*--fewshot_data TASK=PATH"):
        arc.load(test, 1)
    assert arc.load(test, 0) == arc.load(test)  # zero-shot reads no pool
    odd = _write_jsonl(tmp_path / "arc.jsonl", ARC_TEST)
    with pytest.raises(ValueError, match=r"arc\.jsonl: the name has no 'test'"):
        arc.load(odd, 1)
    small = _write_jsonl(tmp_path / "few.jsonl", ARC_TRAIN[:2])
    with pytest.raises(ValueError, match=r"--num_fewshot 3 draws 3 rows per document from the "
                       r"few-shot pool .*few\.jsonl, which has 2"):
        arc.load(odd, 3, train=small)
    hs, hs_train = _fewshot_files("hellaswag", tmp_path)
    small = _write_jsonl(tmp_path / "few.jsonl", HELLASWAG_TRAIN[:2])
    with pytest.raises(ValueError, match=r"--num_fewshot 2 draws 3 rows"):  # eval-doc path: k+1
        hellaswag.load(hs, 2, train=small)
    hs_train.unlink()
    with pytest.raises(FileNotFoundError, match=r"hellaswag_train\.jsonl: no such file"):
        hellaswag.load(hs, 1)
    with pytest.raises(ValueError, match=r"only arc_easy, arc_challenge, hellaswag take"):
        runner.parse_fewshot_data(["mmlu=x"], {"mmlu": "dir"})
    with pytest.raises(ValueError, match=r"the hub route draws shots from the dataset's train"):
        runner.parse_fewshot_data(["arc_easy=x"], {"arc_easy": "hf"})
    with pytest.raises(ValueError, match=r"arc_easy is not among --tasks"):
        runner.parse_fewshot_data(["arc_easy=x"], {"hellaswag": "h.jsonl"})
    assert runner.parse_fewshot_data(["arc_easy=t.jsonl"], {"arc_easy": "a.jsonl"}) == {
        "arc_easy": "t.jsonl"}


@pytest.mark.parametrize("task", ["arc_easy", "hellaswag"])
def test_hub_shots_come_from_the_train_split(task, monkeypatch, tmp_path):
    test, train = _fewshot_files(task, tmp_path)
    source, _ = HUB_CASES[task]
    pool = (source[0], source[1], "train")
    calls = _fake_hub(monkeypatch, {source: _jsonl(test), pool: _jsonl(train)})
    assert runner.load_docs(task, "hf", 5) == runner.load_docs(task, test, 5)
    assert runner.load_docs(task, "hf", 0) == runner.load_docs(task, test, 0)
    assert calls == [source, pool, source]  # zero-shot reads no train split


# ----------------------------------------------------------------------------- MBPP

# Invented rows in the release format (written to tmp_path). Task ids 5 and 600 lie outside the
# test split (11-510) and are skipped, as the harness's `test` split does not hold them.
MBPP_ROWS = [
    {"task_id": 5, "text": "Write a function to negate a number.",
     "code": "def neg(x):\r\n  return -x",
     "test_list": ["assert neg(1) == -1", "assert neg(0) == 0", "assert neg(-2) == 2"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 11, "text": "Write a function to add two numbers.",
     "code": "def add(a, b):\r\n  return a + b",
     "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 12, "text": "Write a python function to reverse a string.",
     "code": "def rev(s):\n    return s[::-1]",
     "test_list": ["assert rev('ab') == 'ba'", "assert rev('') == ''", "assert rev('x') == 'x'",
                   "assert rev('abc') == 'cba'"],
     "test_setup_code": "import os", "challenge_test_list": ["assert rev('aa') == 'aa'"]},
    {"task_id": 600, "text": "Write a function to double.", "code": "def dbl(x):\n  return 2 * x",
     "test_list": ["assert dbl(1) == 2", "assert dbl(0) == 0", "assert dbl(3) == 6"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 510, "text": "Write a function to find the maximum of a list.",
     "code": "def biggest(xs):\n  return max(xs)",
     "test_list": ["assert biggest([1, 3, 2]) == 3", "assert biggest([5]) == 5",
                   "assert biggest([-1, -4]) == -1"],
     "test_setup_code": "", "challenge_test_list": []},
]
MBPP_TEST = [r for r in MBPP_ROWS if 11 <= r["task_id"] <= 510]
CODE_EVAL_CALLS: list[tuple] = []  # (references, predictions) lm-eval's metric hands code_eval


def _lm_eval_mbpp(test_file: Path, monkeypatch):
    """lm-eval's `mbpp` task on `test_file`; its utils.py loads HF `code_eval` at import (a hub
    download), replaced by a recorder of what the harness passes it (code_eval itself, which
    runs `prediction + "\\n" + reference`, is not installed here)."""
    import types

    class Recorder:
        def compute(self, references, predictions, k):
            CODE_EVAL_CALLS.append((list(references), [list(p) for p in predictions]))
            return {"pass@1": 0.0}, {}

    fake = types.ModuleType("evaluate")
    fake.load = lambda name: Recorder()
    monkeypatch.setitem(sys.modules, "evaluate", fake)
    return _lm_eval_yaml_task("mbpp/mbpp.yaml", {"test": str(test_file)})


@pytest.mark.parametrize("shots", [0, 1, 3])
def test_mbpp_prompts_stops_and_references_match_lm_eval(shots, tmp_path, monkeypatch):
    ours = mbpp.load(_write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS), shots)
    task = _lm_eval_mbpp(_write_jsonl(tmp_path / "mbpp_test.jsonl", MBPP_TEST), monkeypatch)
    refs = list(task.eval_docs)
    assert [p.task_id for p in ours] == [str(r["task_id"]) for r in refs] == ["11", "12", "510"]
    for p, ref in zip(ours, refs):
        ctx = task.fewshot_context(ref, shots)
        assert p.prompt == ctx and ctx.count("[DONE]") == shots
        request = task.construct_requests(ref, ctx, metadata=("mbpp", 0, 1))
        assert request.args[0] == ctx and tuple(request.args[1]["until"]) == mbpp.STOP_SEQUENCES
        CODE_EVAL_CALLS.clear()
        task.process_results(ref, [p.code])
        ((references, predictions),) = CODE_EVAL_CALLS
        assert (references, predictions) == ([mbpp.reference(p)], [[p.code]])
        assert mbpp.program(p, p.code) == predictions[0][0] + "\n" + references[0]
    assert mbpp.load(tmp_path / "mbpp.jsonl", shots, limit=2) == ours[:2]


def test_mbpp_programs_pass_and_fail_in_the_executor(tmp_path):
    problems = mbpp.load(_write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS))
    good = executor.run_programs([mbpp.program(p, p.code) for p in problems], FAST)
    assert [o.status for o in good] == [executor.PASSED] * 3
    wrong = executor.run_program(mbpp.program(problems[0], "def add(a, b):\n  return a - b"), FAST)
    assert (wrong.passed, wrong.error) == (False, "AssertionError")
    # the 4th assert of test_list is not run (the harness's reference is the first three)
    only3 = "def rev(s):\n    return s[::-1] if len(s) < 3 else s"
    assert executor.run_program(mbpp.program(problems[1], only3), FAST).passed
    assert mbpp.truncate("def f():\n  return 1\n[DONE]\n\nYou are") == "def f():\n  return 1\n"
    records, summary = runner.score_completions(problems * 2, [p.code for p in problems]
                                                + ["pass"] * 3, FAST, task="mbpp")
    assert [r["task_id"] for r in records] == ["11", "12", "510"] * 2
    assert summary["pass@1"] == 0.5 and summary["n"] == 3


def test_mbpp_refusals_and_hub(tmp_path, monkeypatch):
    f = _write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS)
    with pytest.raises(ValueError, match=r"--num_fewshot 4: MBPP's few-shot examples are the "
                       r"harness's 3 fixed ones"):
        mbpp.load(f, 4)
    _write_jsonl(f, [{**MBPP_TEST[0], "test_list": ["assert True"]}])
    with pytest.raises(ValueError, match=r"mbpp\.jsonl:1: field 'test_list' has 1 entries"):
        mbpp.load(f)
    _write_jsonl(f, [{k: v for k, v in MBPP_TEST[0].items() if k != "text"}])
    with pytest.raises(ValueError, match=r"mbpp\.jsonl:1: missing field 'text'"):
        mbpp.load(f)
    source = ("google-research-datasets/mbpp", "full", "test")
    calls = _fake_hub(monkeypatch, {source: MBPP_TEST})
    local = mbpp.load(_write_jsonl(tmp_path / "all.jsonl", MBPP_ROWS), 3)
    assert runner.load_docs("mbpp", "hf", 3) == local and calls == [source]
    assert runner.parse_data(["mbpp=x.jsonl"], ["mbpp"]) == {"mbpp": "x.jsonl"}


def test_mbpp_greedy_end_to_end(tiny_model, tmp_path):
    f = _write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS)
    calls, progress = _progress_calls()
    records, summary = runner.run_task("mbpp", f, tiny_model["ours"], num_fewshot=1,
                                       max_new_tokens=6, batch_size=2, progress=progress)
    assert _last_per_stage(calls) == {"generated": (3, 3), "executed": (3, 3)}
    assert [r["task_id"] for r in records] == ["11", "12", "510"]
    assert summary["pass@1"] == sum(r["passed"] for r in records) / 3
    assert all("[DONE]" not in r["completion"] for r in records)


def test_sharded_choice_scoring_equals_one_device(tiny_model):
    """A model loaded on an 8-device mesh (each device reading its slice of the weights) scores
    the same per-choice log-likelihoods as the one-device model; generation tasks are refused."""
    from cliffdistill.models import sharding

    mesh = sharding.make_mesh(runner.parse_mesh("data=2,fsdp=2,tensor=2"))
    sharded = runner.load_model(tiny_model["path"], mesh=mesh)
    q = sharded.params["layers"]["q_proj"]
    assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.shape != q.shape
    ref, _ = runner.run_task("arc_challenge", DATA / "arc.jsonl", tiny_model["ours"], batch_size=4)
    got, _ = runner.run_task("arc_challenge", DATA / "arc.jsonl", sharded, batch_size=4)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b["loglikelihoods"], a["loglikelihoods"], atol=1e-4, rtol=0)
        assert (a["pred"], a["pred_norm"]) == (b["pred"], b["pred_norm"])
    with pytest.raises(ValueError, match="--batch_size 3 is not a multiple"):
        runner.run_task("arc_challenge", DATA / "arc.jsonl", sharded, batch_size=3)
    with pytest.raises(ValueError, match="--mesh: humaneval generates"):
        runner.run_task("humaneval", DATA / "humaneval.jsonl", sharded)
    with pytest.raises(ValueError, match="'tensor=x' is not AXIS=N"):
        runner.parse_mesh("data=2,tensor=x")
