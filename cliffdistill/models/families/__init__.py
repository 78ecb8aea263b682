"""The model families: model_type -> `Family`, one module per family, registered here.

Adding a family is one module in this package declaring its `Family` (family.py says what each
field means), one line in `BUILT_IN`, and one case in tests/hf_models.py FAMILIES (the parity
tests against transformers). `config.py` and `hf_io.py` hold no family's facts: they read them
from this registry.
"""

from __future__ import annotations

from cliffdistill.models.families import gemma, llama, mistral, qwen2, qwen3
from cliffdistill.models.families.family import Family

BUILT_IN = (llama.LLAMA, mistral.MISTRAL, mistral.MIXTRAL, qwen2.QWEN2, qwen3.QWEN3,
            qwen3.QWEN3_MOE, gemma.GEMMA2, gemma.GEMMA3_TEXT)
FAMILIES: dict[str, Family] = {}


def register(fam: Family) -> Family:
    """Adds `fam` under its model_type (a second family of one model_type is refused)."""
    if fam.model_type in FAMILIES:
        raise ValueError(f"model_type={fam.model_type!r} is already registered (as "
                         f"{FAMILIES[fam.model_type].architecture}); give the family another one")
    FAMILIES[fam.model_type] = fam
    return fam


def family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(f"model_type={model_type!r} is not supported; supported: {tuple(FAMILIES)}")
    return FAMILIES[model_type]


def multimodal_text_types() -> dict[str, str]:
    """model_type of a multimodal checkpoint -> the family of its `text_config`."""
    return {mm: fam.model_type for fam in FAMILIES.values() for mm in fam.multimodal}


for built_in in BUILT_IN:
    register(built_in)
