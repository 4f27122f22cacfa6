"""A council job through the real Jobs API, real vLLM on CPU, real JetStream.

Tests about delivery, ids and resuming run the server backend against the session's vLLM server;
the tests about the engine backend (the README's line, replicas, a killed engine) run on the
session cluster's shared engine pool (started by the first of them, reused by the next).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from swe_fleet.llm.pool import pool_name
from swe_fleet.local.stack import NatsServer, RayHead
from swe_fleet.local.vllm_server import VLLMServer
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission, SubmittedJob
from swe_fleet.submit.submission import submit_council
from swe_fleet.submit.wait import wait_until_terminal

from support.councils import (
    assert_complete_council,
    consume_all,
    engine_cli,
    on_server_backend,
    ray_job_submit,
    saved_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.llm, pytest.mark.slow]

JOB_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def tiny_job(
    client: JobsApi, session_nats: NatsServer, tiny_spec: CouncilSpec, vllm_server: VLLMServer
) -> tuple[CouncilSubmission, str]:
    """The tiny council (server backend), submitted once through the Jobs API and run to the end."""
    request = CouncilSubmission(
        spec=on_server_backend(tiny_spec, vllm_server.base_url), nats_url=session_nats.url
    )
    submitted = submit_council(client, request)
    assert submitted.created
    status = wait_until_terminal(client, submitted.job_id, timeout_s=JOB_TIMEOUT_S)
    assert status.value == "SUCCEEDED", client.logs(submitted.job_id)[-3000:]
    return request, submitted.submission_id


def test_job_events_reach_a_durable_consumer_exactly_once(
    tiny_job: tuple[CouncilSubmission, str], session_nats: NatsServer, tiny_spec: CouncilSpec
) -> None:
    """Every proposal, critique, revision and vote reaches a durable consumer once; one result
    per task; a second durable consumer sees the same set (nothing consumed away)."""
    _, sid = tiny_job
    events = consume_all(session_nats.url, "it-exactly-once", sid)
    phases = assert_complete_council(events, tiny_spec)
    assert phases["vote"] == len(tiny_spec.tasks) * len(tiny_spec.agents)
    again = consume_all(session_nats.url, "it-exactly-once-2", sid)
    assert sorted(map(str, again)) == sorted(map(str, events))


def test_resubmitting_the_same_request_does_not_start_a_second_job(
    tiny_job: tuple[CouncilSubmission, str], client: JobsApi
) -> None:
    """The same request finds the existing job: no HTTP 500, no second job."""
    request, sid = tiny_job
    again = submit_council(client, request)
    assert again.submission_id == sid and not again.created
    assert [j.submission_id for j in client.list_jobs()].count(again.job_id) == 1


def test_different_request_under_a_taken_id_is_a_conflict(
    tiny_job: tuple[CouncilSubmission, str], client: JobsApi, tiny_spec: CouncilSpec
) -> None:
    """Reusing an explicit id for another spec raises SubmissionConflict naming the id."""
    from swe_fleet.errors import SubmissionConflict

    _, sid = tiny_job
    other = CouncilSubmission(spec=tiny_spec.with_overrides(nats_url="nats://127.0.0.1:1"), submission_id=sid)
    with pytest.raises(SubmissionConflict, match=sid):
        submit_council(client, other)


def test_pipelined_and_barrier_schedules_publish_the_same_slots(
    client: JobsApi, session_nats: NatsServer, tiny_spec: CouncilSpec, vllm_server: VLLMServer
) -> None:
    """The tiny council (early stop off, so the plan does not depend on the texts) run once per
    schedule: both complete every planned slot, under the same keys apart from the submission id."""
    keys: dict[str, set[str]] = {}
    for schedule in ("pipelined", "barrier"):
        doc = on_server_backend(tiny_spec, vllm_server.base_url, max_tokens=24).model_dump(mode="json")
        doc["name"] = f"schedule-{schedule}"
        doc["protocol"].update(early_stop=False, schedule=schedule)
        spec = CouncilSpec.from_dict(doc)
        submitted = submit_council(client, CouncilSubmission(spec=spec, nats_url=session_nats.url))
        status = wait_until_terminal(client, submitted.job_id, timeout_s=JOB_TIMEOUT_S)
        assert status.value == "SUCCEEDED", client.logs(submitted.job_id)[-3000:]
        events = consume_all(session_nats.url, None, submitted.submission_id)
        assert_complete_council(events, spec)
        sid = submitted.submission_id
        keys[schedule] = {
            f"{e['task_id']}/{e['phase']}/{e['round']}/{e['agent_id']}" if e["event"].startswith("agent.")
            else f"{e['task_id']}/deliberation"
            for e in events if e["submission_id"] == sid
        }  # fmt: skip
    assert keys["pipelined"] == keys["barrier"]
    assert len(keys["barrier"]) == len(tiny_spec.tasks) * (len(tiny_spec.agents) * 4 + 1)


@pytest.mark.engine
def test_readme_line_runs_two_replicas_each_called_once_per_task_and_phase(
    repo_root: Path, council_cluster: RayHead, session_nats: NatsServer, prepared_model: Path
) -> None:
    """The README's laptop line (ray job submit ... --runtime-env runtime_envs/pinned.yaml --
    python jobs/council.py --spec SPEC) runs a council whose events carry Ray's own submission
    id; the council is pipelined (the default schedule): each task's phase is one call, split
    across the two engine replicas, so each replica serves exactly one ``chat`` per (task, phase)
    (counted inside the actors), and every phase publishes tasks x agents events.

    (One engine council for both promises: the README line with examples/council.yaml is what
    `swe-fleet run` runs in tests/e2e.)"""
    spec_path = "tests/data/tiny-two-replicas.yaml"
    code, output = ray_job_submit(
        repo_root, council_cluster, "runtime_envs/pinned.yaml",
        ["python", "jobs/council.py", "--spec", spec_path, "--nats-url", session_nats.url],
        timeout_s=JOB_TIMEOUT_S,
    )  # fmt: skip
    assert code == 0, output[-3000:]
    match = re.search(r"Job '(raysubmit_\w+)' submitted successfully", output)
    assert match, output[-2000:]
    spec = CouncilSpec.from_file(repo_root / spec_path)
    assert spec.model.replicas == 2 and not spec.protocol.early_stop
    done = next(
        json.loads(line[line.index("{") :])
        for line in reversed(output.splitlines())
        if '"council.done"' in line and "{" in line
    )
    phases = 2 + 2 * spec.protocol.critique_rounds  # propose, (critique, revise) x k, vote
    assert spec.protocol.schedule == "pipelined" and done["phases"] == phases
    calls = len(spec.tasks) * phases  # one per (task, phase), each split over both replicas
    assert done["replica_calls"] == [calls, calls]
    assert done["llm_calls"] == 2 * calls
    events = consume_all(session_nats.url, "it-ray-cli", match.group(1))
    assert_complete_council(events, spec)
    per_phase = Counter(
        (e["phase"], e["round"]) for e in events if e["event"] != "council.deliberation.completed"
    )
    pairs = len(spec.tasks) * len(spec.agents)
    assert per_phase == {
        ("propose", 0): pairs,
        ("critique", 1): pairs,
        ("revise", 1): pairs,
        ("vote", 0): pairs,
    }


def _wait_for_checkpoint(client: JobsApi, url: str, submitted: SubmittedJob) -> dict[str, Any]:
    """Poll until the running job has saved its deliberation's first checkpoint (bounded)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (saved := saved_checkpoint(url, submitted.submission_id)) is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        assert not client.status(submitted.job_id).is_terminal(), client.logs(submitted.job_id)[-2000:]
        time.sleep(0.2)
    return saved


