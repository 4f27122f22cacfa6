"""The dispatcher end to end: real nats-server, real Ray head, real council jobs (server backend
on one real vLLM CPU server), real ``swe-fleet dispatch`` processes.

One module-scoped scenario runs once and every test asserts on it (a council job costs seconds):

1. 5 malformed requests, then 20 valid ones through ``request_council`` (the 20th by
   ``spec_ref``); every valid one's ticket is awaited throughout.
2. Dispatcher A serves them until a pause (tests/support/paused_dispatch.py) holds it right
   after submitting r05's job (before its event and ack); A is SIGKILLed there.
3. Dispatcher B restarts on the same durable and ledger; it is paused after submitting r12 and
   gets SIGTERM during the pause: it must finish r12, ack it and exit 0.
4. Dispatcher C serves the rest; after every job's terminal event it gets SIGINT (exit 130).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.js import api

from swe_fleet._processes import ManagedProcess, free_port
from swe_fleet.dispatch.producer import request_council
from swe_fleet.errors import RequestRejected
from swe_fleet.events import (
    COUNCIL_REQUESTS_STREAM,
    COUNCIL_REQUESTS_SUBJECTS,
    CouncilJobStatus,
    DeliberationCompleted,
    decode_event,
)
from swe_fleet.local.stack import NatsServer, RayHead
from swe_fleet.local.vllm_server import VLLMServer
from swe_fleet.nats.connection import close_nats, connect_nats
from swe_fleet.nats.streams import ensure_stream
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import attempt_job_id

pytestmark = [pytest.mark.integration, pytest.mark.llm, pytest.mark.slow]

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")
PAUSED_DISPATCH = Path(__file__).resolve().parents[1] / "support" / "paused_dispatch.py"
N_VALID = 20
MAX_IN_FLIGHT = 4
KILLED_AT = 5  # r05: A is SIGKILLed between submitting its job and acking it
STOPPED_AT = 12  # r12: B gets SIGTERM while submitting it
BY_REF = 19  # r19 names its spec by spec_ref
SCENARIO_TIMEOUT_S = 840.0  # under pytest-timeout's 900 s: our message, not its traceback
#: Bound on every ticket resolving once the last dispatcher runs. The 20 jobs take ~2 minutes
#: alone, and measured 5.5 minutes on this 2-core machine while the netns module built its
#: pinned runtime_env beside them (each job's driver is a Python process that imports Ray).
TICKETS_TIMEOUT_S = 600.0


def tiny_spec(server_url: str) -> dict[str, Any]:
    """The cheapest real council: 2 agents, 1 task, no critique rounds, a few tokens."""
    return {
        "name": "dispatch-tiny",
        "tasks": [{"id": "add", "prompt": "Write a Python function add(a, b) that returns a + b."}],
        "agents": [{"id": "arch", "role": "architect"}, {"id": "dev", "role": "developer"}],
        "protocol": {"critique_rounds": 0},
        "model": {"name": "smollm2-135m", "max_tokens": 8, "vote_max_tokens": 32},
        "backend": "server",
        "server": {"url": server_url, "concurrency": 4},
    }


@dataclass
class DispatcherRun:
    """One ``swe-fleet dispatch`` process and its JSON log."""

    name: str
    process: ManagedProcess
    exit_code: int | None = None

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.process.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):  # a line cut by SIGKILL
                    out.append(json.loads(line))
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == name]

    async def wait_for(self, name: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.events(name)
            if found:
                return found[0]
            if not self.process.alive():
                raise AssertionError(f"dispatcher {self.name} exited early:\n{self.process.tail(40)}")
            await asyncio.sleep(0.2)
        raise AssertionError(
            f"dispatcher {self.name}: no {name} within {timeout_s:.0f} s:\n{self.process.tail(40)}"
        )


@dataclass
class Scenario:
    prefix: str
    request_ids: list[str]
    outcomes: list[Any]
    runs: dict[str, DispatcherRun]
    a_alive_when_killed: bool
    jobs: list[Any]
    #: (stream seq, subject, Nats-Msg-Id, payload) of every council.job.> message, in stream order.
    job_messages: list[tuple[int, str, str, dict[str, Any]]]
    dead_letters: list[dict[str, Any]]
    consumer_dead_letters: int
    consume_exit: int
    consume_lines: list[dict[str, Any]] = field(default_factory=list)

    def rid(self, i: int) -> str:
        return self.request_ids[i]


@pytest.fixture(scope="module")
def scenario(
    council_cluster: RayHead, vllm_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    """The whole story of the module docstring, run once."""
    workdir = tmp_path_factory.mktemp("dispatch")
    nats = NatsServer(workdir / "nats").start()
    runs: dict[str, DispatcherRun] = {}
    try:
        yield asyncio.run(
            asyncio.wait_for(
                _run_scenario(workdir, nats, council_cluster, vllm_server, runs), SCENARIO_TIMEOUT_S
            )
        )
    finally:
        for run in runs.values():
            run.process.stop(timeout_s=10)
        nats.stop()


def _malformed(prefix: str, spec: dict[str, Any]) -> list[tuple[bytes, str]]:
    """(payload, a phrase its dead letter's reason must contain)."""
    return [
        (b"this is not json", "not JSON"),
        (b'["a", "list"]', "expected a JSON object"),
        (
            json.dumps({"request_id": f"{prefix}-bad3", "spec": spec, "priority": 1}).encode(),
            "unknown field priority",
        ),
        (json.dumps({"request_id": f"{prefix}-bad4", "spec": {**spec, "tasks": []}}).encode(), "spec.tasks"),
        (
            json.dumps({"request_id": f"{prefix}-bad5", "spec_ref": "specs/../../x.json"}).encode(),
            "leaves the spec directory",
        ),
    ]


def _client_env(ray: RayHead) -> dict[str, str]:
    """The cluster's token, and a RAY_ADDRESS naming no cluster: --address must win over it."""
    return {**os.environ, **ray.client_env(), "RAY_ADDRESS": "http://127.0.0.1:9"}


def _start(
    name: str,
    workdir: Path,
    nats: NatsServer,
    ray: RayHead,
    *extra: str,
    spec_dir: Path | None = None,
    pause_after_submit: str | None = None,
) -> DispatcherRun:
    """A ``swe-fleet dispatch`` child process (own process group), logging JSON to a file; with
    ``pause_after_submit`` (``REQUEST_ID=SECONDS``) run through tests/support/paused_dispatch.py."""
    log_path = workdir / f"dispatcher-{name}.log"
    command = (
        [sys.executable, str(PAUSED_DISPATCH), pause_after_submit]
        if pause_after_submit
        else [SWE_FLEET, "dispatch"]
    )
    argv = [
        *command,
        "--nats-url", nats.url,
        "--address", ray.dashboard_url,
        "--env", "image",  # the local cluster's nodes have swe-fleet and its pins: nothing to install
        "--max-in-flight", str(MAX_IN_FLIGHT),
        "--poll", "0.5",
        "--ack-wait", "5",
        "--json-logs",
        *(["--spec-dir", str(spec_dir)] if spec_dir else []),
        *extra,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_client_env(ray),
            start_new_session=True,
        )
    return DispatcherRun(name, ManagedProcess(f"dispatcher-{name}", popen, log_path))


async def _run_scenario(
    workdir: Path, nats: NatsServer, ray: RayHead, vllm: VLLMServer, runs: dict[str, DispatcherRun]
) -> Scenario:
    prefix = f"t{secrets.token_hex(3)}"
    spec_doc = tiny_spec(vllm.base_url)
    spec = CouncilSpec.from_dict(spec_doc)
    spec_dir = workdir / "specs"
    spec_dir.mkdir()
    (spec_dir / "tiny.json").write_text(json.dumps(spec_doc))
    rids = [f"{prefix}-r{i:02d}" for i in range(N_VALID)]

    nc = await connect_nats(nats.url)
    js = nc.jetstream(timeout=5)
    await ensure_stream(js, COUNCIL_REQUESTS_STREAM, COUNCIL_REQUESTS_SUBJECTS)
    for payload, _ in _malformed(prefix, spec_doc):
        await js.publish("council.request", payload, stream=COUNCIL_REQUESTS_STREAM)
    tickets = [
        await request_council(
            None if i == BY_REF else spec,
            spec_ref="tiny.json" if i == BY_REF else None,
            nats_url=nats.url,
            request_id=rid,
            timeout_s=SCENARIO_TIMEOUT_S,
        )
        for i, rid in enumerate(rids)
    ]

    runs["a"] = a = _start(
        "a", workdir, nats, ray, spec_dir=spec_dir, pause_after_submit=f"{rids[KILLED_AT]}=3600"
    )
    await a.wait_for("dispatch.test_pause_after_submit", 300)
    a_alive = a.process.alive()
    os.kill(a.process.pid, signal.SIGKILL)
    a.exit_code = await asyncio.to_thread(a.process.popen.wait, 30)

    runs["b"] = b = _start(
        "b", workdir, nats, ray, spec_dir=spec_dir, pause_after_submit=f"{rids[STOPPED_AT]}=4"
    )
    await b.wait_for("dispatch.test_pause_after_submit", 300)
    b.process.popen.send_signal(signal.SIGTERM)
    b.exit_code = await asyncio.to_thread(b.process.popen.wait, 60)

    runs["c"] = c = _start("c", workdir, nats, ray, spec_dir=spec_dir)
    # asyncio.wait, not wait_for: a timeout must leave the tickets as they were to name the waiting ones.
    gathered = asyncio.ensure_future(asyncio.gather(*tickets, return_exceptions=True))
    await asyncio.wait([gathered], timeout=TICKETS_TIMEOUT_S)
    if not gathered.done():
        waiting = [t.request_id for t in tickets if not t.done()]
        gathered.cancel()
        raise AssertionError(f"tickets still waiting after {TICKETS_TIMEOUT_S:.0f} s: {waiting}")
    outcomes = gathered.result()
    # The tickets resolve on the results; the terminal status events come a poll later.
    for _ in range(240):
        if len(await _terminal_keys(js)) >= N_VALID:
            break
        await asyncio.sleep(0.5)
    c.process.popen.send_signal(signal.SIGINT)
    c.exit_code = await asyncio.to_thread(c.process.popen.wait, 60)

    job_messages = await _read(js, "AGENT_RESPONSES", "council.job.>")
    dead_letters = [m[3] for m in await _read(js, COUNCIL_REQUESTS_STREAM, "council.request.dead")]
    consumer_dead = len(await _read(js, "AGENT_RESPONSES", "council.dead"))
    await close_nats(nc)

    consume = await asyncio.to_thread(
        subprocess.run,
        [SWE_FLEET, "consume", "--nats-url", nats.url, "--durable", "check", "--json", "--idle-timeout", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    client = JobsApi(ray.dashboard_url, auth_token=ray.auth_token)
    jobs = [
        j
        for j in await asyncio.to_thread(client.list_jobs)
        if (j.submission_id or "").startswith(f"dispatch-{prefix}-")
    ]
    return Scenario(
        prefix=prefix,
        request_ids=rids,
        outcomes=outcomes,
        runs=runs,
        a_alive_when_killed=a_alive,
        jobs=jobs,
        job_messages=job_messages,
        dead_letters=dead_letters,
        consumer_dead_letters=consumer_dead,
        consume_exit=consume.returncode,
        consume_lines=[json.loads(line) for line in consume.stdout.splitlines() if line.startswith("{")],
    )


async def _read(js: Any, stream: str, subject: str) -> list[tuple[int, str, str, dict[str, Any]]]:
    """Every message of ``subject`` in ``stream``, in stream order (an ephemeral consumer)."""
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, inactive_threshold=30),
    )
    out: list[tuple[int, str, str, dict[str, Any]]] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=1.0)
            except TimeoutError:
                return out
            for m in msgs:
                out.append(
                    (
                        m.metadata.sequence.stream,
                        m.subject,
                        (m.headers or {}).get("Nats-Msg-Id", ""),
                        json.loads(m.data),
                    )
                )
                await m.ack()
            if msgs[-1].metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


