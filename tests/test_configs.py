"""Every shipped config builds and passes validation (levanter-style: a config that cannot even be
loaded is caught here, not on a pod).

Each file under configs/ is listed with the arguments its `get_config` takes, so a new config
file that is not listed fails `test_every_config_file_is_listed` until it is added here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cliffdistill.engine import methods
from cliffdistill.run import config_io, validation
from cliffdistill.study import grid, runner

ROOT = Path(__file__).resolve().parents[1]

RUN_CONFIGS = ("configs/base.py", "configs/qwen_size.py", "configs/llama_size.py",
               "configs/llama_context.py", "configs/toy.py:size", "configs/toy.py:context",
               "configs/toy.py:retrieval", "configs/scaleup.py:mixtral",
               "configs/scaleup.py:qwen25", "configs/scaleup.py:llama405",
               "configs/scaleup.py:gemma3")
SWEEP_CONFIGS = ("configs/sweeps/study.py:qwen_size", "configs/sweeps/study.py:llama_size",
                 "configs/sweeps/study.py:llama_context", "configs/sweeps/study.py:toy",
                 "configs/sweeps/toy_quick.py", "configs/sweeps/toy_full.py")


def test_every_config_file_is_listed():
    listed = {spec.split(":")[0] for spec in RUN_CONFIGS + SWEEP_CONFIGS}
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py")
             if p.name != "__init__.py"}
    assert files == listed, f"unlisted: {sorted(files - listed)}; missing: {sorted(listed - files)}"


def check_run_config(cfg) -> None:
    """What a run checks before it loads any weights, short of reading the model files."""
    validation.check_config(cfg)
    methods.validate_schedule_config(cfg.schedule)
    methods.plan_summary(cfg.method, cfg.schedule)  # unknown method -> ValueError


@pytest.mark.parametrize("spec", RUN_CONFIGS)
def test_run_config_builds_and_validates(spec):
    check_run_config(config_io.load_config_file(spec))


@pytest.mark.parametrize("spec", SWEEP_CONFIGS)
def test_sweep_config_expands_and_every_run_validates(spec):
    sweep_cfg = config_io.load_config_file(spec)
    base = config_io.load_config_file(sweep_cfg.base_config)
    specs = grid.expand(sweep_cfg, base)  # every override is type-checked against the base
    assert specs
    overrides = config_io.flatten(sweep_cfg.get("base_overrides"), "base_overrides",
                                  leaves_are_lists=False)
    for s in specs:
        check_run_config(grid.build_run_config(base, overrides, s))
    assert runner.DEFAULT_RUN_FN and runner.resolve_callable(runner.DEFAULT_RUN_FN)


def test_an_invalid_shipped_value_would_be_caught():
    """The check above can fail: a config with a nonsensical value is refused, naming the field."""
    cfg = config_io.load_config_file("configs/qwen_size.py")
    cfg.rollout.temperature = -1.0
    with pytest.raises(ValueError, match="rollout.temperature"):
        check_run_config(cfg)
