"""How a node is configured: :class:`NodeConfig` from the environment, typed, and its parsing.

The input of the decision behind ``swe-fleet node start`` (:mod:`swe_fleet.node.decision`,
whose docstring has the rules). Environment (read here, in :meth:`NodeConfig.from_env`, and,
for ports and auth, in :mod:`swe_fleet.addresses`):

- ``HEAD_ADDRESS``, ``SWE_FLEET_HEAD_HOSTS``: where the head is (the decision's rules 1 and 2).
  ``SWE_FLEET_HOSTNAME``: this host's name as ``SWE_FLEET_HEAD_HOSTS`` spells it (default: the
  hostname; short and fully qualified names match each other).
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
  A head's dashboard (the Jobs API: whoever reaches it runs code on the cluster) listens on
  every interface, so a head without ``RAY_AUTH_MODE=token`` is refused unless
  ``SWE_FLEET_ALLOW_OPEN_DASHBOARD=1`` says it is meant (a network of its own, a test).
- ``RAY_ADDRESS`` must be unset or ``auto`` on a node; the node's processes get it unset.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from swe_fleet.addresses import DEFAULT_NAMESPACE, ClusterPorts
from swe_fleet.errors import AddressError, NodeConfigError

DEFAULT_HEAD_WAIT_S = 300.0
DEFAULT_HEAD_CLAIM_DELAY_S = 30.0
DEFAULT_PROBE_TIMEOUT_S = 2.0
DEFAULT_STOP_TIMEOUT_S = 60.0
DEFAULT_START_TIMEOUT_S = 300.0


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
    allow_open_dashboard: bool = False

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
            allow_open_dashboard=_flag(env, "SWE_FLEET_ALLOW_OPEN_DASHBOARD"),
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

    def check_head_auth(self) -> None:
        """A head's dashboard listens beyond loopback: it must ask for Ray's token.

        Raises:
            NodeConfigError: this node would be a head without ``RAY_AUTH_MODE=token`` and
                ``SWE_FLEET_ALLOW_OPEN_DASHBOARD`` is not set.
        """
        if self.auth.mode == "token" or self.allow_open_dashboard:
            return
        raise NodeConfigError(
            f"this node would start a Ray head whose dashboard (port {self.ports.dashboard}, the Jobs "
            f"API) listens on every interface without token auth ({self.auth.describe()}): anyone "
            "who reaches it can run code on the cluster. Set RAY_AUTH_MODE=token with RAY_AUTH_TOKEN "
            "or RAY_AUTH_TOKEN_PATH from the cluster's secret, or SWE_FLEET_ALLOW_OPEN_DASHBOARD=1 "
            "if the network is yours alone",
            variable="RAY_AUTH_MODE",
        )

    def claim_position(self) -> int | None:
        """This host's position in ``SWE_FLEET_HEAD_HOSTS`` (0-based), None when not listed."""
        for i, (host, _) in enumerate(self.head_hosts):
            if same_host(host, self.hostname):
                return i
        return None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise NodeConfigError(f"{name}={env[name]!r}: use 1 or 0", variable=name)


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


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address."""
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
