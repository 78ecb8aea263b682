"""Plan a run's memory per device from its config alone (no weights are loaded):

    python -m cliffdistill.memplan --config configs/llama_size.py [--markdown]
    python -m cliffdistill.memplan --config configs/qwen25_size.py --hbm_gib 79.6 --smallest_mesh

The planner is `cliffdistill.run.memplan`.
"""

from absl import app, flags
from ml_collections import config_flags

from cliffdistill.models import config as model_config
from cliffdistill.run import memplan

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config file", lock_config=True)
_HBM = flags.DEFINE_float("hbm_gib", 0.0, "per-device memory in GiB (default: the config's "
                          "hbm_bytes_per_device, else the device's own limit)")
_STUDENT = flags.DEFINE_string("student_preset", "", "plan with this model preset instead of "
                               f"student.path ({sorted(model_config.PRESETS)})")
_TEACHER = flags.DEFINE_string("teacher_preset", "", "... instead of teacher.path")
_PROMPT = flags.DEFINE_integer("prompt_len", 0, "measured longest student prompt (tokens)")
_TPROMPT = flags.DEFINE_integer("teacher_prompt_len", 0, "measured longest teacher prompt")
_MARKDOWN = flags.DEFINE_bool("markdown", False, "print a markdown table")
_PLATFORM = flags.DEFINE_enum("platform", "gpu", ["gpu", "tpu", "cpu"], "target platform "
                              "(cpu: MoE ragged_dot is expanded densely by JAX)")
_SMALLEST = flags.DEFINE_bool("smallest_mesh", False, "search the fewest devices (powers of two, "
                              "tensor <= 8) on which the run fits as configured; needs --hbm_gib")
_MAX_DEVICES = flags.DEFINE_integer("max_devices", 512, "--smallest_mesh: search up to this many")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    del argv
    cfg = _CONFIG.value
    hbm = int(_HBM.value * memplan.GiB) if _HBM.value else memplan.device_hbm_bytes(cfg)
    models = dict(student=_STUDENT.value or None, teacher=_TEACHER.value or None)
    if _SMALLEST.value:
        if not hbm:
            raise app.UsageError("--smallest_mesh needs --hbm_gib (or hbm_bytes_per_device)")
        try:
            mesh, p = memplan.smallest_mesh(cfg, hbm, max_devices=_MAX_DEVICES.value,
                                            platform=_PLATFORM.value, **models)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        print(f"smallest mesh that fits: {mesh.as_dict()} ({mesh.devices} devices)")
    else:
        p = memplan.plan(cfg, hbm, prompt_len=_PROMPT.value or None,
                         teacher_prompt_len=_TPROMPT.value or None, platform=_PLATFORM.value,
                         **models)
    print(p.markdown() if _MARKDOWN.value else p.table())


if __name__ == "__main__":
    app.run(main)
