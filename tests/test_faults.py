"""Faults beyond a clean kill (issue #13): kill -9 at deterministic points, corrupt checkpoints,
a truncated teacher-sample cache, stale run state; every resumed run must equal an uninterrupted
one bit for bit (LoRA params, optimizer state, per-step metrics, evals).

Kills use the `CLIFFDISTILL_FAULT=<point>:<index>` test hook (`rundir.fault_point`) in a child
process (tests/fault_child.py), never sleeps or timing races.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cliffdistill.run import evaluation, loop, offpolicy, rundir
from cliffdistill.run import assembly
from tests.fault_child import STEPS, fault_config

REPO = Path(__file__).resolve().parents[1]


def _no_time(records):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "mfu", "seconds"))}
            for r in records]


def _outcome(cfg, run_dir):
    """What must not change with a fault: final train state, per-step metrics, evals."""
    with rundir.Checkpoints(run_dir) as ckpt:
        state = ckpt.restore(ckpt.latest(), assembly.init_state(assembly.make_setup(cfg), STEPS))
    return (jax.tree_util.tree_map(np.asarray, state),
            _no_time(rundir.read_jsonl(run_dir / rundir.METRICS_FILE)),
            _no_time(rundir.read_jsonl(run_dir / rundir.EVAL_FILE)))


def _assert_same(a, b):
    state_a, metrics_a, evals_a = a
    state_b, metrics_b, evals_b = b
    leaves_a, tree_a = jax.tree_util.tree_flatten(state_a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(state_b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)
    assert [m["step"] for m in metrics_a] == list(range(STEPS))
    assert metrics_a == metrics_b
    assert evals_a == evals_b and [e["step"] for e in evals_a] == [0, 2, 4, 6]


@pytest.fixture(scope="module")
def straight(tiny_pair, tmp_path_factory):
    """The uninterrupted reference run; its teacher-sample cache is shared with the faulted runs
    (except the one that kills the cache build)."""
    root = tmp_path_factory.mktemp("straight")
    cfg = fault_config(tiny_pair, root / "cache")
    assert loop.run(cfg, root / "run", progress=False)["state"] == "done"
    return cfg, root / "cache", _outcome(cfg, root / "run")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by the child processes: only the first one compiles."""
    return tmp_path_factory.mktemp("xla_cache")


def _run_child_until_killed(tiny_pair, run_dir, cache_dir, fault, compile_cache):
    env = {**os.environ, rundir.FAULT_ENV: fault, "JAX_COMPILATION_CACHE_DIR": str(compile_cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONPATH": str(REPO)}
    args = {"paths": {k: str(v) for k, v in tiny_pair.items()}, "workdir": str(run_dir),
            "cache_dir": str(cache_dir)}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "fault_child.py"), json.dumps(args)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
    # killed without warning: status.json still says running, and it reads as stale
    assert rundir.read_status(run_dir)["state"] == "running"
    assert rundir.run_state(run_dir) == "stale"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["step:3", "checkpoint_write:4", "atomic_write:config.json",
                                   "atomic_write:eval.jsonl"])
def test_kill_9_then_resume_equals_uninterrupted(tiny_pair, tmp_path, straight, compile_cache,
                                                 fault):
    cfg, cache, reference = straight
    run_dir = tmp_path / "run"
    _run_child_until_killed(tiny_pair, run_dir, cache, fault, compile_cache)
    summary = loop.run(cfg, run_dir, progress=False)
    assert summary["state"] == "done"
    _assert_same(_outcome(cfg, run_dir), reference)


@pytest.mark.slow
def test_kill_9_while_building_teacher_cache(tiny_pair, tmp_path, straight, compile_cache):
    cfg_ref, _, reference = straight
    cache = tmp_path / "cache"
    _run_child_until_killed(tiny_pair, tmp_path / "run", cache, "teacher_cache:0", compile_cache)
    assert not list(cache.glob("teacher_samples_*.npz"))  # only an orphaned temp file
    assert list(cache.glob(".teacher_samples_*.tmp"))
    cfg = fault_config(tiny_pair, cache)
    assert loop.run(cfg, tmp_path / "run", progress=False)["state"] == "done"
    _assert_same(_outcome(cfg, tmp_path / "run"), reference)


