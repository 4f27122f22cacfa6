"""A network partition mid-job: the worker's link is cut while a council runs on both nodes.

Ray's health checks are shortened (node death noticed in ~5 s instead of ~65 s). The job
driver and NATS live on the head, so the council can go on, or say that it cannot: either it
completes on the remaining node, or it publishes failure events. Never silence.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.submission import submit_council
from swe_fleet.submit.wait import wait_until_terminal

from support.councils import assert_complete_council, assert_no_silence, consume_all, saved_checkpoint
from support.netns_cluster import (
    FAST_HEALTH_CHECKS,
    NetnsCluster,
    netns_cluster,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.integration, pytest.mark.llm, pytest.mark.slow]

JOB_TIMEOUT_S = 600


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NetnsCluster]:
    """Head and worker both from the entrypoint; the worker finds the head by probing
    SWE_FLEET_HEAD_HOSTS (not HEAD_ADDRESS); fast health checks on both nodes."""
    with netns_cluster("part", tmp_path, join="head_hosts", node_extra_env=FAST_HEALTH_CHECKS) as c:
        try:
            yield c
        finally:
            c.net.heal(c.worker)  # a healed worker learns it was declared dead and stops cleanly


def test_cutting_the_worker_mid_job_completes_on_the_head_or_publishes_failures(
    cluster: NetnsCluster, two_node_spec: CouncilSpec, prepared_model: Path
) -> None:
    """Cut the worker after the first phase is published: the job ends (bounded), the head
    drops the worker, and every slot has its completed or failed event (or the job said it
    failed); when the job succeeds, the lost replica's requests ran on the head's replica."""
    worker_log = cluster.worker_node.log()
    assert "action=worker" in worker_log and f"a live head answers on {cluster.head.ip}:6379" in worker_log
    spec = CouncilSpec.from_dict({**two_node_spec.model_dump(mode="json"), "name": "partition"})
    submission = CouncilSubmission(spec=spec, env_kind="image", nats_url=cluster.nats.url)
    jobs = cluster.on_client(JobsApi, cluster.addresses.dashboard_url, auth_token=cluster.token)
    submitted = cluster.on_client(submit_council, jobs, submission)
    sid, job_id = submitted.submission_id, submitted.job_id

    def first_phase_published() -> bool:
        if cluster.on_client(saved_checkpoint, cluster.nats.url, sid) is not None:
            return True
        status = cluster.on_client(jobs.status, job_id)
        assert not status.is_terminal(), cluster.on_client(jobs.logs, job_id)[-3000:]
        return False

    wait_until(first_phase_published, JOB_TIMEOUT_S, "the first phase's checkpoint", poll_s=0.2)
    cluster.net.cut(cluster.worker)
    cut_at = time.monotonic()

    status = cluster.on_client(wait_until_terminal, jobs, job_id, timeout_s=JOB_TIMEOUT_S).value
    ended_after_s = time.monotonic() - cut_at
    logs = cluster.on_client(jobs.logs, job_id)
    wait_until(lambda: len(cluster.alive_nodes()) == 1, 60, "the head to declare the cut worker dead")
    events = cluster.on_client(consume_all, cluster.nats.url, "netns-partition", sid)

    outcome = assert_no_silence(events, spec)
    print(f"partition: job {status} {ended_after_s:.0f} s after the cut; {outcome}")
    if status == "SUCCEEDED":
        assert_complete_council(events, spec)
        # Every phase after the cut calls both replicas: the worker's was lost, its share rerun.
        assert '"engine.replica_lost"' in logs, logs[-3000:]
    else:
        failed = [e for e in events if e["event"] in ("agent.response.failed", "council.job.failed")]
        assert failed, logs[-3000:]
