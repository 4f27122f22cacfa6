"""Which Ray node this process becomes (head or worker), and the exact ``ray start`` it runs.

The decision behind ``swe-fleet node start`` (the baked image's entrypoint), as pure
functions: the inputs are a typed :class:`~swe_fleet.node.config.NodeConfig` (from the
environment, :mod:`swe_fleet.node.config`) and a probe function; the output is a
:class:`NodeDecision` with its reasons, the ``ray start`` argv and the role's environment.
Probing the network and running Ray live in :mod:`swe_fleet.node.start`.

Rules, in order:

1. ``HEAD_ADDRESS=host[:gcs_port]`` is set: a **worker** joining that head (once its GCS port
   answers).
2. ``SWE_FLEET_HEAD_HOSTS=name1,name2`` (hosts that may become head): the GCS port of every
   listed host other than this one is probed; the first that answers is joined as a
   **worker**. If none answers and this host is listed, it becomes the **head**; the host at
   position ``i`` of the list (0-based) claims only after ``i * SWE_FLEET_HEAD_CLAIM_DELAY_S``
   of finding no head, so that hosts starting together do not all become heads. A host not
   listed **waits** (bounded by ``SWE_FLEET_HEAD_WAIT_S``) and then fails naming the hosts it probed.
3. Neither is set: an error saying which variable to set.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from swe_fleet.addresses import ClusterAddresses, Role
from swe_fleet.errors import NoHeadFound
from swe_fleet.node.config import NodeConfig, join_host_port, same_host

#: Variables whose values are secrets: shown as "(set)" in dry runs and logs.
SECRET_VARIABLES = ("RAY_AUTH_TOKEN",)


class NodeAction(enum.StrEnum):
    """What the entrypoint does: start a head, start a worker, or wait for a head to appear."""

    HEAD = "head"
    WORKER = "worker"
    WAIT = "wait"


@dataclass(frozen=True)
class ProbeResult:
    """One bounded look at ``host:port`` (the GCS port of a possible head)."""

    host: str
    port: int
    live: bool
    detail: str = ""

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)


#: ``probe(host, port)`` -> whether a head answers there (bounded; never raises).
Probe = Callable[[str, int], ProbeResult]


@dataclass(frozen=True)
class NodeDecision:
    """What the entrypoint decided, why, and what it runs.

    Attributes:
        action: head, worker, or wait (no head to join yet).
        reasons: one sentence per rule that led here, in order.
        argv: the exact ``ray start`` command (for ``wait`` after ``HEAD_ADDRESS``: the one it
            will run once the head answers; empty when the head is still unknown).
        env: changes to the environment of the Ray node's processes (None = unset).
        head: ``host:port`` of the head's GCS (this node's own for a head), when known.
        clients: the addresses clients outside the cluster use (``http://HEAD:8265``,
            ``ray://HEAD:10001``), when the head is known.
        probes: what each probe found.
        auth: how Ray's token auth is set (the variables pass to Ray unchanged).
    """

    action: NodeAction
    reasons: tuple[str, ...]
    argv: tuple[str, ...] = ()
    env: Mapping[str, str | None] = field(default_factory=dict)
    head: str | None = None
    clients: ClusterAddresses | None = None
    probes: tuple[ProbeResult, ...] = ()
    auth: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``swe-fleet node start --dry-run --json``)."""
        return {
            "action": self.action.value,
            "reasons": list(self.reasons),
            "argv": list(self.argv),
            "env": dict(self.env),
            "head": self.head,
            "clients": (
                {"dashboard_url": self.clients.dashboard_url, "client_url": self.clients.client_url}
                if self.clients
                else None
            ),
            "probes": [{"address": p.address, "live": p.live, "detail": p.detail} for p in self.probes],
            "auth": self.auth,
        }

    def describe(self) -> list[str]:
        """Human-readable lines: the decision, its reasons, the command and the environment."""
        lines = [f"decision: {self.action.value}"]
        lines += [f"  because {r}" for r in self.reasons]
        if self.argv:
            lines.append(f"command: {' '.join(self.argv)}")
        for key, value in self.env.items():
            lines.append(f"env: {key}={'(unset)' if value is None else value}")
        if self.auth:
            lines.append(f"auth: {self.auth}")
        if self.clients:
            lines.append(
                f"clients: RAY_ADDRESS={self.clients.dashboard_url} (Jobs API) or "
                f"{self.clients.client_url} (Ray Client); never {self.head} (GCS: cluster nodes only)"
            )
        return lines


def decide(
    config: NodeConfig,
    probe: Probe,
    *,
    waited_s: float = 0.0,
    ray_command: Sequence[str] = ("ray",),
) -> NodeDecision:
    """Decide head, worker or wait (see the module docstring for the rules).

    Args:
        config: the node's settings.
        probe: a bounded check whether a head's GCS answers at ``(host, port)``.
        waited_s: how long this node has already been looking for a head (for claim delays).
        ray_command: how to run Ray's CLI (``ray``, or a path to it).
    """
    decision = _decide(config, probe, waited_s, tuple(ray_command))
    return replace(decision, auth=config.auth.describe())


def _decide(config: NodeConfig, probe: Probe, waited_s: float, ray_command: tuple[str, ...]) -> NodeDecision:
    if config.head_address is not None:
        host, port = config.head_address
        target = join_host_port(host, port)
        reasons = [f"HEAD_ADDRESS={target} is set: this node is a worker joining that head"]
        if config.head_hosts:
            reasons.append("SWE_FLEET_HEAD_HOSTS is ignored when HEAD_ADDRESS is set")
        result = probe(host, port)
        argv = _worker_argv(config, target, ray_command)
        if not result.live:
            reasons.append(f"nothing answers on {target} yet ({result.detail or 'no answer'})")
            return NodeDecision(
                NodeAction.WAIT, tuple(reasons), argv, _role_env(Role.WORKER), target,
                _clients(config, host), (result,),
            )  # fmt: skip
        reasons.append(f"the head's GCS answers on {target}")
        return NodeDecision(
            NodeAction.WORKER, tuple(reasons), argv, _role_env(Role.WORKER), target,
            _clients(config, host), (result,),
        )  # fmt: skip

    position = config.claim_position()
    listed = ", ".join(join_host_port(h, p) for h, p in config.head_hosts)
    reasons = [f"HEAD_ADDRESS is unset; the hosts that may be head are: {listed}"]
    probes: list[ProbeResult] = []
    for host, port in config.head_hosts:
        if same_host(host, config.hostname):
            continue  # our own GCS is not running yet: nothing of ours to find there
        result = probe(host, port)
        probes.append(result)
        if result.live:
            target = join_host_port(host, port)
            reasons.append(f"a live head answers on {target}: this node is a worker joining it")
            return NodeDecision(
                NodeAction.WORKER, tuple(reasons), _worker_argv(config, target, ray_command),
                _role_env(Role.WORKER), target, _clients(config, host), tuple(probes),
            )  # fmt: skip
    probed = ", ".join(f"{p.address} ({p.detail or 'no answer'})" for p in probes) or "none (only itself)"
    reasons.append(f"no live head answers; probed: {probed}")
    if position is None:
        reasons.append(
            f"this host ({config.hostname}) is not in SWE_FLEET_HEAD_HOSTS, so it may not become "
            "head: it waits for one of those hosts to start a head"
        )
        return NodeDecision(NodeAction.WAIT, tuple(reasons), probes=tuple(probes))
    claim_after = position * config.head_claim_delay_s
    if waited_s < claim_after:
        reasons.append(
            f"this host is number {position + 1} in SWE_FLEET_HEAD_HOSTS: it claims the head only "
            f"after {claim_after:.0f} s without a head (waited {waited_s:.0f} s)"
        )
        return NodeDecision(NodeAction.WAIT, tuple(reasons), probes=tuple(probes))
    own = config.node_ip or config.hostname
    reasons.append(
        f"this host ({config.hostname}) is in SWE_FLEET_HEAD_HOSTS (number {position + 1}): "
        "it becomes the head"
    )
    return NodeDecision(
        NodeAction.HEAD, tuple(reasons), _head_argv(config, ray_command), _role_env(Role.HEAD),
        join_host_port(own, config.ports.gcs), _clients(config, own), tuple(probes),
    )  # fmt: skip


def wait_for_decision(
    config: NodeConfig,
    probe: Probe,
    *,
    ray_command: Sequence[str] = ("ray",),
    poll_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[NodeDecision, float], None] | None = None,
) -> NodeDecision:
    """Decide again every ``poll_s`` while the decision is *wait*, for at most
    ``config.head_wait_s``; return the first head or worker decision.

    Raises:
        NoHeadFound: still no head to join after ``config.head_wait_s``; names the hosts probed.
    """
    started = clock()
    while True:
        waited = clock() - started
        decision = decide(config, probe, waited_s=waited, ray_command=ray_command)
        if decision.action is not NodeAction.WAIT:
            return decision
        if waited >= config.head_wait_s:
            hosts = tuple(p.address for p in decision.probes)
            raise NoHeadFound(
                f"no live Ray head after {waited:.0f} s; probed {', '.join(hosts) or 'no host'} "
                f"({'; '.join(decision.reasons[1:])}). Start the head first, check that this host "
                "can reach its GCS port, or raise SWE_FLEET_HEAD_WAIT_S",
                hosts=hosts,
                waited_s=waited,
            )
        if on_wait is not None:
            on_wait(decision, waited)
        sleep(min(poll_s, config.head_wait_s - waited))


