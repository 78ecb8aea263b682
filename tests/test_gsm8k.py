"""GSM8K loading, answer extraction/grading and leak-free splits (cliffdistill.data.gsm8k)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cliffdistill.data import gsm8k
from cliffdistill.data.gsm8k import (
    Example,
    Splits,
    check_disjoint,
    extract_answer,
    gold_answer,
    is_correct,
    load,
    load_hf,
    load_jsonl,
    make_splits,
    normalize_number,
    normalize_question,
)

TRICKY = Path(__file__).parent / "data" / "gsm8k_tricky.jsonl"
SHARED_GSM8K = Path(__file__).parents[2] / "shared/data/gsm8k"


def _ex(question: str, uid: str, answer: str = "1") -> Example:
    return Example(question=question, solution=f"It is {answer}.\n#### {answer}", answer=answer,
                   uid=uid)


# ------------------------------------------------------------------------------------------
# Extraction and grading
# ------------------------------------------------------------------------------------------

_TRICKY_ROWS = [json.loads(line) for line in TRICKY.read_text(encoding="utf-8").splitlines()
                if line.strip()]


def test_tricky_table_is_big_enough():
    assert len(_TRICKY_ROWS) >= 40
    assert any(row["expected"] is None for row in _TRICKY_ROWS)


@pytest.mark.parametrize("row", _TRICKY_ROWS, ids=[row["why"] for row in _TRICKY_ROWS])
def test_extract_answer_tricky(row):
    assert extract_answer(row["text"]) == row["expected"]


@pytest.mark.parametrize("text, expected", [
    ("5", "5"), ("5.0", "5"), ("$1,200", "1200"), ("\u22123", "-3"), ("- 3", "-3"),
    ("0.50", "0.5"), ("12%", "12"), ("7.", "7"), (" 42 ", "42"), ("3/4", "0.75"),
    ("", None), ("abc", None), ("5 apples", None), ("1/0", None), ("1,23", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("pred, gold, expected", [
    ("18", "18", True),
    ("18.0", "18", True),
    ("1200", "1,200", True),
    ("-7", "-7", True),
    ("0.5", "0.50", True),
    ("1000000.0000001", "1000000", True),   # 1e-13 relative: inside 1e-6
    ("1000001", "1000000", True),           # exactly 1e-6 relative
    ("1000002", "1000000", False),
    ("17", "18", False),
    ("-18", "18", False),
    ("0", "0", True),
    (None, "18", False),
    ("eighteen", "18", False),
])
def test_is_correct(pred, gold, expected):
    assert is_correct(pred, gold) is expected


def test_is_correct_rejects_non_numeric_gold():
    with pytest.raises(ValueError, match="gold answer 'n/a'"):
        is_correct("1", "n/a")


def test_gold_answer():
    assert gold_answer("2 + 2 = 4\n#### 4") == "4"
    assert gold_answer("#### 1,080") == "1080"
    with pytest.raises(ValueError, match="####"):
        gold_answer("The answer is 4")
    with pytest.raises(ValueError, match="not a number"):
        gold_answer("#### four")


@pytest.mark.skipif(not SHARED_GSM8K.is_dir(), reason="needs ../shared/data/gsm8k (real GSM8K)")
@pytest.mark.parametrize("split, size", [("train", 7473), ("test", 1319)])
def test_extract_answer_recovers_every_gold_answer(split, size):
    """The extractor reads every reference solution's final answer: the gold is the raw text
    after '####', normalized independently of the extractor."""
    examples = load_jsonl(SHARED_GSM8K / f"{split}.jsonl")
    assert len(examples) == size
    wrong = []
    for example in examples:
        raw_gold = example.solution.rpartition("####")[2].strip()
        gold = raw_gold.replace(",", "")
        if example.answer != gold or extract_answer(example.solution) != gold:
            wrong.append((example.uid, raw_gold, extract_answer(example.solution)))
        elif not is_correct(extract_answer(example.solution), raw_gold):
            wrong.append((example.uid, raw_gold, "is_correct"))
    assert wrong == []


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl(tmp_path):
    path = _write(tmp_path / "test.jsonl", [
        json.dumps({"question": "Q1?", "answer": "1 + 1 = 2\n#### 2"}),
        "",
        "   ",
        json.dumps({"question": "Q2?", "answer": "So\n#### 1,500", "extra": 1}),
    ])
    examples = load_jsonl(path)
    assert examples == [
        Example("Q1?", "1 + 1 = 2\n#### 2", "2", "jsonl:test:0"),
        Example("Q2?", "So\n#### 1,500", "1500", "jsonl:test:1"),
    ]
    assert load_jsonl(path, split="eval")[1].uid == "jsonl:eval:1"


@pytest.mark.parametrize("bad_line, what", [
    ('{"question": "Q", "answer": ', "invalid JSON"),
    ('["Q", "A"]', "expected an object"),
    ('{"question": "Q"}', "missing key"),
    ('{"question": 3, "answer": "#### 3"}', "'question' must be a string"),
    ('{"question": "Q", "answer": null}', "'answer' must be a string"),
    ('{"question": "Q", "answer": "It is 3."}', "####"),
    ('{"question": "Q", "answer": "#### three"}', "not a number"),
])
def test_load_jsonl_reports_file_line_and_problem(tmp_path, bad_line, what):
    good = json.dumps({"question": "Q", "answer": "#### 1"})
    path = _write(tmp_path / "bad.jsonl", [good, "", bad_line, good])
    with pytest.raises(ValueError) as info:
        load_jsonl(path)
    assert f"{path}:3" in str(info.value)
    assert what in str(info.value)


def test_load_jsonl_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_load_dispatch_jsonl(tmp_path):
    _write(tmp_path / "train.jsonl", [json.dumps({"question": "Q", "answer": "#### 1"})])
    from_dir = load("jsonl", "train", path=tmp_path)
    from_file = load("jsonl", "train", path=tmp_path / "train.jsonl")
    assert from_dir == from_file == [Example("Q", "#### 1", "1", "jsonl:train:0")]
    with pytest.raises(ValueError, match="path="):
        load("jsonl", "train")
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        load("jsonl", "test", path=tmp_path)


def test_load_dispatch_unknown_source():
    with pytest.raises(ValueError, match="jsonl, hf, tfds"):
        load("csv", "train")


def test_load_hf_uses_datasets_load_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config, split, cache_dir):
        calls.append((name, config, split, cache_dir))
        return [{"question": "Q?", "answer": "x\n#### 7"}, {"question": "R?", "answer": "#### -2"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_hf("test", cache_dir="/cache") == [
        Example("Q?", "x\n#### 7", "7", "hf:test:0"),
        Example("R?", "#### -2", "-2", "hf:test:1"),
    ]
    assert load("hf", "train", path="/local/gsm8k", config="socratic")[0].uid == "hf:train:0"
    assert calls == [("openai/gsm8k", "main", "test", "/cache"),
                     ("/local/gsm8k", "socratic", "train", None)]


def test_load_hf_reports_bad_rows(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: [{"question": "Q", "answer": "#### 1"}, {"question": "Q"}])
    with pytest.raises(ValueError, match=r"openai/gsm8k \(main\) split 'test' row 1: missing"):
        load_hf("test")


def test_load_tfds_through_mocked_builder():
    """The real tfds gsm8k builder and `tfds.data_source`, with the stored records mocked
    (`as_data_source_fn`): no TensorFlow and no download are needed."""
    tfds = pytest.importorskip("tensorflow_datasets")
    seen = []

    def data_source(builder, split, **kwargs):
        seen.append((builder.name, split))
        return [{"question": b"Q?", "answer": b"x\n#### 1,200", "annotation": b"x\n",
                 "short_answer": b"1,200"},
                {"question": "R?", "answer": "#### 3"}]

    with tfds.testing.mock_data(as_data_source_fn=data_source):
        examples = load("tfds", "test")
    assert seen == [("gsm8k", "test")]
    assert examples == [Example("Q?", "x\n#### 1,200", "1200", "tfds:test:0"),
                        Example("R?", "#### 3", "3", "tfds:test:1")]


def test_load_tfds_random_mock_records_are_rejected():
    """tfds's own random mock records (ArrayRecord data source, USE_CODE policy) flow through
    the loader; their random text has no '####', which must be reported with its row."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")  # the mock patches tfds's ArrayRecord data source
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(ValueError, match=r"tfds gsm8k split 'train' row 0: .*####"):
            gsm8k.load_tfds("train")


