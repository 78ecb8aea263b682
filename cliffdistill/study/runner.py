r"""Sweeps: expand a sweep config into runs, run them resumably in-process, then write the report.

    python -m cliffdistill.sweep --config configs/sweeps/toy_quick.py --workdir DIR \
        [--shard i/n] [--workers N] [--retry_failed] [--dry_run] [--config.product.seed='(0, 1)']

A sweep config (``get_config()`` -> ConfigDict) has

* ``base_config``: path of a run config file (``get_config()``), relative to the repo root unless
  absolute; ``path.py:arg`` passes ``arg`` to its ``get_config`` (as ``--config`` does).
* ``base_overrides``: ``{dotted.field: value}`` applied to every run (nested dicts are flattened,
  so ``{"ablation": {"no_shift": True}}`` and ``{"ablation.no_shift": True}`` mean the same).
* ``product``: ``{dotted.field: (values...)}``, crossed (cartesian product).  Lists work too, but
  only tuples can be overridden on the command line (``--config.product.seed='(0, 1)'``).
* ``zip``: ``{dotted.field: (values...)}``, lists of equal length taken row by row; the rows are
  crossed with the product (product outer, zip rows inner).  One-hot ablation variants are a zip.
* ``order`` (optional): dotted fields, outermost loop first; it also orders the fields in run
  names.  ConfigDict sorts its keys, so without ``order`` the fields go alphabetically.
* ``name_fields`` (optional): only these fields make up run names (e.g. leave model paths out);
  names must still be unique.
* ``baselines``: compute ``DIR/baselines/<setup>.json`` (student, teacher, teacher+context) once
  per distinct ``setup`` before the runs.
* ``name`` (optional): the sweep's title in the report.

Runs execute **in this process, one after another**, so jit caches are shared by runs with equal
shapes; ``--workers N`` runs N at once in worker processes that each live for the whole sweep
(CPU: one small run keeps neither core of a 2-core machine busy; leave it at 1 on an
accelerator).  The runner is resumable and idempotent: ``DIR/runs/<name>/status.json`` with state
``done`` means skip; a run that raises is recorded as ``failed`` (error + traceback tail) and the
sweep goes on; failed runs are re-run only with ``--retry_failed``; ``KeyboardInterrupt`` /
``SystemExit`` stop the sweep and leave the run to be redone next time.  A run left ``running``
by a process that died without warning (SIGKILL, OOM, a lost node) reads as ``stale`` (its pid is
gone on this host, or its heartbeat is older than ``--stale_after_s``) and is re-run; a
``running`` run whose owner is alive is skipped.  A sweep holds ``DIR``'s writer lock (one per
shard: shards of one sweep run side by side) and every run holds its own directory's
(`cliffdistill.run.lock`), so two sweeps never train into one directory.  A run directory
whose saved config differs from what the grid now asks in a field that changes results
(`cliffdistill.run.integrity`) is neither skipped as done nor overwritten: the sweep is refused
before any compute, naming each such run and field; ``--rerun_changed`` moves those directories
aside (``runs/<name>.replaced-<time>``) and runs them afresh.  ``DIR/sweep.json`` records each
run's fully resolved config hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import ml_collections

from cliffdistill import report
from cliffdistill.run import integrity, lock, validation
from cliffdistill.run.rundir import (BASELINES_SUBDIR, LOCK_FILE, RUNS_SUBDIR, STALE_AFTER_SECONDS,
                                 STATUS_FILE, SWEEP_FILE, Preempted, last_metric_step, owner_fields,
                                 plain, read_json, run_state, safe_name, write_json)
from cliffdistill.run.config_io import flatten, get_field, load_config_file, resolve_config_path
from cliffdistill.study import pool
from cliffdistill.study.grid import RunSpec, build_run_config, expand

DEFAULT_RUN_FN = "cliffdistill.run.loop:run"
DEFAULT_BASELINE_FN = "cliffdistill.run.evaluation:run_baselines"

RunFn = Callable[[ml_collections.ConfigDict, Path], None]
BaselineFn = Callable[[ml_collections.ConfigDict, Path], None]


@dataclasses.dataclass
class SweepResult:
    """What one ``run_sweep`` call did (names, in sweep order)."""

    total: int
    selected: list[str]
    ran: list[str]
    skipped: list[str]
    failed: list[str]
    baselines_ran: list[str]
    report_written: bool


# ----------------------------------------------------------------------------- files


def run_dir(workdir: Path, name: str) -> Path:
    return Path(workdir) / RUNS_SUBDIR / name


def config_hash(cfg: ml_collections.ConfigDict) -> str:
    """Stable hash of a resolved run config (detects a resumed sweep that would change a run)."""
    text = json.dumps(plain(cfg.to_dict()), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _key_fields(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    def get(field: str, default: Any) -> Any:
        try:
            return plain(get_field(cfg, field))
        except KeyError:
            return default

    return {
        "setup": get("setup", "default"),
        "method": get("method", "default"),
        "seed": get("seed", None),
        "ablation": get("ablation", {}),
    }


def sweep_manifest(
    sweep_cfg: ml_collections.ConfigDict,
    specs: Sequence[RunSpec],
    configs: Sequence[ml_collections.ConfigDict],
) -> dict:
    """The content of ``DIR/sweep.json``: the sweep config and the expanded, ordered run list."""
    base_path, _ = resolve_config_path(sweep_cfg.base_config)
    runs = []
    for spec, cfg in zip(specs, configs, strict=True):
        runs.append(
            {
                "name": spec.name,
                "overrides": plain(spec.overrides),
                "config_hash": config_hash(cfg),
                **_key_fields(cfg),
            }
        )
    return {
        "name": str(sweep_cfg.get("name") or base_path.stem),
        "sweep_config": plain(sweep_cfg.to_dict()),
        "runs": runs,
    }


def changed_runs(workdir: Path, specs: Sequence[RunSpec], configs: Sequence[ml_collections.ConfigDict]
                 ) -> dict[str, list[tuple[str, Any, Any]]]:
    """Run name -> the result fields (`integrity.diff`) in which the config its directory holds
    (the run's current config, `integrity.current_config`) differs from the one the grid asks."""
    out = {}
    for spec, cfg in zip(specs, configs, strict=True):
        saved = integrity.current_config(run_dir(workdir, spec.name))
        if saved is not None:
            changes = integrity.diff(saved, cfg.to_dict())
            if changes:
                out[spec.name] = changes
    return out


def _check_changed(workdir: Path, changed: dict[str, list[tuple[str, Any, Any]]], rerun: bool,
                   emit: Callable[[str], None]) -> None:
    """Refuses a sweep that would reuse or overwrite runs made with another config; `rerun`
    moves their directories aside (kept, never deleted) so they run afresh."""
    if not changed:
        return
    if not rerun:
        lines = [f"  {name}: {integrity.describe(c)}" for name, c in changed.items()]
        raise integrity.ConfigChanged(
            f"{len(changed)} run(s) in {workdir} were made with a different config than the sweep "
            "now asks (their results would be reused or overwritten):\n" + "\n".join(lines)
            + "\nUse a new --workdir, restore the sweep config, or pass --rerun_changed to move "
            "those run directories aside and run them again.")
    for name in changed:
        old = run_dir(workdir, name)
        aside = old.with_name(f"{name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        with lock.hold(old, "sweep --rerun_changed"):  # never from under a live writer
            old.rename(aside)
        emit(f"config changed: {name} moved aside to {aside.name}; it runs again")


def lock_name(shard: tuple[int, int]) -> str:
    """The sweep's lock file: one per shard, so the shards of one sweep run side by side."""
    return LOCK_FILE if shard[1] == 1 else f"writer.shard-{shard[0]}-of-{shard[1]}.lock"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}.")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need n >= 1 and 0 <= i < n.")
    return i, n