@pytest.mark.slow
def test_full_disk_while_checkpointing_fails_plainly_and_resumes(tmp_path, straight, monkeypatch):
    cfg, _, reference = straight
    run_dir = tmp_path / "run"
    monkeypatch.setenv(rundir.FAULT_ENV, "checkpoint_enospc:4")
    with pytest.raises(rundir.CheckpointError, match="no space left on device"):
        loop.run(cfg, run_dir, progress=False)
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed"
    assert "no space left on device while saving checkpoint step 4" in status["error"]
    assert "complete checkpoints ([2]) are intact" in status["error"]
    assert rundir.saved_steps(run_dir) == [2]
    monkeypatch.delenv(rundir.FAULT_ENV)
    assert loop.run(cfg, run_dir, progress=False)["state"] == "done"
    _assert_same(_outcome(cfg, run_dir), reference)


def _stop_after_step(n):
    def hook(step, _):
        if step == n:
            raise RuntimeError(f"stopped after step {n}")
    return hook


def _corrupt(checkpoint: Path) -> None:
    """Overwrites the data files of a checkpoint (its metadata stays: it still looks saved)."""
    hit = 0
    for f in (checkpoint / "default").rglob("*"):
        if f.is_file() and not f.name.startswith("_"):
            f.write_bytes(b"garbage")
            hit += 1
    assert hit, f"no data files under {checkpoint}"


@pytest.mark.slow
def test_corrupt_newest_checkpoint_resumes_from_previous(tiny_pair, tmp_path, straight):
    cfg, _, reference = straight
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped after step 3"):
        loop.run(cfg, run_dir, step_hook=_stop_after_step(3), progress=False)
    assert rundir.run_state(run_dir) == "failed"
    with rundir.Checkpoints(run_dir) as ckpt:
        assert ckpt.all_steps() == [2, 4]
    _corrupt(run_dir / "checkpoints" / "4")

    # evaluate: a bad single step names step and path; --step all skips it with a warning
    with pytest.raises(rundir.CheckpointError, match=r"step 4 at .*checkpoints/4 cannot be restored"):
        evaluation.evaluate_run(run_dir, 4, echo=None)
    result = evaluation.evaluate_run(run_dir, "all", echo=None)
    assert sorted(result["steps"]) == [0, 2] and [s["step"] for s in result["skipped"]] == [4]

    summary = loop.run(cfg, run_dir, progress=False)
    assert summary["state"] == "done"
    status = rundir.read_status(run_dir)
    assert status["state"] == "done" and status["resumed_from"] == 2
    [skipped] = status["skipped_checkpoints"]
    assert skipped["step"] == 4 and skipped["path"].endswith("checkpoints/4")
    assert list((run_dir / "checkpoints.bad").iterdir())  # kept for a post-mortem
    _assert_same(_outcome(cfg, run_dir), reference)


def test_no_restorable_checkpoint_fails_clearly_and_is_recorded(tiny_pair, tmp_path):
    cfg = fault_config(tiny_pair, tmp_path / "cache")
    cfg.method = "on_policy_gkd"
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped after step 1"):
        loop.run(cfg, run_dir, step_hook=_stop_after_step(1), progress=False)
    _corrupt(run_dir / "checkpoints" / "2")
    with pytest.raises(rundir.CheckpointError, match=r"no checkpoint in .*checkpoints can be "
                       r"restored: step 2: .*Delete"):
        loop.run(cfg, run_dir, progress=False)
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and "CheckpointError" in status["error"]
    assert "restore_latest" in status["traceback"]


# ----------------------------------------------------------------------------- teacher-sample cache


def test_truncated_or_wrong_teacher_cache_is_rebuilt_not_trusted(tmp_path):
    file = tmp_path / "teacher_samples_x.npz"
    tokens = np.arange(12, dtype=np.int32).reshape(3, 4)
    mask = np.ones((3, 4), bool)
    offpolicy.save_samples(file, tokens, mask)
    got = offpolicy.load_samples(file, (3, 4), vocab_size=100)
    np.testing.assert_array_equal(got[0], tokens)
    assert offpolicy.load_samples(file, (3, 8), vocab_size=100) is None  # other shape
    assert offpolicy.load_samples(file, (3, 4), vocab_size=5) is None  # ids beyond the vocab
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])  # a truncated file
    assert offpolicy.load_samples(file, (3, 4), vocab_size=100) is None
    assert offpolicy.load_samples(tmp_path / "missing.npz", (3, 4), vocab_size=100) is None


