"""Head, worker and client on three hosts (network namespaces); the head's address is the only way in.

The nodes start through the image's entrypoint (``swe-fleet node start``); the client submits a
council over the Jobs API (``http://HEAD:8265``) and runs a check over Ray Client
(``ray://HEAD:10001``), the two addresses :mod:`swe_fleet.addresses` gives a client, and shows
that ``localhost`` addresses, which work on the head itself, do not work from the client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from swe_fleet._processes import start_process
from swe_fleet.addresses import ClusterAddresses, Role
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.submission import submit_council
from swe_fleet.submit.wait import wait_until_terminal

from support.councils import assert_complete_council, consume_all
from support.netns_cluster import (
    NetnsCluster,
    engine_node_ips,
    netns_cluster,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.integration]

JOB_TIMEOUT_S = 900
RAY_CLIENT_CHECK = Path(__file__).with_name("ray_client_check.py")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    """Head (entrypoint, becomes head from the whitelist) + worker (entrypoint, HEAD_ADDRESS)."""
    with netns_cluster("mh", tmp_path_factory.mktemp("netns-mh"), join="head_address") as c:
        yield c


def test_worker_joins_the_head_through_the_entrypoint_and_logs_why(cluster: NetnsCluster) -> None:
    """Two nodes alive (head 10.77.0.1, worker 10.77.0.2); each entrypoint logged its decision,
    its reasons and the ray start it ran."""
    nodes = {n["node_ip"]: bool(n.get("is_head_node")) for n in cluster.alive_nodes()}
    assert nodes == {cluster.head.ip: True, cluster.worker.ip: False}
    head_log, worker_log = cluster.head_node.log(), cluster.worker_node.log()
    assert "action=head" in head_log and "it becomes the head" in head_log
    assert "--head --block --port 6379 --dashboard-host 0.0.0.0" in head_log
    assert "action=worker" in worker_log and f"HEAD_ADDRESS={cluster.head.ip}:6379 is set" in worker_log
    assert f"--address {cluster.head.ip}:6379" in worker_log
    assert cluster.token not in head_log + worker_log


def test_localhost_addresses_fail_from_the_client_host_and_the_head_address_works(
    cluster: NetnsCluster, tmp_path: Path
) -> None:
    """From the client: the Jobs API on 127.0.0.1 is refused, ``ray.init("localhost:6379")``
    never connects (Ray keeps retrying its own host's GCS; bounded here); the addresses
    swe_fleet.addresses resolves for RAY_HOST=HEAD answer."""
    resolved = ClusterAddresses.from_env(Role.CLIENT, {"RAY_HOST": cluster.head.ip})
    assert (resolved.dashboard_url, resolved.client_url) == (
        f"http://{cluster.head.ip}:8265",
        f"ray://{cluster.head.ip}:10001",
    )

    def get(url: str) -> int:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {cluster.token}"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - our namespaces only
            return int(resp.status)

    assert cluster.on_client(get, f"{resolved.dashboard_url}/api/version") == 200
    with pytest.raises(urllib.error.URLError, match="refused"):
        cluster.on_client(get, "http://127.0.0.1:8265/api/version")

    script = "import ray; ray.init('localhost:6379'); print('CONNECTED', flush=True)"
    proc = start_process(
        "ray-init-localhost",
        cluster.client.command([sys.executable, "-c", script]),
        tmp_path / "ray-init-localhost.log",
        cluster.client_env(),
    )
    try:
        wait_until(
            lambda: "Failed to connect to GCS" in proc.log_path.read_text() or not proc.alive(),
            timeout_s=60,
            what="ray.init('localhost:6379') on the client to report its failure",
        )
    finally:
        proc.stop(timeout_s=5)
    output = proc.log_path.read_text()
    assert "CONNECTED" not in output
    assert f"Failed to connect to GCS at address {cluster.client.ip}:6379" in output


def test_ray_client_from_the_client_host_runs_tasks_on_both_nodes(cluster: NetnsCluster) -> None:
    """``ray.init("ray://HEAD:10001")`` from the client (token in env): one task pinned to each
    node runs there, and swe_fleet imports on both."""
    proc = subprocess.run(
        cluster.client.command([sys.executable, str(RAY_CLIENT_CHECK), cluster.addresses.client_url]),
        env=cluster.client_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    both = sorted([cluster.head.ip, cluster.worker.ip])
    assert report["nodes"] == both
    assert sorted(t["ip"] for t in report["tasks"]) == both
    assert {t["swe_fleet"] for t in report["tasks"]} == {__import__("swe_fleet").__version__}


@pytest.mark.llm
@pytest.mark.slow
def test_council_over_the_jobs_api_uses_both_nodes_and_delivers_every_event(
    cluster: NetnsCluster, two_node_spec: CouncilSpec, prepared_model: Path
) -> None:
    """Submitted from the client over http://HEAD:8265: the job succeeds, its two engine
    replicas ran one on each node (Ray's state API says where), and every proposal, critique,
    revision, vote and result reached NATS exactly once."""
    submission = CouncilSubmission(spec=two_node_spec, env_kind="image", nats_url=cluster.nats.url)

    def run_job() -> tuple[str, str, str, str]:
        jobs = JobsApi(cluster.addresses.dashboard_url, auth_token=cluster.token)
        submitted = submit_council(jobs, submission)
        status = wait_until_terminal(jobs, submitted.job_id, timeout_s=JOB_TIMEOUT_S)
        info = jobs.info(submitted.job_id)
        return submitted.submission_id, status.value, jobs.logs(submitted.job_id), str(info.job_id)

    sid, status, logs, ray_job_id = cluster.on_client(run_job)
    assert status == "SUCCEEDED", logs[-3000:]
    placed = cluster.on_client(engine_node_ips, cluster.addresses.dashboard_url, cluster.token, ray_job_id)
    assert placed == sorted([cluster.head.ip, cluster.worker.ip])
    events = cluster.on_client(consume_all, cluster.nats.url, "netns-jobs-api", sid)
    assert_complete_council(events, two_node_spec)


def test_sigterm_to_the_entrypoint_stops_its_node_and_leaves_nothing(cluster: NetnsCluster) -> None:
    """SIGTERM to the worker's ``swe-fleet node start``: it stops its ray start, exits 0, no
    process of that node's session is left, and the head sees one node alive."""
    node = cluster.worker_node
    assert node.ray_session_processes(), "the worker's Ray node is not running"
    os.kill(node.process.pid, signal.SIGTERM)
    code = node.process.popen.wait(timeout=90)
    assert code == 0, node.log()[-2000:]
    assert "node.stopping" in node.log() and "signal=SIGTERM" in node.log()
    assert node.ray_session_processes() == []
    wait_until(lambda: len(cluster.alive_nodes()) == 1, 90, "the head to drop the stopped worker")
