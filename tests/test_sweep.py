"""cliffdistill.sweep: expansion, validation, resumability, failure handling and sharding.

Runs are executed by a FAKE ``run_fn`` that writes the run-dir contract (config, metrics, eval,
status) deterministically from (method, seed), so no model is trained here.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ml_collections
import pytest

from cliffdistill.run import config_io
from cliffdistill.study import grid, runner

REPO = Path(__file__).resolve().parents[1]

BASE_CONFIG = """
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = ""
    c.setup = arg or "size"
    c.method = "on_policy_gkd"
    c.seed = 0
    c.lr = 3e-4
    c.steps = 4
    c.model = ml_collections.ConfigDict({"path": "/models/student"})
    c.ablation = ml_collections.ConfigDict({"no_shift": False, "drop_prompt": False})
    return c
"""


@pytest.fixture
def base_path(tmp_path: Path) -> Path:
    p = tmp_path / "base_cfg.py"
    p.write_text(BASE_CONFIG)
    return p


def make_sweep(base_path: Path, **fields) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "unit"
    c.base_config = str(base_path)
    c.base_overrides = {}
    c.product = {}
    c.zip = {}
    c.baselines = False
    for k, v in fields.items():
        c[k] = v
    return c


# ----------------------------------------------------------------------------- the fake trainer

ACC = {"on_policy_gkd": 0.6, "hybrid": 0.02, "teacher_seeded": 0.7}


def fake_run(cfg: ml_collections.ConfigDict, run_dir: Path) -> None:
    """Writes the run contract; numbers depend only on (method, seed).  Appends to metrics.jsonl,
    as a trainer restarted from scratch would, so duplicate steps must be handled downstream."""
    seed, method = int(cfg.seed), str(cfg.method)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), sort_keys=True))
    start = 0.5
    final = max(0.0, ACC.get(method, 0.4) + 0.01 * seed - (0.3 if cfg.ablation.no_shift else 0.0))
    with open(run_dir / "metrics.jsonl", "a") as f:
        for step in range(cfg.steps):
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "loss/total": 1.0 / (step + 1),
                        "teacher_score": -1.0 - 0.1 * step + 0.01 * seed,
                        "tokens/sampled": 64,
                        "tokens/scored": 64,
                        "tokens/trained": 60,
                        "time/rollout": 0.5,
                        "time/score": 0.25,
                        "time/update": 0.125,
                        "time/eval": 0.0,
                        "time/step": 1.0,
                    }
                )
                + "\n"
            )
    evals = [(0, start), (cfg.steps // 2, (start + final) / 2), (cfg.steps, final)]
    with open(run_dir / "eval.jsonl", "w") as f:
        for step, acc in evals:
            f.write(json.dumps({"step": step, "accuracy": acc, "n": 100, "correct": round(100 * acc)}) + "\n")
    (run_dir / "status.json").write_text(
        json.dumps(
            {
                "state": "done",
                "error": None,
                "final_step": cfg.steps,
                "wall_seconds": 1.5,
                "cost": {"device_hours": 0.01, "usd": 0.02},
            }
        )
    )


class Trainer:
    """Counts calls; raises ``interrupt`` on call number ``stop_at`` (1-based) after writing half a run,
    and ``RuntimeError`` for runs named in ``crash``."""

    def __init__(self, stop_at=None, interrupt=KeyboardInterrupt, crash=()):
        self.calls: list[str] = []
        self.stop_at, self.interrupt, self.crash = stop_at, interrupt, set(crash)

    def __call__(self, cfg, run_dir):
        self.calls.append(cfg.name)
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "tokens/sampled": 999}) + "\n")
            (run_dir / "status.json").write_text(json.dumps({"state": "running"}))
            raise self.interrupt()
        if cfg.name in self.crash:
            raise RuntimeError(f"boom in {cfg.name}")
        fake_run(cfg, run_dir)


def fake_baselines(cfg, out_path: Path) -> None:
    rec = {"accuracy": 0.5, "correct": 50, "n": 100}
    out_path.write_text(
        json.dumps(
            {"student": rec, "teacher": {**rec, "accuracy": 0.8, "correct": 80}, "teacher_with_context": None}
        )
    )


# ----------------------------------------------------------------------------- expansion


def test_product_crossed_with_zip_in_order(base_path):
    cfg = make_sweep(
        base_path,
        order=("setup", "method", "seed"),
        product={"setup": ["size", "context"], "method": ["hybrid", "mixture"]},
        zip={"seed": [0, 1], "lr": [0.1, 0.2]},
    )
    specs = grid.expand(cfg)
    assert [s.name for s in specs] == [
        f"setup={st}.method={m}.seed={sd}.lr={lr}"
        for st in ("size", "context")
        for m in ("hybrid", "mixture")
        for sd, lr in ((0, 0.1), (1, 0.2))
    ]
    assert specs[0].overrides == {"setup": "size", "method": "hybrid", "seed": 0, "lr": 0.1}
    assert grid.expand(cfg) == specs  # deterministic


def test_default_order_is_alphabetical_and_nested_fields_are_dotted(base_path):
    cfg = make_sweep(base_path, product={"seed": [0, 1], "ablation": {"no_shift": [False, True]}})
    names = [s.name for s in grid.expand(cfg)]
    # `ablation.no_shift` < `seed`; False switches are left out of names, short keys are used.
    assert names == ["seed=0", "seed=1", "no_shift=True.seed=0", "no_shift=True.seed=1"]
    run_cfg = grid.build_run_config(config_io.load_config_file(str(base_path)), {}, grid.expand(cfg)[3])
    assert run_cfg.ablation.no_shift is True and run_cfg.seed == 1 and run_cfg.name == "no_shift=True.seed=1"


def test_run_config_is_a_fresh_copy_with_overrides(base_path):
    base = config_io.load_config_file(str(base_path))
    cfg = make_sweep(base_path, base_overrides={"steps": 2, "model": {"path": "/m/x"}}, product={"seed": [3]})
    [spec] = grid.expand(cfg, base)
    run = grid.build_run_config(base, {"steps": 2, "model.path": "/m/x"}, spec)
    assert (run.steps, run.model.path, run.seed, run.name) == (2, "/m/x", 3, "seed=3")
    assert (base.steps, base.seed, base.name) == (4, 0, "")
    assert config_io.load_config_file(f"{base_path}:context").setup == "context"  # path.py:arg


def test_names_are_filesystem_safe_unique_and_bounded(base_path):
    cfg = make_sweep(base_path, product={"model": {"path": ["/a b/c", "/a b/d"]}})
    assert [s.name for s in grid.expand(cfg)] == ["path=_a_b_c", "path=_a_b_d"]
    long = make_sweep(base_path, product={"model": {"path": ["x" * 300, "y" * 300]}})
    names = [s.name for s in grid.expand(long)]
    assert all(len(n) <= 180 for n in names) and len(set(names)) == 2
    assert grid.expand(make_sweep(base_path))[0].name == "base"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"product": {"nope": [1, 2]}}, r"product\.nope.*no field `nope`"),
        ({"product": {"ablation": {"typo": [True]}}}, r"ablation\.typo"),
        ({"zip": {"seed": [0, 1, 2], "lr": [0.1, 0.2]}}, r"equal length.*zip\.lr has 2.*zip\.seed has 3"),
        ({"product": {"seed": ["zero"]}}, r"seed.*cannot set 'zero'"),
        ({"base_overrides": {"stepz": 3}}, r"base_overrides\.stepz"),
        ({"product": {"seed": [0]}, "zip": {"seed": [1]}}, r"`seed` is in both"),
        ({"product": {"seed": []}}, r"product\.seed.*empty list"),
        ({"product": {"seed": 3}}, r"product\.seed.*must be a list"),
        ({"product": {"seed": [1, 1]}}, r"same name"),
        ({"order": ("lr",), "product": {"seed": [1]}}, r"`order` names `lr`"),
    ],
)
def test_validation_errors_name_the_field(base_path, fields, message):
    with pytest.raises(ValueError, match=message):
        grid.expand(make_sweep(base_path, **fields))


def test_unknown_sweep_field_and_missing_base(base_path, tmp_path):
    cfg = make_sweep(base_path, product={"seed": [0]})
    with cfg.unlocked():
        cfg.prodcut = {}
    with pytest.raises(ValueError, match="prodcut"):
        grid.expand(cfg)
    with pytest.raises(FileNotFoundError, match="nothere.py"):
        grid.expand(make_sweep(tmp_path / "nothere.py"))


def test_shards_partition_runs():
    for total in (0, 1, 7, 12):
        for n in (1, 2, 3, 5):
            parts = [runner.shard_indices(total, (i, n)) for i in range(n)]
            flat = sorted(i for p in parts for i in p)
            assert flat == list(range(total))  # disjoint and covering
    assert runner.shard_indices(7, (1, 3)) == [1, 4]
    assert runner.parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            runner.parse_shard(bad)


# ----------------------------------------------------------------------------- running


def study_sweep(base_path, **extra):
    return make_sweep(
        base_path,
        order=("method", "seed"),
        product={"method": ["on_policy_gkd", "hybrid", "teacher_seeded"], "seed": [0, 1]},
        base_overrides={"steps": 4},
        baselines=True,
        **extra,
    )


OUTPUTS = ("results.json", "results.csv", "REPORT.md")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted sweep (its base config lives at the same path as in every test below)."""
    root = tmp_path_factory.mktemp("ref")
    base = root / "base_cfg.py"
    base.write_text(BASE_CONFIG)
    trainer = Trainer()
    result = runner.run_sweep(study_sweep(base), root / "sweep", trainer, fake_baselines, progress=False)
    assert len(trainer.calls) == 6 and result.ran == trainer.calls and result.report_written
    return base, {name: (root / "sweep" / name).read_bytes() for name in OUTPUTS}


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupted_sweep_resumes_and_matches_uninterrupted(reference, tmp_path, interrupt):
    base, expected = reference
    workdir = tmp_path / "sweep"
    first = Trainer(stop_at=4, interrupt=interrupt)
    with pytest.raises(interrupt):
        runner.run_sweep(study_sweep(base), workdir, first, fake_baselines, progress=False)
    assert len(first.calls) == 4
    assert not (workdir / "REPORT.md").exists()

    second = Trainer()
    result = runner.run_sweep(study_sweep(base), workdir, second, fake_baselines, progress=True)
    assert second.calls == first.calls[3:] + ["method=teacher_seeded.seed=0", "method=teacher_seeded.seed=1"]
    assert result.skipped == first.calls[:3] and result.baselines_ran == []
    for name in OUTPUTS:
        assert (workdir / name).read_bytes() == expected[name], name

    third = Trainer()  # idempotent: nothing left to do, same outputs
    runner.run_sweep(study_sweep(base), workdir, third, fake_baselines, progress=False)
    assert third.calls == []
    for name in OUTPUTS:
        assert (workdir / name).read_bytes() == expected[name], name


