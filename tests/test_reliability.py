"""One writer per directory and config integrity (docs/RELIABILITY.md): real concurrent processes
on one workdir and one sweep dir, stale-lock takeover after kill -9, changed-config resumes
(refused, and allowed with the history recorded), every config field classified, and the
method-specific schedule checks.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cliffdistill.engine import methods
from cliffdistill.run import assembly, evaluation, integrity, lock, loop, rundir
from cliffdistill.run.config_io import REPO_ROOT, load_config_file
from cliffdistill.study import toy, toy_config
from cliffdistill import report
from cliffdistill.report.markdown import render_markdown
from tests.fault_child import fault_config
from tests.tiny import tiny_run_config

CHILD = Path(__file__).resolve().parent / "writer_child.py"


def _child(args: dict, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD), json.dumps(args)], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- the lock


def test_lock_is_exclusive_across_processes_and_reentrant_within_one(tmp_path):
    d = tmp_path / "dir"
    holder = _child({"mode": "hold", "dir": str(d), "ready": str(tmp_path / "ready")})
    try:
        _wait_for(tmp_path / "ready", holder)
        with pytest.raises(lock.Locked) as e:
            with lock.hold(d, "second"):
                pass
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and "test holder" in msg and "since" in msg
    finally:
        holder.kill()
        holder.wait()
    with lock.hold(d, "outer"):
        with lock.hold(d, "inner"):  # the main job holding its workdir while its sweep runs
            assert lock.read_owner(d)["command"] == "outer"


def test_lock_of_a_killed_owner_is_taken_over_with_a_warning(tmp_path, caplog):
    d = tmp_path / "dir"
    holder = _child({"mode": "hold", "dir": str(d), "ready": str(tmp_path / "ready")})
    _wait_for(tmp_path / "ready", holder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock.read_owner(d)["pid"] == holder.pid  # the record outlives its owner
    with caplog.at_level(logging.WARNING, logger="cliffdistill.run.lock"):
        with lock.hold(d, "after"):
            assert lock.read_owner(d)["pid"] == os.getpid()
    assert f"pid {holder.pid}" in caplog.text and "which is gone" in caplog.text


def test_owner_record_decides_where_flock_is_missing(tmp_path, monkeypatch):
    """A filesystem without flock: a live owner refuses, a dead one is taken over."""
    d = tmp_path / "dir"
    d.mkdir()
    live = lock.owner_record("someone")
    live["pid"] = os.getppid()
    live["pid_start"] = rundir.pid_start(os.getppid())
    (d / rundir.LOCK_FILE).write_text(json.dumps(live))

    def no_flock(fd, op):
        raise OSError(38, "Function not implemented")  # ENOSYS

    monkeypatch.setattr(lock.fcntl, "flock", no_flock)
    with pytest.raises(lock.Locked, match="no flock"):
        with lock.hold(d, "me"):
            pass
    dead = dict(live, pid=2 ** 22 + 12345, pid_start=None)
    (d / rundir.LOCK_FILE).write_text(json.dumps(dead))
    with lock.hold(d, "me"):
        assert lock.read_owner(d)["command"] == "me"


def _no_time(records):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "mfu", "seconds"))}
            for r in records]


@pytest.mark.slow
def test_second_trainer_on_one_workdir_is_refused_first_untouched(tiny_pair, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    reference = fault_config(tiny_pair, cache)  # the same run, alone (builds the shared cache)
    assert loop.run(reference, tmp_path / "ref", progress=False)["state"] == "done"
    paths = {k: str(v) for k, v in tiny_pair.items()}
    first = _child({"mode": "train", "paths": paths, "cache_dir": str(cache), "dir": str(run_dir),
                    "ready": str(tmp_path / "ready"), "go": str(tmp_path / "go")})
    try:
        _wait_for(tmp_path / "ready", first)  # the first trainer is mid-run (after step 1)
        second = _child({"mode": "train", "paths": paths, "cache_dir": str(cache),
                         "dir": str(run_dir)})
        _, err = second.communicate(timeout=300)
        assert second.returncode == 3, err[-3000:]
        assert f"is being written by train (pid {first.pid}" in err
        (tmp_path / "go").touch()
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    for name in (rundir.METRICS_FILE, rundir.EVAL_FILE):  # the first run, as if it were alone
        assert _no_time(rundir.read_jsonl(run_dir / name)) == _no_time(
            rundir.read_jsonl(tmp_path / "ref" / name)), name
    assert [r["step"] for r in rundir.read_jsonl(run_dir / rundir.METRICS_FILE)] == list(range(6))
    assert rundir.saved_steps(run_dir) == rundir.saved_steps(tmp_path / "ref")
    status = rundir.read_status(run_dir)
    assert status["state"] == "done" and status["pid"] == first.pid


def test_second_sweep_on_one_sweep_dir_is_refused(tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = _child({"mode": "sweep", "dir": str(sweep_dir), "ready": str(tmp_path / "ready"),
                    "go": str(tmp_path / "go")})
    try:
        _wait_for(tmp_path / "ready", first)
        second = _child({"mode": "sweep", "dir": str(sweep_dir)})
        _, err = second.communicate(timeout=300)
        assert second.returncode == 3 and f"sweep (pid {first.pid}" in err, err[-3000:]
        (tmp_path / "go").touch()
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert sorted(p.name for p in (sweep_dir / "runs").iterdir()) == ["seed=0", "seed=1"]


# ----------------------------------------------------------------------------- config integrity


def _shipped_configs():
    out = [("configs/base.py", load_config_file("configs/base.py"))]
    for setup in ("size", "context"):
        out.append((f"configs/toy.py:{setup}", load_config_file(f"configs/toy.py:{setup}")))
    return out


@pytest.mark.parametrize("name,cfg", _shipped_configs(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_config_field_is_classified(name, cfg):
    unclassified = [f for f, _ in integrity.flat(cfg.to_dict()) if integrity.classify(f) is None]
    assert not unclassified, f"{name}: classify these in cliffdistill/run/integrity.py: {unclassified}"


def test_every_classified_entry_names_a_real_field():
    fields = [f for f, _ in integrity.flat(load_config_file("configs/base.py").to_dict())]
    for key in list(integrity.FREE) + list(integrity.RESULT):
        assert any(f == key or f.startswith(key + ".") for f in fields), key


def test_diff_names_result_fields_only():
    old = load_config_file("configs/base.py").to_dict()
    new = load_config_file("configs/base.py")
    new.method, new.eval.every, new.checkpoint.keep, new.optim.lr = "hybrid", 7, 1, 1e-3
    changes = integrity.diff(old, new.to_dict())
    assert [c[0] for c in changes] == ["method", "optim.lr"]
    assert "method: 'on_policy_gkd' → 'hybrid'" in integrity.describe(changes)
    assert {c[0] for c in integrity.diff(old, new.to_dict(), free_too=True)} >= {
        "eval.every", "checkpoint.keep"}


def _stopped_run(tiny_pair, run_dir):
    """A tiny on_policy_gkd run stopped after step 2 (checkpoint at 2 kept, status failed)."""
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", steps=4)

    def stop(step, _):
        if step == 1:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        loop.run(cfg, run_dir, progress=False, step_hook=stop)
    assert rundir.saved_steps(run_dir) == [2]
    return cfg


@pytest.mark.slow
def test_changed_config_resume_is_refused_then_allowed_and_recorded(tiny_pair, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _stopped_run(tiny_pair, run_dir)
    saved = (run_dir / rundir.CONFIG_FILE).read_text()
    status = rundir.read_status(run_dir)
    changed = tiny_run_config(tiny_pair, "hybrid", steps=4)
    changed.optim.lr = 1e-3
    with pytest.raises(integrity.ConfigChanged) as e:
        loop.run(changed, run_dir, progress=False)
    assert "method: 'on_policy_gkd' → 'hybrid'" in str(e.value)
    assert "optim.lr: 0.0003 → 0.001" in str(e.value) and "--allow_config_change" in str(e.value)
    assert rundir.read_status(run_dir) == status  # refused before anything was written
    assert (run_dir / rundir.CONFIG_FILE).read_text() == saved

    free = tiny_run_config(tiny_pair, "on_policy_gkd", steps=4)
    free.checkpoint.keep, free.log_every = 5, 3  # fields that cannot change results
    assert integrity.check_resume(run_dir, free.to_dict()) == []

    assert loop.run(changed, run_dir, progress=False, allow_config_change=True)["state"] == "done"
    assert (run_dir / rundir.CONFIG_FILE).read_text() == saved  # the original stays
    (h,) = integrity.history(run_dir)
    assert h["step"] == 2 and h["changes"]["method"] == ["on_policy_gkd", "hybrid"]
    assert evaluation.load_run_config(run_dir).method == "hybrid"  # what the run now is
    assert integrity.history_lines(run_dir) == [
        "config changed at step 2: method: 'on_policy_gkd' → 'hybrid'; optim.lr: 0.0003 → 0.001"]
    # the report shows it
    sweep = tmp_path / "sweep"
    (sweep / rundir.RUNS_SUBDIR).mkdir(parents=True)
    os.rename(run_dir, sweep / rundir.RUNS_SUBDIR / "r")
    agg = report.aggregate(sweep)
    assert "## Runs whose config changed mid-run" in render_markdown(agg, {})
    # a further resume compares with the config the run now has
    assert loop.run(changed, sweep / rundir.RUNS_SUBDIR / "r", progress=False)["state"] == "done"
    with pytest.raises(integrity.ConfigChanged, match="'hybrid' → 'on_policy_gkd'"):
        loop.run(cfg, sweep / rundir.RUNS_SUBDIR / "r", progress=False)


def test_a_run_with_nothing_kept_restarts_with_the_new_config(tmp_path):
    (tmp_path / rundir.CONFIG_FILE).write_text(json.dumps({"method": "hybrid"}))
    assert integrity.check_resume(tmp_path, {"method": "mixture"}) == []  # no checkpoint, no eval
    (tmp_path / rundir.CHECKPOINT_DIR / "3.orbax-checkpoint-tmp-1").mkdir(parents=True)
    assert integrity.check_resume(tmp_path, {"method": "mixture"}) == []  # a partial save: none
    rundir.append_jsonl(tmp_path / rundir.EVAL_FILE, {"step": 0, "accuracy": 0.1})
    with pytest.raises(integrity.ConfigChanged, match="at step 0"):
        integrity.check_resume(tmp_path, {"method": "mixture"})


# ----------------------------------------------------------------------------- validation


def test_another_methods_schedule_field_does_not_refuse_a_run(tiny_pair):
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", steps=10)
    cfg.schedule.hybrid_switch_step = 20  # hybrid's field, out of range for 10 steps
    cfg.schedule.reverse_switch_step = 30
    assembly.validate_config(cfg)  # on_policy_gkd runs
    cfg.method = "hybrid"
    with pytest.raises(ValueError, match=r"hybrid_switch_step`=20 \(a field of method `hybrid`\)"):
        assembly.validate_config(cfg)
    cfg.schedule.hybrid_switch_step = 5
    with pytest.raises(ValueError, match="a field of method `reverse_curriculum`"):
        methods.validate_schedule_config(cfg.schedule)  # no method: every field is checked


# ----------------------------------------------------------------------------- atomic files


@pytest.mark.parametrize("name", [rundir.CONFIG_FILE, rundir.STATUS_FILE, "testbed.json",
                                  "RESULTS.md"])
def test_kill_during_an_atomic_write_leaves_the_old_file(tmp_path, name):
    target = tmp_path / name
    rundir.write_text(target, "old\n")
    code = (f"from cliffdistill.run import rundir; rundir.write_text({str(target)!r}, 'new' * 1000)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT),
                               rundir.FAULT_ENV: f"atomic_write:{name}"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert target.read_text() == "old\n"
    rundir.write_text(target, "new\n")  # the next write is unaffected by the orphaned temp file
    assert target.read_text() == "new\n"


# ----------------------------------------------------------------------------- the testbed cache


def test_a_testbed_built_by_other_code_is_refused(tmp_path):
    c = toy_config.default_prepare_config()
    root = toy.cache_root(tmp_path, c)
    root.mkdir(parents=True)
    report = {"testbed": {}, "code_digest": "0" * 12}
    rundir.write_json(root / "prepared.json", report)
    with pytest.raises(toy.StaleTestbed, match=r"built by other testbed code .*--rebuild_testbed"):
        toy.prepare(tmp_path, c, say=lambda _: None)
    assert (root / "prepared.json").exists()  # refused: nothing deleted
    rundir.write_json(root / "prepared.json", {**report, "code_digest": toy.code_digest()})
    lines = []
    assert toy.prepare(tmp_path, c, say=lines.append).root == root  # the same code: reused
    assert lines[0] == f"toy testbed: reusing {root}"
