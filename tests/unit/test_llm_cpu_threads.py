"""vLLM CPU thread settings follow the CPUs Ray granted the engine."""

from __future__ import annotations

from swe_fleet.llm.cpu_threads import apply_env_defaults, cpu_engine_env

BIND, RESERVED, THREADS = "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "OMP_NUM_THREADS"


def test_an_engine_owning_every_core_binds_to_all_and_reserves_none() -> None:
    """num_cpus covering the allowed cores: threads bound to exactly those cores, none held back."""
    assert cpu_engine_env(2, {1, 0}) == {
        "VLLM_CPU_OMP_THREADS_BIND": "0,1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    assert cpu_engine_env(8, {4, 5}) == {
        "VLLM_CPU_OMP_THREADS_BIND": "4,5",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


def test_an_engine_sharing_the_node_runs_its_share_unbound() -> None:
    """A replica granted fewer CPUs than the node has runs that many threads, bound to none (two
    replicas on one node must not pile onto the same cores)."""
    assert cpu_engine_env(1, {0, 1}) == {BIND: "nobind", THREADS: "1"}
    assert cpu_engine_env(2.5, set(range(16))) == {
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "2",
    }
    assert cpu_engine_env(0, set(range(4)))[THREADS] == "1"


def test_settings_from_the_runtime_env_win() -> None:
    """Defaults fill only what the environment does not set already."""
    env = {"VLLM_CPU_OMP_THREADS_BIND": "0-3"}
    apply_env_defaults({BIND: "nobind", THREADS: "2"}, env)
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "0-3", "OMP_NUM_THREADS": "2"}
