"""A two-node Ray cluster on three "hosts" (network namespaces), started the way images start it.

- ``head`` (10.77.0.1): ``swe-fleet node start`` (it is listed in ``SWE_FLEET_HEAD_HOSTS``, finds
  no live head and becomes one, on Ray's default ports) and a nats-server listening on its address.
- ``worker`` (10.77.0.2): ``swe-fleet node start`` joining the head, either by
  ``HEAD_ADDRESS`` or by probing the hosts of ``SWE_FLEET_HEAD_HOSTS``, from this virtualenv or
  from another one (tests/support/virtualenvs.py: a worker whose image lacks a module). A
  test may stop it and start another one (:meth:`NetnsCluster.start_worker`).
- ``client`` (10.77.0.3): no Ray; everything the tests do "from outside" runs here
  (:meth:`NetnsCluster.on_client`), so the head's address is the only way in.

Both nodes get 1 CPU, so two engine replicas of 1 CPU each must land one per node. Every
process is ours: the entrypoints are stopped by SIGTERM (they stop their own ``ray start``),
and whatever of their Ray sessions is left is ended by its session id, which is a PID we
started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from swe_fleet._processes import ManagedProcess, start_process, wait_for_http_ok
from swe_fleet.addresses import ClusterAddresses, Role
from swe_fleet.local.stack import NatsServer, ray_temp_dir

from support.netns import Host, Network, network
from support.servers import alive_nodes, wait_for_nodes

T = TypeVar("T")

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")
NODE_READY_TIMEOUT_S = 120.0
#: Longer than the entrypoint's own bound on stopping Ray (SWE_FLEET_STOP_TIMEOUT_S below).
ENTRYPOINT_STOP_TIMEOUT_S = 45.0

#: Ray's node-death detection in ~5 s instead of ~65 s (see NOTES-platform); a check may take up
#: to 1 s, so that a node busy building a runtime_env or running an engine is not declared dead.
FAST_HEALTH_CHECKS: Mapping[str, str] = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def node_env(token: str, temp_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment an image would give a node: nothing inherited from the developer's RAY_*
    or SWE_FLEET_* settings or their PYTHONDONTWRITEBYTECODE (an image writes bytecode, and a
    pip runtime_env's copy of the virtualenv has none: see ``swe_fleet.local.stack.ray_node_env``),
    token auth, 1 CPU, capped memory, a temp dir of its own (all the "hosts" share one file
    system)."""
    own = ("RAY_", "SWE_FLEET_", "HEAD_ADDRESS", "PYTHONDONTWRITEBYTECODE")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    return {
        **inherited,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "SWE_FLEET_NUM_CPUS": "1",
        "SWE_FLEET_NUM_GPUS": "0",
        "SWE_FLEET_MEMORY": str(6 * 1024**3),
        "SWE_FLEET_OBJECT_STORE_MEMORY": str(256 * 1024**2),
        "SWE_FLEET_TEMP_DIR": str(temp_dir),
        "SWE_FLEET_HEAD_WAIT_S": "60",
        "SWE_FLEET_STOP_TIMEOUT_S": "30",
        "RAY_USAGE_STATS_ENABLED": "0",
        # No Serve replicas to drain; the default makes every stop take 30 s.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        **extra,
    }


