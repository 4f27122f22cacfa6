"""Which Ray node this process becomes (head or worker), and the exact ``ray start`` it runs.

The decision behind ``swe-fleet node start`` (the baked image's entrypoint), as pure
functions: the inputs are a typed :class:`NodeConfig` (from the environment) and a probe
function; the output is a :class:`NodeDecision` with its reasons, the ``ray start`` argv and
the role's environment. Probing the network and running Ray live in :mod:`swe_fleet.node.start`.

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

Environment (read in :meth:`NodeConfig.from_env` and, for ports and auth, in
:mod:`swe_fleet.addresses`):

- ``HEAD_ADDRESS``, ``SWE_FLEET_HEAD_HOSTS``: see above. ``SWE_FLEET_HOSTNAME``: this host's
  name as ``SWE_FLEET_HEAD_HOSTS`` spells it (default: the hostname; short and fully
  qualified names match each other).
- ``RAY_PORT`` (GCS, 6379), ``RAY_DASHBOARD_PORT`` (8265), ``RAY_CLIENT_PORT`` (10001);
  ``RAY_HOST``: the head's host as clients should use it (default: ``SWE_FLEET_NODE_IP``, else
  the hostname); ``RAY_NAMESPACE``.
- ``SWE_FLEET_NODE_IP`` (``--node-ip-address``; default: Ray picks the address that routes out),
  ``SWE_FLEET_NUM_CPUS``, ``SWE_FLEET_NUM_GPUS`` (default: Ray detects them),
  ``SWE_FLEET_MEMORY``, ``SWE_FLEET_OBJECT_STORE_MEMORY`` (bytes), ``SWE_FLEET_RESOURCES``
  (JSON object of custom resources), ``SWE_FLEET_TEMP_DIR`` (``--temp-dir``).
- ``SWE_FLEET_HEAD_WAIT_S`` (300), ``SWE_FLEET_HEAD_CLAIM_DELAY_S`` (30),
  ``SWE_FLEET_PROBE_TIMEOUT_S`` (2), ``SWE_FLEET_START_TIMEOUT_S`` (300: how long ``ray start``
  may take to report that its node runs; a worker pointed at something that is not a Ray GCS
  would otherwise retry for ever), ``SWE_FLEET_STOP_TIMEOUT_S`` (60: how long a SIGTERM waits
  for Ray to stop before the node's processes are killed).
- ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``: passed through to Ray
  unchanged (never generated here); ``RAY_AUTH_MODE=token`` without a token is an error.
- ``RAY_ADDRESS`` must be unset or ``auto`` on a node; the node's processes get it unset.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from swe_fleet.addresses import DEFAULT_NAMESPACE, ClusterAddresses, ClusterPorts, Role
from swe_fleet.errors import AddressError, NodeConfigError, NoHeadFound

DEFAULT_HEAD_WAIT_S = 300.0
DEFAULT_HEAD_CLAIM_DELAY_S = 30.0
DEFAULT_PROBE_TIMEOUT_S = 2.0
DEFAULT_STOP_TIMEOUT_S = 60.0
DEFAULT_START_TIMEOUT_S = 300.0

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
        return _join_host_port(self.host, self.port)


#: ``probe(host, port)`` -> whether a head answers there (bounded; never raises).
Probe = Callable[[str, int], ProbeResult]


@dataclass(frozen=True)
class AuthSettings:
    """Ray's token auth as the environment sets it; values are passed to Ray unchanged."""

    mode: str | None = None
    token_in_env: bool = False
    token_path: str | None = None

    def describe(self) -> str:
        if self.mode == "token":
            source = "RAY_AUTH_TOKEN" if self.token_in_env else f"RAY_AUTH_TOKEN_PATH={self.token_path}"
            return f"token auth on (RAY_AUTH_MODE=token, token from {source})"
        if self.mode:
            return f"RAY_AUTH_MODE={self.mode}"
        return "RAY_AUTH_MODE unset: Ray turns token auth on only if it finds a token (~/.ray/auth_token)"


