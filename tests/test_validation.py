"""Config validation as data: every numeric field has a declared range, checked before compute."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cliffdistill.engine import methods
from cliffdistill.run import loop, validation
from cliffdistill.models import hf_io, sharding
from configs import base, toy
from tests.tiny import tiny_run_config

REPO = Path(__file__).resolve().parents[1]


def _numeric_leaves(cfg):
    return [(p, v) for p, v in validation.leaves(cfg) if validation.is_numeric(v)]


def _set(cfg, path, value):
    *parents, leaf = path.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    node[leaf] = value


def _invalid_value(path, rule):
    """A value just outside the rule (below lo or above hi)."""
    if rule.lo is not None:
        return rule.lo - 1 if rule.integer else rule.lo - 0.5
    return rule.hi + 1


@pytest.mark.parametrize("get_config", [base.get_config, lambda: toy.get_config("size"),
                                        lambda: toy.get_config("context")])
def test_every_numeric_field_has_a_declared_range(get_config):
    cfg = get_config()
    unchecked = [p for p, _ in _numeric_leaves(cfg)
                 if p not in validation.RULES and not p.startswith("schedule.")]
    assert not unchecked, f"numeric config fields with no declared range: {unchecked}"
    assert validation.problems(cfg) == []  # the shipped defaults are valid


def test_every_declared_range_rejects_a_value_outside_it_naming_the_field():
    cfg = base.get_config()
    for path, value in _numeric_leaves(cfg):
        rule = validation.RULES.get(path)
        if not isinstance(rule, validation.Range):
            continue
        bad = copy.deepcopy(cfg)
        _set(bad, path, _invalid_value(path, rule))
        with pytest.raises(ValueError, match=f"`{path}`"):
            validation.check_config(bad)


def test_schedule_fields_are_range_checked_by_the_schedule_validator():
    cfg = base.get_config()
    for path, _ in _numeric_leaves(cfg):
        if not path.startswith("schedule."):
            continue
        bad = copy.deepcopy(cfg.schedule)
        field = path.split(".", 1)[1]
        bad[field] = -1 if isinstance(bad[field], int) else -0.5
        with pytest.raises(ValueError, match=f"`{field}`"):
            methods.validate_schedule_config(bad)


@pytest.mark.parametrize("path,value,needle", [
    ("rollout.temperature", -1.0, ">= 0.0"),
    ("optim.lr", -1.0, "> 0.0"),
    ("optim.lr", 0.0, "> 0.0"),
    ("rollout.batch_size", 0, ">= 1"),
    ("rollout.top_p", 0.0, "> 0.0"),
    ("rollout.top_p", 1.5, "<= 1.0"),
    ("rollout.top_k", -3, ">= 0"),
    ("lora.rank", 0, ">= 1"),
    ("optim.lr", float("nan"), "finite"),
    ("loss.on_policy", "kl", "one of"),
    ("student.dtype", "fp8", "one of"),
])
def test_nonsensical_values_are_named(path, value, needle):
    cfg = base.get_config()
    _set(cfg, path, value)
    with pytest.raises(ValueError) as e:
        validation.check_config(cfg)
    assert f"`{path}`" in str(e.value) and needle in str(e.value)


def test_all_problems_are_reported_at_once():
    cfg = base.get_config()
    cfg.rollout.temperature, cfg.optim.lr = -1.0, -1.0
    assert len(validation.problems(cfg)) == 2


def test_optional_fields_may_be_none():
    cfg = base.get_config()
    assert cfg.distributed.num_processes is None
    assert validation.problems(cfg) == []


def test_workdir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        validation.check_workdir(f)
    with pytest.raises(ValueError, match="parent of it is a file"):
        validation.check_workdir(f / "run")


@pytest.mark.parametrize("error,needle", [
    (PermissionError(13, "Permission denied"), "not writable"),
    (OSError(28, "No space left on device"), "no space left"),
    (OSError(30, "Read-only file system"), "read-only"),
])
def test_workdir_write_failures_are_one_sentence(tmp_path, monkeypatch, error, needle):
    def fail(self, data):
        raise error
    monkeypatch.setattr(validation.Path, "write_bytes", fail)
    with pytest.raises(ValueError, match=needle):
        validation.check_workdir(tmp_path / "run")


def test_workdir_is_created(tmp_path):
    validation.check_workdir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not any((tmp_path / "a" / "b").iterdir())


# ----------------------------------------------------------------------------- wired into the CLIs


@pytest.mark.parametrize("path,value", [("rollout.temperature", -1.0), ("optim.lr", -1.0),
                                        ("rollout.batch_size", 0)])
def test_train_run_fails_before_loading_models_naming_the_field(tiny_pair, tmp_path, monkeypatch,
                                                               path, value):
    def no_loads(*args, **kwargs):
        raise AssertionError("a mesh was built or a model loaded before the config was checked")

    # make_mesh is the first thing setup does after validate_config (load_hf is memoised)
    monkeypatch.setattr(sharding, "make_mesh", no_loads)
    monkeypatch.setattr(hf_io, "load_hf", no_loads)
    cfg = tiny_run_config(tiny_pair)
    _set(cfg, path, value)
    with pytest.raises(ValueError, match=f"`{path}`"):
        loop.run(cfg, tmp_path / "run", progress=False)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and f"`{path}`" in status["error"]


def test_train_run_workdir_that_is_a_file(tiny_pair, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        loop.run(tiny_run_config(tiny_pair), f, progress=False)
    assert f.read_text() == "x"


def test_train_cli_rejects_a_negative_temperature_with_the_field_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cliffdistill.train", "--config", "configs/base.py",
         f"--workdir={tmp_path / 'run'}", "--config.rollout.temperature=-1.0"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert "config field `rollout.temperature`=-1.0 is invalid: must be >= 0.0" in proc.stderr
