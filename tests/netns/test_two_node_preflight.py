"""The original failure, for real: a worker node without nats-py.

Two Ray nodes on a private network of the test's own (network namespaces, see tests/support/netns.py)
and a client in a third: the head runs from the test's virtualenv, the worker from a hard-link
clone of it with nats-py uninstalled (``ray start`` from the clone's Python). With the baked
image's runtime_env (which installs nothing) ``doctor`` names the worker and ``module nats``,
and ``submit`` refuses; with ``runtime_envs/pinned.yaml`` both nodes pass and a council with one
engine replica per node runs to the end.

The namespaces have no route to a package index, so the nodes' pip (the pinned runtime_env)
installs from a wheelhouse of the pin list that the test downloads first (``PIP_NO_INDEX``,
``PIP_FIND_LINKS`` in the nodes' environment; runtime_envs/pinned.yaml is used as it is).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from swe_fleet.local.stack import NatsServer, RayHead
from swe_fleet.spec import CouncilSpec

from support.councils import assert_complete_council, consume_all
from support.netns import Host, Network, netns_unavailable, network
from support.servers import RayWorker, alive_nodes, wait_for_nodes

pytestmark = [pytest.mark.integration, pytest.mark.llm, pytest.mark.netns, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SUBMIT_SCRIPT = REPO / "scripts" / "submit_council.py"
SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")
#: Bounds: a first pip runtime_env clones the ~4 GB virtualenv on each node (1-4 min when busy).
PREFLIGHT_TIMEOUT_S = 900
JOB_TIMEOUT_S = 900


def _timed(what: str, started: float) -> None:
    print(f"[two-node] {what}: {time.monotonic() - started:.1f} s", flush=True)


@pytest.fixture(scope="module")
def netns_ok() -> None:
    reason = netns_unavailable()
    if reason:
        print(f"two-node tests skipped: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def venv_without_nats(netns_ok: None) -> Iterator[Path]:
    """A hard-link clone of this virtualenv (seconds, no extra disk) with nats-py uninstalled."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="swf-venv-"))
    clone = root / "venv-without-nats"
    try:
        subprocess.run(["cp", "-al", sys.prefix, str(clone)], check=True, timeout=600)
        python = str(clone / "bin" / "python")
        subprocess.run(
            [python, "-m", "pip", "uninstall", "-y", "-q", "nats-py"],
            check=True,
            timeout=120,
            capture_output=True,
        )
        probe = "import nats"
        assert subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode != 0
        assert subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60).returncode == 0
        _timed("virtualenv without nats-py", started)
        yield clone
    finally:
        shutil.rmtree(root, ignore_errors=True)  # hard links: the original's files stay


@pytest.fixture(scope="module")
def wheelhouse(netns_ok: None) -> Iterator[Path]:
    """The pin list's wheels (with their dependencies), for nodes without a package index."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="swf-wheels-") as d:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "-d",
                d,
                "-r",
                str(REPO / "images" / "requirements-worker.txt"),
            ],
            check=True,
            timeout=300,
            capture_output=True,
        )
        _timed("wheelhouse", started)
        yield Path(d)


@dataclass
class TwoNodes:
    """A head (this virtualenv) and a worker (the clone without nats-py), NATS on the head's
    host, and a client host to run the CLI from."""

    net: Network
    head: RayHead
    worker: RayWorker
    nats: NatsServer
    workdir: Path

    @property
    def client(self) -> Host:
        return self.net.hosts["client"]

    def node_ids(self) -> dict[str, str]:
        """node IP -> node id of the alive nodes."""
        nodes = self.client.run(alive_nodes, self.head.dashboard_url, self.head.auth_token)
        return {str(n["node_ip"]): str(n["node_id"]) for n in nodes}

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """A CLI command on the client host, as a client of this cluster."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
            **self.head.client_env(),
            "SWE_FLEET_CACHE": str(self.workdir / "client-cache"),  # the preflight cache, not the model's
            "COLUMNS": "250",
        }
        started = time.monotonic()
        proc = self.client.run(
            subprocess.run, argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
        )
        _timed(" ".join(a for a in argv[1:4]), started)
        return proc

    def state(self, path: str) -> Any:
        """GET a State API path of the dashboard, from the client host."""
        request = urllib.request.Request(  # noqa: S310 - our own cluster
            f"{self.head.dashboard_url}{path}", headers={"Authorization": f"Bearer {self.head.auth_token}"}
        )

        def get() -> Any:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                return json.loads(resp.read())

        return self.client.run(get)