def shard_indices(total: int, shard: tuple[int, int]) -> list[int]:
    """Run indices of shard ``(i, n)``: every n-th run starting at i (disjoint, covering)."""
    i, n = shard
    return list(range(i, total, n))


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def log(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


def _record_failure(path: Path, exc: BaseException, seconds: float) -> None:
    status = read_json(path / STATUS_FILE) or {}
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
    status.update(
        state="failed",
        error=f"{type(exc).__name__}: {exc}",
        traceback=tail,
        final_step=status.get("final_step", last_metric_step(path)),
        wall_seconds=status.get("wall_seconds", seconds),
    )
    status.setdefault("cost", {"device_hours": 0.0, "usd": 0.0})
    write_json(path / STATUS_FILE, status)


def _finish_status(path: Path, seconds: float) -> str:
    """After ``run_fn`` returned: keep a status the trainer wrote, else record ``done``."""
    status = read_json(path / STATUS_FILE)
    if status is not None and status.get("state") in ("done", "failed"):
        return str(status["state"])
    status = status or {}
    status.update(state="done", error=None)
    status.setdefault("final_step", last_metric_step(path))
    status.setdefault("wall_seconds", seconds)
    status.setdefault("cost", {"device_hours": 0.0, "usd": 0.0})
    write_json(path / STATUS_FILE, status)
    return "done"


Outcome = tuple[str, float, str]  # (done | failed | preempted, seconds, the preemption message)


def _execute(cfg: ml_collections.ConfigDict, rdir: Path, run_fn: RunFn) -> Outcome:
    """Trains one run into ``rdir``. A run that raises is recorded as ``failed`` (the sweep goes
    on); Preempted is returned as ``preempted`` (it may come from a worker process)."""
    rdir.mkdir(parents=True, exist_ok=True)
    # Mark it running, with this process as owner: a retried run must not keep its old "failed"
    # if run_fn writes no status, and if this process is killed the run reads as stale.
    write_json(rdir / STATUS_FILE, {"state": "running", "error": None, **owner_fields()})
    t0 = time.monotonic()
    try:
        run_fn(cfg, rdir)
    except Preempted as exc:
        return "preempted", time.monotonic() - t0, str(exc)
    except Exception as exc:  # noqa: BLE001 - any run error is recorded; the sweep goes on
        seconds = time.monotonic() - t0
        _record_failure(rdir, exc, seconds)
        return "failed", seconds, ""
    finally:
        # a long sweep's compiled programs would reach the process's memory-map limit
        if pool.free_compiled_programs():
            log(f"dropped the compiled programs after {rdir.name} (memory-map limit near)")
    seconds = time.monotonic() - t0
    return _finish_status(rdir, seconds), seconds, ""


def next_task(pending: Sequence[int], kinds: Sequence[Any], running: Sequence[int]) -> int:
    """The task a free worker starts next: the first of `pending` (in preference order) whose
    kind no running task has, else the first. Two runs of different kinds share a CPU better
    than two of one kind: measured on 2 cores, a context and a size toy run at once finish ~1.7x
    sooner than one after the other, two context runs only ~1.3x."""
    busy = {kinds[i] for i in running}
    return next((i for i in pending if kinds[i] not in busy), pending[0])


def _execute_all(tasks: list[tuple[ml_collections.ConfigDict, Path, RunFn]], workers: int,
                 kinds: Sequence[Any] = ()):
    """Yields (task index, ``_execute``'s outcome) as the tasks finish.

    ``workers > 1`` trains that many runs at once, each in a worker process (`cliffdistill.study.pool`)
    that lives for the whole sweep (so its jit caches serve every run it takes); a free worker
    starts `next_task` (tasks are in preference order; `kinds`: one per task, none -> one
    kind). The run function must be picklable (a module-level function or a
    ``functools.partial`` of one). A failure or an interrupt stops the workers (`pool.stop`):
    their runs read as stale and are redone on resume; a worker that dies stops the sweep with an
    error instead of a wait."""
    if workers <= 1 or len(tasks) <= 1:
        yield from ((i, _execute(*task)) for i, task in enumerate(tasks))
        return
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    kinds = list(kinds) or [None] * len(tasks)
    n = min(workers, len(tasks))
    pending, running = list(range(len(tasks))), {}  # running: future -> task index
    ex = pool.executor(n)
    try:
        while pending or running:
            while pending and len(running) < n:
                i = next_task(pending, kinds, sorted(running.values()))
                pending.remove(i)
                running[ex.submit(_execute, *tasks[i])] = i
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=running.__getitem__):
                i = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool as e:
                    raise RuntimeError(
                        f"a worker process died (killed? out of memory?) while training "
                        f"{tasks[i][1]}; re-run the same command to resume: the runs that were "
                        "in flight read as stale and are redone") from e
                yield i, outcome
    finally:
        pool.stop(ex)  # idle after the last run; after a failure: no waiting


