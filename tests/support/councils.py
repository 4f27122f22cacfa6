"""Checks shared by the tests that run real councils: every response accounted for, once."""

from __future__ import annotations

import asyncio
import json
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


def planned_slots(spec: CouncilSpec, rounds_run: dict[str, int]) -> Counter[tuple[str, str, int, str]]:
    """Every (task, phase, round, agent) slot the protocol plans, given the critique rounds each
    task ran (a council.deliberation.completed says them): per task, its agents x (2 + 2 x rounds)."""
    planned: Counter[tuple[str, str, int, str]] = Counter()
    for task in spec.tasks:
        rounds = rounds_run[task.id]
        phases = [("propose", 0), ("vote", 0)] + [
            (p, r) for r in range(1, rounds + 1) for p in ("critique", "revise")
        ]
        planned.update((task.id, p, r, a.id) for p, r in phases for a in spec.agents_of(task))
    return planned


def assert_complete_council(events: Sequence[dict[str, Any]], spec: CouncilSpec) -> Counter[str]:
    """Given one submission's events (as JSON dicts), assert the deliberation is complete: no key
    twice, no council.job.failed; one result per task, each ``decided`` or ``tied``; every planned
    slot (:func:`planned_slots`) has exactly one agent event, and nothing else came; each task's
    transcript is exactly its agent events. Returns the count per phase."""
    assert not [e for e in events if e["event"] == "council.job.failed"], "the job said it failed"
    agent_events = [e for e in events if e["event"].startswith("agent.response.")]
    results = [e for e in events if e["event"] == "council.deliberation.completed"]
    keys = [_key(e) for e in agent_events] + [
        f"{r['submission_id']}/{r['task_id']}/deliberation" for r in results
    ]
    assert len(keys) == len(set(keys)), "an event key appeared twice"
    assert sorted(r["task_id"] for r in results) == sorted(t.id for t in spec.tasks), "a task has no result"
    by_task = {r["task_id"]: r for r in results}
    for r in results:
        assert r["rounds_run"] <= spec.protocol.critique_rounds
        assert r["outcome"] in ("decided", "tied"), f"task {r['task_id']}: {r['outcome']}: {r['reason']}"
        task = next(t for t in spec.tasks if t.id == r["task_id"])
        assert (r["winner"] is None) == (r["outcome"] == "tied") and len(r["ranking"]) == len(
            spec.agents_of(task)
        )
        task_keys = [_key(e) for e in agent_events if e["task_id"] == r["task_id"]]
        assert sorted(r["transcript"]) == sorted(task_keys)
    came = Counter((e["task_id"], e["phase"], e["round"], e["agent_id"]) for e in agent_events)
    planned = planned_slots(spec, {t: r["rounds_run"] for t, r in by_task.items()})
    missing, extra = planned - came, came - planned
    assert not missing and not extra, (
        f"slots without an event: {sorted(missing)}; unplanned or twice: {sorted(extra)}"
    )
    return Counter(e["phase"] for e in agent_events)


def _key(e: dict[str, Any]) -> str:
    base = f"{e['submission_id']}/{e['task_id']}/{e['phase']}/{e['round']}/{e['agent_id']}"
    return f"{base}/failed" if e["event"] == "agent.response.failed" else base


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


def engine_cli(head: RayHead, *args: str, timeout: float = 600) -> dict[str, Any]:
    """``swe-fleet engine ARGS --json`` against the session cluster; its report."""
    swe_fleet = str(Path(sys.executable).parent / "swe-fleet")
    proc = subprocess.run(
        [swe_fleet, "engine", *args, "--address", head.dashboard_url, "--json"],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **head.client_env()},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


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
