"""Export of a run's adapters: PEFT adapter and merged HF checkpoint, checked against PyTorch."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cliffdistill import models
from cliffdistill.run import export, rundir
from cliffdistill.run import assembly
from cliffdistill.data import toy_tokenizer
from tests.hf_models import hf_logits
from tests.tiny import tiny_model_config, tiny_run_config


def _random_lora(layers, seed):
    """Non-zero a and b for every adapter (the trainer's init has b = 0); host RNG, no compiles."""
    rng = np.random.default_rng(seed)
    return {name: {k: jax.device_put((0.3 * rng.standard_normal(ab[k].shape)).astype(ab[k].dtype),
                                     ab[k].sharding) for k in ("a", "b")}
            for name, ab in sorted(layers.items())}


def _random_params(mcfg, seed):
    """Random weights for `mcfg` (norm weights near 1), built on the host."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        if "norm" in path[-1].key:
            return (1.0 + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)
        return (0.1 * rng.standard_normal(x.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, models.param_shapes(mcfg))


def _make_run(run_dir, cfg, seeds=(1, 2)):
    """config.json + orbax checkpoints of the trainer's state tree, as `train.run` writes them
    (the state only needs the student's shapes: no data or tokenizer); returns {step: lora}."""
    s = export.shape_setup(cfg)
    state = assembly.init_state(s, 2)
    run_dir.mkdir(parents=True)
    rundir.write_json(run_dir / rundir.CONFIG_FILE, cfg.to_dict())
    ckpt = rundir.Checkpoints(run_dir)
    loras = {}
    for step, seed in enumerate(seeds, start=1):
        loras[step] = _random_lora(state["lora"], seed)
        ckpt.save({**state, "step": np.asarray(step, np.int64), "lora": loras[step]}, wait=True)
    ckpt.close()
    return {step: jax.device_get(v) for step, v in loras.items()}


@pytest.fixture(scope="module")
def dense_run(tiny_pair, tmp_path_factory):
    cfg = tiny_run_config(tiny_pair, "on_policy_gkd")
    cfg.lora.rank, cfg.lora.alpha = 4, 8.0  # scale 2: a wrong scale convention shows
    run_dir = tmp_path_factory.mktemp("export") / "run"
    loras = _make_run(run_dir, cfg)
    mcfg, params = models.load_hf(cfg.student.path, dtype=jnp.float32)
    return {"dir": run_dir, "cfg": cfg, "lora": loras, "mcfg": mcfg, "params": params}


def _tokens(vocab, seed=0):
    return np.random.default_rng(seed).integers(6, vocab, (2, 11))


def _ours(run, step, tokens):
    lora = models.LoraParams(run["lora"][step], run["cfg"].lora.alpha / run["cfg"].lora.rank)
    return np.asarray(models.apply(run["mcfg"], run["params"], tokens, lora))


def _hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_peft_adapter_matches_our_forward(dense_run, tmp_path):
    import peft

    out = export.export_run(dense_run["dir"], "peft", tmp_path / "adapter")
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["task_type"] == "CAUSAL_LM"
    assert conf["r"] == 4 and conf["lora_alpha"] == 8 and conf["lora_dropout"] == 0.0
    assert conf["bias"] == "none" and sorted(conf["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    student = dense_run["cfg"].student.path
    model = peft.PeftModel.from_pretrained(_hf(student), out).eval()
    tokens = _tokens(dense_run["mcfg"].vocab_size)
    ours = _ours(dense_run, 2, tokens)  # the latest checkpoint
    base = np.asarray(models.apply(dense_run["mcfg"], dense_run["params"], tokens))
    assert np.abs(ours - base).max() > 1e-2  # the adapters matter: the check has teeth
    np.testing.assert_allclose(hf_logits(model, tokens), ours, atol=1e-4, rtol=0)


def test_merged_checkpoint_matches_our_forward(dense_run, tmp_path):
    out = export.export_run(dense_run["dir"], "merged", tmp_path / "merged")
    tokens = _tokens(dense_run["mcfg"].vocab_size, 1)
    np.testing.assert_allclose(hf_logits(_hf(out), tokens), _ours(dense_run, 2, tokens),
                               atol=1e-4, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ref = transformers.AutoTokenizer.from_pretrained(dense_run["cfg"].student.path)
    text = "Ann has 3 apples. How many?"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert tok.chat_template == ref.chat_template


def test_step_selection_and_overwrite(dense_run, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "a"
    export.export_run(dense_run["dir"], "peft", out, step=1)
    tensors = load_file(out / "adapter_model.safetensors")
    a, b = dense_run["lora"][1]["q_proj"]["a"], dense_run["lora"][1]["q_proj"]["b"]
    for i in range(a.shape[0]):
        pre = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        np.testing.assert_array_equal(tensors[f"{pre}.lora_A.weight"], a[i].T)  # [r, in]
        np.testing.assert_array_equal(tensors[f"{pre}.lora_B.weight"], b[i].T)  # [out, r]
    assert len(tensors) == 2 * 7 * a.shape[0]
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export_run(dense_run["dir"], "merged", out)
    export.export_run(dense_run["dir"], "merged", out, overwrite=True)
    assert not (out / "adapter_config.json").exists() and (out / "config.json").exists()
    with pytest.raises(ValueError, match="no checkpoint for step 5"):
        export.export_run(dense_run["dir"], "peft", tmp_path / "b", step=5)
    with pytest.raises(ValueError, match="format"):
        export.export_run(dense_run["dir"], "gguf", tmp_path / "c")


def test_moe_expert_adapters_merged_only(tiny_pair, tmp_path):
    tok = toy_tokenizer.load_tokenizer(tiny_pair["student"])
    mcfg = tiny_model_config(len(tok), tok.eos_token_id, tok.pad_token_id,
                             model_type="qwen3_moe").replace(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, tie_word_embeddings=False)
    student = tmp_path / "moe"
    params = _random_params(mcfg, 5)
    models.save_hf(mcfg, params, student)
    toy_tokenizer.save_tokenizer(tok, student)
    cfg = tiny_run_config({**tiny_pair, "student": student}, "on_policy_gkd", setup="context")
    cfg.lora.include_experts = True
    loras = _make_run(tmp_path / "run", cfg)
    assert loras[2]["gate_proj"]["a"].ndim == 4  # [L, E, in, r]: the experts are adapted
    with pytest.raises(ValueError, match="merged"):
        export.export_run(tmp_path / "run", "peft", tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    out = export.export_run(tmp_path / "run", "merged", tmp_path / "merged")
    tokens = _tokens(mcfg.vocab_size, 2)
    ours = models.apply(mcfg, params, tokens, models.LoraParams(loras[2], 2.0))
    np.testing.assert_allclose(hf_logits(_hf(out), tokens), np.asarray(ours), atol=1e-4, rtol=0)
