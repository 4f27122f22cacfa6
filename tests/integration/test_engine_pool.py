"""The shared engine pool on the session cluster: councils at once on the same replicas, a
cancelled council's requests taken out while the other goes on, ``swe-fleet engine`` up,
status and down, and a pool that stops itself when idle. (Real Ray, real vLLM on CPU, real
JetStream; the killed-replica test is in test_council_job.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from swe_fleet.llm.pool import pool_name
from swe_fleet.local.stack import NatsServer, RayHead
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.submission import submit_council
from swe_fleet.submit.wait import wait_until_terminal

from support.councils import assert_complete_council, consume_all, engine_cli, saved_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.llm, pytest.mark.slow, pytest.mark.engine]

JOB_TIMEOUT_S = 900


def variant(spec: CouncilSpec, name: str, **model: Any) -> CouncilSpec:
    doc = spec.model_dump(mode="json")
    doc["name"] = name
    doc["protocol"]["early_stop"] = False
    doc["model"] = {**doc["model"], **model}
    return CouncilSpec.from_dict(doc)


def done_log(logs: str) -> dict[str, Any]:
    lines = [line for line in logs.splitlines() if '"council.done"' in line]
    return dict(json.loads(lines[-1][lines[-1].index("{") :]))


def test_two_councils_at_once_run_on_the_same_replica_batched_together(
    client: JobsApi, council_cluster: RayHead, session_nats: NatsServer, tiny_spec: CouncilSpec
) -> None:
    """Two councils submitted together, one shared replica: both succeed with every planned
    slot accounted for, both ran on the same pool, and the replica's running batch held more
    requests at once than one tiny council ever asks for (2 tasks x 2 agents): the councils'
    requests were batched together."""
    specs = [variant(tiny_spec, f"pool{i}", max_tokens=96) for i in range(2)]
    submitted = [submit_council(client, CouncilSubmission(spec=s, nats_url=session_nats.url)) for s in specs]
    for job in submitted:
        status = wait_until_terminal(client, job.job_id, timeout_s=JOB_TIMEOUT_S)
        assert status.value == "SUCCEEDED", client.logs(job.job_id)[-3000:]
    peaks = []
    for spec, job in zip(specs, submitted, strict=True):
        logs = client.logs(job.job_id)
        assert f'"pool": "{pool_name(spec.model)}"' in logs, logs[-3000:]
        done = done_log(logs)
        assert done["replica_calls"] == [len(spec.tasks) * 4]  # this council's calls only
        peaks.append(max(n for timeline in done["engine_timelines"] for _, n in timeline))
        assert_complete_council(consume_all(session_nats.url, None, job.submission_id), spec)
    one_council = len(tiny_spec.tasks) * len(tiny_spec.agents)
    assert max(peaks) > one_council, f"no batch held both councils' requests: peaks {peaks}"


def test_a_stopped_council_takes_its_requests_out_of_the_pool_while_the_other_completes(
    client: JobsApi, council_cluster: RayHead, session_nats: NatsServer, tiny_spec: CouncilSpec
) -> None:
    """Council A (long answers) and council B share a replica; A is stopped (``ray job stop``)
    once it has saved its first phase: A ends STOPPED, saying so on the stream; the replica
    took A's requests out (it counts them: ``aborted``) and runs none of A's any more; B
    completes with every planned slot."""
    a = variant(tiny_spec, "poolstop", max_tokens=400, vote_max_tokens=64)
    b = variant(tiny_spec, "poolgo", max_tokens=64)
    job_a = submit_council(client, CouncilSubmission(spec=a, nats_url=session_nats.url))
    job_b = submit_council(client, CouncilSubmission(spec=b, nats_url=session_nats.url))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while saved_checkpoint(session_nats.url, job_a.submission_id) is None:
        assert time.monotonic() < deadline, "council A saved no checkpoint"
        assert not client.status(job_a.job_id).is_terminal(), client.logs(job_a.job_id)[-3000:]
        time.sleep(0.2)
    client.stop(job_a.job_id)
    assert wait_until_terminal(client, job_a.job_id, timeout_s=120).value == "STOPPED"
    status_b = wait_until_terminal(client, job_b.job_id, timeout_s=JOB_TIMEOUT_S)
    assert status_b.value == "SUCCEEDED", client.logs(job_b.job_id)[-3000:]
    assert_complete_council(consume_all(session_nats.url, None, job_b.submission_id), b)
    events_a = consume_all(session_nats.url, None, job_a.submission_id)
    failed = [e for e in events_a if e["event"] == "council.job.failed"]
    assert [e["reason"] for e in failed] == ["stopped (SIGTERM)"]
    replicas = engine_cli(council_cluster, "status")["replicas"]
    replica = next(r for r in replicas if r["name"] == f"{pool_name(a.model)}/0")
    assert replica["aborted"].get(job_a.submission_id, 0) > 0, replica
    assert job_a.submission_id not in replica["running"] | replica["waiting"], replica
    assert job_b.submission_id not in replica["aborted"], replica


def test_doctor_engine_up_status_down_and_an_idle_pool_stops_by_itself(
    council_cluster: RayHead,
    session_nats: NatsServer,
    tiny_spec: CouncilSpec,
    repo_root: Path,
    tmp_path: Path,
) -> None:
    """``engine up SPEC`` with the pool running reuses it; ``swe-fleet doctor`` reports the
    pool's replicas; ``engine down`` stops every pool replica (naming each); ``engine up SPEC``
    starts the spec's pool (here with a 4 s idle time) and reports it loaded; with no call for
    4 s it stops itself, and ``engine status`` then finds no pool."""
    tiny = str(repo_root / "tests" / "data" / "tiny.yaml")
    engine_cli(council_cluster, "up", tiny)  # the pool the tests before left up, or a new one
    before = [r["name"] for r in engine_cli(council_cluster, "status")["replicas"]]
    assert f"{pool_name(tiny_spec.model)}/0" in before
    swe_fleet = str(Path(sys.executable).parent / "swe-fleet")
    doctor = subprocess.run(
        [swe_fleet, "doctor", tiny, "--address", council_cluster.dashboard_url,
         "--nats-url", session_nats.url, "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **council_cluster.client_env()},
    )  # fmt: skip
    rows = [r for r in json.loads(doctor.stdout) if r["name"] == "engine-pools"]
    assert len(rows) == 1 and rows[0]["status"] == "ok", doctor.stdout + doctor.stderr[-2000:]
    assert all(name in rows[0]["detail"] for name in before), rows
    stopped = engine_cli(council_cluster, "down")
    assert sorted(stopped["stopped"]) == sorted(before) and stopped["replicas"] == [], stopped
    spec = variant(tiny_spec, "poolidle", pool_idle_timeout_s=4)
    spec_file = tmp_path / "idle.json"
    spec_file.write_text(spec.to_json())
    up = engine_cli(council_cluster, "up", str(spec_file))
    name = f"{pool_name(spec.model)}/0"
    assert up["error"] is None and up["pool"] == pool_name(spec.model), up
    assert [(r["name"], r["idle_timeout_s"]) for r in up["replicas"]] == [(name, 4)], up
    deadline = time.monotonic() + 120
    while (replicas := engine_cli(council_cluster, "status")["replicas"]) != []:
        assert time.monotonic() < deadline, f"the idle pool is still up: {replicas}"
        time.sleep(1)
