"""Test setup: 8 fake CPU devices (set before JAX initialises), fp32 matmuls, shared helpers."""

import gc
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Exact fp32 matmuls on CPU so comparisons against PyTorch are about the model, not the backend.
jax.config.update("jax_default_matmul_precision", "highest")

REPO = Path(__file__).resolve().parents[1]
SHARED_GSM8K = REPO.parent / "shared" / "data" / "gsm8k"


@pytest.fixture(scope="session")
def shared_gsm8k() -> Path:
    """The real GSM8K jsonl files next to the repo, when present (a user's clone has none)."""
    if not (SHARED_GSM8K / "test.jsonl").exists():
        pytest.skip(f"{SHARED_GSM8K} not present")
    return SHARED_GSM8K


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """Tokenizer + tiny Qwen3 student/teacher checkpoints + synthetic GSM8K-format data, once."""
    from tests.tiny import make_tiny_pair

    return make_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every compiled program after each test module.

    XLA:CPU maps a few memory regions per compiled executable and keeps them while the program is
    cached. A whole suite in one process compiles thousands of programs and would reach the
    kernel's per-process map limit (vm.max_map_count, 65530 by default), at which point the next
    compilation aborts the interpreter. Modules do not share programs, so clearing between them
    only costs recompiles that would not have been cache hits anyway.
    """
    yield
    jax.clear_caches()
    gc.collect()
