"""The engine's vllm.LLM options come from the spec (one place, shared with the benchmark ceiling)."""

from __future__ import annotations

from swe_fleet.llm.engine import llm_options
from swe_fleet.spec import DEFAULT_KV_BLOCK_SIZE, ModelSpec


def test_the_kv_block_size_reaches_vllm_as_block_size() -> None:
    """Small KV blocks by default (prefix caching reuses whole blocks); None leaves vLLM's own."""
    assert llm_options(ModelSpec())["block_size"] == DEFAULT_KV_BLOCK_SIZE == 32
    assert llm_options(ModelSpec(kv_block_size=64))["block_size"] == 64
    assert "block_size" not in llm_options(ModelSpec(kv_block_size=None))


def test_the_spec_decides_length_dtype_eagerness_and_seed() -> None:
    """max_model_len, dtype, enforce_eager and seed are passed as the spec says."""
    opts = llm_options(ModelSpec(max_model_len=1024, dtype="float32", enforce_eager=False, seed=7))
    assert {k: opts[k] for k in ("max_model_len", "dtype", "enforce_eager", "seed")} == {
        "max_model_len": 1024, "dtype": "float32", "enforce_eager": False, "seed": 7}  # fmt: skip