@pytest.fixture(scope="module")
def cluster(venv_without_nats: Path, wheelhouse: Path, prepared_model: Path) -> Iterator[TwoNodes]:
    """Head and worker (1 CPU each, so one engine replica lands on each), NATS, a client host."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="swf-2node-"))
    # The nodes' pip has no index in the namespaces: the pin list's wheels instead.
    node_env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)}
    with network("pf", "head", "worker", "client") as net:
        head_host, worker_host = net.hosts["head"], net.hosts["worker"]
        nats = NatsServer(workdir / "nats", host=head_host.ip)
        head = RayHead(workdir / "head", num_cpus=1, node_ip=head_host.ip, env=node_env)
        worker = RayWorker(
            workdir / "worker",
            head=head,
            node_ip=worker_host.ip,
            num_cpus=1,
            env=node_env,
            ray_command=[str(venv_without_nats / "bin" / "python"), "-m", "ray.scripts.scripts"],
        )
        try:
            head_host.run(nats.start)
            head_host.run(head.start)
            worker_host.run(worker.start)
            net.hosts["client"].run(wait_for_nodes, head.dashboard_url, head.auth_token, 2)
            _timed("two-node cluster up", started)
            yield TwoNodes(net=net, head=head, worker=worker, nats=nats, workdir=workdir)
        finally:
            worker.stop()
            head.stop()
            nats.stop()
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def spec_path(cluster: TwoNodes, repo_root: Path) -> Path:
    """The tiny council with two engine replicas of 1 CPU: one per node."""
    doc = yaml.safe_load((repo_root / "tests" / "data" / "tiny.yaml").read_text())
    doc["name"] = "tiny-two-nodes"
    doc["model"].update(replicas=2, num_cpus=1)
    path = cluster.workdir / "tiny-two-nodes.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _rows(stdout: str) -> list[dict[str, str]]:
    rows = json.loads(stdout)
    assert isinstance(rows, list) and rows, stdout
    return rows


def _node_rows(rows: list[dict[str, str]], ip: str) -> dict[str, dict[str, str]]:
    return {r["name"]: r for r in rows if r["node"].startswith(f"{ip} (")}


def test_doctor_names_the_worker_and_nats_when_the_runtime_env_does_not_install_it(
    cluster: TwoNodes, spec_path: Path
) -> None:
    """--env image on a worker whose Python lacks nats-py: exit 8, exactly one failure, on that
    node, `module nats`, with the fix; the head passes every check."""
    proc = cluster.run(
        [SWE_FLEET, "doctor", str(spec_path), "--address", cluster.head.dashboard_url,
         "--nats-url", cluster.nats.url, "--env", "image", "--json"],
        timeout=PREFLIGHT_TIMEOUT_S + 60,
    )  # fmt: skip
    assert proc.returncode == 8, proc.stderr[-3000:]
    rows = _rows(proc.stdout)
    worker_ip, head_ip = cluster.worker.node_ip, cluster.head.node_ip
    failures = [(r["node"].split(" ")[0], r["name"]) for r in rows if r["status"] == "FAIL"]
    assert failures == [(worker_ip, "module nats")], rows
    nats_row = _node_rows(rows, worker_ip)["module nats"]
    assert "nats-py==2.16.0 is not importable" in nats_row["detail"]
    assert "--env pinned" in nats_row["fix"] and "Dockerfile.ray-swe-fleet" in nats_row["fix"]
    assert nats_row["node_id"] == cluster.node_ids()[worker_ip]
    head_rows = _node_rows(rows, head_ip)
    assert head_rows["module nats"]["status"] == "ok" and head_rows["nats"]["status"] == "ok"
    assert _node_rows(rows, worker_ip)["nats"]["status"] == "ok"  # the server is reachable; the module is not


def test_submit_refuses_naming_the_node_and_module_and_submits_nothing(
    cluster: TwoNodes, spec_path: Path
) -> None:
    """scripts/submit_council.py --env image: exit 8, the worker and `module nats` named with the
    fix, and no council job exists afterwards."""
    proc = cluster.run(
        [sys.executable, str(SUBMIT_SCRIPT), str(spec_path), "--address", cluster.head.dashboard_url,
         "--nats-url", cluster.nats.url, "--env", "image"],
        timeout=PREFLIGHT_TIMEOUT_S + 60,
    )  # fmt: skip
    assert proc.returncode == 8, proc.stderr[-3000:]
    assert f"{cluster.worker.node_ip} (" in proc.stderr and "module nats" in proc.stderr, proc.stderr
    assert "nats-py==2.16.0 is not importable" in proc.stderr and "--env pinned" in proc.stderr
    assert not proc.stdout.strip()  # no submission id: nothing was submitted
    jobs = cluster.state("/api/jobs/")
    assert not [j for j in jobs if (j.get("metadata") or {}).get("council") == "tiny-two-nodes"
                and not (j.get("metadata") or {}).get("swe_fleet_preflight")]  # fmt: skip


@pytest.mark.timeout(PREFLIGHT_TIMEOUT_S + JOB_TIMEOUT_S + 300)
def test_pinned_runtime_env_passes_on_both_nodes_and_a_council_runs_on_both(
    cluster: TwoNodes, spec_path: Path
) -> None:
    """--env pinned: doctor passes on both nodes (nats-py installed by the runtime_env on the
    worker), submit reuses that result, and the council runs to the end with one engine replica
    on each node."""
    doctor = cluster.run(
        [SWE_FLEET, "doctor", str(spec_path), "--address", cluster.head.dashboard_url,
         "--nats-url", cluster.nats.url, "--env", "pinned", "--json",
         "--preflight-timeout", str(PREFLIGHT_TIMEOUT_S)],
        timeout=PREFLIGHT_TIMEOUT_S + 60,
    )  # fmt: skip
    assert doctor.returncode == 0, doctor.stdout[-4000:] + doctor.stderr[-3000:]
    rows = _rows(doctor.stdout)
    ids = cluster.node_ids()
    for ip in (cluster.head.node_ip, cluster.worker.node_ip):
        node = _node_rows(rows, ip)
        assert node["module nats"]["status"] == "ok" and "nats-py 2.16.0" in node["module nats"]["detail"]
        assert {r["status"] for r in node.values()} <= {"ok", "skip"}
        assert {r["node_id"] for r in node.values()} == {ids[ip]}

    submit = cluster.run(
        [sys.executable, str(SUBMIT_SCRIPT), str(spec_path), "--address", cluster.head.dashboard_url,
         "--nats-url", cluster.nats.url, "--env", "pinned", "--timeout", str(JOB_TIMEOUT_S)],
        timeout=JOB_TIMEOUT_S + 120,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr[-4000:]
    assert "(cached)" in submit.stderr  # doctor's passing result on these nodes and runtime_env
    sid = submit.stdout.strip().splitlines()[-1]

    events = cluster.client.run(consume_all, cluster.nats.url, None, sid)
    assert_complete_council(events, CouncilSpec.from_file(spec_path))

    # Placement: the job's two engine actors ran one on each node (Ray's State API says where).
    job = next(j for j in cluster.state("/api/jobs/") if j.get("submission_id") == sid)
    actors = cluster.state("/api/v0/actors?detail=true&limit=10000")["data"]["result"]["result"]
    engines = [a for a in actors if a.get("class_name") == "VLLMEngine" and a.get("job_id") == job["job_id"]]
    ip_of = {node_id: ip for ip, node_id in ids.items()}
    placed = sorted(ip_of.get(a["node_id"], "?") for a in engines)
    print(f"[two-node] engine replicas of {sid} ran on {placed}")
    assert sorted(a["node_id"] for a in engines) == sorted(ids.values())