@dataclass
class EntrypointNode:
    """``swe-fleet node start`` running on one host, and how to stop exactly what it started."""

    host: Host
    process: ManagedProcess
    temp_dir: Path

    def log(self) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def ray_logs(self, pattern: str, chars: int = 2000) -> str:
        """The tails of this node's Ray log files matching ``pattern`` (for failure messages)."""
        paths = sorted((self.temp_dir / "session_latest" / "logs").glob(pattern))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in paths)

    def ray_pid(self) -> int | None:
        """PID of the ``ray start --block`` the entrypoint started (from its log)."""
        match = re.search(r"node\.started\b.*?\bpid=(\d+)", self.log())
        return int(match.group(1)) if match else None

    def ray_session_processes(self) -> list[psutil.Process]:
        """Processes still alive in the Ray node's session (its session id is that PID)."""
        pid = self.ray_pid()
        found = []
        if pid is None:
            return found
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if os.getsid(proc.pid) == pid and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        return found

    def stop(self) -> None:
        """SIGTERM the entrypoint (it stops its Ray node, bounded); then end whatever of that
        node's session is left (a PID we started leads it)."""
        self.process.stop(timeout_s=ENTRYPOINT_STOP_TIMEOUT_S)
        pid = self.ray_pid()
        if pid is not None and self.ray_session_processes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_entrypoint(
    host: Host, workdir: Path, token: str, extra_env: Mapping[str, str], swe_fleet: str = SWE_FLEET
) -> EntrypointNode:
    """Start ``swe-fleet node start`` on ``host`` (``ip netns exec``), logging to ``workdir``;
    ``swe_fleet`` is the console script of the virtualenv the node runs from."""
    temp_dir = ray_temp_dir(f"swf-{host.name}-")
    env = node_env(token, temp_dir, extra_env)
    process = start_process(
        f"node-{host.name}",
        host.command([swe_fleet, "node", "start"]),
        workdir / f"node-{host.name}-{temp_dir.name}.log",
        env,
    )
    return EntrypointNode(host=host, process=process, temp_dir=temp_dir)


