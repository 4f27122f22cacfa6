"""Test-only servers and waits on top of the local stack: a Ray worker joining a head, and
waiting until a cluster counts its nodes.

The stack itself (:class:`~swe_fleet.local.stack.NatsServer`, :class:`~swe_fleet.local.stack.RayHead`)
is production code (``swe-fleet local up``, ``swe-fleet run``); these helpers exist only for the
multi-node tests (``tests/netns``), where a head listens on an address of a network namespace.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swe_fleet._processes import ManagedProcess, start_process, venv_binary, wait_for_line
from swe_fleet.errors import LocalStackError, SweFleetError
from swe_fleet.local.stack import (
    NODE_PORT_FLAGS,
    RAY_READY_TIMEOUT_S,
    RayHead,
    pick_ports,
    ray_node_args,
    ray_node_env,
    ray_temp_dir,
    stop_ray_node,
)
from swe_fleet.submit.jobs_api import JobsApi


@dataclass
class RayWorker:
    """A real Ray worker node (``ray start --address HEAD --block``) joining a
    :class:`~swe_fleet.local.stack.RayHead` that listens on a non-loopback address, with its own
    ports, temp dir and resources."""

    workdir: Path
    head: RayHead
    node_ip: str
    num_cpus: int = 1
    memory_bytes: int = 6 * 1024**3
    object_store_bytes: int = 256 * 1024**2
    env: Mapping[str, str] = field(default_factory=dict)
    #: How to run Ray's CLI (see :attr:`RayHead.ray_command`).
    ray_command: Sequence[str] = ()
    resources: Mapping[str, float] = field(default_factory=dict)
    temp_dir: Path | None = None
    process: ManagedProcess | None = None

    def start(self, timeout_s: float = RAY_READY_TIMEOUT_S) -> RayWorker:
        """Start the node and wait (bounded) until its log says the node runs.

        The caller waits for the head to count it (:func:`wait_for_nodes`).
        """
        if not self.head.gcs_address or self.head.token_path is None:
            raise LocalStackError("start the head before its workers", process="ray-worker")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.temp_dir = ray_temp_dir("swf-rayw-")
        argv = [
            *(self.ray_command or [venv_binary("ray")]), "start", "--block",
            "--address", self.head.gcs_address,
            *ray_node_args(node_ip=self.node_ip, num_cpus=self.num_cpus, memory_bytes=self.memory_bytes,
                           object_store_bytes=self.object_store_bytes, temp_dir=self.temp_dir),
            *([f"--resources={json.dumps(dict(self.resources))}"] if self.resources else []),
        ] + [f"--{k}={v}" for k, v in pick_ports(NODE_PORT_FLAGS).items()]  # fmt: skip
        env = ray_node_env(self.env, self.head.token_path, self.ray_command)
        self.process = start_process("ray-worker", argv, self.workdir / f"ray-worker-{self.node_ip}.log", env)
        wait_for_line(self.process, re.compile(r"Ray runtime started"), timeout_s)
        return self

    def stop(self) -> None:
        stop_ray_node(self.process, self.temp_dir)


def alive_nodes(dashboard_url: str, auth_token: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The alive nodes of the cluster whose dashboard is at ``dashboard_url``, as the Jobs API
    client lists them (:meth:`swe_fleet.submit.jobs_api.JobsApi.alive_nodes`).

    Raises:
        SubmissionError / DashboardUnreachable: the dashboard did not answer within ``timeout_s``.
    """
    return JobsApi(dashboard_url, auth_token=auth_token, request_timeout_s=timeout_s).alive_nodes()


def wait_for_nodes(
    dashboard_url: str, auth_token: str, count: int, timeout_s: float = RAY_READY_TIMEOUT_S
) -> list[dict[str, Any]]:
    """Wait (bounded) until ``count`` nodes are alive; return them.

    Raises:
        LocalStackError: fewer nodes alive after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    nodes: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            nodes = alive_nodes(dashboard_url, auth_token)
        except SweFleetError:
            nodes = []  # the dashboard may still be starting: keep waiting within the bound
        if len(nodes) >= count:
            return nodes
        time.sleep(0.5)
    raise LocalStackError(
        f"{len(nodes)} of {count} Ray nodes alive after {timeout_s:.0f} s", process="ray-head"
    )
