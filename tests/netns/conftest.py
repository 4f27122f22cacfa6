"""Multi-host tests: every "host" is a network namespace these tests create (root only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from swe_fleet.spec import CouncilSpec

from support.netns import netns_unavailable


@pytest.fixture(scope="session", autouse=True)
def _namespaces_available() -> None:
    """Skip (saying why) only when this machine cannot create network namespaces."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")


@pytest.fixture(scope="session")
def two_node_spec(repo_root: Path) -> CouncilSpec:
    """The tiny council with two per-job engine replicas of 1 CPU each: on two 1-CPU nodes, one per node."""
    doc = CouncilSpec.from_file(repo_root / "tests" / "data" / "tiny.yaml").model_dump(mode="json")
    doc["name"] = "netns"
    doc["model"]["replicas"] = 2
    doc["model"]["num_cpus"] = 1
    # Every phase calls both replicas (no task stops early), and no batch may hang the test.
    doc["protocol"]["early_stop"] = False
    doc["model"]["batch_timeout_s"] = 300
    # Engines of each job alone, killed with it: the node tests (a cut-off worker, a stopped
    # node) are about where a job's own replicas run and what is left after it; the shared
    # pool has its own tests on the session cluster (tests/integration/test_engine_pool.py).
    doc["model"]["engine"] = "per-job"
    return CouncilSpec.from_dict(doc)
