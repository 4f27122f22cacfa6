"""Where the Ray cluster is: one source of truth for every address, per process role.

Ray speaks three protocols on three ports, and each works only from some places:

==========  =========================  ===========================================
use         address                    works from
==========  =========================  ===========================================
Jobs API    ``http://HOST:8265``       anywhere the dashboard port is reachable
Ray Client  ``ray://HOST:10001``       anywhere the client server port is reachable
GCS         ``HOST:6379``              only nodes of the cluster (head and workers)
==========  =========================  ===========================================

``ray.init("localhost:6379")`` from a laptop or a container outside the cluster fails
(the GCS address is cluster-internal); that is why clients get ``http://`` and ``ray://``
addresses and never a GCS address.

Environment (read here and nowhere else):

- ``SWE_FLEET_ROLE``: ``head``, ``worker`` or ``client`` (default ``client``).
- ``RAY_ADDRESS``: on a client an ``http(s)://`` dashboard URL or a ``ray://`` client URL;
  on a head or worker unset or ``auto``.
- ``RAY_HOST`` (default ``127.0.0.1``), ``RAY_PORT`` (GCS, 6379), ``RAY_DASHBOARD_PORT``
  (8265), ``RAY_CLIENT_PORT`` (10001): derive every address when ``RAY_ADDRESS`` is unset.
- ``RAY_NAMESPACE`` (default ``swe-fleet``).
- ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` (Ray's own names), else ``~/.ray/auth_token``:
  the token a client sends to a cluster with token auth.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from swe_fleet.errors import AddressError

DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_CLIENT_PORT = 10001
DEFAULT_NAMESPACE = "swe-fleet"
DEFAULT_HOST = "127.0.0.1"


class Role(enum.StrEnum):
    """What this process is to the cluster."""

    HEAD = "head"
    WORKER = "worker"
    CLIENT = "client"


@dataclass(frozen=True)
class ClusterAddresses:
    """Every address of one cluster, as seen by a process with ``role``.

    Attributes:
        role: the role these addresses were resolved for.
        host: the head's host name or IP.
        dashboard_url: Jobs API base URL (``http://HOST:8265``).
        client_url: Ray Client URL (``ray://HOST:10001``).
        gcs_address: ``HOST:6379``; meaningful only on nodes of the cluster.
        namespace: the Ray namespace swe-fleet's actors and jobs live in.
        ray_address: the value ``RAY_ADDRESS`` should have in this role's environment
            (``auto`` on head and workers, the dashboard URL on clients).
    """

    role: Role
    host: str
    dashboard_url: str
    client_url: str
    gcs_address: str
    namespace: str
    ray_address: str

    @classmethod
    def from_env(
        cls, role: Role | str | None = None, env: Mapping[str, str] | None = None
    ) -> ClusterAddresses:
        """Resolve the addresses from ``env`` (default ``os.environ``) for ``role``.

        Raises:
            AddressError: an address has the wrong scheme for this role, or a port is not a number.
        """
        env = os.environ if env is None else env
        raw_role = role or env.get("SWE_FLEET_ROLE", Role.CLIENT.value)
        try:
            role = Role(raw_role)
        except ValueError:
            raise AddressError(
                f"SWE_FLEET_ROLE={raw_role!r} is not a role; use one of: {', '.join(r.value for r in Role)}",
                address=str(raw_role),
                use="SWE_FLEET_ROLE",
            ) from None
        namespace = env.get("RAY_NAMESPACE") or DEFAULT_NAMESPACE
        gcs_port = _port(env, "RAY_PORT", DEFAULT_GCS_PORT)
        dash_port = _port(env, "RAY_DASHBOARD_PORT", DEFAULT_DASHBOARD_PORT)
        client_port = _port(env, "RAY_CLIENT_PORT", DEFAULT_CLIENT_PORT)
        raw = (env.get("RAY_ADDRESS") or "").strip()
        host = env.get("RAY_HOST") or DEFAULT_HOST

        if role in (Role.HEAD, Role.WORKER):
            if raw not in ("", "auto"):
                raise AddressError(
                    f"RAY_ADDRESS={raw!r} on a {role.value}: on cluster nodes RAY_ADDRESS must be "
                    f"unset or 'auto' (Ray finds the local node); set RAY_HOST/RAY_PORT to say "
                    f"where the head's GCS is instead.",
                    address=raw,
                    use=f"{role.value} RAY_ADDRESS",
                )
            return cls._build(role, host, gcs_port, dash_port, client_port, namespace, "auto")

        # client
        if raw:
            kind, url_host, url_port = _classify(raw)
            if kind == "auto":
                raise AddressError(
                    "RAY_ADDRESS='auto' on a client: 'auto' finds a Ray node running on this "
                    f"machine and only works on cluster nodes. From outside use "
                    f"http://HEAD:{DEFAULT_DASHBOARD_PORT} (Jobs API).",
                    address=raw,
                    use="client RAY_ADDRESS",
                )
            if kind == "gcs":
                raise AddressError(
                    f"RAY_ADDRESS={raw!r} is a GCS address, reachable only from nodes of the "
                    f"cluster. From a client use http://{url_host}:{dash_port} (Jobs API) "
                    f"or ray://{url_host}:{client_port} (Ray Client).",
                    address=raw,
                    use="client RAY_ADDRESS",
                )
            host = url_host
            if kind == "http":
                dash_port = url_port or dash_port
            else:  # ray://
                client_port = url_port or client_port
        addrs = cls._build(role, host, gcs_port, dash_port, client_port, namespace, "")
        if raw and kind == "http":
            # Keep the URL as given: https, a proxy's path prefix, an ingress host.
            addrs = cls(**{**addrs.__dict__, "dashboard_url": raw.rstrip("/")})
        return cls(**{**addrs.__dict__, "ray_address": addrs.dashboard_url})

    @classmethod
    def _build(
        cls,
        role: Role,
        host: str,
        gcs_port: int,
        dash_port: int,
        client_port: int,
        namespace: str,
        ray_address: str,
    ) -> ClusterAddresses:
        h = f"[{host}]" if ":" in host else host
        return cls(
            role=role,
            host=host,
            dashboard_url=f"http://{h}:{dash_port}",
            client_url=f"ray://{h}:{client_port}",
            gcs_address=f"{h}:{gcs_port}",
            namespace=namespace,
            ray_address=ray_address,
        )


@dataclass(frozen=True)
class ClusterPorts:
    """The cluster's well-known ports: GCS (``RAY_PORT``), dashboard / Jobs API
    (``RAY_DASHBOARD_PORT``) and Ray Client server (``RAY_CLIENT_PORT``)."""

    gcs: int = DEFAULT_GCS_PORT
    dashboard: int = DEFAULT_DASHBOARD_PORT
    client: int = DEFAULT_CLIENT_PORT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClusterPorts:
        """Read the three ports from ``env`` (default ``os.environ``).

        Raises:
            AddressError: a port is not a number in 1-65535.
        """
        env = os.environ if env is None else env
        return cls(
            gcs=_port(env, "RAY_PORT", DEFAULT_GCS_PORT),
            dashboard=_port(env, "RAY_DASHBOARD_PORT", DEFAULT_DASHBOARD_PORT),
            client=_port(env, "RAY_CLIENT_PORT", DEFAULT_CLIENT_PORT),
        )

    def client_addresses(self, host: str, namespace: str = DEFAULT_NAMESPACE) -> ClusterAddresses:
        """The addresses a client outside the cluster uses to reach the head at ``host``."""
        addrs = ClusterAddresses._build(
            Role.CLIENT, host, self.gcs, self.dashboard, self.client, namespace, ""
        )
        return ClusterAddresses(**{**addrs.__dict__, "ray_address": addrs.dashboard_url})


def auth_token_from_env(env: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """The cluster token a client should send: ``RAY_AUTH_TOKEN``, the file at
    ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``; None when there is none."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    candidates = [Path(env["RAY_AUTH_TOKEN_PATH"])] if env.get("RAY_AUTH_TOKEN_PATH") else []
    candidates.append((home or Path.home()) / ".ray" / "auth_token")
    for path in candidates:
        try:
            token = path.read_text().strip()
        except OSError:
            continue
        if token:
            return token
    return None


def client_jobs_api_url(env: Mapping[str, str] | None = None) -> str:
    """The Jobs API URL of a client given no ``--address``: ``RAY_ADDRESS`` when it is a
    dashboard URL, else ``http://RAY_HOST:RAY_DASHBOARD_PORT``.

    Raises:
        AddressError: ``RAY_ADDRESS`` is a Ray Client URL (``ray://``), a GCS address or ``auto``;
            the message names the variable and the address to use instead.
    """
    env = os.environ if env is None else env
    raw = (env.get("RAY_ADDRESS") or "").strip()
    kind, host, _ = _classify(raw) if raw else ("", "", None)
    if kind == "ray":
        raise AddressError(
            f"RAY_ADDRESS={raw!r} is a Ray Client address (ray://), and swe-fleet talks to the Jobs "
            f"API, which speaks HTTP on the dashboard port: set RAY_ADDRESS=http://{host}:"
            f"{DEFAULT_DASHBOARD_PORT} (or pass --address http://{host}:{DEFAULT_DASHBOARD_PORT}).",
            address=raw,
            use="client RAY_ADDRESS",
        )
    return ClusterAddresses.from_env(Role.CLIENT, env).dashboard_url


def jobs_api_url(address: str) -> str:
    """Check that ``address`` can reach the Jobs API and return it without a trailing slash.

    Raises:
        AddressError: ``ray://`` (Ray Client), a bare GCS ``host:port`` or ``auto`` was given.
    """
    kind, host, port = _classify(address)
    if kind == "http":
        return address.rstrip("/")
    if kind == "ray":
        raise AddressError(
            f"{address!r} is a Ray Client address (ray://, port {DEFAULT_CLIENT_PORT}); the Jobs "
            f"API speaks HTTP on the dashboard port: use http://{host}:{DEFAULT_DASHBOARD_PORT}.",
            address=address,
            use="Jobs API",
        )
    if kind == "auto":
        raise AddressError(
            "'auto' is not a Jobs API address: give the dashboard URL, "
            f"e.g. http://127.0.0.1:{DEFAULT_DASHBOARD_PORT}.",
            address=address,
            use="Jobs API",
        )
    raise AddressError(
        f"{address!r} looks like a GCS address ({host}:{port}), which only cluster nodes can use; "
        f"the Jobs API needs the dashboard URL: http://{host}:{DEFAULT_DASHBOARD_PORT}.",
        address=address,
        use="Jobs API",
    )


def ray_client_url(address: str) -> str:
    """Check that ``address`` is a Ray Client URL (``ray://HOST:10001``) and return it.

    Raises:
        AddressError: an ``http://`` dashboard URL or a GCS address was given.
    """
    kind, host, _ = _classify(address)
    if kind == "ray":
        return address.rstrip("/")
    raise AddressError(
        f"{address!r} is not a Ray Client address; ray.init() from outside the cluster needs "
        f"ray://{host or 'HEAD'}:{DEFAULT_CLIENT_PORT} (the GCS and dashboard ports do not "
        f"speak the client protocol).",
        address=address,
        use="Ray Client",
    )


def _classify(address: str) -> tuple[str, str, int | None]:
    """Return (kind, host, port) with kind one of http, ray, gcs, auto."""
    if address == "auto":
        return "auto", "", None
    if "://" in address:
        parts = urlsplit(address)
        if parts.scheme in ("http", "https"):
            kind = "http"
        elif parts.scheme == "ray":
            kind = "ray"
        else:
            raise AddressError(
                f"{address!r}: unknown scheme {parts.scheme!r}; use http://HOST:8265 (Jobs API) "
                f"or ray://HOST:10001 (Ray Client).",
                address=address,
                use="any",
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise AddressError(f"{address!r}: the port is not a number.", address=address, use=kind) from exc
        if not parts.hostname:
            raise AddressError(f"{address!r}: no host.", address=address, use=kind)
        return kind, parts.hostname, port
    host, sep, port_s = address.rpartition(":")
    if not sep or not port_s.isdigit() or not host:
        raise AddressError(
            f"{address!r} is not an address; use http://HOST:8265 (Jobs API) "
            f"or ray://HOST:10001 (Ray Client).",
            address=address,
            use="any",
        )
    return "gcs", host.strip("[]"), int(port_s)


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise AddressError(f"{name}={raw!r} is not a port number (1-65535).", address=raw, use=name)
    return int(raw)
