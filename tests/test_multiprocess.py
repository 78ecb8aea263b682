"""Multi-process training: 2 processes x 4 CPU devices == 1 process x 8 devices.

Each worker (tests/mp_worker.py) joins a 2-process job (gloo collectives, loopback coordinator),
trains the tiny pair with `loop.run` on a data=2, fsdp=2, tensor=2 mesh over the 8 global
devices into one shared directory, restores the final checkpoint and gathers its LoRA params.
The reference is the same run in the test process itself (one process, 8 fake devices). Every
worker runs in its own process group under one deadline, so a stuck collective fails the test
instead of hanging it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cliffdistill.engine import methods
from cliffdistill.run import loop, rundir
from cliffdistill.run import assembly
from tests.tiny import tiny_run_config

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "mp_worker.py"
TIMEOUT_S = 420
METHOD, STEPS = "mixture", 2
MESH = "data=2,fsdp=2,tensor=2"
PHASE_KEYS = ("time/rollout", "time/score", "time/update", "time/step")
TOKEN_KEYS = ("tokens/sampled", "tokens/scored", "tokens/trained")
GLOO_DEADLINE = "Gloo context initialization failed: DEADLINE_EXCEEDED"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "CLIFFDISTILL_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               CLIFFDISTILL_TPU="0", CLIFFDISTILL_INIT_TIMEOUT="120", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    return env


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_workers(args_per_proc: list[list[str]], devices: int, log_dir: Path,
                 timeout_s: float = TIMEOUT_S) -> list[tuple[int, str]]:
    """Starts every worker in its own process group; one deadline for all; on timeout or on the
    first failure, kills the others' groups (a peer would wait for the dead one until its
    collective timeout). Returns (returncode, output) per worker."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [open(log_dir / f"process-{i}.log", "w+")  # noqa: SIM115 - closed below
            for i in range(len(args_per_proc))]
    procs = [subprocess.Popen([sys.executable, str(WORKER), *a], env=_env(devices), cwd=REPO,
                              stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
             for a, f in zip(args_per_proc, logs)]
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise TimeoutError
            if any(p.poll() not in (None, 0) for p in procs):
                time.sleep(2.0)  # let the failing process finish writing its traceback
                break
            time.sleep(0.5)
    except TimeoutError:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p)
                p.wait(timeout=30)
    out = []
    for p, f in zip(procs, logs):
        f.seek(0)
        out.append((p.returncode, f.read()))
        f.close()
    if time.monotonic() > deadline:
        tails = "\n".join(f"--- process {i} (rc={rc}) ---\n{text[-3000:]}" for i, (rc, text) in enumerate(out))
        pytest.fail(f"workers did not finish within {timeout_s}s:\n{tails}")
    return out


def _result(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert lines, text[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def _check_ok(outs: list[tuple[int, str]]) -> list[dict]:
    for i, (rc, text) in enumerate(outs):
        assert rc == 0, f"process {i} failed (rc={rc}):\n{text[-6000:]}"
    return [_result(text) for _, text in outs]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_like_one(tiny_pair, tmp_path):
    pair = tmp_path / "pair.json"
    pair.write_text(json.dumps({k: str(v) for k, v in tiny_pair.items()}))
    common = ["--pair", str(pair), "--method", METHOD, "--steps", str(STEPS), "--mesh", MESH]

    # reference: this (single) process, 8 devices, the same run config as the workers
    assert jax.process_count() == 1 and jax.device_count() == 8
    ref_dir = tmp_path / "single" / "run"
    cfg = tiny_run_config(tiny_pair, METHOD, steps=STEPS)
    cfg.mesh.update({k: int(v) for k, v in (kv.split("=") for kv in MESH.split(","))})
    assert loop.run(cfg, ref_dir, progress=False)["state"] == "done"
    s = assembly.make_setup(cfg)
    with rundir.Checkpoints(ref_dir) as ckpt:
        ref = ckpt.restore(ckpt.latest(),
                           assembly.init_state(s, methods.num_steps(METHOD, cfg.schedule)))
    flat = jax.tree_util.tree_flatten_with_path(ref["lora"])[0]
    single = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
              for path, leaf in flat}

    # two processes x 4 devices, one shared run directory. gloo gives the two processes a fixed
    # 30 s to meet at their first collective; on 2 oversubscribed cores one may still be compiling
    # then, so that one infrastructure timeout (and nothing else) is retried once.
    for attempt in range(2):
        port = _free_port()
        mp_dir, npz = tmp_path / f"multi{attempt}" / "run", tmp_path / f"multi{attempt}.npz"
        outs = _run_workers(
            [common + ["--workdir", str(mp_dir), "--out", str(npz),
                       "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
                       "--process_id", str(i)] for i in range(2)], 4, tmp_path / f"logs_multi{attempt}")
        if not (attempt == 0 and any(rc != 0 and GLOO_DEADLINE in text for rc, text in outs)):
            break
    results = _check_ok(outs)
    for i, r in enumerate(results):
        assert (r["process_id"], r["num_processes"], r["local_devices"], r["global_devices"]) == (i, 2, 4, 8)
        assert r["state"] == "done" and r["final_step"] == STEPS and r["restored_step"] == STEPS
    # one writer: process 0 held the workdir's lock; process 1 took none (and was not refused)
    assert all(r["lock_owner_pid"] == results[0]["pid"] for r in results)

    # same LoRA params as one process
    multi = np.load(npz)
    assert sorted(single) == sorted(multi.files) and single
    for k, v in single.items():
        np.testing.assert_allclose(multi[k], v, atol=1e-5, rtol=0, err_msg=k)
    assert any(np.abs(v).max() > 0 for k, v in single.items() if k.endswith("/b"))  # it trained

    # only process 0 wrote the reports: one line per step / eval, not one per process
    records = _metrics(mp_dir)
    assert [r["step"] for r in records] == list(range(STEPS))
    evals = [json.loads(x) for x in (mp_dir / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, STEPS]
    status = json.loads((mp_dir / "status.json").read_text())
    assert status["state"] == "done"
    assert json.loads((mp_dir / "config.json").read_text())["method"] == METHOD
    # the cost of the job counts all 8 devices of both processes
    assert status["cost"]["device_hours"] == pytest.approx(status["wall_seconds"] * 8 / 3600)
    for r, ref in zip(records, _metrics(ref_dir)):
        for key in PHASE_KEYS + TOKEN_KEYS + ("flops",):
            assert key in r, key
        for key in TOKEN_KEYS + ("flops",):
            assert r[key] == ref[key], key
        assert r["loss/total"] == pytest.approx(ref["loss/total"], abs=1e-5)
    # one checkpoint tree, written jointly (each process its shards, process 0 the commit)
    steps = sorted(int(p.name) for p in (mp_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [STEPS]


def test_checkpoint_restores_onto_another_device_layout(tiny_pair, tmp_path):
    """Cheap guard for the same code path the slow test runs: `Checkpoints.restore` onto a
    different device layout than the one that saved (8 devices -> 1 device)."""
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd", steps=1)
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    loop.run(cfg, tmp_path / "r", progress=False)
    cfg1 = tiny_run_config(tiny_pair, "on_policy_gkd", steps=1)
    s = assembly.make_setup(cfg1)
    with rundir.Checkpoints(tmp_path / "r") as ckpt:
        st = ckpt.restore(ckpt.latest(),
                          assembly.init_state(s, methods.num_steps(cfg1.method, cfg1.schedule)))
    assert int(st["step"]) == 1