async def _terminal_keys(js: Any) -> set[str]:
    return {
        key
        for _, subject, key, _ in await _read(js, "AGENT_RESPONSES", "council.job.>")
        if subject in ("council.job.succeeded", "council.job.failed", "council.job.stopped")
    }


def _status_by_submission(s: Scenario) -> dict[str, list[str]]:
    states: dict[str, list[str]] = defaultdict(list)
    for _, _, _, payload in s.job_messages:
        if payload.get("event") == "council.job.status":
            states[payload["submission_id"]].append(payload["state"])
    return states


def _all_records(s: Scenario, name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(run, r) for run in ("a", "b", "c") for r in s.runs[run].events(name)]


# ---- the tests -------------------------------------------------------------------------------


def test_twenty_requests_start_exactly_twenty_jobs_that_deliver_their_results(scenario: Scenario) -> None:
    """20 valid requests (one by spec_ref) -> exactly 20 Ray jobs, all SUCCEEDED, and every
    request_council ticket resolves to its task's result."""
    assert sorted(j.submission_id for j in scenario.jobs) == [f"dispatch-{r}" for r in scenario.request_ids]
    assert {j.status.value for j in scenario.jobs} == {"SUCCEEDED"}
    for rid, outcome in zip(scenario.request_ids, scenario.outcomes, strict=True):
        assert isinstance(outcome, list), f"{rid}: {outcome!r}"
        [result] = outcome
        assert isinstance(result, DeliberationCompleted)
        assert result.submission_id == f"dispatch-{rid}" and result.task_id == "add"
        assert {r.agent_id for r in result.ranking} == {"arch", "dev"}