def masked_env(env: Mapping[str, str | None]) -> dict[str, str | None]:
    """``env`` with secret values replaced by ``(set)``, for logs and dry runs."""
    return {k: ("(set)" if k in SECRET_VARIABLES and v else v) for k, v in env.items()}


# ---- argv and env ------------------------------------------------------------------------------


def _common_args(config: NodeConfig) -> list[str]:
    args = ["--disable-usage-stats"]
    if config.node_ip:
        args += ["--node-ip-address", config.node_ip]
    if config.num_cpus is not None:
        args += ["--num-cpus", str(config.num_cpus)]
    if config.num_gpus is not None:
        args += ["--num-gpus", str(config.num_gpus)]
    if config.memory_bytes is not None:
        args += ["--memory", str(config.memory_bytes)]
    if config.object_store_bytes is not None:
        args += ["--object-store-memory", str(config.object_store_bytes)]
    if config.resources:
        args += ["--resources", json.dumps(dict(config.resources), sort_keys=True)]
    if config.temp_dir:
        args += ["--temp-dir", config.temp_dir]
    return args


def _head_argv(config: NodeConfig, ray_command: Sequence[str]) -> tuple[str, ...]:
    return (
        *ray_command, "start", "--head", "--block",
        "--port", str(config.ports.gcs),
        "--dashboard-host", "0.0.0.0",  # noqa: S104 - clients outside the node reach the Jobs API
        "--dashboard-port", str(config.ports.dashboard),
        "--include-dashboard", "true",
        "--ray-client-server-port", str(config.ports.client),
        *_common_args(config),
    )  # fmt: skip


def _worker_argv(config: NodeConfig, head: str, ray_command: Sequence[str]) -> tuple[str, ...]:
    return (*ray_command, "start", "--block", "--address", head, *_common_args(config))


def _role_env(role: Role) -> dict[str, str | None]:
    # Nodes find their cluster through the GCS; an inherited client address (http://, ray://)
    # would mislead Ray on the node and every job driver started there.
    return {"SWE_FLEET_ROLE": role.value, "RAY_ADDRESS": None}


def _clients(config: NodeConfig, head_host: str) -> ClusterAddresses:
    return config.ports.client_addresses(config.client_host or head_host, config.namespace)
