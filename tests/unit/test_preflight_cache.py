"""The preflight cache: its key (cluster, alive nodes, runtime_env, expectations) and its entries."""

from __future__ import annotations

import json
import time
from pathlib import Path

from swe_fleet.preflight.cache import PreflightCache, preflight_key
from swe_fleet.preflight.job import node_expectations
from swe_fleet.preflight.node_check import FAIL, OK, Check
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.runtime_env import staged_runtime_env

SPEC = CouncilSpec.from_text("tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n")


def _submission(**kw: object) -> CouncilSubmission:
    return CouncilSubmission(**{"spec": SPEC, "nats_url": "nats://10.0.0.1:4222", **kw})  # type: ignore[arg-type]


def test_cache_key_changes_with_nodes_cluster_and_expectations(repo_root: Path) -> None:
    """A new node, another cluster or another NATS URL is another key; timeouts are not."""
    with staged_runtime_env(_submission(), repo_root) as env:
        exp = node_expectations(_submission(), root=repo_root)
        key = preflight_key("http://h:8265", ["n1", "n2"], env, exp)
        assert preflight_key("http://h:8265/", ["n2", "n1"], env, exp) == key
        assert preflight_key("http://h:8265", ["n1", "n2", "n3"], env, exp) != key
        assert preflight_key("http://other:8265", ["n1", "n2"], env, exp) != key
        other_nats = node_expectations(_submission(nats_url="nats://10.0.0.9:4222"), root=repo_root)
        assert preflight_key("http://h:8265", ["n1", "n2"], env, other_nats) != key
        slower = node_expectations(_submission(), root=repo_root, timeout_s=1200)
        assert preflight_key("http://h:8265", ["n1", "n2"], env, slower) == key


def test_only_passing_results_are_cached_and_they_expire(tmp_path: Path) -> None:
    """A failing result is never stored; a passing one is, until max_age_s."""
    cache = PreflightCache(tmp_path / "pf", max_age_s=60)
    cache.store("bad", [Check("nats", FAIL, "down")])
    assert cache.passed_age("bad") is None
    cache.store("good", [Check("nats", OK, "up")])
    age = cache.passed_age("good")
    assert age is not None and age >= 0
    doc = json.loads((tmp_path / "pf" / "good.json").read_text())
    doc["passed_at"] = time.time() - 120
    (tmp_path / "pf" / "good.json").write_text(json.dumps(doc))
    assert cache.passed_age("good") is None


def test_a_cluster_that_lists_no_alive_node_has_no_key(repo_root: Path) -> None:
    """A head that just started may not list its node yet: no key, so nothing is looked up or
    filed under no nodes (a suite run found a pass filed so, and the next preflight missed it)."""
    from swe_fleet.preflight.cache import cluster_preflight_key

    from support.fake_jobs import FakeJobsApi

    with staged_runtime_env(_submission(), repo_root) as env:
        exp = node_expectations(_submission(), root=repo_root)
        jobs = FakeJobsApi()
        assert cluster_preflight_key(jobs, env, exp) is not None  # type: ignore[arg-type]
        jobs.nodes = []
        assert cluster_preflight_key(jobs, env, exp) is None  # type: ignore[arg-type]