# ----------------------------------------------------------------------------- runner


def run_sweep(
    sweep_cfg: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    run_fn: RunFn,
    baseline_fn: Optional[BaselineFn] = None,
    shard: tuple[int, int] = (0, 1),
    retry_failed: bool = False,
    progress: bool = True,
    base: Optional[ml_collections.ConfigDict] = None,
    stale_after: float = STALE_AFTER_SECONDS,
    write_report: bool = True,
    workers: int = 1,
    cost: Optional[Callable[[ml_collections.ConfigDict], float]] = None,
    kind: Optional[Callable[[ml_collections.ConfigDict], Any]] = None,
    rerun_changed: bool = False,
) -> SweepResult:
    """Run (this shard of) a sweep (in-process, or in `workers` processes); resumable; then
    write the report.

    ``run_fn(run_config, run_dir)`` trains one run and leaves the run-dir contract behind
    (config.json, metrics.jsonl, eval.jsonl, status.json).  ``baseline_fn(setup_config, out_path)``
    writes ``DIR/baselines/<setup>.json``; setup j (in order of first appearance) belongs to shard
    ``j % n``.  The report is written by shard 0, and by any shard that finds every run finished.
    ``base`` replaces loading ``sweep_cfg.base_config`` (tests).  ``stale_after``: seconds without a
    heartbeat after which a ``running`` run counts as dead (``rundir.staleness``).
    ``write_report=False``: a caller with its own report (whose arms the standard report's
    (setup, method, variant) groups would pool) skips REPORT.md.  ``workers > 1``: that many runs
    at once in worker processes (``_execute_all``; ``run_fn`` must then be picklable). Only the
    order runs start in depends on ``cost`` (a run config -> its relative cost: the costliest
    start first, so no worker is left alone with a long run at the end) and ``kind`` (run config
    -> a label: a free worker prefers a run of a kind no other worker is running,
    ``next_task``), never a result. ``rerun_changed``: runs made with another config are moved
    aside and run again (else the sweep is refused, `_check_changed`).
    """
    validation.check_workdir(workdir)  # one plain sentence for a file, no permission, no space
    with lock.hold(workdir, "sweep", name=lock_name(shard)):
        return _run_sweep(sweep_cfg, Path(workdir), run_fn, baseline_fn, shard, retry_failed,
                          progress, base, stale_after, write_report, workers, cost, kind,
                          rerun_changed)


