"""How many CPU threads a vLLM CPU engine computes with, and on which cores (pure).

vLLM's CPU defaults ignore Ray: they hold one core back for the engine's scheduler and bind the
compute threads to the rest of the NUMA node. A 2-CPU actor on a 2-core node then computes on
one core (measured here: prefill ~590 prompt tokens/s instead of ~1050), and two replicas on
one node bind to the same cores. So:

- an engine whose CPU share covers every core it may run on binds its threads to all of them
  and holds none back (the scheduler idles while the threads compute): measured 135 output
  tokens/s on the batching workload against 122 unbound;
- an engine with a smaller share (replicas sharing a node) leaves its threads unbound and runs
  as many as its share (``OMP_NUM_THREADS``), as Ray intends.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, MutableMapping


def cpu_engine_env(num_cpus: float, cores: Collection[int]) -> dict[str, str]:
    """vLLM CPU thread settings for an engine granted ``num_cpus`` on a process allowed ``cores``."""
    threads = max(1, int(num_cpus))
    if threads >= len(cores):
        return {
            "VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in sorted(cores)),
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        }
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}


def apply_env_defaults(defaults: Mapping[str, str], environ: MutableMapping[str, str]) -> None:
    """Set each variable of ``defaults`` that ``environ`` does not already set (a runtime_env's
    ``env_vars`` or the node's own environment win)."""
    for key, value in defaults.items():
        environ.setdefault(key, value)