def test_load_tfds_missing_package_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        gsm8k.load_tfds("test")


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------


def _pool(prefix: str, n: int) -> list[Example]:
    return [_ex(f"{prefix} question number {i}?", f"{prefix}:{i}") for i in range(n)]


def test_make_splits_sizes_determinism_and_disjointness():
    train_pool, eval_pool = _pool("train", 50), _pool("test", 30)
    splits = make_splits(train_pool, eval_pool, n_train=20, n_fewshot=5, n_eval=10, seed=3)
    assert (len(splits.train), len(splits.fewshot), len(splits.eval)) == (20, 5, 10)
    assert splits == make_splits(train_pool, eval_pool, 20, 5, 10, seed=3)
    assert splits != make_splits(train_pool, eval_pool, 20, 5, 10, seed=4)
    assert set(splits.train) | set(splits.fewshot) <= set(train_pool)
    assert set(splits.eval) <= set(eval_pool)
    positions = [eval_pool.index(e) for e in splits.eval]
    assert positions == sorted(positions)  # eval keeps pool order
    check_disjoint(splits)


def test_make_splits_fewshot_pool_does_not_depend_on_n_train_or_n_eval():
    train_pool, eval_pool = _pool("train", 50), _pool("test", 30)
    a = make_splits(train_pool, eval_pool, n_train=5, n_fewshot=4, n_eval=3, seed=0)
    b = make_splits(train_pool, eval_pool, n_train=40, n_fewshot=4, n_eval=20, seed=0)
    assert a.fewshot == b.fewshot