def test_killed_driver_resumes_from_its_checkpoint_without_duplicates(
    client: JobsApi, session_nats: NatsServer, tiny_spec: CouncilSpec, vllm_server: VLLMServer
) -> None:
    """Stop the job after its first phase is checkpointed (it publishes council.job.failed for that
    attempt), rerun the same submission: each task resumes after its own saved phase and every
    event is in the stream exactly once. (Server backend; answers long enough that the stop lands mid-run.)"""
    doc = on_server_backend(tiny_spec, vllm_server.base_url, max_tokens=128).model_dump(mode="json")
    doc["name"] = "resume"
    doc["protocol"]["early_stop"] = False
    request = CouncilSubmission(spec=CouncilSpec.from_dict(doc), nats_url=session_nats.url)
    first = submit_council(client, request)
    sid = first.submission_id
    saved = _wait_for_checkpoint(client, session_nats.url, first)
    client.stop(first.job_id)
    assert wait_until_terminal(client, first.job_id, timeout_s=120).value == "STOPPED"
    assert all("vote" not in phases for phases in saved["done"].values())
    # Where each task stood when the driver died (its own phase: pipelined tasks move apart).
    last = {task: phases[-1] for task, phases in saved_checkpoint(session_nats.url, sid)["done"].items()}

    again = submit_council(client, request, retry_failed=True)
    assert (again.submission_id, again.job_id, again.created) == (sid, f"{sid}-retry1", True)
    assert not submit_council(client, request).created  # the retry is the latest attempt now
    status = wait_until_terminal(client, again.job_id, timeout_s=JOB_TIMEOUT_S)
    logs = client.logs(again.job_id)
    assert status.value == "SUCCEEDED", logs[-3000:]
    resumed = next(
        json.loads(line[line.index("{") :]) for line in logs.splitlines() if '"council.resumed"' in line
    )
    assert resumed["after"] == last, logs[-3000:]
    events = consume_all(session_nats.url, "it-resume", sid)
    # The stopped attempt said so (SIGTERM -> council.job.failed for that attempt) ...
    stopped = [e for e in events if e["event"] == "council.job.failed"]
    assert [(e["job_id"], e["reason"]) for e in stopped] == [(sid, "stopped (SIGTERM)")]
    # ... and the retry completed the deliberation with every event exactly once.
    assert_complete_council([e for e in events if e["event"] != "council.job.failed"], request.spec)


