"""Benchmarks a run scores at step 0 and at its end (`eval.benchmarks`), the toy retention
benchmark, and the retention table: pairing on the same documents, intervals vs scipy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats
import transformers

from cliffdistill.data import gsm8k, synthetic
from cliffdistill.models import hf_io
from cliffdistill.report import retention as report_retention
from cliffdistill.run import benchmarks, loop
from cliffdistill.study import retention
from cliffdistill.tasks import choice_jsonl, multiple_choice, runner
from cliffdistill.tasks.multiple_choice import Model
from tests.tiny import tiny_run_config

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_choice_jsonl_rows_and_errors(tmp_path):
    good = _write(tmp_path / "ok.jsonl", [
        {"context": "2+2=", "choices": ["4", "5"], "gold": 0, "delimiter": ""},
        {"context": "Sky?", "choices": ["blue", "green", "red"], "gold": 2}])
    docs = choice_jsonl.load(good)
    assert [d.doc_id for d in docs] == [0, 1]
    assert multiple_choice.continuations(docs[0]) == ["4", "5"]
    assert multiple_choice.continuations(docs[1]) == [" blue", " green", " red"]  # harness default
    assert len(choice_jsonl.load(good, limit=1)) == 1
    with pytest.raises(ValueError, match="num_fewshot 0"):
        choice_jsonl.load(good, num_fewshot=1)
    cases = [({"context": "q", "choices": ["a", "b"], "gold": 2}, "gold index 2"),
             ({"choices": ["a", "b"], "gold": 0}, "missing field 'context'"),
             ({"context": "q", "choices": ["a"], "gold": 0}, "at least two"),
             ({"context": "q", "choices": ["a", "b"], "gold": 0, "delimiter": 1}, "'delimiter'")]
    for row, message in cases:
        bad = _write(tmp_path / "bad.jsonl", [{"context": "q", "choices": ["a", "b"], "gold": 0}, row])
        with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{re.escape(message)}"):
            choice_jsonl.load(bad)


def _plain_examples(tmp_path: Path, n: int) -> list[gsm8k.Example]:
    synthetic.write_jsonl(synthetic.generate(n, seed=3), tmp_path / "test.jsonl")
    return gsm8k.load_jsonl(tmp_path / "test.jsonl")


def test_toy_arithmetic_documents_are_true_equations(tmp_path):
    examples = _plain_examples(tmp_path, 40)
    rows = retention.documents(examples, 30, seed=1)
    assert len(rows) == 30 and rows == retention.documents(examples, 30, seed=1)  # deterministic
    golds = []
    for row, ex in zip(rows, examples):
        expr = re.search(r"(\d+)([-+*/])(\d+)=$", row["context"])
        assert expr, row["context"][-40:]
        a, op, b = int(expr[1]), expr[2], int(expr[3])
        truth = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        assert int(row["choices"][row["gold"]]) == truth
        values = [int(c) for c in row["choices"]]
        assert len(set(values)) == 4 and all(1 <= v <= synthetic.MAX_VALUE for v in values)
        assert row["context"].startswith("<|user|>" + ex.question.strip())  # the student's view
        assert ex.solution.startswith(row["context"].split("<|assistant|>", 1)[1])
        golds.append(row["gold"])
    assert len(set(golds)) > 1  # the true result is not always in the same place
    spec = retention.write_benchmark(tmp_path, tmp_path / "out", 12)
    assert spec == f"choice_jsonl={tmp_path / 'out' / retention.FILE}"
    assert len(choice_jsonl.load(spec.split("=", 1)[1])) == 12


@pytest.fixture(scope="module")
def trained_run(tiny_pair, tmp_path_factory):
    """A 2-step on-policy run that scores the toy arithmetic benchmark at step 0 and the end."""
    root = tmp_path_factory.mktemp("bench_run")
    spec = retention.write_benchmark(tiny_pair["data"], root, 12)
    cfg = tiny_run_config(tiny_pair, steps=2)
    cfg.optim.lr = 5e-2  # two steps that visibly move the adapters
    cfg.eval.benchmarks.tasks, cfg.eval.benchmarks.batch_size = spec, 16
    loop.run(cfg, root / "run", progress=False)
    return {"dir": root / "run", "data": spec.split("=", 1)[1], "cfg": cfg}


def test_run_scores_benchmarks_at_step0_and_the_end(tiny_pair, trained_run):
    run_dir = trained_run["dir"]
    root = benchmarks.run_root(run_dir)
    assert benchmarks.steps_written(root) == [0, 2]
    step0 = benchmarks.read_records(root, 0, "choice_jsonl")
    end = benchmarks.read_records(root, 2, "choice_jsonl")
    # step 0 is the base student: its scores equal the model scored with no adapters at all
    cfg, params = hf_io.load_hf(tiny_pair["student"], dtype=jnp.float32)  # the run's dtype
    base = Model(cfg, params, transformers.AutoTokenizer.from_pretrained(tiny_pair["student"]))
    expected, _ = multiple_choice.evaluate_docs(base, choice_jsonl.load(trained_run["data"]))
    np.testing.assert_allclose([r["loglikelihoods"] for r in step0],
                               [r["loglikelihoods"] for r in expected], atol=1e-5)
    assert [r["doc_id"] for r in end] == [r["doc_id"] for r in step0]
    assert not np.allclose([r["loglikelihoods"] for r in end],
                           [r["loglikelihoods"] for r in step0], atol=1e-6)  # trained adapters
    r = benchmarks.retention(root)["choice_jsonl"]
    before, after = np.array([x["acc"] for x in step0]), np.array([x["acc"] for x in end])
    d = after - before
    assert r["before"] == pytest.approx(before.mean()) and r["after"] == pytest.approx(after.mean())
    assert r["n"] == 12 and r["steps"] == [0, 2]
    if d.std() > 0:
        low, high = scipy.stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy.stats.sem(d))
        assert r["diff_ci"] == pytest.approx([low, high])


def test_resume_does_not_rescore(tiny_pair, trained_run):
    summary = benchmarks.step_dir(benchmarks.run_root(trained_run["dir"]), 0) / "summary.json"
    stamp = summary.stat().st_mtime_ns
    loop.run(trained_run["cfg"], trained_run["dir"], progress=False)  # a finished run: nothing new
    assert summary.stat().st_mtime_ns == stamp


def test_bad_benchmark_spec_is_refused_naming_the_field(tiny_pair, tmp_path):
    for spec, message in (("winogrande=x", "unknown task 'winogrande'"),
                          ("choice_jsonl", "is not TASK=PATH"),
                          (f"choice_jsonl={tmp_path / 'nope.jsonl'}", "does not exist")):
        cfg = tiny_run_config(tiny_pair, steps=2)
        cfg.eval.benchmarks.tasks = spec
        with pytest.raises(ValueError, match=rf"eval\.benchmarks\.tasks.*{message}"):
            loop.run(cfg, tmp_path / "run", progress=False)
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_documents_must_match_between_steps():
    with pytest.raises(ValueError, match="different documents"):
        benchmarks.paired([{"doc_id": 0, "acc": 1.0}], [{"doc_id": 1, "acc": 1.0}], "x")


def test_samples_of_a_problem_pair_as_their_mean():
    """HumanEval with --n_samples: several records per problem, scored by their pass rate."""
    rec = lambda doc, passed: {"doc_id": doc, "task_id": f"T/{doc}", "passed": passed}  # noqa: E731
    x = benchmarks.paired([rec(0, True), rec(0, False), rec(1, False), rec(1, False)],
                          [rec(0, True), rec(0, True), rec(1, True), rec(1, False)], "x")
    np.testing.assert_array_equal(x, [[0.5, 1.0], [0.0, 0.5]])


def test_group_interval_is_over_seeds():
    rows = [{"setup": "size", "task": "t", "variant": "correct", "method": "m", "seed": s,
             "before": 0.5, "after": 0.5 + d, "diff": d, "diff_ci": [d - 0.1, d + 0.1], "n": 10}
            for s, d in enumerate([0.1, -0.05, 0.2])]
    rows.append({**rows[0], "method": "one", "diff": 0.3, "diff_ci": [0.1, 0.5]})
    g = {x["method"]: x for x in report_retention.group(rows)}
    d = np.array([0.1, -0.05, 0.2])
    low, high = scipy.stats.t.interval(0.95, 2, loc=d.mean(), scale=scipy.stats.sem(d))
    assert g["m"]["diff"] == pytest.approx(d.mean()) and g["m"]["diff_ci"] == pytest.approx([low, high])
    assert g["m"]["ci_basis"] == "seeds" and g["m"]["per_seed"] == pytest.approx(list(d))
    assert g["one"]["ci_basis"] == "docs" and g["one"]["diff_ci"] == [0.1, 0.5]
    table = report_retention.markdown(list(g.values()))
    assert len(table) == 4 and "[+10.0, +50.0] docs" in table[-1]


def test_workdir_humaneval_samples_and_progress(trained_run, tmp_path):
    """--workdir with --n_samples: the run's student at two steps, 3 samples per problem per
    step (one record each, the summary counting them), the retention pairing each problem's pass
    rate, and the progress of both HumanEval stages ending at (n, n)."""
    b = ml_collections.ConfigDict(dict(num_fewshot=0, limit=0, batch_size=2, max_new_tokens=8))
    calls = []
    humaneval_data = Path(__file__).parent / "data" / "benchmarks" / "humaneval.jsonl"
    out = benchmarks.evaluate_workdir(
        trained_run["dir"], [0, "latest"], {"humaneval": str(humaneval_data)}, tmp_path / "out", b,
        echo=None, sampling=runner.Sampling(n_samples=3, temperature=1.0, seed=0),
        progress=lambda task: lambda stage, done, total: calls.append((task, stage, done, total)))
    assert sorted(out) == [0, 2]
    for step in (0, 2):
        assert (out[step]["humaneval"]["n"], out[step]["humaneval"]["n_samples"]) == (2, 6)
        assert len(benchmarks.read_records(tmp_path / "out", step, "humaneval")) == 6
    assert benchmarks.retention(tmp_path / "out")["humaneval"]["n"] == 2
    last = {(task, stage): (done, total) for task, stage, done, total in calls}
    assert last == {("humaneval", "generated"): (6, 6), ("humaneval", "executed"): (6, 6)}


def test_cli_scores_a_runs_checkpoints(trained_run, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-m", "cliffdistill.evaluate", "--workdir",
                          str(trained_run["dir"]), "--tasks", "choice_jsonl", "--data",
                          trained_run["data"], "--step", "0,latest", "--batch_size", "16",
                          "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "retention, step 0 -> 2" in res.stdout
    run_root = benchmarks.run_root(trained_run["dir"])
    for step in (0, 2):
        ours = benchmarks.read_records(out, step, "choice_jsonl")
        theirs = benchmarks.read_records(run_root, step, "choice_jsonl")
        np.testing.assert_allclose([r["loglikelihoods"] for r in ours],
                                   [r["loglikelihoods"] for r in theirs], atol=1e-5)