def test_every_job_has_one_submitted_one_running_and_one_terminal_event_in_order(scenario: Scenario) -> None:
    """Per job: submitted, running, succeeded, once each and in that order; 20 of each in all;
    no status key twice in the stream."""
    states = _status_by_submission(scenario)
    assert sorted(states) == [f"dispatch-{r}" for r in scenario.request_ids]
    assert all(seq == ["submitted", "running", "succeeded"] for seq in states.values()), states
    keys = [key for _, _, key, p in scenario.job_messages if p.get("event") == "council.job.status"]
    assert len(keys) == len(set(keys)) == 3 * N_VALID


def test_sigkill_between_submit_and_ack_then_restart_starts_no_second_job(scenario: Scenario) -> None:
    """A was killed right after submitting r05's job, before its event and ack; after the restart
    r05 has one job and one submitted event; its redelivery found the job; and no dispatcher ever
    published a status key twice (not even one JetStream would have dropped as a duplicate)."""
    rid = scenario.rid(KILLED_AT)
    a = scenario.runs["a"]
    assert scenario.a_alive_when_killed and a.exit_code == -signal.SIGKILL
    assert [r["request_id"] for r in a.events("dispatch.submitted")][-1] == rid
    assert rid not in {r["request_id"] for r in a.events("dispatch.acked")}
    assert [j.submission_id for j in scenario.jobs].count(f"dispatch-{rid}") == 1
    found = [r for _, r in _all_records(scenario, "dispatch.found_existing") if r["request_id"] == rid]
    acked = [r for _, r in _all_records(scenario, "dispatch.acked") if r["request_id"] == rid]
    assert found and len(acked) == 1 and acked[0]["delivery"] >= 2
    published = [r for _, r in _all_records(scenario, "dispatch.status_published")]
    published += [r for _, r in _all_records(scenario, "dispatch.intent_published")]
    assert Counter(r["key"] for r in published).most_common(1)[0][1] == 1
    assert not any(r["duplicate"] for r in published)


