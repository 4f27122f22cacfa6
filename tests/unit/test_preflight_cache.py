"""The runtime_env both jobs share, its fingerprint, the preflight cache key and the cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import swe_fleet
from swe_fleet.preflight.cluster import (
    PreflightCache,
    node_expectations,
    preflight_failed,
    preflight_key,
    read_worker_pins,
)
from swe_fleet.preflight.node_check import FAIL, OK, Check
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.client import CouncilRequest, runtime_env_fingerprint, staged_runtime_env

SPEC = CouncilSpec.from_text("tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n")


def _request(**kw: object) -> CouncilRequest:
    return CouncilRequest(**{"spec": SPEC, "nats_url": "nats://10.0.0.1:4222", **kw})  # type: ignore[arg-type]


def test_staged_runtime_env_holds_both_entrypoints_and_the_spec(repo_root: Path) -> None:
    """The council's and the preflight's entrypoints and the effective spec are staged together;
    pinned adds swe_fleet as py_modules and the pin list; the folder is gone after the block."""
    with staged_runtime_env(_request(), repo_root) as env:
        staged = Path(env["working_dir"])
        assert sorted(p.name for p in staged.iterdir()) == ["council.py", "preflight.py", "spec.json"]
        assert json.loads((staged / "spec.json").read_text())["publish"]["nats_url"] == "nats://10.0.0.1:4222"
        assert env["py_modules"] == [str(Path(swe_fleet.__file__).parent)]
        assert "nats-py==2.16.0" in env["pip"]["packages"]
        assert "excludes" not in env
    assert not staged.exists()
    with staged_runtime_env(_request(env_kind="image", extra_env_vars={"X": "1"}), repo_root) as env:
        assert "py_modules" not in env and "pip" not in env
        assert env["env_vars"]["X"] == "1" and env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_fingerprint_follows_what_lands_on_nodes_not_the_spec(repo_root: Path) -> None:
    """Two specs in the same environment share a fingerprint; other env vars or kind do not."""
    other_spec = SPEC.with_overrides(model_name="other")
    with (
        staged_runtime_env(_request(), repo_root) as a,
        staged_runtime_env(_request(spec=other_spec), repo_root) as b,
    ):
        assert runtime_env_fingerprint(a) == runtime_env_fingerprint(b)
    with staged_runtime_env(_request(extra_env_vars={"X": "1"}), repo_root) as c:
        assert runtime_env_fingerprint(c) != runtime_env_fingerprint(a)
    with staged_runtime_env(_request(env_kind="image"), repo_root) as d:
        assert runtime_env_fingerprint(d) != runtime_env_fingerprint(a)


def test_fingerprint_changes_when_an_entrypoint_changes(tmp_path: Path, repo_root: Path) -> None:
    """A different jobs/preflight.py is a different environment."""
    for rel in ("jobs/council.py", "jobs/preflight.py", "runtime_envs/pinned.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((repo_root / rel).read_text())
    with staged_runtime_env(_request(), tmp_path) as before:
        fp = runtime_env_fingerprint(before)
    (tmp_path / "jobs" / "preflight.py").write_text("# changed\n")
    with staged_runtime_env(_request(), tmp_path) as after:
        assert runtime_env_fingerprint(after) != fp


def test_cache_key_changes_with_nodes_cluster_and_expectations(repo_root: Path) -> None:
    """A new node, another cluster or another NATS URL is another key; timeouts are not."""
    with staged_runtime_env(_request(), repo_root) as env:
        exp = node_expectations(_request(), root=repo_root)
        key = preflight_key("http://h:8265", ["n1", "n2"], env, exp)
        assert preflight_key("http://h:8265/", ["n2", "n1"], env, exp) == key
        assert preflight_key("http://h:8265", ["n1", "n2", "n3"], env, exp) != key
        assert preflight_key("http://other:8265", ["n1", "n2"], env, exp) != key
        other_nats = node_expectations(_request(nats_url="nats://10.0.0.9:4222"), root=repo_root)
        assert preflight_key("http://h:8265", ["n1", "n2"], env, other_nats) != key
        slower = node_expectations(_request(), root=repo_root, timeout_s=1200)
        assert preflight_key("http://h:8265", ["n1", "n2"], env, slower) == key


def test_expectations_come_from_the_spec_and_the_pin_list(repo_root: Path) -> None:
    """Engine specs expect GPUs per replica and no server; server specs the server URL."""
    gpu = CouncilSpec.from_dict({**json.loads(SPEC.to_json()), "model": {"num_gpus": 1, "replicas": 2}})
    exp = node_expectations(_request(spec=gpu), root=repo_root)
    assert (exp.gpus_per_replica, exp.replicas, exp.llm_server_url) == (1, 2, None)
    assert exp.pins == read_worker_pins(repo_root) and exp.swe_fleet_version == swe_fleet.__version__
    server = SPEC.with_overrides(backend="server", server_url="http://10.0.0.3:8000")
    exp = node_expectations(_request(spec=server), root=repo_root)
    assert (exp.llm_server_url, exp.gpus_per_replica) == ("http://10.0.0.3:8000", 0)


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


def test_refusal_names_every_failing_node_check_and_fix() -> None:
    """PreflightFailed names the first node and check, and lists each failure with its fix."""
    exc = preflight_failed(
        [
            Check(
                "module nats",
                FAIL,
                "nats-py==2.16.0 is not importable",
                "use --env pinned",
                node="10.0.0.2 (ab)",
            ),
            Check("disk", FAIL, "0.1 GiB free", "free space", node="10.0.0.1 (head cd)"),
        ]
    )
    assert (exc.node, exc.check) == ("10.0.0.2 (ab)", "module nats")
    assert "10.0.0.2 (ab): module nats: nats-py==2.16.0 is not importable. Fix: use --env pinned" in str(exc)
    assert len(exc.failures) == 2 and "was not submitted" in str(exc)