@dataclass(frozen=True)
class NodeConfig:
    """Everything the entrypoint's decision depends on, typed (see the module docstring)."""

    hostname: str
    head_address: tuple[str, int] | None = None
    head_hosts: tuple[tuple[str, int], ...] = ()
    ports: ClusterPorts = field(default_factory=ClusterPorts)
    namespace: str = DEFAULT_NAMESPACE
    client_host: str | None = None
    node_ip: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    memory_bytes: int | None = None
    object_store_bytes: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    temp_dir: str | None = None
    head_wait_s: float = DEFAULT_HEAD_WAIT_S
    head_claim_delay_s: float = DEFAULT_HEAD_CLAIM_DELAY_S
    probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    auth: AuthSettings = field(default_factory=AuthSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, hostname: str = "") -> NodeConfig:
        """Read the entrypoint's variables from ``env`` (default ``os.environ``).

        ``hostname`` is this machine's name (``socket.gethostname()``);
        ``SWE_FLEET_HOSTNAME`` overrides it.

        Raises:
            NodeConfigError: a variable is malformed, or neither ``HEAD_ADDRESS`` nor
                ``SWE_FLEET_HEAD_HOSTS`` says where the head is.
            AddressError: a port variable is not a port, or ``RAY_ADDRESS`` is set to
                something other than ``auto`` (nodes find their cluster through the GCS).
        """
        env = os.environ if env is None else env
        ports = ClusterPorts.from_env(env)
        raw_address = env.get("RAY_ADDRESS", "").strip()
        if raw_address not in ("", "auto"):
            raise AddressError(
                f"RAY_ADDRESS={raw_address!r} on a Ray node: nodes must have RAY_ADDRESS unset or "
                "'auto'. To join a head set HEAD_ADDRESS=host[:port] (its GCS address) instead; "
                "RAY_ADDRESS=http://HEAD:8265 or ray://HEAD:10001 is for clients.",
                address=raw_address,
                use="node RAY_ADDRESS",
            )
        name = (env.get("SWE_FLEET_HOSTNAME") or hostname).strip()
        head_address = None
        if env.get("HEAD_ADDRESS", "").strip():
            head_address = _parse_host_port(env["HEAD_ADDRESS"].strip(), ports.gcs, "HEAD_ADDRESS")
        head_hosts = tuple(
            _parse_host_port(item.strip(), ports.gcs, "SWE_FLEET_HEAD_HOSTS")
            for item in env.get("SWE_FLEET_HEAD_HOSTS", "").split(",")
            if item.strip()
        )
        if head_address is None and not head_hosts:
            raise NodeConfigError(
                "neither HEAD_ADDRESS nor SWE_FLEET_HEAD_HOSTS is set: set HEAD_ADDRESS=host[:port] "
                "on workers (the head's GCS address), or SWE_FLEET_HEAD_HOSTS=name1,name2 (the hosts "
                "that may become head; this host's name is in it on a head)",
                variable="HEAD_ADDRESS",
            )
        if head_hosts and not name:
            raise NodeConfigError(
                "this host has no name to look up in SWE_FLEET_HEAD_HOSTS; set SWE_FLEET_HOSTNAME",
                variable="SWE_FLEET_HOSTNAME",
            )
        mode = env.get("RAY_AUTH_MODE", "").strip().lower() or None
        auth = AuthSettings(
            mode=mode,
            token_in_env=bool(env.get("RAY_AUTH_TOKEN", "").strip()),
            token_path=env.get("RAY_AUTH_TOKEN_PATH", "").strip() or None,
        )
        return cls(
            hostname=name,
            head_address=head_address,
            head_hosts=head_hosts,
            ports=ports,
            namespace=env.get("RAY_NAMESPACE") or DEFAULT_NAMESPACE,
            client_host=env.get("RAY_HOST", "").strip() or None,
            node_ip=env.get("SWE_FLEET_NODE_IP", "").strip() or None,
            num_cpus=_count(env, "SWE_FLEET_NUM_CPUS"),
            num_gpus=_count(env, "SWE_FLEET_NUM_GPUS"),
            memory_bytes=_count(env, "SWE_FLEET_MEMORY", minimum=1),
            object_store_bytes=_count(env, "SWE_FLEET_OBJECT_STORE_MEMORY", minimum=1),
            resources=_resources(env),
            temp_dir=env.get("SWE_FLEET_TEMP_DIR", "").strip() or None,
            head_wait_s=_seconds(env, "SWE_FLEET_HEAD_WAIT_S", DEFAULT_HEAD_WAIT_S),
            head_claim_delay_s=_seconds(env, "SWE_FLEET_HEAD_CLAIM_DELAY_S", DEFAULT_HEAD_CLAIM_DELAY_S),
            probe_timeout_s=_seconds(
                env, "SWE_FLEET_PROBE_TIMEOUT_S", DEFAULT_PROBE_TIMEOUT_S, positive=True
            ),
            start_timeout_s=_seconds(
                env, "SWE_FLEET_START_TIMEOUT_S", DEFAULT_START_TIMEOUT_S, positive=True
            ),
            stop_timeout_s=_seconds(env, "SWE_FLEET_STOP_TIMEOUT_S", DEFAULT_STOP_TIMEOUT_S),
            auth=auth,
        )

    def check_auth(self, token_available: bool) -> None:
        """With ``RAY_AUTH_MODE=token``, a token must be given (``token_available``: the
        caller found ``RAY_AUTH_TOKEN``, the file at ``RAY_AUTH_TOKEN_PATH`` or
        ``~/.ray/auth_token``). Tokens are never generated here.

        Raises:
            NodeConfigError: token auth is on and there is no token.
        """
        if self.auth.mode == "token" and not token_available:
            where = f" ({self.auth.token_path} is missing or empty)" if self.auth.token_path else ""
            raise NodeConfigError(
                f"RAY_AUTH_MODE=token but no token{where}: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH "
                "to a file holding it, from the cluster's secret (the same token on every node and "
                "client); the entrypoint never generates one",
                variable="RAY_AUTH_TOKEN",
            )

    def claim_position(self) -> int | None:
        """This host's position in ``SWE_FLEET_HEAD_HOSTS`` (0-based), None when not listed."""
        for i, (host, _) in enumerate(self.head_hosts):
            if same_host(host, self.hostname):
                return i
        return None


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