def _run_sweep(sweep_cfg: ml_collections.ConfigDict, workdir: Path, run_fn: RunFn,
               baseline_fn: Optional[BaselineFn], shard: tuple[int, int], retry_failed: bool,
               progress: bool, base: Optional[ml_collections.ConfigDict], stale_after: float,
               write_report: bool, workers: int,
               cost: Optional[Callable[[ml_collections.ConfigDict], float]],
               kind: Optional[Callable[[ml_collections.ConfigDict], Any]],
               rerun_changed: bool) -> SweepResult:
    """`run_sweep`'s body, under the sweep's lock."""
    base = load_config_file(sweep_cfg.base_config) if base is None else base
    specs = expand(sweep_cfg, base)
    base_overrides = flatten(sweep_cfg.get("base_overrides"), "base_overrides", leaves_are_lists=False)
    configs = [build_run_config(base, base_overrides, s) for s in specs]
    manifest = sweep_manifest(sweep_cfg, specs, configs)
    emit = log if progress else (lambda msg: None)
    selected = shard_indices(len(specs), shard)
    _check_changed(workdir, changed_runs(workdir, [specs[i] for i in selected],
                                         [configs[i] for i in selected]), rerun_changed, emit)
    write_json(workdir / SWEEP_FILE, manifest)

    baselines_ran = _run_baselines(sweep_cfg, workdir, specs, configs, baseline_fn, shard, retry_failed, emit)

    ran: list[str] = []
    skipped: list[str] = []
    failed: list[str] = []
    todo: list[tuple[int, int]] = []  # (position in this shard, run index)
    for pos, idx in enumerate(selected):
        name = specs[idx].name
        state = run_state(run_dir(workdir, name), stale_after)
        if state in ("done", "running") or (state == "failed" and not retry_failed):
            skipped.append(name)
            if state == "failed":
                failed.append(name)
            emit(f"{pos + 1}/{len(selected)} skip ({state}) {name}")
            continue
        if state == "stale":
            emit(f"{pos + 1}/{len(selected)} re-running stale run {name} (its process died)")
        todo.append((pos, idx))

    if workers > 1 and cost is not None:  # costliest first; a stable sort keeps the sweep order
        todo.sort(key=lambda t: -cost(configs[t[1]]))
    durations: list[float] = []
    t_start = time.monotonic()
    tasks = [(configs[idx], run_dir(workdir, specs[idx].name), run_fn) for _, idx in todo]
    kinds = [kind(configs[idx]) for _, idx in todo] if kind is not None else []
    for i, (outcome, seconds, message) in _execute_all(tasks, workers, kinds):
        pos, idx = todo[i]
        name = specs[idx].name
        if outcome == "preempted":
            emit(f"{pos + 1}/{len(selected)} preempted {name}: stopping the sweep "
                "(re-run the same command to resume)")
            raise Preempted(message)
        ran.append(name)
        if outcome == "failed":
            failed.append(name)
        durations.append(seconds)
        remaining = len(todo) - len(durations)
        # `workers` runs at a time: the mean run time over `workers` per remaining run
        eta = sum(durations) / len(durations) * remaining / max(1, min(workers, remaining))
        finished = sum(run_state(run_dir(workdir, s.name)) in ("done", "failed") for s in specs)
        emit(
            f"{len(durations)}/{len(todo)} {outcome} {name} in {_fmt_seconds(seconds)}; "
            f"elapsed {_fmt_seconds(time.monotonic() - t_start)}, ETA {_fmt_seconds(eta)}; "
            f"sweep {finished}/{len(specs)} finished" + (f", {len(failed)} failed here" if failed else "")
        )

    order = {s.name: i for i, s in enumerate(specs)}  # workers finish out of order
    ran.sort(key=order.__getitem__)
    failed.sort(key=order.__getitem__)
    all_finished = all(run_state(run_dir(workdir, s.name)) in ("done", "failed") for s in specs)
    report_written = False
    if write_report and (shard[0] == 0 or all_finished):
        try:
            report.write_report(workdir)
            report_written = True
            emit(f"report: {workdir / 'REPORT.md'}")
        except Exception:  # noqa: BLE001 - the runs are safe; the report can be rebuilt alone
            emit(
                "writing the report failed (rebuild it with `python -m cliffdistill.report "
                f"--workdir {workdir}`):\n{traceback.format_exc()}"
            )
    return SweepResult(
        total=len(specs),
        selected=[specs[i].name for i in selected],
        ran=ran,
        skipped=skipped,
        failed=failed,
        baselines_ran=baselines_ran,
        report_written=report_written,
    )


