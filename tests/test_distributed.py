"""cliffdistill.distributed: resolution order (pure) and a real 2-process CPU job (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cliffdistill.run import distributed as dist
from cliffdistill.run.distributed import Resolution, first_host, resolve

REPO = Path(__file__).resolve().parents[1]


def NO_TPU() -> bool:
    return False


def YES_TPU() -> bool:
    return True


def _never(nodelist):  # a hostnames() that must not be called
    raise AssertionError(f"hostnames() called for {nodelist!r}")


SLURM = {
    "SLURM_JOB_ID": "777",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "2",
    "SLURM_LOCALID": "0",
    "SLURM_JOB_NODELIST": "gpu[003-006]",
}


# ------------------------------------------------------------------------------------------
# resolve(): pure, no JAX initialisation
# ------------------------------------------------------------------------------------------


def test_nothing_set_is_single_process():
    assert resolve(environ={}, tpu_present=NO_TPU) == Resolution("single", None, 1, 0, None)
    assert not resolve(environ={}, tpu_present=NO_TPU).needs_init


def test_env_vars():
    env = {
        "CLIFFDISTILL_COORDINATOR": "10.0.0.1:1234",
        "CLIFFDISTILL_NUM_PROCESSES": "2",
        "CLIFFDISTILL_PROCESS_ID": "1",
        "CLIFFDISTILL_LOCAL_DEVICE_IDS": "0,1",
    }
    r = resolve(environ=env, tpu_present=_never)
    assert r == Resolution("env", "10.0.0.1:1234", 2, 1, (0, 1))
    assert r.needs_init


def test_explicit_args_beat_env_field_by_field():
    env = {
        "CLIFFDISTILL_COORDINATOR": "10.0.0.1:1234",
        "CLIFFDISTILL_NUM_PROCESSES": "4",
        "CLIFFDISTILL_PROCESS_ID": "3",
    }
    r = resolve("host:99", None, 0, environ=env, tpu_present=_never)
    assert r == Resolution("explicit", "host:99", 4, 0, None)  # num_processes still from env
    r = resolve(process_id=2, environ=env)
    assert (r.coordinator_address, r.num_processes, r.process_id) == ("10.0.0.1:1234", 4, 2)


def test_env_beats_slurm():
    env = dict(SLURM, CLIFFDISTILL_COORDINATOR="me:1", CLIFFDISTILL_NUM_PROCESSES="2", CLIFFDISTILL_PROCESS_ID="0")
    assert resolve(environ=env, hostnames=_never) == Resolution("env", "me:1", 2, 0, None)


def test_slurm_uses_first_host_and_port():
    seen = []

    def hostnames(nodelist):
        seen.append(nodelist)
        return ["gpu003", "gpu004", "gpu005", "gpu006"]

    r = resolve(environ=SLURM, hostnames=hostnames, tpu_present=_never)
    assert r == Resolution("slurm", "gpu003:12355", 4, 2, None)
    assert seen == ["gpu[003-006]"]
    # CLIFFDISTILL_PORT, and the step's node list wins over the job's.
    env = dict(SLURM, CLIFFDISTILL_PORT="23456", SLURM_STEP_NODELIST="gpu[005-006]")
    r = resolve(environ=env, hostnames=lambda nl: [first_host(nl)])
    assert r.coordinator_address == "gpu005:23456"
    # Never restricts the GPUs of a task (SLURM_LOCALID is not turned into local_device_ids).
    assert r.local_device_ids is None


def test_slurm_single_task_needs_no_init():
    env = dict(SLURM, SLURM_NTASKS="1", SLURM_PROCID="0")
    r = resolve(environ=env, hostnames=_never, tpu_present=_never)
    assert r.method == "single" and not r.needs_init


def test_explicit_num_processes_overrides_slurm():
    r = resolve(num_processes=1, environ=dict(SLURM, SLURM_PROCID="0"), hostnames=_never)
    assert r.method == "single"
    with pytest.raises(ValueError, match="process_id must be 0"):  # task 2 of a 1-process job?
        resolve(num_processes=1, environ=SLURM, hostnames=_never)


def test_tpu_only_when_nothing_else_is_set():
    assert resolve(environ={}, tpu_present=YES_TPU) == Resolution("tpu")
    assert resolve(environ={}, tpu_present=YES_TPU).needs_init
    # SLURM on a TPU host still wins.
    assert resolve(environ=SLURM, hostnames=lambda nl: ["h0"], tpu_present=YES_TPU).method == "slurm"


def test_reads_os_environ_by_default(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("SLURM_", "CLIFFDISTILL_", "TPU_", "MEGASCALE_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("CLIFFDISTILL_COORDINATOR", "127.0.0.1:5000")
    monkeypatch.setenv("CLIFFDISTILL_NUM_PROCESSES", "3")
    monkeypatch.setenv("CLIFFDISTILL_PROCESS_ID", "2")
    assert resolve() == Resolution("env", "127.0.0.1:5000", 3, 2, None)
    monkeypatch.setenv("CLIFFDISTILL_NUM_PROCESSES", "1")
    monkeypatch.setenv("CLIFFDISTILL_PROCESS_ID", "0")
    assert resolve().method == "single"


@pytest.mark.parametrize(
    "kwargs, env, match",
    [
        ({}, {"CLIFFDISTILL_NUM_PROCESSES": "2", "CLIFFDISTILL_PROCESS_ID": "0"}, "coordinator_address"),
        ({}, {"CLIFFDISTILL_COORDINATOR": "h:1", "CLIFFDISTILL_NUM_PROCESSES": "2"}, "process_id"),
        ({}, {"CLIFFDISTILL_COORDINATOR": "h:1", "CLIFFDISTILL_PROCESS_ID": "0"}, "num_processes"),
        ({"num_processes": 2, "process_id": 2, "coordinator_address": "h:1"}, {}, r"process_id must be in \[0, 2\)"),
        ({}, {"CLIFFDISTILL_NUM_PROCESSES": "two"}, "num_processes: expected an integer"),
        ({"num_processes": 2, "process_id": 0, "coordinator_address": "h"}, {}, "host:port"),
        ({"num_processes": 1, "process_id": 1}, {}, "process_id must be 0"),
    ],
)
def test_errors_name_the_field(kwargs, env, match):
    with pytest.raises(ValueError, match=match):
        resolve(**kwargs, environ=env, tpu_present=NO_TPU)


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node7", "node7"),
        ("node7,gpu2", "node7"),
        ("node[003-010,012]", "node003"),
        ("node[012,003-010]", "node012"),
        ("rack[1-2]-n[05-08],x", "rack1-n05"),
        ("a-b-1", "a-b-1"),
    ],
)
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_slurm_hostnames_falls_back_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert dist.slurm_hostnames("node[01-04]") == ["node01"]


def _fake_pci(root: Path, devices: dict[str, tuple[str, str]]) -> str:
    for name, (vendor, device) in devices.items():
        (root / name).mkdir(parents=True)
        (root / name / "vendor").write_text(vendor + "\n")
        (root / name / "device").write_text(device + "\n")
    return str(root)


def test_tpu_detection(tmp_path):
    gvnic_only = _fake_pci(tmp_path / "a", {"0000:00:04.0": ("0x1ae0", "0x0042"), "0000:00:05.0": ("0x10de", "0x2330")})
    with_tpu = _fake_pci(tmp_path / "b", {"0000:00:04.0": ("0x1ae0", "0x0042"), "0000:00:05.0": ("0x1ae0", "0x006f")})
    assert not dist.on_cloud_tpu({}, sysfs_root=gvnic_only)
    assert dist.on_cloud_tpu({}, sysfs_root=with_tpu)
    assert dist.on_cloud_tpu({"TPU_WORKER_HOSTNAMES": "t1,t2"}, sysfs_root=gvnic_only)
    assert not dist.on_cloud_tpu({"CLIFFDISTILL_TPU": "0", "TPU_WORKER_ID": "0"}, sysfs_root=with_tpu)
    assert dist.on_cloud_tpu({"CLIFFDISTILL_TPU": "1"}, sysfs_root=gvnic_only)


def test_config_fields_and_initialize_from_config(monkeypatch):
    cfg = dist.config_fields()
    assert set(cfg.keys()) == {
        "coordinator_address",
        "num_processes",
        "process_id",
        "local_device_ids",
        "cpu_collectives",
    }
    assert cfg.num_processes is None and cfg.cpu_collectives == "gloo"
    cfg.num_processes = 2  # typed placeholders accept command-line overrides
    with pytest.raises(TypeError):
        cfg.process_id = "zero"
    seen = {}
    monkeypatch.setattr(dist, "initialize", lambda **kw: seen.update(kw) or "info")
    assert dist.initialize_from_config(cfg) == "info"
    assert seen == {
        "coordinator_address": None,
        "num_processes": 2,
        "process_id": None,
        "local_device_ids": None,
        "cpu_collectives": "gloo",
    }
    seen.clear()
    dist.initialize_from_config(None)
    assert seen == {}
    with pytest.raises(ValueError, match="unknown field"):
        dist.initialize_from_config({"num_process": 2})


def test_bad_cpu_collectives():
    with pytest.raises(ValueError, match="cpu_collectives"):
        dist.validate_cpu_collectives("nccl")
    assert dist.validate_cpu_collectives("none") is None


# ------------------------------------------------------------------------------------------
# Real processes
# ------------------------------------------------------------------------------------------

TIMEOUT_S = 120

CHILD = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from cliffdistill.run import distributed as dist

    info = dist.initialize()
    assert dist.initialize() is info, "initialize() must be idempotent"
    assert info.num_processes == 2 and jax.process_count() == 2, info
    assert info.global_devices == 8 and len(jax.devices()) == 8, info
    assert info.local_devices == 4, info
    mesh = Mesh(np.array(jax.devices()), ("all",))
    local = np.arange(4, dtype=np.float32) + 4 * info.process_id     # global array = 0..7
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("all")), local, (8,))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
    ids = multihost_utils.process_allgather(jnp.asarray(info.process_id))
    dist.barrier("test")
    print("RESULT " + json.dumps({
        "pid": info.process_id, "n": info.num_processes, "global": info.global_devices,
        "method": info.method, "coordinator": info.coordinator, "main": dist.is_main(),
        "sum": float(total.addressable_data(0)), "ids": sorted(int(i) for i in ids),
    }), flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(devices: int, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "CLIFFDISTILL_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR"))
    }
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        CLIFFDISTILL_TPU="0",
        CLIFFDISTILL_INIT_TIMEOUT="60",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    )
    env.update(extra)
    return env


def _run_all(cmds: list[tuple[list[str], dict[str, str]]], timeout_s: float = TIMEOUT_S) -> list[tuple[int, str]]:
    """Start all, wait with one deadline, kill everything on timeout (the test never hangs)."""
    procs = [
        subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd, env in cmds
    ]
    deadline = time.monotonic() + timeout_s
    out = []
    try:
        for p in procs:
            text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, text))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = "\n".join((p.communicate()[0] or "")[-2000:] for p in procs)
        pytest.fail(f"processes did not finish within {timeout_s}s; output:\n{logs}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def _result(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert lines, text[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_two_processes_cross_process_sum():
    port = _free_port()
    cmds = [
        (
            [sys.executable, "-c", CHILD],
            _child_env(
                4,
                CLIFFDISTILL_COORDINATOR=f"127.0.0.1:{port}",
                CLIFFDISTILL_NUM_PROCESSES="2",
                CLIFFDISTILL_PROCESS_ID=str(i),
            ),
        )
        for i in range(2)
    ]
    outs = _run_all(cmds)
    for rc, text in outs:
        assert rc == 0, text[-3000:]
    results = [_result(text) for _, text in outs]
    for i, r in enumerate(results):
        assert r == {
            "pid": i,
            "n": 2,
            "global": 8,
            "method": "env",
            "coordinator": f"127.0.0.1:{port}",
            "main": i == 0,
            "sum": 28.0,  # 0 + 1 + ... + 7, half of it held by each process
            "ids": [0, 1],
        }


def test_two_processes_from_slurm_env():
    """The SLURM path end to end: no CLIFFDISTILL_* layout, only SLURM_* variables."""
    port = _free_port()
    cmds = [
        (
            [sys.executable, "-m", "cliffdistill.distributed", "--check"],
            _child_env(
                2,
                SLURM_JOB_ID="1",
                SLURM_NTASKS="2",
                SLURM_PROCID=str(i),
                SLURM_LOCALID=str(i),
                SLURM_JOB_NODELIST="localhost",
                CLIFFDISTILL_PORT=str(port),
            ),
        )
        for i in range(2)
    ]
    for i, (rc, text) in enumerate(_run_all(cmds)):
        assert rc == 0, text[-3000:]
        assert (
            f"CHECK process={i}/2 local_devices=2 global_devices=4 platform=cpu method=slurm sum=6 expected=6" in text
        )


def test_single_process_needs_no_coordinator():
    ((rc, text),) = _run_all([([sys.executable, "-m", "cliffdistill.distributed", "--check"], _child_env(3))])
    assert rc == 0, text[-3000:]
    assert "CHECK process=0/1 local_devices=3 global_devices=3 platform=cpu method=single sum=3 expected=3" in text
