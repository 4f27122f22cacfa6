"""One cluster on three hosts (network namespaces), and everything that crosses its network.

The head and a worker start through the image's entrypoint (``swe-fleet node start``); a client
in a third namespace reaches them only through the head's address. The worker runs from a
virtualenv **without nats-py**: the original failure, for real. (Both nodes run from thin
virtualenvs layered over this one, as an image's Python would be: tests/support/virtualenvs.py.)

In this order, on that one cluster (each test says what it needs of the ones before):

1. The worker joined (``HEAD_ADDRESS``) and both entrypoints logged why; ``localhost`` addresses,
   which work on the head itself, fail from the client, and the addresses
   :mod:`swe_fleet.addresses` gives a client work: the Jobs API (``http://HEAD:8265``) and Ray
   Client (``ray://HEAD:10001``).
2. With the baked image's runtime_env (which installs nothing) ``doctor`` names the worker and
   ``module nats``, and ``submit`` refuses; with ``runtime_envs/pinned.yaml`` both nodes pass and
   a council submitted from the client runs with one engine replica on each node.
3. SIGTERM to the worker's entrypoint stops its node and leaves nothing.
4. A new worker, from this virtualenv, finds the head by probing ``SWE_FLEET_HEAD_HOSTS``; its
   link is cut while a council runs on both nodes, which completes on the head.

The namespaces have no route to a package index, so the nodes' pip (the pinned runtime_env)
installs from a wheelhouse of the pin list that the test downloads first (``PIP_NO_INDEX``,
``PIP_FIND_LINKS`` in the nodes' environment; runtime_envs/pinned.yaml is used as it is). Ray's
health checks are shortened on this cluster (node death noticed in seconds, not ~65 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from swe_fleet._processes import start_process
from swe_fleet.addresses import ClusterAddresses, Role
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.submission import submit_council
from swe_fleet.submit.wait import wait_until_terminal

from support.councils import assert_complete_council, consume_all, saved_checkpoint
from support.engine_lock import engine_lock
from support.netns_cluster import (
    FAST_HEALTH_CHECKS,
    SWE_FLEET,
    EntrypointNode,
    NetnsCluster,
    engine_node_ips,
    netns_cluster,
    wait_until,
)
from support.virtualenvs import layered_virtualenv

pytestmark = [pytest.mark.netns, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SUBMIT_SCRIPT = REPO / "scripts" / "submit_council.py"
RAY_CLIENT_CHECK = Path(__file__).with_name("ray_client_check.py")
#: Bounds: a first pip runtime_env installs nats-py on the worker (seconds idle, minutes when busy).
PREFLIGHT_TIMEOUT_S = 900
JOB_TIMEOUT_S = 900


def _timed(what: str, started: float) -> None:
    print(f"[netns] {what}: {time.monotonic() - started:.1f} s", flush=True)


@pytest.fixture(scope="module")
def node_bins() -> Iterator[tuple[Path, Path]]:
    """The ``bin`` folders the head and the worker run from: thin virtualenvs layered over this
    one (tests/support/virtualenvs.py), the worker's without nats-py."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="swf-venv-"))
    try:
        head_bin = layered_virtualenv(root / "head")
        worker_bin = layered_virtualenv(root / "worker-without-nats", without="nats-py")
        _timed("node virtualenvs", started)
        yield head_bin, worker_bin
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def wheelhouse() -> Iterator[Path]:
    """The pin list's wheels (with their dependencies), for nodes without a package index."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="swf-wheels-") as d:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "-d", d,
             "-r", str(REPO / "images" / "requirements-worker.txt")],
            check=True, timeout=300, capture_output=True,
        )  # fmt: skip
        _timed("wheelhouse", started)
        yield Path(d)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    node_bins: tuple[Path, Path],
    wheelhouse: Path,
    prepared_model: Path,
) -> Iterator[NetnsCluster]:
    """Head (entrypoint, becomes head from the whitelist) + worker (entrypoint from a virtualenv
    without nats-py, joins by HEAD_ADDRESS); fast health checks; pip from the wheelhouse."""
    started = time.monotonic()
    node_env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse), **FAST_HEALTH_CHECKS}
    workdir = tmp_path_factory.mktemp("netns")
    head, worker = (str(b / "swe-fleet") for b in node_bins)
    with netns_cluster(
        "mh", workdir, node_extra_env=node_env, head_swe_fleet=head, worker_swe_fleet=worker
    ) as c:
        _timed("two-node cluster up", started)
        yield c


@pytest.fixture(scope="module")
def spec_path(cluster: NetnsCluster, two_node_spec: CouncilSpec) -> Path:
    """The two-replica council (one replica per node) as a file, for the CLI."""
    path = cluster.workdir / "tiny-two-nodes.yaml"
    path.write_text(yaml.safe_dump({**two_node_spec.model_dump(mode="json"), "name": "tiny-two-nodes"}))
    return path


# ---- 1. joining, and the addresses a client uses ----------------------------------------------


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
    assert proc.returncode == 0, proc.stderr[-3000:] + cluster.head_node.ray_logs("ray_client_server*")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    both = sorted([cluster.head.ip, cluster.worker.ip])
    assert report["nodes"] == both
    assert sorted(t["ip"] for t in report["tasks"]) == both
    assert {t["swe_fleet"] for t in report["tasks"]} == {__import__("swe_fleet").__version__}


# ---- 2. a worker without nats-py: the preflight, and the pinned runtime_env ---------------------


def _rows(stdout: str) -> list[dict[str, str]]:
    rows = json.loads(stdout)
    assert isinstance(rows, list) and rows, stdout
    return rows


def _node_rows(rows: list[dict[str, str]], ip: str) -> dict[str, dict[str, str]]:
    return {r["name"]: r for r in rows if r["node"].startswith(f"{ip} (")}


def _cli(cluster: NetnsCluster, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = cluster.run_cli(argv, timeout, cwd=REPO)
    _timed(" ".join(a for a in argv[1:4]), started)
    return proc


@pytest.mark.llm
def test_doctor_names_the_worker_and_nats_when_the_runtime_env_does_not_install_it(
    cluster: NetnsCluster, spec_path: Path
) -> None:
    """--env image on a worker whose Python lacks nats-py: exit 8, exactly one failure, on that
    node, `module nats`, with the fix; the head passes every check."""
    proc = _cli(
        cluster,
        [SWE_FLEET, "doctor", str(spec_path), "--address", cluster.addresses.dashboard_url,
         "--nats-url", cluster.nats.url, "--env", "image", "--json"],
        timeout=PREFLIGHT_TIMEOUT_S + 60,
    )  # fmt: skip
    assert proc.returncode == 8, proc.stderr[-3000:]
    rows = _rows(proc.stdout)
    worker_ip, head_ip = cluster.worker.ip, cluster.head.ip
    failures = [(r["node"].split(" ")[0], r["name"]) for r in rows if r["status"] == "FAIL"]
    assert failures == [(worker_ip, "module nats")], rows
    nats_row = _node_rows(rows, worker_ip)["module nats"]
    assert "nats-py==2.16.0 is not importable" in nats_row["detail"]
    assert "--env pinned" in nats_row["fix"] and "Dockerfile.ray-swe-fleet" in nats_row["fix"]
    assert nats_row["node_id"] == cluster.node_ids()[worker_ip]
    head_rows = _node_rows(rows, head_ip)
    assert head_rows["module nats"]["status"] == "ok" and head_rows["nats"]["status"] == "ok"
    assert _node_rows(rows, worker_ip)["nats"]["status"] == "ok"  # the server is reachable; the module is not


@pytest.mark.llm
def test_submit_refuses_naming_the_node_and_module_and_submits_nothing(
    cluster: NetnsCluster, spec_path: Path
) -> None:
    """scripts/submit_council.py --env image: exit 8, the worker and `module nats` named with the
    fix, and no council job exists afterwards."""
    proc = _cli(
        cluster,
        [sys.executable, str(SUBMIT_SCRIPT), str(spec_path), "--address", cluster.addresses.dashboard_url,
         "--nats-url", cluster.nats.url, "--env", "image"],
        timeout=PREFLIGHT_TIMEOUT_S + 60,
    )  # fmt: skip
    assert proc.returncode == 8, proc.stderr[-3000:]
    assert f"{cluster.worker.ip} (" in proc.stderr and "module nats" in proc.stderr, proc.stderr
    assert "nats-py==2.16.0 is not importable" in proc.stderr and "--env pinned" in proc.stderr
    assert not proc.stdout.strip()  # no submission id: nothing was submitted
    jobs = cluster.state("/api/jobs/")
    assert not [j for j in jobs if (j.get("metadata") or {}).get("council") == "tiny-two-nodes"
                and not (j.get("metadata") or {}).get("swe_fleet_preflight")]  # fmt: skip


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.timeout(PREFLIGHT_TIMEOUT_S + JOB_TIMEOUT_S + 300)
def test_pinned_runtime_env_passes_on_both_nodes_and_a_council_runs_on_both(
    cluster: NetnsCluster, spec_path: Path
) -> None:
    """--env pinned: doctor passes on both nodes (nats-py installed by the runtime_env on the
    worker), submit (from the client, over http://HEAD:8265) reuses that result, the job
    succeeds, its two engine replicas ran one on each node (Ray's State API says where), and
    every proposal, critique, revision, vote and result reached NATS exactly once."""
    doctor = _cli(
        cluster,
        [SWE_FLEET, "doctor", str(spec_path), "--address", cluster.addresses.dashboard_url,
         "--nats-url", cluster.nats.url, "--env", "pinned", "--json",
         "--preflight-timeout", str(PREFLIGHT_TIMEOUT_S)],
        timeout=PREFLIGHT_TIMEOUT_S + 60,
    )  # fmt: skip
    assert doctor.returncode == 0, doctor.stdout[-4000:] + doctor.stderr[-3000:]
    rows = _rows(doctor.stdout)
    ids = cluster.node_ids()
    for ip in (cluster.head.ip, cluster.worker.ip):
        node = _node_rows(rows, ip)
        assert node["module nats"]["status"] == "ok" and "nats-py 2.16.0" in node["module nats"]["detail"]
        assert {r["status"] for r in node.values()} <= {"ok", "skip"}
        assert {r["node_id"] for r in node.values()} == {ids[ip]}

    with engine_lock():
        submit = _cli(
            cluster,
            [sys.executable, str(SUBMIT_SCRIPT), str(spec_path), "--address", cluster.addresses.dashboard_url,
             "--nats-url", cluster.nats.url, "--env", "pinned", "--timeout", str(JOB_TIMEOUT_S)],
            timeout=JOB_TIMEOUT_S + 120,
        )  # fmt: skip
    assert submit.returncode == 0, submit.stderr[-4000:]
    assert "(cached)" in submit.stderr  # doctor's passing result on these nodes and runtime_env
    sid = submit.stdout.strip().splitlines()[-1]

    events = cluster.on_client(consume_all, cluster.nats.url, "netns-jobs-api", sid)
    assert_complete_council(events, CouncilSpec.from_file(spec_path))

    job = next(j for j in cluster.state("/api/jobs/") if j.get("submission_id") == sid)
    placed = cluster.on_client(engine_node_ips, cluster.addresses.dashboard_url, cluster.token, job["job_id"])
    print(f"[netns] engine replicas of {sid} ran on {placed}")
    assert placed == sorted([cluster.head.ip, cluster.worker.ip])


# ---- 3. stopping a node ------------------------------------------------------------------------


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


# ---- 4. a partition mid-job --------------------------------------------------------------------


@pytest.fixture
def probing_worker(cluster: NetnsCluster) -> Iterator[EntrypointNode]:
    """A new worker from this virtualenv (the previous one was stopped above) that finds the
    head by probing SWE_FLEET_HEAD_HOSTS (not HEAD_ADDRESS)."""
    assert len(cluster.alive_nodes()) == 1, "the previous worker is still alive"
    node = cluster.start_worker("head_hosts")
    try:
        yield node
    finally:
        cluster.net.heal(cluster.worker)  # a healed worker learns it was declared dead and stops cleanly


@pytest.mark.llm
@pytest.mark.slow
def test_cutting_the_worker_mid_job_completes_on_the_head(
    cluster: NetnsCluster, probing_worker: EntrypointNode, two_node_spec: CouncilSpec
) -> None:
    """Cut the worker after the first phase is published: the head drops the worker, the lost
    replica's share of every later phase reruns on the head's replica (``engine.replica_lost``),
    and the job succeeds with every planned slot completed exactly once.

    The job driver, NATS and one engine replica live on the head, so nothing the council needs
    is lost with the worker."""
    worker_log = probing_worker.log()
    assert "action=worker" in worker_log and f"a live head answers on {cluster.head.ip}:6379" in worker_log
    spec = CouncilSpec.from_dict({**two_node_spec.model_dump(mode="json"), "name": "partition"})
    submission = CouncilSubmission(spec=spec, env_kind="image", nats_url=cluster.nats.url)
    jobs = cluster.on_client(JobsApi, cluster.addresses.dashboard_url, auth_token=cluster.token)

    def first_phase_published() -> bool:
        if cluster.on_client(saved_checkpoint, cluster.nats.url, sid) is not None:
            return True
        status = cluster.on_client(jobs.status, job_id)
        assert not status.is_terminal(), cluster.on_client(jobs.logs, job_id)[-3000:]
        return False

    with engine_lock():
        submitted = cluster.on_client(submit_council, jobs, submission)
        sid, job_id = submitted.submission_id, submitted.job_id
        wait_until(first_phase_published, JOB_TIMEOUT_S, "the first phase's checkpoint", poll_s=0.2)
        cluster.net.cut(cluster.worker)
        cut_at = time.monotonic()
        status = cluster.on_client(wait_until_terminal, jobs, job_id, timeout_s=JOB_TIMEOUT_S).value
        ended_after_s = time.monotonic() - cut_at
    logs = cluster.on_client(jobs.logs, job_id)
    wait_until(lambda: len(cluster.alive_nodes()) == 1, 60, "the head to declare the cut worker dead")
    events = cluster.on_client(consume_all, cluster.nats.url, "netns-partition", sid)

    print(f"partition: job {status} {ended_after_s:.0f} s after the cut")
    assert status == "SUCCEEDED", logs[-3000:]
    assert_complete_council(events, spec)
    # Every phase after the cut calls both replicas: the worker's was lost, its share rerun.
    assert '"engine.replica_lost"' in logs, logs[-3000:]
    assert not [e for e in events if e["event"] == "agent.response.failed"], logs[-3000:]