def test_malformed_requests_are_dead_lettered_with_reasons_and_the_next_valid_one_is_served(
    scenario: Scenario,
) -> None:
    """5 bad requests -> 5 dead letters carrying the payload and the reason, each delivered once;
    the same dispatcher process then served the next valid request."""
    expected = _malformed(scenario.prefix, {})
    assert len(scenario.dead_letters) == len(expected)
    for dead, (payload, phrase) in zip(scenario.dead_letters, expected, strict=True):
        assert phrase in dead["reason"], dead
        assert dead["deliveries"] == 1 and dead["event"] == "council.request.dead"
        if phrase != "unknown field priority" and phrase != "spec.tasks":
            assert dead["payload"] == payload.decode()
    assert scenario.dead_letters[2]["request_id"] == f"{scenario.prefix}-bad3"
    a_events = [r["event"] for r in scenario.runs["a"].records()]
    last_dead = len(a_events) - 1 - a_events[::-1].index("dispatch.dead_letter")
    assert "dispatch.acked" in a_events[last_dead:]
    assert a_events.count("dispatch.dead_letter") == 5


def test_at_most_max_in_flight_jobs_run_and_waiting_requests_are_not_redelivered(scenario: Scenario) -> None:
    """Ray's job times never overlap more than --max-in-flight jobs, and every request except the
    one A held when killed was delivered exactly once (waiting requests stay in the stream)."""
    edges = sorted(
        [(j.start_time, 1) for j in scenario.jobs] + [(j.end_time, -1) for j in scenario.jobs],
        key=lambda e: (e[0], e[1]),  # an end before a start at the same millisecond
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert 1 < peak <= MAX_IN_FLIGHT
    deliveries = {r["request_id"]: r["delivery"] for _, r in _all_records(scenario, "dispatch.acked")}
    assert sorted(deliveries) == sorted(scenario.request_ids)
    assert {rid for rid, n in deliveries.items() if n != 1} == {scenario.rid(KILLED_AT)}


def test_sigterm_finishes_the_submission_under_way_acks_it_and_exits_0(scenario: Scenario) -> None:
    """B got SIGTERM while submitting r12: it published r12's submitted event, acked it (delivered
    once, never handed to C) and exited 0."""
    rid = scenario.rid(STOPPED_AT)
    b = scenario.runs["b"]
    assert b.exit_code == 0
    names = [(r["event"], r.get("request_id")) for r in b.records()]
    assert names.index(("dispatch.stopping", None)) < names.index(("dispatch.acked", rid))
    assert rid not in {r["request_id"] for r in scenario.runs["c"].events("dispatch.acked")}
    assert "dispatch.stopped" in [n for n, _ in names]


def test_sigint_stops_the_dispatcher_with_exit_130(scenario: Scenario) -> None:
    """Ctrl-C (SIGINT) stops the dispatcher cleanly with the interrupted exit code."""
    c = scenario.runs["c"]
    assert c.exit_code == 130
    assert c.events("dispatch.stopped")


def test_consumers_decode_status_events_and_dead_letter_none(scenario: Scenario) -> None:
    """swe-fleet consume shows the 60 status events (and the results) and exits 0, each JSON line
    the event and its key; nothing on the events stream went to council.dead."""
    assert scenario.consume_exit == 0
    lines = [e for e in scenario.consume_lines if e["event"] == "council.job.status"]
    statuses = [CouncilJobStatus.model_validate({k: v for k, v in e.items() if k != "key"}) for e in lines]
    assert [e["key"] for e in lines] == [s.key for s in statuses]
    assert len(statuses) == 3 * N_VALID
    results = [e for e in scenario.consume_lines if e["event"] == "council.deliberation.completed"]
    assert len(results) == N_VALID
    assert scenario.consumer_dead_letters == 0
    for _, _, _, payload in scenario.job_messages:
        assert decode_event(json.dumps(payload).encode()).submission_id.startswith("dispatch-")


async def test_a_rejected_request_raises_request_rejected(
    nats_server: NatsServer, ray_head: RayHead, tmp_path: Path
) -> None:
    """A request the dispatcher dead-letters (a spec_ref without --spec-dir) makes its ticket raise
    RequestRejected with the reason; no job is started."""
    run = _start("solo", tmp_path, nats_server, ray_head)
    try:
        ticket = await request_council(spec_ref="tiny.json", nats_url=nats_server.url, timeout_s=120)
        with pytest.raises(RequestRejected, match="no --spec-dir") as info:
            await ticket
        assert info.value.request_id == ticket.request_id
        run.process.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(run.process.popen.wait, 60) == 0
    finally:
        run.process.stop(timeout_s=10)
    client = JobsApi(ray_head.dashboard_url, auth_token=ray_head.auth_token)
    assert client.find_job(attempt_job_id(ticket.submission_id, 0)) is None


@pytest.mark.parametrize("down", ["nats", "dashboard"])
def test_unreachable_nats_or_dashboard_exits_5_naming_it(
    down: str, ray_head: RayHead, nats_server: NatsServer
) -> None:
    """Nobody at the NATS URL or at the Jobs API URL: exit 5 within the bound, the URL named."""
    nats_url = f"nats://127.0.0.1:{free_port()}" if down == "nats" else nats_server.url
    address = f"http://127.0.0.1:{free_port()}" if down == "dashboard" else ray_head.dashboard_url
    proc = subprocess.run(
        [SWE_FLEET, "dispatch", "--nats-url", nats_url, "--address", address, "--request-timeout", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_client_env(ray_head),
    )
    assert proc.returncode == 5, proc.stderr
    assert (nats_url if down == "nats" else address) in proc.stderr
