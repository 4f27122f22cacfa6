"""Test-only waits on top of the local stack: the alive nodes of a cluster, and waiting until
it counts enough of them (the multi-node tests, ``tests/netns``).

The stack itself (:class:`~swe_fleet.local.stack.NatsServer`, :class:`~swe_fleet.local.stack.RayHead`)
is production code (``swe-fleet local up``, ``swe-fleet run``); the multi-node tests start their
nodes as images do, with ``swe-fleet node start`` (``tests/support/netns_cluster.py``).
"""

from __future__ import annotations

import time
from typing import Any

from swe_fleet.errors import LocalStackError, SweFleetError
from swe_fleet.local.stack import RAY_READY_TIMEOUT_S
from swe_fleet.submit.jobs_api import JobsApi


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