@dataclass
class NetnsCluster:
    """The running topology (see the module docstring)."""

    net: Network
    workdir: Path
    token: str
    nats: NatsServer
    head_node: EntrypointNode
    #: What a client outside the cluster uses, as :mod:`swe_fleet.addresses` resolves it.
    addresses: ClusterAddresses
    #: Environment every node of this cluster gets (on top of :func:`node_env`).
    node_extra_env: Mapping[str, str] = field(default_factory=dict)
    #: Every entrypoint started, stopped in reverse order at the end.
    started: list[EntrypointNode] = field(default_factory=list)
    #: The worker started last (see :meth:`start_worker`).
    _worker: EntrypointNode | None = None

    @property
    def worker_node(self) -> EntrypointNode:
        assert self._worker is not None, "no worker was started"
        return self._worker

    @property
    def head(self) -> Host:
        return self.net.hosts["head"]

    @property
    def worker(self) -> Host:
        return self.net.hosts["worker"]

    @property
    def client(self) -> Host:
        return self.net.hosts["client"]

    def on_client(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the client host (its sockets live there)."""
        return self.client.run(fn, *args, **kwargs)

    def alive_nodes(self) -> list[dict[str, object]]:
        return self.on_client(alive_nodes, self.addresses.dashboard_url, self.token)

    def client_env(self) -> dict[str, str]:
        """A client process's environment: the token, and nothing of the developer's RAY_*."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SWE_FLEET_"))}
        return {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def run_cli(self, argv: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
        """A command on the client host, as a client of this cluster (token, no RAY_ADDRESS)."""
        env = {**self.client_env(), "SWE_FLEET_CACHE": str(self.workdir / "client-cache"), "COLUMNS": "250"}
        return self.client.run(
            subprocess.run, argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
        )

    def state(self, path: str) -> Any:
        """GET a path of the dashboard's API (``/api/jobs/``, ``/api/v0/...``), from the client."""
        request = urllib.request.Request(  # noqa: S310 - the test cluster's own http:// URL
            f"{self.addresses.dashboard_url}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )

        def get() -> Any:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                return json.loads(resp.read())

        return self.client.run(get)

    def node_ids(self) -> dict[str, str]:
        """node IP -> node id of the alive nodes."""
        return {str(n["node_ip"]): str(n["node_id"]) for n in self.alive_nodes()}

    def start_worker(self, join: str, swe_fleet: str = SWE_FLEET) -> EntrypointNode:
        """Start a worker on the worker host (the previous one stopped) and wait for two nodes.

        ``join``: how it finds the head, ``head_address`` (``HEAD_ADDRESS``) or ``head_hosts``
        (probing ``SWE_FLEET_HEAD_HOSTS``)."""
        if join == "head_address":
            env = {**self.node_extra_env, "HEAD_ADDRESS": self.head.ip}
        else:
            env = {
                **self.node_extra_env,
                "SWE_FLEET_HEAD_HOSTS": self.head.ip,
                "SWE_FLEET_HOSTNAME": self.worker.ip,
            }
        node = start_entrypoint(self.worker, self.workdir, self.token, env, swe_fleet)
        self.started.append(node)
        self._worker = node
        self.client.run(wait_for_nodes, self.addresses.dashboard_url, self.token, 2, NODE_READY_TIMEOUT_S)
        return node


@contextlib.contextmanager
def netns_cluster(
    tag: str,
    workdir: Path,
    *,
    join: str = "head_address",
    node_extra_env: Mapping[str, str] | None = None,
    head_swe_fleet: str = SWE_FLEET,
    worker_swe_fleet: str = SWE_FLEET,
) -> Iterator[NetnsCluster]:
    """Start the topology; stop everything (workers, head, NATS) and delete the namespaces at exit.

    ``join``: how the worker finds the head (see :meth:`NetnsCluster.start_worker`);
    ``head_swe_fleet``, ``worker_swe_fleet``: the ``swe-fleet`` script of the virtualenv each
    node runs from.
    """
    extra = dict(node_extra_env or {})
    token = secrets.token_hex(32)
    started: list[EntrypointNode] = []
    nats: NatsServer | None = None
    with network(tag, "head", "worker", "client") as net:
        head, client = net.hosts["head"], net.hosts["client"]
        try:
            nats = NatsServer(workdir / "nats", host=head.ip)
            head.run(nats.start)
            head_env = {**extra, "SWE_FLEET_HEAD_HOSTS": head.ip, "SWE_FLEET_HOSTNAME": head.ip}
            head_node = start_entrypoint(head, workdir, token, head_env, head_swe_fleet)
            started.append(head_node)
            addresses = ClusterAddresses.from_env(Role.CLIENT, {"RAY_HOST": head.ip})
            client.run(
                wait_for_http_ok,
                head_node.process,
                f"{addresses.dashboard_url}/api/version",
                NODE_READY_TIMEOUT_S,
                what="the head's dashboard (started by swe-fleet node start)",
                headers={"Authorization": f"Bearer {token}"},
            )
            cluster = NetnsCluster(net, workdir, token, nats, head_node, addresses, extra, started)
            cluster.start_worker(join, worker_swe_fleet)
            yield cluster
        finally:
            for node in reversed(started):
                node.stop()
            if nats is not None:
                nats.stop()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    """Poll ``predicate`` until true; fail the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(poll_s)


# ---- what the tests do from the client host ----------------------------------------------------


def state_api(dashboard_url: str, token: str, resource: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Rows of Ray's state API (``/api/v0/<resource>``), dead ones included."""
    request = urllib.request.Request(  # noqa: S310 - the test cluster's own http:// URL
        f"{dashboard_url}/api/v0/{resource}?limit=10000&detail=true",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310
        rows: list[dict[str, Any]] = json.loads(resp.read())["data"]["result"]["result"]
    return rows


def engine_node_ips(dashboard_url: str, token: str, ray_job_id: str) -> list[str]:
    """The node IP of every vLLM engine actor the job created (from the state API, not from
    anything the job says about itself)."""
    ips = {n["node_id"]: n["node_ip"] for n in state_api(dashboard_url, token, "nodes")}
    return sorted(
        ips.get(a.get("node_id") or "", "?")
        for a in state_api(dashboard_url, token, "actors")
        if a.get("class_name") == "VLLMEngine" and a.get("job_id") == ray_job_id
    )
