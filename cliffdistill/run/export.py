"""Export a run's LoRA adapters for use outside this project.

    python -m cliffdistill.export --workdir DIR --format peft|merged --out OUT [--step N]
        [--overwrite] [--dtype auto|float32|bfloat16|float16]

* `peft`: a PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`) for
  `peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<student>), OUT)`.
  Our adapters compute `x @ w + (alpha / r) * (x @ a) @ b` with `a: [L, in, r]`, `b: [L, r, out]`;
  PEFT computes `base(x) + lora_B(lora_A(x)) * (lora_alpha / r)` with `lora_A.weight: [r, in]`,
  `lora_B.weight: [out, r]`, so layer i exports `lora_A = a[i].T`, `lora_B = b[i].T` with the same
  `r` and `lora_alpha` (plain LoRA scaling, `use_rslora=False`).
  Expert adapters (Qwen3-MoE with `lora.include_experts`) are refused: transformers 5 keeps the
  experts as fused 3-D parameters (`gate_up_proj`, `down_proj`), not per-expert `nn.Linear`
  modules that a PEFT LoRA layer can wrap; export those runs with `--format merged`.
* `merged`: the student base weights with `(alpha / r) * a @ b` folded in
  (`cliffdistill.models.merge`), written with `models.save_hf` plus the student's tokenizer
  files (and generation_config.json): a plain HF checkpoint for `AutoModelForCausalLM`.

OUT must not exist or be empty unless `--overwrite` (then it is replaced as a whole). The export is
a host-side job: run it as one process.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np

from cliffdistill.run import distributed, evaluation, lock, validation
from cliffdistill.models import hf_io, sharding, transformer
from cliffdistill.models import lora as lora_lib
from cliffdistill.models.config import ModelConfig, load_hf_config
from cliffdistill.models.lora import LoraParams
from cliffdistill.run.assembly import Setup

FORMATS = ("peft", "merged")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# Files of an HF model directory that are not weights or config.json: the tokenizer and the
# generation defaults (EOS ids etc.), copied next to a merged checkpoint.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def hf_module(name: str) -> str:
    """Our LoRA target (`q_proj`) -> its HF module path under `model.layers.{i}.`."""
    key, _ = hf_io.LAYER_KEYS[name]
    return key[: -len(".weight")]


def _check_peft_exportable(student_cfg: ModelConfig, lora: LoraParams) -> None:
    experts = [n for n, ab in lora.layers.items() if ab["a"].ndim == 4]
    if experts:
        raise ValueError(
            f"--format peft: the run adapts the MoE experts ({experts}; "
            "lora.include_experts=True). "
            "transformers 5 stores Qwen3-MoE experts as fused 3-D parameters (mlp.experts."
            "gate_up_proj / down_proj), not per-expert Linear modules PEFT's LoRA can wrap, so "
            "there is no faithful PEFT layout for them; use --format merged")
    for name, ab in lora.layers.items():
        if ab["a"].ndim != 3 or ab["a"].shape[0] != student_cfg.num_layers:
            raise ValueError(f"adapter {name!r} has shape {ab['a'].shape}; expected "
                             f"[{student_cfg.num_layers}, in, r]")


def peft_state_dict(student_cfg: ModelConfig, lora: LoraParams) -> dict[str, np.ndarray]:
    """PEFT tensor name -> float32 array ([r, in] for lora_A, [out, r] for lora_B)."""
    _check_peft_exportable(student_cfg, lora)
    out = {}
    for name, ab in sorted(lora.layers.items()):
        a = np.asarray(jax.device_get(ab["a"]), np.float32)  # [L, in, r]
        b = np.asarray(jax.device_get(ab["b"]), np.float32)  # [L, r, out]
        for i in range(a.shape[0]):
            prefix = f"{PEFT_PREFIX}model.layers.{i}.{hf_module(name)}"
            out[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
            out[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
    return out


def adapter_config(cfg: Any, student_cfg: ModelConfig, lora: LoraParams) -> dict[str, Any]:
    """adapter_config.json for a PEFT LoRA adapter equal to ours."""
    conf = lora_lib.LoraConfig.from_section(cfg.lora)
    rank, alpha = conf.rank, conf.alpha
    if abs(conf.scale - lora.scale) > 1e-12:
        raise ValueError(f"adapter scale {lora.scale} != lora.alpha / lora.rank = {conf.scale}")
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(Path(cfg.student.path).resolve()),
        "r": rank,
        "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
        "target_modules": sorted(lora.layers),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def write_peft(cfg: Any, student_cfg: ModelConfig, lora: LoraParams, out: Path) -> None:
    from safetensors.numpy import save_file

    tensors = peft_state_dict(student_cfg, lora)
    out.mkdir(parents=True, exist_ok=True)
    (out / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(cfg, student_cfg, lora), indent=2))
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def checkpoint_dtype(path: str | Path) -> str:
    """The dtype an HF checkpoint was saved in (config.json `dtype`/`torch_dtype`), else float32."""
    hf = json.loads((Path(path) / "config.json").read_text())
    name = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").replace("torch.", "")
    return name if name in DTYPES else "float32"


def copy_tokenizer_files(src: str | Path, out: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, out / name)
            copied.append(name)
    return copied


def write_merged(cfg: Any, lora: LoraParams, out: Path, dtype: str = "auto") -> list[str]:
    """Base + folded adapters as an HF checkpoint (+ tokenizer files). Returns the copied files."""
    student = cfg.student.path
    dtype = checkpoint_dtype(student) if dtype == "auto" else dtype
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}; choose auto|{'|'.join(DTYPES)}")
    scfg, params = hf_io.load_hf(student, dtype=DTYPES[dtype])
    device = jax.devices()[0]
    lora = LoraParams(jax.device_put(jax.device_get(lora.layers), device), lora.scale)
    merged = lora_lib.merge(params, lora)
    hf_io.save_hf(scfg, merged, out)
    copied = copy_tokenizer_files(cfg.tokenizer_path or student, out)
    if not any(n.startswith("tokenizer") for n in copied):
        print(f"warning: no tokenizer files found in {cfg.tokenizer_path or student}; the merged "
              "checkpoint has none")
    return copied


def shape_setup(cfg: Any) -> Setup:
    """A `Setup` with just what `evaluation.restore_lora` needs (config, a one-device mesh,
    the student's param *shapes*): no weights, data or tokenizer are loaded."""
    scfg = load_hf_config(cfg.student.path)
    mesh = sharding.make_mesh({}, devices=jax.devices()[:1])
    return Setup(cfg=cfg, mesh=mesh, tokenizer=None, student_cfg=scfg,
                       student_params=transformer.param_shapes(scfg, jnp.float32),
                       teacher_cfg=scfg, teacher_params=None, train=None, eval=None, eos_ids=(),
                       pad_id=0)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def export_run(workdir: str | Path, fmt: str, out: str | Path, step: int | None = None, *,
               overwrite: bool = False, dtype: str = "auto") -> Path:
    """Exports checkpoint `step` (None: the latest) of the run in `workdir` to `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r}; choose one of {FORMATS}")
    workdir, out = Path(workdir), Path(out)
    cfg = evaluation.load_run_config(workdir)
    setup = shape_setup(cfg)
    lora = evaluation.restore_lora(setup, cfg, workdir, step)
    if fmt == "peft":
        _check_peft_exportable(setup.student_cfg, lora)  # before touching OUT
    if distributed.is_main():
        validation.check_workdir(out.parent)  # one plain sentence if OUT's parent cannot be written
    with lock.hold(out.parent, "export"):  # one writer of OUT's directory (process 0 writes)
        if distributed.is_main():
            _write_export(cfg, setup, lora, fmt, out, overwrite, dtype)
    return out


def _write_export(cfg: ml_collections.ConfigDict, setup: Setup, lora: Any, fmt: str, out: Path,
                  overwrite: bool, dtype: str) -> None:
    """Writes the export into a temporary sibling of OUT and renames it into place."""
    tmp = _prepare_out(out, overwrite)
    try:
        if fmt == "peft":
            write_peft(cfg, setup.student_cfg, lora, tmp)
        else:
            write_merged(cfg, lora, tmp, dtype)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
