"""The engine's vllm.LLM options come from the spec (one place, shared with the benchmark ceiling)."""

from __future__ import annotations

from swe_fleet.llm.engine_options import engine_env, llm_options
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


def test_the_engine_core_runs_in_the_actors_process_on_cpu_and_gpu() -> None:
    """No spawned EngineCore child on either device; CPU engines also get their thread binding,
    GPU engines none (the same code, only ``num_gpus`` differs)."""
    cpu = engine_env(ModelSpec(num_cpus=2, num_gpus=0), cores={0, 1})
    gpu = engine_env(ModelSpec(num_cpus=2, num_gpus=1), cores={0, 1})
    assert cpu["VLLM_ENABLE_V1_MULTIPROCESSING"] == gpu["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert cpu["VLLM_CPU_OMP_THREADS_BIND"] == "0,1"
    assert gpu == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
