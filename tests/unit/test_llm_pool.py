"""The shared pool's identity: which councils share replicas, and the names Ray shows."""

from __future__ import annotations

from swe_fleet.llm.pool import POOL_NAMESPACE, pool_name, replica_name
from swe_fleet.preflight import node_check
from swe_fleet.spec import ModelSpec


def test_councils_differing_only_in_what_they_ask_share_a_pool() -> None:
    """Output limits, sampling, replicas and the pool's own settings are per request or per
    council: the same engine serves them all."""
    base = pool_name(ModelSpec())
    assert base.startswith("smollm2-135m-") and len(base.rsplit("-", 1)[1]) == 10
    for same in (
        ModelSpec(max_tokens=7, vote_max_tokens=20, temperature=1.0, replicas=3, batch_timeout_s=5),
        ModelSpec(max_inflight=2, pool_idle_timeout_s=1, engine="shared"),
        ModelSpec.model_validate_json(ModelSpec().model_dump_json()),  # 1 CPU read back as 1.0
    ):
        assert pool_name(same) == base


def test_a_different_engine_is_a_different_pool() -> None:
    base = pool_name(ModelSpec())
    others = [
        ModelSpec(max_model_len=1024), ModelSpec(seed=1), ModelSpec(num_cpus=2), ModelSpec(num_gpus=1),
        ModelSpec(dtype="float32"), ModelSpec(kv_block_size=None), ModelSpec(enforce_eager=False),
        ModelSpec(name="org/other-model"),
    ]  # fmt: skip
    names = [pool_name(m) for m in others]
    assert base not in names and len(set(names)) == len(names)
    assert pool_name(ModelSpec(name="/models/My Model/")).startswith("My-Model-")
    assert replica_name(base, 1) == f"{base}/1"


def test_the_node_check_looks_in_the_pools_namespace() -> None:
    """The standard-library node check cannot import the pool module: same namespace by hand."""
    assert node_check.POOL_NAMESPACE == POOL_NAMESPACE