def _engine_actor_pids(head: RayHead) -> list[int]:
    """PIDs of vLLM engine actors among the descendants of our own Ray head (nothing else)."""
    import psutil

    assert head.process is not None
    found = []
    for proc in psutil.Process(head.process.pid).children(recursive=True):
        try:
            if "VLLMEngine" in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


@pytest.mark.engine
def test_a_killed_engine_replica_loses_no_slot(
    client: JobsApi,
    ray_head: RayHead,
    session_nats: NatsServer,
    tiny_spec: CouncilSpec,
    prepared_model: Path,
) -> None:
    """Two replicas of the shared engine pool; SIGKILL one of them after the first phase: its
    share of the next batch reruns on the other replica (``engine.replica_lost``), the job
    succeeds and every planned slot completed exactly once; Ray restarts the killed replica
    (a new process), and the pool serves on with both (``swe-fleet engine status``)."""
    import signal

    doc = tiny_spec.model_dump(mode="json")
    doc["name"] = "killengine"
    doc["protocol"]["early_stop"] = False
    doc["model"]["replicas"] = 2
    spec = CouncilSpec.from_dict(doc)
    submitted = submit_council(client, CouncilSubmission(spec=spec, nats_url=session_nats.url))
    sid = submitted.submission_id
    _wait_for_checkpoint(client, session_nats.url, submitted)
    pids = _engine_actor_pids(ray_head)
    assert len(pids) == 2, f"expected two engine actors under our Ray head, found {pids}"
    os.kill(pids[0], signal.SIGKILL)
    killed = pids[0]
    status = wait_until_terminal(client, submitted.job_id, timeout_s=JOB_TIMEOUT_S)
    logs = client.logs(submitted.job_id)
    assert status.value == "SUCCEEDED", logs[-3000:]
    assert '"engine.replica_lost"' in logs, logs[-3000:]
    events = consume_all(session_nats.url, "it-killengine", sid)
    assert_complete_council(events, spec)
    assert not [e for e in events if e["event"] == "agent.response.failed"], logs[-3000:]
    pool = pool_name(spec.model)
    deadline = time.monotonic() + 120
    while True:  # the restarted replica loads its model again
        replicas = {r["name"]: r for r in engine_cli(ray_head, "status")["replicas"]}
        ready = [r for n, r in replicas.items() if n.startswith(f"{pool}/") and "error" not in r]
        if len(ready) == 2 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert sorted(r["name"] for r in ready) == [f"{pool}/0", f"{pool}/1"], replicas
    assert killed not in [r["pid"] for r in ready] and set(pids[1:]) <= {r["pid"] for r in ready}


@pytest.mark.engine  # it starts the session vLLM server again
def test_a_restarted_vllm_server_loses_no_slot(
    client: JobsApi,
    session_nats: NatsServer,
    tiny_spec: CouncilSpec,
    prepared_model: Path,
    vllm_server: VLLMServer,
) -> None:
    """Server backend: SIGKILL the (session's) vLLM server after the first phase and restart it
    on the same port: the requests in flight and those sent while it is down retry (the spec's
    ``server.retry_budget_s`` outlasts a CPU vLLM start), the job succeeds and every planned slot
    completed exactly once."""
    server = vllm_server
    try:
        doc = on_server_backend(tiny_spec, server.base_url).model_dump(mode="json")
        doc["name"] = "killserver"
        doc["protocol"]["early_stop"] = False
        doc["server"]["concurrency"] = 8
        spec = CouncilSpec.from_dict(doc)
        assert spec.server.retry_budget_s >= 120
        submitted = submit_council(client, CouncilSubmission(spec=spec, nats_url=session_nats.url))
        sid = submitted.submission_id
        _wait_for_checkpoint(client, session_nats.url, submitted)
        assert server.process is not None
        server.process.popen.kill()  # SIGKILL, mid-run
        server.stop()
        server.start(prepared_model, port=server.port)
        status = wait_until_terminal(client, submitted.job_id, timeout_s=JOB_TIMEOUT_S)
    finally:
        if server.process is None or not server.process.alive():  # the session's server stays up
            server.start(prepared_model, port=server.port)
    logs = client.logs(submitted.job_id)
    assert status.value == "SUCCEEDED", logs[-3000:]
    assert '"server.retry"' in logs, logs[-3000:]  # the restart was ridden over, not missed
    events = consume_all(session_nats.url, "it-killserver", sid)
    assert_complete_council(events, spec)
    assert not [e for e in events if e["event"] == "agent.response.failed"], logs[-3000:]


