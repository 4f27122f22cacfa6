"""Checks shared by the tests that run real councils: every response accounted for, once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from swe_fleet.events import AgentResponseCompleted
from swe_fleet.local.stack import RayHead
from swe_fleet.spec import CouncilSpec


def propose_events(sid: str, n: int, start: int = 0) -> list[AgentResponseCompleted]:
    """``n`` distinct propose events of submission ``sid`` (tasks t{start}..t{start+n-1})."""
    return [
        AgentResponseCompleted(
            submission_id=sid, council="c", task_id=f"t{i}", phase="propose", agent_id="a", role="r",
            content=f"answer {i}",
        )
        for i in range(start, start + n)
    ]  # fmt: skip


def assert_complete_council(events: Sequence[dict[str, Any]], spec: CouncilSpec) -> Counter[str]:
    """Given one submission's events (as JSON dicts), assert the deliberation is complete:
    no key twice; tasks x agents proposals and votes; one critique per agent per round that ran;
    at most one revision per agent per round; one result per task whose transcript is exactly
    that task's agent-response events. Returns the count per phase."""
    agent_events = [e for e in events if e["event"] != "council.deliberation.completed"]
    results = [e for e in events if e["event"] == "council.deliberation.completed"]
    keys = [_key(e) for e in agent_events] + [
        f"{r['submission_id']}/{r['task_id']}/deliberation" for r in results
    ]
    assert len(keys) == len(set(keys)), "an event key appeared twice"
    n_agents = len(spec.agents)
    phases = Counter(e["phase"] for e in agent_events)
    assert phases["propose"] == len(spec.tasks) * n_agents
    assert sorted(r["task_id"] for r in results) == sorted(t.id for t in spec.tasks)
    for r in results:
        task_events = [e for e in agent_events if e["task_id"] == r["task_id"]]
        assert sorted(r["transcript"]) == sorted(_key(e) for e in task_events)
        assert len(r["ranking"]) == n_agents
        per_round = Counter((e["phase"], e["round"]) for e in task_events)
        assert r["rounds_run"] <= spec.protocol.critique_rounds
        for round_ in range(1, r["rounds_run"] + 1):
            assert per_round[("critique", round_)] == n_agents
            assert per_round[("revise", round_)] <= n_agents
        assert per_round[("vote", 0)] == r["votes_expected"] == n_agents
    return phases


def _key(e: dict[str, Any]) -> str:
    base = f"{e['submission_id']}/{e['task_id']}/{e['phase']}/{e['round']}/{e['agent_id']}"
    return f"{base}/failed" if e["event"] == "agent.response.failed" else base


def assert_no_silence(events: Sequence[dict[str, Any]], spec: CouncilSpec) -> str:
    """Given one submission's events, assert no consumer is left waiting: either the job said it
    failed (``council.job.failed``), or every task has its result and every proposal, critique
    and vote slot of every task and agent has its completed or failed event (revisions: at most
    one per agent and round). No key twice. Returns ``"job failed"`` or ``"all answered"``."""
    keys = [_key(e) for e in events if e["event"].startswith("agent.response.")]
    assert len(keys) == len(set(keys)), "an event key appeared twice"
    if any(e["event"] == "council.job.failed" for e in events):
        return "job failed"
    results = {e["task_id"]: e for e in events if e["event"] == "council.deliberation.completed"}
    assert sorted(results) == sorted(t.id for t in spec.tasks), "a task has no result"
    answered = Counter(
        (e["task_id"], e["agent_id"], e["phase"], e["round"])
        for e in events
        if e["event"].startswith("agent.response.")
    )
    for task in spec.tasks:
        rounds = results[task.id]["rounds_run"]
        for agent in spec.agents:
            expected = [("propose", 0), ("vote", 0)] + [("critique", r) for r in range(1, rounds + 1)]
            for phase, round_ in expected:
                assert answered[(task.id, agent.id, phase, round_)] == 1, (
                    f"no outcome for {task.id}/{agent.id}/{phase}/{round_}"
                )
            for r in range(1, rounds + 1):
                assert answered[(task.id, agent.id, "revise", r)] <= 1
    return "all answered"


def consume_all(nats_url: str, durable: str | None, submission_id: str) -> list[dict[str, Any]]:
    """Every event of one submission, read by a fresh consumer (ends after 3 s without one)."""
    from swe_fleet.nats.consumer import ConsumerOptions, iter_events

    async def go() -> list[dict[str, Any]]:
        opts = ConsumerOptions(
            nats_url=nats_url,
            durable=durable,
            idle_timeout_s=3,
            fetch_wait_s=0.5,
            submission_id=submission_id,
        )
        return [e.model_dump(mode="json") async for e in iter_events(opts)]

    return asyncio.run(go())


def saved_checkpoint(nats_url: str, submission_id: str) -> dict[str, Any] | None:
    """The council checkpoint of ``submission_id`` (None before its first phase is done)."""
    from swe_fleet.nats.checkpoints import KVCheckpoints
    from swe_fleet.nats.connection import close_nats, connect_nats

    async def go() -> dict[str, Any] | None:
        nc = await connect_nats(nats_url)
        try:
            store = await KVCheckpoints.open(nc.jetstream())
            return await store.load(submission_id)
        finally:
            await close_nats(nc)

    return asyncio.run(go())


def ray_job_submit(
    repo_root: Path, head: RayHead, runtime_env: str, entrypoint: Sequence[str], timeout_s: float
) -> tuple[int, str]:
    """Ray's own CLI, as a user types it: ``ray job submit --address DASHBOARD --runtime-env
    FILE --entrypoint-num-cpus 0 -- ENTRYPOINT`` from the checkout. Returns (exit code, output)."""
    cmd = [
        str(Path(sys.executable).parent / "ray"), "job", "submit",
        "--address", head.dashboard_url,
        "--runtime-env", runtime_env,
        "--entrypoint-num-cpus", "0",
        "--", *entrypoint,
    ]  # fmt: skip
    env = {**os.environ, **head.client_env()}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=timeout_s)
    return proc.returncode, proc.stdout + proc.stderr


def on_server_backend(spec: CouncilSpec, server_url: str, **model: Any) -> CouncilSpec:
    """``spec`` run by the server backend against ``server_url`` (the session vLLM server); the
    served model is the local one (``smollm2-135m``, the server's ``--served-model-name``)."""
    doc = spec.model_dump(mode="json")
    doc["backend"] = "server"
    doc["server"] = {**doc["server"], "url": server_url, "concurrency": 16}
    doc["model"] = {**doc["model"], **model}
    return CouncilSpec.from_dict(doc)


def warm_runtime_env(head: RayHead, nats_url: str, repo_root: Path, timeout_s: float = 600) -> None:
    """Build the pinned runtime_env on ``head`` once, by the project's own preflight: its job runs
    in exactly the runtime_env a council gets (Ray caches the pip environment per node for every
    later job), and a node that lacks a pin fails the session here, naming the node and module.
    """
    from swe_fleet.preflight.orchestration import ensure_preflight
    from swe_fleet.submit.jobs_api import JobsApi
    from swe_fleet.submit.request import CouncilSubmission
    from swe_fleet.submit.runtime_env import staged_runtime_env

    spec = CouncilSpec.from_file(repo_root / "tests" / "data" / "tiny.yaml")
    submission = CouncilSubmission(spec=spec, env_kind="pinned", nats_url=nats_url)
    jobs = JobsApi(head.dashboard_url, auth_token=head.auth_token)
    with staged_runtime_env(submission) as runtime_env:
        ensure_preflight(jobs, submission, runtime_env, timeout_s=timeout_s)