def test_crashing_run_is_recorded_and_retried_only_on_request(base_path, tmp_path):
    workdir = tmp_path / "sweep"
    bad = "method=hybrid.seed=1"
    trainer = Trainer(crash=[bad])
    result = runner.run_sweep(study_sweep(base_path), workdir, trainer, fake_baselines, progress=False)
    assert len(trainer.calls) == 6 and result.failed == [bad]
    status = json.loads((workdir / "runs" / bad / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == f"RuntimeError: boom in {bad}"
    assert "Traceback" in status["traceback"] and "boom" in status["traceback"]
    md = (workdir / "REPORT.md").read_text()
    assert f"| {bad} | RuntimeError: boom in {bad} |" in md
    results = json.loads((workdir / "results.json").read_text())
    [hybrid] = [g for g in results["groups"] if g["method"] == "hybrid"]
    assert (hybrid["n_done"], hybrid["n_failed"]) == (1, 1)

    again = Trainer()
    result = runner.run_sweep(study_sweep(base_path), workdir, again, fake_baselines, progress=False)
    assert again.calls == [] and result.failed == [bad]
    retry = Trainer()
    result = runner.run_sweep(
        study_sweep(base_path), workdir, retry, fake_baselines, retry_failed=True, progress=False
    )
    assert retry.calls == [bad] and result.failed == []
    assert json.loads((workdir / "runs" / bad / "status.json").read_text())["state"] == "done"


def test_preempted_run_stops_the_sweep(base_path, tmp_path):
    """SIGTERM (the trainer raises Preempted after its checkpoint) ends the sweep: no later run
    starts on a machine that is being taken away; the same command resumes."""
    from cliffdistill.run import rundir

    workdir = tmp_path / "sweep"
    calls = []

    def preempted_second(cfg, run_dir):
        calls.append(cfg.name)
        if len(calls) == 2:  # as the trainer: checkpoint saved, status "preempted", then raise
            rundir.write_status(run_dir, {"state": "preempted", "error": "SIGTERM at step 1"})
            raise rundir.Preempted("SIGTERM at step 1")
        Trainer()(cfg, run_dir)

    with pytest.raises(rundir.Preempted):
        runner.run_sweep(study_sweep(base_path), workdir, preempted_second, fake_baselines,
                        progress=False)
    assert len(calls) == 2
    again = Trainer()
    runner.run_sweep(study_sweep(base_path), workdir, again, fake_baselines, progress=False)
    assert calls[1] in again.calls and calls[0] not in again.calls


def pid_run(cfg: ml_collections.ConfigDict, run_dir: Path) -> None:
    """``fake_run`` that records the process it ran in and crashes on hybrid seed 1 (module
    level: a worker process unpickles it)."""
    (run_dir / "pid").write_text(str(os.getpid()))
    time.sleep(0.5)  # long enough that the second worker is up before the first is done
    if cfg.name == "method=hybrid.seed=1":
        raise RuntimeError("boom in a worker")
    fake_run(cfg, run_dir)


def test_a_free_worker_starts_the_first_run_of_a_kind_nobody_runs():
    kinds = ["ctx", "ctx", "size", "ctx", "size"]
    assert runner.next_task([0, 1, 2, 3, 4], kinds, running=[]) == 0
    assert runner.next_task([1, 2, 3, 4], kinds, running=[0]) == 2  # a size run beside a ctx one
    assert runner.next_task([1, 3, 4], kinds, running=[2]) == 1
    assert runner.next_task([3], kinds, running=[1]) == 3  # only its own kind left


def test_workers_run_in_parallel_processes_with_the_sequential_outputs(reference, tmp_path):
    """`workers=2`: the runs execute in two worker processes (not this one), a crash there is
    recorded as in-process, and with no crash the report is byte-identical to the sequential
    sweep's."""
    base, expected = reference
    workdir = tmp_path / "sweep"
    cost = {"on_policy_gkd": 1.0, "hybrid": 2.0, "teacher_seeded": 3.0}
    result = runner.run_sweep(study_sweep(base), workdir, pid_run, fake_baselines, progress=False,
                             workers=2, cost=lambda cfg: cost[cfg.method],
                             kind=lambda cfg: cfg.seed)
    pids = {int((workdir / "runs" / name / "pid").read_text()) for name in result.ran}
    assert len(result.ran) == 6 and len(pids) == 2 and os.getpid() not in pids
    assert result.failed == ["method=hybrid.seed=1"]
    status = json.loads((workdir / "runs" / "method=hybrid.seed=1" / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == "RuntimeError: boom in a worker"

    retried = runner.run_sweep(study_sweep(base), workdir, fake_run, fake_baselines,
                              retry_failed=True, progress=False, workers=2)
    assert retried.ran == ["method=hybrid.seed=1"] and retried.failed == []
    for name in OUTPUTS:
        assert (workdir / name).read_bytes() == expected[name], name


def test_a_dead_worker_stops_the_sweep_and_its_run_is_redone(base_path, tmp_path, monkeypatch):
    """A worker killed mid-run (OOM, kill -9) raises instead of leaving the sweep waiting; the
    same command then redoes that run (stale: its process is gone)."""
    victim = "method=hybrid.seed=0"
    monkeypatch.setenv("KILL_AT_RUN", victim)  # inherited by the spawned workers
    with pytest.raises(RuntimeError, match="worker process died"):
        runner.run_sweep(study_sweep(base_path), tmp_path / "sweep", killing_run, fake_baselines,
                        progress=False, workers=2)
    monkeypatch.delenv("KILL_AT_RUN")
    result = runner.run_sweep(study_sweep(base_path), tmp_path / "sweep", fake_run, fake_baselines,
                             progress=False, workers=2)
    assert victim in result.ran and not result.failed and result.report_written


def test_runner_writes_status_when_run_fn_does_not(base_path, tmp_path):
    workdir = tmp_path / "sweep"
    cfg = make_sweep(base_path, product={"seed": (0,)})

    def crash(cfg, run_dir):
        raise ValueError("bad config")

    def minimal(cfg, run_dir):  # a run_fn that leaves only metrics behind
        (run_dir / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n')

    assert runner.run_sweep(cfg, workdir, crash, progress=False).failed == ["seed=0"]
    result = runner.run_sweep(cfg, workdir, minimal, retry_failed=True, progress=False)
    assert result.ran == ["seed=0"] and result.failed == []
    status = json.loads((workdir / "runs" / "seed=0" / "status.json").read_text())
    assert (status["state"], status["error"], status["final_step"]) == ("done", None, 1)


def test_shards_run_each_run_once_and_last_shard_writes_report(base_path, tmp_path):
    workdir = tmp_path / "sweep"
    cfg = study_sweep(base_path, zip={})
    cfg.product.setup = ["size", "context"]  # 12 runs, 2 setups
    calls, baselines = [], []

    def count_baselines(setup_cfg, out):
        baselines.append(setup_cfg.setup)
        fake_baselines(setup_cfg, out)

    names = [s.name for s in grid.expand(cfg)]
    written = []
    for i in (0, 1, 2):
        trainer = Trainer()
        result = runner.run_sweep(cfg, workdir, trainer, count_baselines, shard=(i, 3), progress=False)
        calls.append(trainer.calls)
        written.append(result.report_written)
        assert result.selected == trainer.calls == names[i::3]
    flat = [n for c in calls for n in c]
    assert len(flat) == 12 and sorted(flat) == sorted(names)
    assert sorted(baselines) == ["context", "size"]  # setup j belongs to shard j % 3
    # shard 0 always reports; shard 1 left runs to shard 2; shard 2 found the sweep finished.
    assert written == [True, False, True]
    results = json.loads((workdir / "results.json").read_text())
    assert results["counts"] == {"runs": 12, "done": 12, "failed": 0, "pending": 0}


def test_resume_with_a_changed_run_config_is_refused(base_path, tmp_path):
    workdir = tmp_path / "sweep"
    runner.run_sweep(study_sweep(base_path), workdir, Trainer(), fake_baselines, progress=False)
    changed = study_sweep(base_path)
    changed.base_overrides = {"steps": 8}
    with pytest.raises(ValueError, match=r"6 run\(s\) .* made with a different config") as e:
        runner.run_sweep(changed, workdir, Trainer(), fake_baselines, progress=False)
    assert "method=hybrid.seed=1: steps: 4 → 8" in str(e.value) and "--rerun_changed" in str(e.value)
    trainer = Trainer()  # refused before any run: nothing ran, nothing moved
    assert not list((workdir / "runs").glob("*.replaced-*"))
    free = study_sweep(base_path)
    free.base_overrides = {"name": "relabelled"}  # a field that cannot change results
    runner.run_sweep(free, workdir, trainer, fake_baselines, progress=False)
    assert trainer.calls == []
    more_seeds = study_sweep(base_path)
    more_seeds.product.seed = [0, 1, 2]  # growing a sweep is fine: only the new runs execute
    trainer = Trainer()
    runner.run_sweep(more_seeds, workdir, trainer, fake_baselines, progress=False)
    assert trainer.calls == [f"method={m}.seed=2" for m in ("on_policy_gkd", "hybrid", "teacher_seeded")]
    rerun = Trainer()  # --rerun_changed: the changed runs move aside (kept) and run again
    runner.run_sweep(changed, workdir, rerun, fake_baselines, progress=False, rerun_changed=True)
    assert len(rerun.calls) == 6 and len(list((workdir / "runs").glob("*.replaced-*"))) == 6


def test_cli_dry_run_and_run(base_path, tmp_path):
    sweep_file = tmp_path / "sweep_cfg.py"
    sweep_file.write_text(
        textwrap.dedent(f"""
        import ml_collections
        def get_config():
            c = ml_collections.ConfigDict()
            c.base_config = {str(base_path)!r}
            c.product = {{"method": ("hybrid", "teacher_seeded"), "seed": (0, 1, 2)}}  # tuples: CLI-overridable
            c.baselines = False
            return c
    """)
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    workdir = tmp_path / "out"
    common = [
        sys.executable,
        "-m",
        "cliffdistill.sweep",
        f"--config={sweep_file}",
        f"--workdir={workdir}",
        "--config.product.seed=(0,1)",
    ]
    dry = subprocess.run(
        common + ["--dry_run", "--shard=1/2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert dry.returncode == 0, dry.stderr
    assert "4 runs; shard 1/2 runs 2" in dry.stdout and "* missing  method=hybrid.seed=1" in dry.stdout
    assert not workdir.exists()
    run = subprocess.run(
        common + ["--run_fn=test_sweep:fake_run"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "4/4 done method=teacher_seeded.seed=1" in run.stderr
    assert "| teacher_seeded |" in (workdir / "REPORT.md").read_text()
    assert json.loads((workdir / "sweep.json").read_text())["runs"][0]["name"] == "method=hybrid.seed=0"


# ----------------------------------------------------------------------------- stale runs (issue #13)


def killing_run(cfg: ml_collections.ConfigDict, run_dir: Path) -> None:
    """``fake_run``, but SIGKILLs the whole sweep process on the run named in $KILL_AT_RUN."""
    if cfg.name == os.environ.get("KILL_AT_RUN"):
        os.kill(os.getpid(), signal.SIGKILL)
    fake_run(cfg, run_dir)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_rerun_takes_failed_and_stale_runs_only_and_skips_live_ones(base_path, tmp_path):
    workdir = tmp_path / "sweep"
    bad, dead, live = "method=hybrid.seed=1", "method=on_policy_gkd.seed=1", "method=teacher_seeded.seed=0"
    result = runner.run_sweep(study_sweep(base_path), workdir, Trainer(crash=[bad]), fake_baselines,
                             progress=False)
    assert result.failed == [bad] and len(result.ran) == 6  # the others finished
    owner = {"state": "running", "host": socket.gethostname(), "heartbeat": time.time()}
    (workdir / "runs" / dead / "status.json").write_text(json.dumps({**owner, "pid": _dead_pid()}))
    (workdir / "runs" / live / "status.json").write_text(json.dumps({**owner, "pid": os.getpid()}))
    lines = runner.dry_run_lines(study_sweep(base_path), workdir, (0, 1))
    assert any(line.endswith(f"stale    {dead}") for line in lines)
    assert any(line.endswith(f"running  {live}") for line in lines)
    retry = Trainer()
    result = runner.run_sweep(study_sweep(base_path), workdir, retry, fake_baselines,
                             retry_failed=True, progress=False)
    assert retry.calls == [dead, bad]  # sweep order; done and live runs untouched
    assert live in result.skipped and result.failed == []


def test_sweep_killed_without_warning_reruns_only_the_unfinished_runs(base_path, tmp_path):
    sweep_file = tmp_path / "sweep_cfg.py"
    sweep_file.write_text(textwrap.dedent(f"""
        import ml_collections
        def get_config():
            c = ml_collections.ConfigDict()
            c.base_config = {str(base_path)!r}
            c.product = {{"method": ("hybrid", "teacher_seeded"), "seed": (0, 1)}}
            c.baselines = False
            return c
    """))
    env = {**os.environ, "KILL_AT_RUN": "method=teacher_seeded.seed=0",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    workdir = tmp_path / "out"
    cmd = [sys.executable, "-m", "cliffdistill.sweep", f"--config={sweep_file}",
           f"--workdir={workdir}", "--run_fn=test_sweep:killing_run"]
    killed = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    dry = subprocess.run(cmd + ["--dry_run"], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert "* stale    method=teacher_seeded.seed=0" in dry.stdout, dry.stdout
    assert "* missing  method=teacher_seeded.seed=1" in dry.stdout
    del env["KILL_AT_RUN"]
    again = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "1/4 skip (done) method=hybrid.seed=0" in again.stderr
    assert "re-running stale run method=teacher_seeded.seed=0" in again.stderr
    assert "sweep 4/4 finished" in again.stderr


def test_sweep_workdir_that_is_a_file_is_one_sentence(base_path, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        runner.run_sweep(study_sweep(base_path), f, Trainer(), fake_baselines, progress=False)


def test_compiled_programs_are_dropped_between_runs_near_the_memory_map_limit(
        base_path, tmp_path, monkeypatch):
    """A long sweep in one process (or one worker) would reach the kernel's memory-map limit
    with XLA:CPU's cached programs and die in the next compilation; past half the limit the
    runner drops jax's caches after the run, whatever the run's outcome."""
    import jax

    from cliffdistill.study import pool

    cleared = []
    monkeypatch.setattr(jax, "clear_caches", lambda: cleared.append(1))
    monkeypatch.setattr(pool, "map_counts", lambda: (400, 1000))
    assert not pool.free_compiled_programs() and not cleared
    monkeypatch.setattr(pool, "map_counts", lambda: None)  # no /proc: nothing to decide on
    assert not pool.free_compiled_programs() and not cleared

    monkeypatch.setattr(pool, "map_counts", lambda: (600, 1000))
    cfg = make_sweep(base_path, product={"seed": (0, 1)})

    def crash_on_seed_1(cfg, run_dir):
        if int(cfg.seed) == 1:
            raise ValueError("bad run")
        fake_run(cfg, run_dir)

    result = runner.run_sweep(cfg, tmp_path / "sweep", crash_on_seed_1, progress=False)
    assert result.ran == ["seed=0", "seed=1"] and result.failed == ["seed=1"]
    assert cleared == [1, 1]  # after the run that finished and after the one that failed