def test_replay_buffer_is_checked_on_restore():
    good = {"items": np.array([3, 1, 0, 0]), "size": np.asarray(2), "ptr": np.asarray(2)}
    offpolicy.check_replay(good, n_prompts=4)
    with pytest.raises(ValueError, match="outside"):
        offpolicy.check_replay({**good, "items": np.array([3, 9, 0, 0])}, n_prompts=4)
    with pytest.raises(ValueError, match="inconsistent"):
        offpolicy.check_replay({**good, "size": np.asarray(5)}, n_prompts=4)


# ----------------------------------------------------------------------------- stale state


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_staleness_rules():
    host, now = socket.gethostname(), time.time()
    alive = {"state": "running", "pid": os.getpid(), "host": host, "heartbeat": now}
    assert rundir.staleness(alive) is None
    assert "gone" in rundir.staleness({**alive, "pid": _dead_pid()})
    elsewhere = {**alive, "host": "other-host", "pid": 1}
    assert rundir.staleness(elsewhere, now=now + 10, stale_after=60) is None
    assert "no heartbeat for" in rundir.staleness(elsewhere, now=now + 61, stale_after=60)
    assert rundir.staleness({"state": "running"}) == "no heartbeat recorded"
    assert rundir.staleness({**alive, "pid": _dead_pid(), "state": "done"}) is None
    # a pid now held by another process (reused): its start time differs
    me = rundir.pid_start(os.getpid())
    if me is not None:  # Linux
        assert rundir.staleness({**alive, "pid_start": me}) is None
        assert "gone" in rundir.staleness({**alive, "pid_start": me + 1})
        assert rundir.owner_fields()["pid_start"] == me


def test_heartbeat_renews_and_status_cli_reports_stale(tmp_path):
    beat = rundir.Heartbeat(tmp_path / "live", interval=0.05)
    beat.start(final_step=0)
    first = rundir.read_status(tmp_path / "live")["heartbeat"]
    deadline = time.time() + 10
    while rundir.read_status(tmp_path / "live")["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.05)
    assert rundir.read_status(tmp_path / "live")["heartbeat"] > first
    assert rundir.run_state(tmp_path / "live") == "running"
    rundir.write_status(tmp_path / "dead", {"state": "running", "pid": _dead_pid(),
                                            "host": socket.gethostname(), "heartbeat": time.time(),
                                            "final_step": 3})
    cli = subprocess.run([sys.executable, "-m", "cliffdistill.status", str(tmp_path / "live"),
                          str(tmp_path / "dead")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    out = cli.stdout.splitlines()
    assert out[0].startswith("running") and out[1].startswith("stale     step=3")
    assert "is gone; re-run it to resume" in out[1]
    beat.finish(state="done")
    assert rundir.run_state(tmp_path / "live") == "done"



def test_checkpoints_accept_a_relative_workdir(tmp_path, monkeypatch):
    """orbax needs absolute paths; Checkpoints resolves a relative local workdir itself (the
    main job's retention eval restores from a relative run directory)."""
    monkeypatch.chdir(tmp_path)
    state = {"step": np.int32(1), "w": np.arange(4.0, dtype=np.float32)}
    with rundir.Checkpoints("rel/run", keep=1, async_save=False) as ckpt:
        ckpt.save(state, wait=True)
    with rundir.Checkpoints("rel/run", keep=1, async_save=False) as ckpt:
        assert ckpt.all_steps() == [1]
        got = ckpt.restore(1, {"step": np.int32(0), "w": np.zeros(4, np.float32)})
    np.testing.assert_array_equal(got["w"], state["w"])
    assert (tmp_path / "rel" / "run" / rundir.CHECKPOINT_DIR / "1").is_dir()
