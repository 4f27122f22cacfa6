"""How a vLLM engine for a :class:`~swe_fleet.spec.ModelSpec` is built: the ``vllm.LLM``
arguments and the environment. Shared by the engine actor, the shared pool's identity
(:mod:`.pool`: two specs with the same options share replicas) and the benchmarks' ceilings."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from swe_fleet.llm.cpu_threads import cpu_engine_env
from swe_fleet.spec import ModelSpec

#: vLLM's engine core inside the actor's own process instead of a spawned child process. The
#: child re-imports torch and vLLM and handshakes with its parent: measured here, ``LLM(...)``
#: took 21 s with the child and 4 s without (same model, same 2 cores), and generated ~10% more
#: tokens/s (the actor and the child no longer share the cores). Killing the actor leaves no orphan.
IN_PROCESS_ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def llm_options(model: ModelSpec) -> dict[str, Any]:
    """The ``vllm.LLM`` keyword arguments for ``model`` (besides ``model`` itself): the engine's
    and the benchmark ceiling's, so both run the same engine."""
    options: dict[str, Any] = {
        "max_model_len": model.max_model_len,
        "enforce_eager": model.enforce_eager,
        "dtype": model.dtype,
        "seed": model.seed,
    }
    if model.kv_block_size is not None:
        options["block_size"] = model.kv_block_size
    return options


def engine_env(model: ModelSpec, cores: Collection[int]) -> dict[str, str]:
    """The vLLM environment an engine for ``model`` runs with on a process allowed ``cores``:
    the engine core in process, and on CPU the thread settings of :mod:`.cpu_threads`."""
    env = dict(IN_PROCESS_ENGINE_ENV)
    if not model.num_gpus:
        env.update(cpu_engine_env(model.num_cpus, cores))
    return env
