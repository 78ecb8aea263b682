"""Multi-process (multi-host) setup: the one place ``jax.distributed.initialize`` is called.

Every entry point (train, sweep, evaluate, main) calls :func:`initialize` (or
:func:`initialize_from_config`) once, *before* touching any JAX device. Where the process
layout comes from, highest priority first (each field resolved separately):

1. explicit arguments (or the ``distributed`` block of the run config);
2. ``CLIFFDISTILL_COORDINATOR`` (host:port), ``CLIFFDISTILL_NUM_PROCESSES``,
   ``CLIFFDISTILL_PROCESS_ID`` (and optionally ``CLIFFDISTILL_LOCAL_DEVICE_IDS="0,1"``);
3. SLURM (inside ``srun``): ``SLURM_NTASKS``, ``SLURM_PROCID``, the first host of
   ``SLURM_STEP_NODELIST`` / ``SLURM_JOB_NODELIST`` (expanded with ``scontrol show hostnames``
   when available) and port ``CLIFFDISTILL_PORT`` (default 12355);
4. a Cloud TPU VM (TPU env vars, or a TPU chip on the PCI bus): ``jax.distributed.initialize()``
   with no arguments, so JAX reads the slice layout from the TPU metadata;
5. otherwise a single process: nothing is initialised.

When one process results, nothing is initialised either. :func:`resolve` is the pure part
(environment in, :class:`Resolution` out); it never imports a JAX backend.

Run ``python -m cliffdistill.distributed --check`` under any launcher to verify a cluster: every
process initialises, sums a global array across all devices and prints one ``CHECK`` line.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

ENV_COORDINATOR = "CLIFFDISTILL_COORDINATOR"
ENV_NUM_PROCESSES = "CLIFFDISTILL_NUM_PROCESSES"
ENV_PROCESS_ID = "CLIFFDISTILL_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "CLIFFDISTILL_LOCAL_DEVICE_IDS"
ENV_PORT = "CLIFFDISTILL_PORT"
ENV_INIT_TIMEOUT = "CLIFFDISTILL_INIT_TIMEOUT"
ENV_TPU = "CLIFFDISTILL_TPU"  # "1": force the Cloud TPU path, "0": never take it
DEFAULT_PORT = 12355
DEFAULT_INIT_TIMEOUT_S = 300

CPU_COLLECTIVES = ("gloo", "mpi", "megascale")

# Any of these in the environment means "this is a Cloud TPU worker" (GKE sets the first ones;
# multislice sets MEGASCALE_*). On plain TPU VMs JAX reads the same values from the GCE
# metadata server, so we also look for a TPU chip on the PCI bus (see _tpu_chip_on_pci_bus).
_TPU_ENV_VARS = (
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "TPU_WORKER_ID",
    "TPU_ACCELERATOR_TYPE",
    "MEGASCALE_COORDINATOR_ADDRESS",
)
_GOOGLE_PCI_VENDOR = "0x1ae0"
# Google PCI device ids of TPU chips (v3, v4, v5p, v5e, v6e, 7x). 0x0042 (gVNIC) is *not* a TPU.
_TPU_PCI_DEVICE_IDS = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})


# --------------------------------------------------------------------------------------------
# Resolution (pure)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resolution:
    """How this process should join the job, before anything is initialised.

    method: "explicit" | "env" | "slurm" (highest-priority source that supplied a field),
    "tpu" (let JAX auto-detect the TPU slice) or "single" (no initialisation).
    """

    method: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None

    @property
    def needs_init(self) -> bool:
        return self.method == "tpu" or (self.num_processes or 1) > 1


def _parse_int(value: Any, field: str, source: str) -> int:
    try:
        out = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{field}: expected an integer from {source}, got {value!r}") from None
    return out


def _parse_device_ids(value: Any, source: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        if not parts:
            return None
        return tuple(_parse_int(p, "local_device_ids", source) for p in parts)
    return tuple(_parse_int(p, "local_device_ids", source) for p in value)


def first_host(nodelist: str) -> str:
    """First hostname of a SLURM node list, without ``scontrol``.

    Handles ``node7``, ``node7,gpu2``, ``node[003-010,012]``, ``rack[1-2]-n[05-08],x``.
    """
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("SLURM node list is empty")
    out, i, depth = [], 0, 0
    while i < len(nodelist):
        ch = nodelist[i]
        if ch == "," and depth == 0:
            break
        if ch == "[":
            close = nodelist.find("]", i)
            if close < 0:
                raise ValueError(f"unbalanced '[' in SLURM node list {nodelist!r}")
            first = nodelist[i + 1 : close].split(",")[0].split("-")[0]
            out.append(first)
            i = close + 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def slurm_hostnames(nodelist: str, timeout_s: float = 20.0) -> list[str]:
    """Expand a SLURM node list with ``scontrol show hostnames``; fall back to the first host."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            proc = subprocess.run(
                [scontrol, "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            hosts = proc.stdout.split()
            if proc.returncode == 0 and hosts:
                return hosts
        except (OSError, subprocess.SubprocessError):
            pass
    return [first_host(nodelist)]


def _tpu_chip_on_pci_bus(sysfs_root: str = "/sys/bus/pci/devices") -> bool:
    """True when a Google TPU chip is attached (reads sysfs only; no JAX backend is touched)."""
    for vendor_path in glob.glob(os.path.join(sysfs_root, "*", "vendor")):
        try:
            with open(vendor_path) as f:
                if f.read().strip() != _GOOGLE_PCI_VENDOR:
                    continue
            with open(os.path.join(os.path.dirname(vendor_path), "device")) as f:
                if f.read().strip() in _TPU_PCI_DEVICE_IDS:
                    return True
        except OSError:
            continue
    return False


def on_cloud_tpu(environ: Mapping[str, str] | None = None, sysfs_root: str = "/sys/bus/pci/devices") -> bool:
    """Whether this process runs on a Cloud TPU worker. ``CLIFFDISTILL_TPU=0/1`` overrides."""
    env = os.environ if environ is None else environ
    forced = env.get(ENV_TPU, "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    if any(env.get(k) for k in _TPU_ENV_VARS):
        return True
    return _tpu_chip_on_pci_bus(sysfs_root)


def _source_name(src: str | None, env_name: str, slurm_name: str) -> str:
    return {"env": env_name, "slurm": slurm_name}.get(src or "", "arguments")


def resolve(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | str | Sequence[int] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    hostnames: Callable[[str], list[str]] | None = None,
    tpu_present: Callable[[], bool] | None = None,
) -> Resolution:
    """Decide how this process joins the job. Pure: reads ``environ``, initialises nothing.

    ``hostnames`` expands a SLURM node list (default: :func:`slurm_hostnames`);
    ``tpu_present`` says whether this is a Cloud TPU worker (default: :func:`on_cloud_tpu`).
    """
    env = os.environ if environ is None else environ
    rank = {"explicit": 0, "env": 1, "slurm": 2}
    used: list[str] = []

    def pick(explicit: Any, env_name: str) -> tuple[Any, str | None]:
        if explicit is not None and explicit != "":
            return explicit, "explicit"
        value = env.get(env_name)
        if value is not None and value.strip() != "":
            return value, "env"
        return None, None

    coord, c_src = pick(coordinator_address, ENV_COORDINATOR)
    nproc, n_src = pick(num_processes, ENV_NUM_PROCESSES)
    pid, p_src = pick(process_id, ENV_PROCESS_ID)
    dev_ids, d_src = pick(local_device_ids, ENV_LOCAL_DEVICE_IDS)

    in_slurm = bool(env.get("SLURM_NTASKS")) and bool(env.get("SLURM_PROCID"))
    if in_slurm and (coord is None or nproc is None or pid is None):
        if nproc is None:
            nproc, n_src = env["SLURM_NTASKS"], "slurm"
        if pid is None:
            pid, p_src = env["SLURM_PROCID"], "slurm"
        nproc_i = _parse_int(nproc, "num_processes", _source_name(n_src, ENV_NUM_PROCESSES, "SLURM_NTASKS"))
        if coord is None and nproc_i > 1:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if not nodelist:
                raise ValueError(
                    "SLURM job without SLURM_JOB_NODELIST: cannot find the coordinator host; "
                    f"set {ENV_COORDINATOR}=host:port"
                )
            hosts = (hostnames or slurm_hostnames)(nodelist)
            if not hosts:
                raise ValueError(f"could not expand SLURM node list {nodelist!r}; set {ENV_COORDINATOR}")
            port = _parse_int(env.get(ENV_PORT) or DEFAULT_PORT, "port", ENV_PORT)
            coord, c_src = f"{hosts[0]}:{port}", "slurm"

    for src in (c_src, n_src, p_src, d_src):
        if src is not None:
            used.append(src)

    device_ids = _parse_device_ids(dev_ids, _source_name(d_src, ENV_LOCAL_DEVICE_IDS, ""))

    if coord is None and nproc is None and pid is None:
        if (tpu_present or (lambda: on_cloud_tpu(env)))():
            return Resolution(method="tpu", local_device_ids=device_ids)
        return Resolution(method="single", num_processes=1, process_id=0, local_device_ids=device_ids)

    nproc_i = (
        None
        if nproc is None
        else _parse_int(nproc, "num_processes", _source_name(n_src, ENV_NUM_PROCESSES, "SLURM_NTASKS"))
    )
    pid_i = None if pid is None else _parse_int(pid, "process_id", _source_name(p_src, ENV_PROCESS_ID, "SLURM_PROCID"))
    if nproc_i is None:
        raise ValueError(
            f"num_processes is not set (coordinator/process_id are): pass num_processes= or set {ENV_NUM_PROCESSES}"
        )
    if nproc_i < 1:
        raise ValueError(f"num_processes must be >= 1, got {nproc_i}")
    if nproc_i == 1:
        if pid_i not in (None, 0):
            raise ValueError(f"process_id must be 0 when num_processes is 1, got {pid_i}")
        return Resolution(method="single", num_processes=1, process_id=0, local_device_ids=device_ids)
    if pid_i is None:
        raise ValueError(f"process_id is not set for a {nproc_i}-process job: pass process_id= or set {ENV_PROCESS_ID}")
    if not 0 <= pid_i < nproc_i:
        raise ValueError(f"process_id must be in [0, {nproc_i}), got {pid_i}")
    if coord is None:
        raise ValueError(
            f"coordinator_address is not set for a {nproc_i}-process job: pass host:port or set {ENV_COORDINATOR}"
        )
    coord = str(coord).strip()
    if ":" not in coord:
        raise ValueError(f"coordinator_address must be host:port, got {coord!r}")
    method = min(used, key=rank.__getitem__)
    return Resolution(method, coord, nproc_i, pid_i, device_ids)


# --------------------------------------------------------------------------------------------
# Initialisation (impure, idempotent)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """The process layout after :func:`initialize`. Device fields are *counts*."""

    process_id: int
    num_processes: int
    local_devices: int
    global_devices: int
    coordinator: str | None
    method: str = "single"
    platform: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.process_id == 0


_INFO: DistributedInfo | None = None


def validate_cpu_collectives(cpu_collectives: str | None) -> str | None:
    if cpu_collectives is None or str(cpu_collectives).lower() in ("", "none"):
        return None
    if cpu_collectives not in CPU_COLLECTIVES:
        raise ValueError(f"cpu_collectives must be one of {CPU_COLLECTIVES} or 'none', got {cpu_collectives!r}")
    return cpu_collectives


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | str | Sequence[int] | None = None,
    cpu_collectives: str | None = "gloo",
    *,
    initialization_timeout: int | None = None,
) -> DistributedInfo:
    """Join the multi-process job (if any) and describe it. Call before any JAX device use.

    Idempotent: later calls return the first call's :class:`DistributedInfo` unchanged.
    ``cpu_collectives`` ("gloo" | "mpi" | "megascale" | None) picks the cross-process
    collectives of the CPU backend; it has no effect on GPU/TPU devices.
    """
    global _INFO
    if _INFO is not None:
        return _INFO

    import jax

    collectives = validate_cpu_collectives(cpu_collectives)
    coordinator = None
    if jax.distributed.is_initialized():
        # Someone (a notebook, a wrapper) already joined the job: describe it, do not re-init.
        method = "external"
        res = None
    else:
        res = resolve(coordinator_address, num_processes, process_id, local_device_ids)
        coordinator = res.coordinator_address
        method = res.method if res.needs_init else "single"

    if res is not None and res.needs_init:
        if collectives is not None:
            jax.config.update("jax_cpu_collectives_implementation", collectives)
        timeout = initialization_timeout
        if timeout is None:
            timeout = _parse_int(
                os.environ.get(ENV_INIT_TIMEOUT) or DEFAULT_INIT_TIMEOUT_S, "timeout", ENV_INIT_TIMEOUT
            )
        if res.method == "tpu":
            # JAX reads the slice layout (workers, this worker's id) from the TPU metadata.
            jax.distributed.initialize(
                local_device_ids=list(res.local_device_ids) if res.local_device_ids else None,
                initialization_timeout=timeout,
            )
        else:
            # Everything is resolved: switch JAX's own cluster detection off so it cannot
            # override our choice (e.g. restrict a one-task-per-node SLURM job to GPU 0).
            jax.distributed.initialize(
                coordinator_address=res.coordinator_address,
                num_processes=res.num_processes,
                process_id=res.process_id,
                local_device_ids=list(res.local_device_ids) if res.local_device_ids else None,
                cluster_detection_method="deactivate",
                initialization_timeout=timeout,
            )

    if method in ("tpu", "external"):
        try:  # the address JAX itself settled on (private API: best effort, display only)
            from jax._src import distributed as _jd

            coordinator = getattr(_jd.global_state, "coordinator_address", None)
        except ImportError:
            coordinator = None

    _INFO = DistributedInfo(
        process_id=jax.process_index(),
        num_processes=jax.process_count(),
        local_devices=jax.local_device_count(),
        global_devices=jax.device_count(),
        coordinator=coordinator if jax.process_count() > 1 else None,
        method=method,
        platform=jax.devices()[0].platform,
    )
    return _INFO


def info() -> DistributedInfo | None:
    """The :class:`DistributedInfo` of the earlier :func:`initialize` call, or None."""
    return _INFO


def is_main() -> bool:
    """True on process 0: the only process that writes reports, metrics files, plots.

    Call :func:`initialize` first: before it, this asks JAX directly, which fixes JAX in
    single-process mode for the rest of the process.
    """
    if _INFO is not None:
        return _INFO.process_id == 0
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Block until every process reaches the barrier called ``name`` (no-op with one process)."""
    import jax

    if jax.process_count() <= 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def broadcast_from_main(value: int) -> int:
    """Process 0's `value` on every process (itself with one process): how a decision only
    process 0 can take (a lock, a file it read) reaches the others."""
    import jax

    if jax.process_count() <= 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


# --------------------------------------------------------------------------------------------
# Config glue
# --------------------------------------------------------------------------------------------


def config_fields():
    """The ``distributed`` ConfigDict block that run configs embed (all unset by default).

    Override from the command line, e.g. ``--config.distributed.num_processes=2``.
    """
    import ml_collections
    from ml_collections import config_dict

    return ml_collections.ConfigDict(
        {
            "coordinator_address": config_dict.placeholder(str),  # "host:port"
            "num_processes": config_dict.placeholder(int),
            "process_id": config_dict.placeholder(int),
            "local_device_ids": config_dict.placeholder(str),  # "0,1,2,3"
            "cpu_collectives": "gloo",
        }
    )


def initialize_from_config(cfg: Any = None, **kwargs: Any) -> DistributedInfo:
    """:func:`initialize` from a ``distributed`` config block (ConfigDict, dict, or None)."""
    if cfg is None:
        values: dict[str, Any] = {}
    elif hasattr(cfg, "to_dict"):
        values = dict(cfg.to_dict())
    else:
        values = dict(cfg)
    known = ("coordinator_address", "num_processes", "process_id", "local_device_ids", "cpu_collectives")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"distributed: unknown field(s) {unknown}; known: {list(known)}")
    args = {k: values[k] for k in known if k in values}
    args.update(kwargs)
    return initialize(**args)


# --------------------------------------------------------------------------------------------
# python -m cliffdistill.distributed [--check]
# --------------------------------------------------------------------------------------------


def check() -> str:
    """Initialise, run one cross-process collective, return the CHECK line."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    di = initialize()
    mesh = Mesh(np.array(jax.devices()), ("all",))
    n_local = di.local_devices
    # Process p holds the values [p*n_local, (p+1)*n_local): the global array is 0..N-1.
    local = np.arange(n_local, dtype=np.float32) + di.process_id * n_local
    glob_arr = jax.make_array_from_process_local_data(
        NamedSharding(mesh, PartitionSpec("all")), local, (di.global_devices,)
    )
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(glob_arr)
    total_f = float(jax.device_get(total.addressable_data(0)))
    barrier("cliffdistill.run.distributed.check")
    return (
        f"CHECK process={di.process_id}/{di.num_processes} local_devices={di.local_devices} "
        f"global_devices={di.global_devices} platform={di.platform} method={di.method} "
        f"sum={total_f:g} expected={di.global_devices * (di.global_devices - 1) / 2:g}"
    )