def test_nats_paused_within_then_beyond_the_budget_loses_and_duplicates_nothing(
    client: JobsApi, nats_server: NatsServer, tiny_spec: CouncilSpec, vllm_server: VLLMServer
) -> None:
    """A real council (server backend) on its own nats-server, with a 12 s publish budget:
    SIGSTOP once every task has proposed, for 8 s (longer than one 5 s acknowledgement wait,
    within the budget): it carries on. SIGSTOP once every task has critiqued, until the attempt
    has ended (beyond the budget): it fails naming what it could not do; ``--retry-failed``
    resumes each task after its own last saved phase and completes it. Every planned slot is
    stored exactly once."""
    import signal

    doc = on_server_backend(tiny_spec, vllm_server.base_url, max_tokens=64).model_dump(mode="json")
    doc["name"] = "natspause"
    doc["protocol"]["early_stop"] = False
    doc["publish"]["retry_budget_s"] = 12
    request = CouncilSubmission(spec=CouncilSpec.from_dict(doc), nats_url=nats_server.url)
    first = submit_council(client, request)
    sid = first.submission_id
    assert nats_server.process is not None
    pid = nats_server.process.pid

    def every_task_did(phase: str) -> bool:
        done = (saved_checkpoint(nats_server.url, sid) or {}).get("done", {})
        return all(phase in done.get(t.id, []) for t in tiny_spec.tasks)

    def wait_for_done(phase: str) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not every_task_did(phase):
            saved = saved_checkpoint(nats_server.url, sid)
            assert time.monotonic() < deadline, f"no checkpoint after {phase}: {saved}"
            assert not client.status(first.job_id).is_terminal(), client.logs(first.job_id)[-3000:]
            time.sleep(0.1)

    def paused(seconds: float, until: Callable[[], bool] = lambda: False) -> float:
        """Stop nats-server for ``seconds``, or less once ``until()`` holds; the seconds it was stopped."""
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            while time.monotonic() - stopped < seconds and not until():
                time.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        return time.monotonic() - stopped

    wait_for_done("propose")
    paused(8)  # within the budget: only delays the next publishes
    wait_for_done("critique.1")
    # Beyond it: the revise events' publish gives up after 12 s (they go to the outbox) and the
    # attempt fails, all while the server is stopped (at most 90 s). What it sent meanwhile waits
    # in its TCP connection to the stopped server (the kernel buffers it) and lands when the
    # server continues: deduplicated by key.
    stopped_s = paused(90, until=lambda: client.status(first.job_id).is_terminal())
    assert stopped_s < 90, f"the attempt went on 90 s after NATS stopped: {client.logs(first.job_id)[-3000:]}"
    status = wait_until_terminal(client, first.job_id, timeout_s=JOB_TIMEOUT_S)
    logs = client.logs(first.job_id)
    assert status.value == "FAILED", logs[-3000:]
    assert '"publish.outbox"' in logs, logs[-3000:]
    assert "was never retrieved" not in logs and "Traceback" not in logs, logs[-3000:]  # no asyncio noise
    last = {task: phases[-1] for task, phases in saved_checkpoint(nats_server.url, sid)["done"].items()}

    again = submit_council(client, request, retry_failed=True)
    assert (again.submission_id, again.job_id) == (sid, f"{sid}-retry1")
    retry_status = wait_until_terminal(client, again.job_id, timeout_s=JOB_TIMEOUT_S)
    retry_logs = client.logs(again.job_id)
    assert retry_status.value == "SUCCEEDED", retry_logs[-3000:]
    resumed = next(
        json.loads(line[line.index("{") :]) for line in retry_logs.splitlines() if '"council.resumed"' in line
    )
    assert resumed["after"] == last, retry_logs[-3000:]
    assert "was never retrieved" not in retry_logs, retry_logs[-3000:]
    events = consume_all(nats_server.url, "it-natspause", sid)
    # The first attempt said why it failed (its event landed once the server continued) ...
    failed = [e for e in events if e["event"] == "council.job.failed"]
    assert [e["job_id"] for e in failed] == [sid], failed
    assert "not acknowledged by NATS; they are in the outbox" in failed[0]["reason"]
    # ... and the retry completed the deliberation: every planned slot once, no key twice.
    assert_complete_council([e for e in events if e["event"] != "council.job.failed"], request.spec)
