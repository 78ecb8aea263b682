"""The family registry is the single source of every family fact: each built-in family names
transformers' class for its model_type, has a parity case in tests/hf_models.py, and a family
registered at run time is read, config.json and checkpoint names alike, with no other edit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from cliffdistill import models
from cliffdistill.models import config, families, hf_io
from cliffdistill.models.families.family import Family, unwindowed_to_hf
from tests import hf_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model_type", config.SUPPORTED_MODEL_TYPES)
def test_each_family_names_the_transformers_class_of_its_model_type(model_type):
    fam = families.family(model_type)
    assert fam.model_type == model_type
    assert fam.architecture == MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]


def test_built_in_families_in_order_and_each_with_a_parity_case():
    assert config.SUPPORTED_MODEL_TYPES == ("llama", "mistral", "mixtral", "qwen2", "qwen3",
                                            "qwen3_moe", "gemma2", "gemma3_text")
    assert tuple(families.FAMILIES) == config.SUPPORTED_MODEL_TYPES
    assert sorted(hf_models.FAMILIES) == sorted(config.SUPPORTED_MODEL_TYPES)


def test_multimodal_types_hold_their_family_as_text_config():
    mm = families.multimodal_text_types()
    assert mm == {"gemma3": "gemma3_text"}
    for outer, text in mm.items():
        assert transformers.AutoConfig.for_model(outer).text_config.model_type == text


def test_unknown_and_duplicate_model_types_are_refused():
    with pytest.raises(ValueError, match=r"model_type='falcon' is not supported; supported: \('llama'"):
        families.family("falcon")
    with pytest.raises(ValueError, match="model_type='llama' is already registered"):
        families.register(families.family("llama"))


FAKE = Family(
    model_type="fake_moe", architecture="FakeMoeForCausalLM", qk_norm=True,
    to_hf=lambda cfg: dict(unwindowed_to_hf(cfg), fake_experts=cfg.num_experts),
    from_hf=lambda hf, num_layers, source: dict(num_experts=hf["fake_experts"],
                                                num_experts_per_tok=2, moe_intermediate_size=8),
    layer_keys={"mlp_norm": ("ffn_norm.weight", False), "router": ("moe.router.weight", True)},
    expert_keys={"gate_proj": "moe.{e}.w_gate.weight"})


@pytest.fixture
def fake_family():
    families.register(FAKE)
    yield FAKE
    del families.FAMILIES[FAKE.model_type]


def test_a_registered_family_is_read_everywhere(fake_family):
    cfg = models.ModelConfig(model_type="fake_moe", vocab_size=11, hidden_size=16, num_layers=2,
                             num_heads=2, num_kv_heads=1, head_dim=8, intermediate_size=32,
                             num_experts=3, num_experts_per_tok=2, moe_intermediate_size=8)
    hf = config.to_hf_config(cfg)
    assert hf["architectures"] == ["FakeMoeForCausalLM"] and hf["fake_experts"] == 3
    assert config.from_hf_config(hf) == cfg
    names = hf_io.expected_tensors(cfg)
    assert names["model.layers.1.ffn_norm.weight"] == (16,)  # the family's rename
    assert names["model.layers.0.moe.router.weight"] == (3, 16)
    assert names["model.layers.0.moe.2.w_gate.weight"] == (8, 16)
    assert "model.layers.0.mlp.experts.2.up_proj.weight" in names  # not renamed: the default
    assert "model.layers.0.self_attn.q_norm.weight" in names  # the family's decoder switch
    assert not any("post_attention_layernorm" in n for n in names)


def test_an_unregistered_family_is_refused_again():
    with pytest.raises(ValueError, match="model_type='fake_moe' is not supported"):
        config.from_hf_config({"model_type": "fake_moe"})


def _model_type_branches(path: Path) -> list[str]:
    """`... model_type == "x"` / `in ("x", ...)` comparisons against literal model types."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        names_type = any(isinstance(s, (ast.Name, ast.Attribute))
                         and getattr(s, "id", getattr(s, "attr", "")) == "model_type" for s in sides)
        literal = any(isinstance(s, ast.Constant) and isinstance(s.value, str)
                      or isinstance(s, (ast.Tuple, ast.List, ast.Set)) for s in sides)
        if names_type and literal:
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_generic_modules_never_branch_on_a_model_type(tmp_path):
    """config.py and hf_io.py read family facts from the registry, never from a model-type test
    (the detector itself is checked on a branch like the ones it forbids)."""
    probe = tmp_path / "probe.py"
    probe.write_text('if cfg.model_type == "llama":\n    pass\nif model_type in ("a", "b"):\n    pass\n')
    assert _model_type_branches(probe) == ["probe.py:1", "probe.py:3"]
    generic = [ROOT / "cliffdistill/models/config.py", ROOT / "cliffdistill/models/hf_io.py"]
    assert [b for p in generic for b in _model_type_branches(p)] == []