def _run_baselines(
    sweep_cfg: ml_collections.ConfigDict,
    workdir: Path,
    specs: Sequence[RunSpec],
    configs: Sequence[ml_collections.ConfigDict],
    baseline_fn: Optional[BaselineFn],
    shard: tuple[int, int],
    retry_failed: bool,
    log: Callable[[str], None],
) -> list[str]:
    """Compute the missing ``baselines/<setup>.json`` owned by this shard; failures are recorded."""
    if not sweep_cfg.get("baselines", False):
        return []
    if baseline_fn is None:
        raise ValueError("sweep config sets `baselines` but no baseline_fn was given.")
    first_config: dict[str, ml_collections.ConfigDict] = {}
    for cfg in configs:
        first_config.setdefault(str(_key_fields(cfg)["setup"]), cfg)
    done = []
    for j, (setup, cfg) in enumerate(first_config.items()):
        if j % shard[1] != shard[0]:
            continue
        out = workdir / BASELINES_SUBDIR / f"{safe_name(setup)}.json"
        failed_marker = out.with_suffix(".failed.json")
        if out.exists() or (failed_marker.exists() and not retry_failed):
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        log(f"baselines for setup {setup!r} -> {out}")
        try:
            baseline_fn(cfg, out)
            if not out.exists():
                raise FileNotFoundError(f"baseline_fn returned without writing {out}")
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            write_json(failed_marker, {"setup": setup, "error": f"{type(exc).__name__}: {exc}"})
            log(f"baselines for setup {setup!r} failed: {type(exc).__name__}: {exc}")
            continue
        failed_marker.unlink(missing_ok=True)
        done.append(setup)
    return done


def dry_run_lines(sweep_cfg: ml_collections.ConfigDict, workdir: Path, shard: tuple[int, int],
                  stale_after: float = STALE_AFTER_SECONDS) -> list[str]:
    """One line per run: index, whether this shard runs it, its current state (``stale``: left
    ``running`` by a dead process, re-run next time) and its name."""
    specs = expand(sweep_cfg)
    mine = set(shard_indices(len(specs), shard))
    lines = [f"{len(specs)} runs; shard {shard[0]}/{shard[1]} runs {len(mine)}"]
    for i, spec in enumerate(specs):
        state = run_state(run_dir(workdir, spec.name), stale_after)
        lines.append(f"{i:4d} {'*' if i in mine else ' '} {state:8s} {spec.name}")
    return lines


def resolve_callable(spec: str) -> Callable:
    """``"package.module:function"`` -> the function (imported lazily: jax only when training)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"expected module:function, got {spec!r}.")
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise ValueError(f"{module_name} has no `{attr}` (from {spec!r}).")
    return getattr(module, attr)