def test_make_splits_excludes_eval_questions_from_training():
    eval_pool = [_ex("How many  Apples?", "test:0"), _ex("Other?", "test:1")]
    train_pool = [_ex("how many apples?", "train:0"),   # same question, other uid and spacing
                  _ex("Different?", "test:1"),          # same uid as an eval problem
                  _ex("Kept one?", "train:2"),
                  _ex("kept  ONE?", "train:3")]         # duplicate inside the training pool
    splits = make_splits(train_pool, eval_pool, n_train=1, n_fewshot=0, n_eval=2, seed=0)
    assert splits.train == (train_pool[2],)
    with pytest.raises(ValueError, match=r"only 1 training questions remain .*1 duplicates and 2 "
                                         r"shared with the eval pool"):
        make_splits(train_pool, eval_pool, n_train=1, n_fewshot=1, n_eval=0, seed=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_train=10, n_fewshot=1, n_eval=1), "n_train=10 \\+ n_fewshot=1 = 11 but only 10"),
    (dict(n_train=1, n_fewshot=1, n_eval=6), "n_eval=6 but the eval pool has only 5"),
    (dict(n_train=-1, n_fewshot=1, n_eval=1), "n_train=-1 must be >= 0"),
])
def test_make_splits_rejects_impossible_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_splits(_pool("train", 10), _pool("test", 5), seed=0, **kwargs)


def test_check_disjoint_names_shared_uids_and_questions():
    leaked = Splits(train=(_ex("What is 2+2?", "train:0"), _ex("Q?", "shared:1")),
                    fewshot=(),
                    eval=(_ex("what is  2+2?", "test:9"), _ex("Other?", "shared:1")))
    with pytest.raises(ValueError) as info:
        check_disjoint(leaked)
    message = str(info.value)
    assert "train/eval share 1 uid(s): 'shared:1'" in message
    assert "train/eval share 1 question(s): 'What is 2+2?'" in message
    check_disjoint(Splits(train=leaked.train[:1], fewshot=(), eval=leaked.eval[1:]))


def test_normalize_question():
    assert normalize_question("Janet\u2019s  ducks\nLAY 16 eggs ") == "janet's ducks lay 16 eggs"


@st.composite
def _pools(draw):
    # Tiny alphabet: many questions collide after case/whitespace normalization, within and
    # across the two pools.
    text = st.text(alphabet="aAb \n", min_size=1, max_size=4)
    train = [_ex(q, f"train:{i}") for i, q in enumerate(draw(st.lists(text, max_size=14)))]
    eval_ = [_ex(q, f"test:{i}") for i, q in enumerate(draw(st.lists(text, max_size=10)))]
    sizes = draw(st.tuples(*[st.integers(0, 8)] * 3))
    return train, eval_, sizes, draw(st.integers(-5, 2**40))


def _key(question: str) -> str:
    return " ".join(question.lower().split())


@settings(max_examples=200, deadline=None)
@given(_pools())
def test_make_splits_property_never_overlaps(case):
    train_pool, eval_pool, (n_train, n_fewshot, n_eval), seed = case
    eval_keys = {_key(e.question) for e in eval_pool}
    trainable = {_key(e.question) for e in train_pool} - eval_keys
    feasible = n_train + n_fewshot <= len(trainable) and n_eval <= len(eval_keys)
    if not feasible:
        with pytest.raises(ValueError, match="make_splits"):
            make_splits(train_pool, eval_pool, n_train, n_fewshot, n_eval, seed)
        return
    splits = make_splits(train_pool, eval_pool, n_train, n_fewshot, n_eval, seed)
    sizes = (len(splits.train), len(splits.fewshot), len(splits.eval))
    assert sizes == (n_train, n_fewshot, n_eval)
    parts = [splits.train, splits.fewshot, splits.eval]
    keys = [_key(e.question) for part in parts for e in part]
    uids = [e.uid for part in parts for e in part]
    assert len(set(keys)) == len(keys)  # no question twice, neither across nor within parts
    assert len(set(uids)) == len(uids)
    assert splits == make_splits(train_pool, eval_pool, n_train, n_fewshot, n_eval, seed)


@pytest.mark.skipif(not SHARED_GSM8K.is_dir(), reason="needs ../shared/data/gsm8k (real GSM8K)")
def test_make_splits_on_real_gsm8k():
    train = load("jsonl", "train", path=SHARED_GSM8K)
    test = load("jsonl", "test", path=SHARED_GSM8K)
    splits = make_splits(train, test, n_train=2000, n_fewshot=50, n_eval=1319, seed=0)
    assert {e.uid.split(":")[1] for e in splits.eval} == {"test"}
    assert {e.uid.split(":")[1] for e in splits.train + splits.fewshot} == {"train"}