def same_host(a: str, b: str) -> bool:
    """Whether two host names name the same host: equal (ignoring case), or one is the short
    form of the other (``ray-head`` and ``ray-head.swe-fleet.svc.cluster.local``). IP addresses
    must be equal."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if a == b:
        return True
    if _is_ip(a) or _is_ip(b):
        return False
    return a.split(".")[0] == b.split(".")[0] and ("." not in a or "." not in b)


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
        target = _join_host_port(host, port)
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
    listed = ", ".join(_join_host_port(h, p) for h, p in config.head_hosts)
    reasons = [f"HEAD_ADDRESS is unset; the hosts that may be head are: {listed}"]
    probes: list[ProbeResult] = []
    for host, port in config.head_hosts:
        if same_host(host, config.hostname):
            continue  # our own GCS is not running yet: nothing of ours to find there
        result = probe(host, port)
        probes.append(result)
        if result.live:
            target = _join_host_port(host, port)
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
        _join_host_port(own, config.ports.gcs), _clients(config, own), tuple(probes),
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


# ---- parsing -----------------------------------------------------------------------------------


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_host_port(text: str, default_port: int, variable: str) -> tuple[str, int]:
    if "://" in text:
        raise NodeConfigError(
            f"{variable}={text!r} is a URL; give the head's GCS address as host[:port] "
            f"(e.g. ray-head:{default_port}); URLs (http://HEAD:8265, ray://HEAD:10001) are for clients",
            variable=variable,
        )
    host, port_text = text, ""
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host or any(c.isspace() for c in host):
        raise NodeConfigError(f"{variable}={text!r}: no host; use host[:port]", variable=variable)
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise NodeConfigError(
            f"{variable}={text!r}: the port {port_text!r} is not a number in 1-65535", variable=variable
        )
    return host, int(port_text)


def _count(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < minimum:
        raise NodeConfigError(
            f"{name}={raw!r} is not a whole number >= {minimum}; unset it to let Ray detect the value",
            variable=name,
        )
    return int(raw)


def _seconds(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise NodeConfigError(f"{name}={raw!r} is not a number of seconds {bound}", variable=name)
    return value


def _resources(env: Mapping[str, str]) -> dict[str, float]:
    raw = env.get("SWE_FLEET_RESOURCES", "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in data.items()
    ):
        raise NodeConfigError(
            f"SWE_FLEET_RESOURCES={raw!r} is not a JSON object of resource name -> amount >= 0 "
            '(e.g. {"engine": 1})',
            variable="SWE_FLEET_RESOURCES",
        )
    return {k: float(v) for k, v in data.items()}
