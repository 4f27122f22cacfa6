"""The embedded local stack: a real nats-server (JetStream) and a real Ray head, on free ports.

Each process is a child of this one, started in its own process group
(:func:`swe_fleet._processes.start_process`); stopping terminates exactly that group (SIGTERM,
bounded wait, then SIGKILL) and nothing else on the machine. Ray's own stop command is never
used: it would end every Ray on the machine, not just ours.

Like Ray's token auth, NATS's authentication and TLS are on by default in the stack
(:class:`LocalNatsSecurity`): a token and a CA with a certificate for the loopback address are
made at start in the stack's directory (files of mode 0600), nats-server requires both, the Ray
head's environment names the files (its jobs find their credentials on their node) and
:attr:`LocalStack.client_env` gives them to clients, by reference.

The vLLM server of the stack is :mod:`swe_fleet.local.vllm_server`; ``swe-fleet run`` on this
stack is :mod:`swe_fleet.local.run`. Test-only helpers (waiting for nodes) live in
``tests/support/servers.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from swe_fleet._processes import (
    ManagedProcess,
    free_ports,
    start_process,
    venv_binary,
    wait_for_http_ok,
    wait_for_line,
    with_python_first,
)
from swe_fleet.nats.auth import NATS_AUTH_ENV

NATS_READY_TIMEOUT_S = 20.0
RAY_READY_TIMEOUT_S = 90.0

#: Ray's ports besides the GCS and the dashboard; each node of a local cluster gets free ones.
NODE_PORT_FLAGS = (
    "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
)  # fmt: skip


@dataclass
class NatsServer:
    """A real nats-server with JetStream on a free port (loopback by default) and a temp store."""

    workdir: Path
    #: Listen address: loopback, or an address of a network namespace the caller created.
    host: str = "127.0.0.1"
    #: More ``nats-server`` flags (``--auth``, ``--tls ...``, ``-c FILE``; a config file with a
    #: ``jetstream`` block keeps its store at ``$NATS_STORE_DIR``, as images/nats does).
    args: Sequence[str] = ()
    #: Variables on top of this process's environment (a config file's ``$VARS``).
    env: Mapping[str, str] = field(default_factory=dict)
    url: str = ""
    port: int = 0
    process: ManagedProcess | None = None

    def start(self, port: int | None = None, store_dir: Path | None = None) -> NatsServer:
        """Start and wait for the ready line (bounded). ``store_dir`` lets a restart keep the store."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        store = store_dir or self.workdir / "jetstream"
        env = dict(self.env)
        if self._config_sets_jetstream():  # its store is $NATS_STORE_DIR (images/nats, ours)
            jetstream, env["NATS_STORE_DIR"] = [], str(store)
        else:
            jetstream = ["-js", "-sd", str(store)]
        argv = [
            venv_binary("nats-server"),
            *jetstream,
            "-a", self.host, "-p", str(port if port else -1),
            "--http_port", "0",
            *self.args,
        ]  # fmt: skip
        self.process = start_process(
            "nats-server",
            argv,
            self.workdir / f"nats-{int(time.time() * 1000)}.log",
            env={**os.environ, **env} if env else None,
        )
        wait_for_line(self.process, re.compile(r"Server is ready"), NATS_READY_TIMEOUT_S)
        match = wait_for_line(
            self.process, re.compile(r"Listening for client connections on [\d.]+:(\d+)"), 5
        )
        self.port = int(match.group(1))
        self.url = f"nats://{self.host}:{self.port}"
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def _config_sets_jetstream(self) -> bool:
        """A config file (``-c FILE``) with a ``jetstream`` block: the flags must not set it again."""
        args = list(self.args)
        for flag in ("-c", "--config"):
            if flag in args[:-1]:
                return "jetstream" in Path(args[args.index(flag) + 1]).read_text()
        return False


#: Where the local stack's Ray nodes keep their temp dirs (default ``/tmp``).
RAY_TEMP_ROOT_ENV = "SWE_FLEET_RAY_TEMP_ROOT"


def ray_temp_dir(prefix: str) -> Path:
    """A fresh temp dir for one Ray node, under ``$SWE_FLEET_RAY_TEMP_ROOT`` (default ``/tmp``).

    It holds unix sockets (a path limit of ~107 bytes), so the root must stay short. It also
    holds the node's runtime_env resources: Ray builds a pip runtime_env by copying the whole
    virtualenv of a node that runs from one (3.4 GB with vLLM), which a tmpfs such as
    ``/dev/shm`` does 5-8x faster than a disk (measured in docs/operations.md)."""
    root = os.environ.get(RAY_TEMP_ROOT_ENV, "").strip() or "/tmp"  # noqa: S108 - mkdtemp below
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def ray_node_args(
    *, node_ip: str, num_cpus: int, memory_bytes: int, object_store_bytes: int, temp_dir: Path
) -> list[str]:
    """The ``ray start`` flags every node of a local cluster gets: its address, capped
    resources (Ray's defaults assume the whole host), no GPUs, its own temp dir."""
    return [
        "--node-ip-address", node_ip,
        "--num-cpus", str(num_cpus),
        "--num-gpus", "0",
        "--memory", str(memory_bytes),
        "--object-store-memory", str(object_store_bytes),
        "--temp-dir", str(temp_dir),
        "--disable-usage-stats",
    ]  # fmt: skip


def ray_node_env(
    base: Mapping[str, str], token_path: Path, ray_command: Sequence[str] = ()
) -> dict[str, str]:
    """The environment of a local Ray node: this process's with ``base`` on top, the Python of
    ``ray_command`` (``[python, "-m", ...]`` of another environment; empty: this one) first on
    ``PATH``, token auth with the token at ``token_path``, no inherited ``RAY_ADDRESS`` and no
    inherited ``PYTHONDONTWRITEBYTECODE``.

    Bytecode: a pip runtime_env is a copy of the node's virtualenv without its ``*.pyc`` (Ray's
    clone leaves them out). A node that may not write bytecode compiles those modules again in
    every job's supervisor and driver, 0.3-0.8 CPU s more each (measured: a driver 1.9 CPU s
    without, 1.05-1.4 s with), on the cores the engine needs. Allowed to, the first job writes
    them into Ray's runtime_env cache (in the node's temp dir) and the later ones load them."""
    env = {
        **with_python_first({**os.environ, **base}, ray_command[0] if ray_command else None),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_USAGE_STATS_ENABLED": "0",
        # No Serve replicas to drain here; the default makes every stop take 30 s.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    env.pop("RAY_ADDRESS", None)  # a node resolves itself; an inherited address misleads it
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def pick_ports(flags: Sequence[str]) -> dict[str, int]:
    """A distinct free port for each of a Ray node's port ``flags`` (Ray refuses to start when two
    of its components share a port, which separate free-port probes can hand out)."""
    return dict(zip(flags, free_ports(len(flags)), strict=True))


def stop_ray_node(process: ManagedProcess | None, temp_dir: Path | None) -> None:
    """Stop a Ray node we started (its process group only) and remove its temp dir."""
    if process:
        process.stop()
    if temp_dir:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _is_loopback(ip: str) -> bool:
    return ip == "localhost" or ip.startswith("127.")


@dataclass
class RayHead:
    """A real Ray head (``ray start --head --block``) with capped resources, its own temp dir,
    token auth with its own token, and the dashboard (Jobs API) on a free port.

    On ``127.0.0.1`` (the default) the whole cluster stays on loopback and no other node can
    join. With another ``node_ip`` (an address of a network namespace the caller created, see
    ``tests/support/netns.py``) the head listens there and worker nodes can join it.
    """

    workdir: Path
    num_cpus: int = 2
    memory_bytes: int = 8 * 1024**3
    object_store_bytes: int = 512 * 1024**2
    env: Mapping[str, str] = field(default_factory=dict)
    node_ip: str = "127.0.0.1"
    #: How to run Ray's CLI (default: this environment's ``ray``); another virtualenv's
    #: ``[python, "-m", "ray.scripts.scripts"]`` gives a node with other packages.
    ray_command: Sequence[str] = ()
    dashboard_url: str = ""
    client_url: str = ""
    gcs_address: str = ""
    auth_token: str = ""
    token_path: Path | None = None
    temp_dir: Path | None = None
    process: ManagedProcess | None = None
    #: The ports ``start`` picked, by ``ray start`` flag (``dashboard-agent-listen-port`` ...).
    ports: dict[str, int] = field(default_factory=dict)

    def start(self) -> RayHead:
        """Start the head and wait until the Jobs API answers (bounded)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        token_path = self.token_path = self.workdir / "auth_token"
        self.auth_token = secrets.token_hex(32)
        token_path.write_text(self.auth_token)
        token_path.chmod(0o600)
        ports = pick_ports(("port", "dashboard-port", "ray-client-server-port", *NODE_PORT_FLAGS))
        temp_dir = self.temp_dir = ray_temp_dir("swf-ray-")
        argv = [
            *(self.ray_command or [venv_binary("ray")]), "start", "--head", "--block",
            "--dashboard-host", self.node_ip,
            "--include-dashboard", "true",
            *ray_node_args(node_ip=self.node_ip, num_cpus=self.num_cpus, memory_bytes=self.memory_bytes,
                           object_store_bytes=self.object_store_bytes, temp_dir=temp_dir),
        ] + [f"--{k}={v}" for k, v in ports.items()]  # fmt: skip
        env = ray_node_env(self.env, token_path, self.ray_command)
        if _is_loopback(self.node_ip):
            # Ray turns --node-ip-address 127.0.0.1 into the host's interface address; this
            # switch (meant for laptops) keeps every Ray socket on loopback. It also refuses
            # worker nodes joining from elsewhere, which a loopback head does not want anyway.
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        self.process = start_process("ray-head", argv, self.workdir / "ray-head.log", env)
        self.ports = dict(ports)
        self.dashboard_url = f"http://{self.node_ip}:{ports['dashboard-port']}"
        self.client_url = f"ray://{self.node_ip}:{ports['ray-client-server-port']}"
        self.gcs_address = f"{self.node_ip}:{ports['port']}"
        wait_for_http_ok(
            self.process,
            f"{self.dashboard_url}/api/version",
            RAY_READY_TIMEOUT_S,
            headers={"Authorization": f"Bearer {self.auth_token}"},
            what="the Ray dashboard",
        )
        self._wait_for_its_node()
        return self

    def _wait_for_its_node(self) -> None:
        """The dashboard answers a moment before it lists the head's node as alive; a head is up
        once it does (a preflight run before that would be filed under no nodes at all)."""
        from swe_fleet.errors import LocalStackError, SweFleetError
        from swe_fleet.submit.jobs_api import JobsApi

        jobs = JobsApi(self.dashboard_url, auth_token=self.auth_token)
        deadline = time.monotonic() + RAY_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(SweFleetError):
                if jobs.alive_nodes():
                    return
            time.sleep(0.2)
        raise LocalStackError(
            f"the Ray head's dashboard listed no alive node within {RAY_READY_TIMEOUT_S:.0f} s "
            f"(log: {self.workdir / 'ray-head.log'})",
            process="ray-head",
        )

    def client_env(self) -> dict[str, str]:
        """Environment for a client process of this cluster (``ray job submit``, ``swe-fleet submit``)."""
        return {
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.auth_token,
        }

    def stop(self) -> None:
        stop_ray_node(self.process, self.temp_dir)


@dataclass(frozen=True)
class LocalNatsSecurity:
    """A token and TLS for the stack's nats-server, made in ``directory``: ``ca.pem``, the
    server's certificate for ``127.0.0.1`` and ``localhost`` and its key, the token, and the
    server's config file naming them (every secret file of mode 0600)."""

    directory: Path

    @classmethod
    def make(cls, directory: Path) -> LocalNatsSecurity:
        import trustme

        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="swe-fleet local stack")
        cert = ca.issue_cert("127.0.0.1", "localhost")
        made = cls(directory)
        ca.cert_pem.write_to_path(str(made.ca))
        cert.cert_chain_pems[0].write_to_path(str(directory / "nats-server.pem"))
        _write_secret(directory / "nats-server.key", cert.private_key_pem.bytes())
        _write_secret(made.token_file, secrets.token_urlsafe(32).encode())
        _write_secret(
            made.config,
            (
                "jetstream { store_dir: $NATS_STORE_DIR }\n"
                f"authorization {{ token: {json.dumps(made.token_file.read_text())} }}\n"
                f"tls {{ cert_file: {json.dumps(str(directory / 'nats-server.pem'))}, "
                f"key_file: {json.dumps(str(directory / 'nats-server.key'))}, timeout: 5 }}\n"
            ).encode(),
        )
        return made

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def token_file(self) -> Path:
        return self.directory / "nats-token"

    @property
    def config(self) -> Path:
        return self.directory / "nats-server.conf"

    def client_env(self) -> dict[str, str]:
        """The NATS CLI's variables a client of this server sets (files, never values)."""
        return {"NATS_TOKEN_FILE": str(self.token_file), "NATS_CA": str(self.ca)}


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass
class LocalStack:
    """nats-server + Ray head, started together (in parallel) and stopped together.

    With ``secure`` (the default) nats-server requires a token over TLS
    (:class:`LocalNatsSecurity`); :attr:`client_env` holds what a client sets to use it."""

    workdir: Path
    nats: NatsServer = field(init=False)
    ray: RayHead = field(init=False)
    head_env: Mapping[str, str] = field(default_factory=dict)
    num_cpus: int = 2
    secure: bool = True
    #: The NATS variables of this stack's clients (the Ray head has them too).
    client_env: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        args: list[str] = []
        node_env: dict[str, str] = {}
        if self.secure:
            security = LocalNatsSecurity.make(self.workdir / "nats-tls")
            args, self.client_env = ["-c", str(security.config)], security.client_env()
            # The head's jobs use this stack's NATS: NATS_* of the caller's shell (a cluster's
            # NKey, say) would add a second way in, which every client refuses. Empty is unset.
            node_env = dict.fromkeys(NATS_AUTH_ENV, "") | self.client_env
        self.nats = NatsServer(self.workdir / "nats", args=args)
        self.ray = RayHead(self.workdir / "ray", env={**node_env, **self.head_env}, num_cpus=self.num_cpus)

    def start(self) -> LocalStack:
        errors: list[BaseException] = []

        def start_nats() -> None:
            try:
                self.nats.start()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=start_nats, name="start-nats")
        t.start()
        try:
            self.ray.start()
        except BaseException:
            t.join()
            self.stop()
            raise
        t.join()
        if errors:
            self.stop()
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop what this stack started (Ray first: its jobs may still publish)."""
        self.ray.stop()
        self.nats.stop()


@contextlib.contextmanager
def local_stack(workdir: Path | None = None, **kwargs: object) -> Iterator[LocalStack]:
    """Start a :class:`LocalStack` for the ``with`` block; always stopped on exit (also Ctrl-C)."""
    owned = workdir is None
    root = workdir or Path(tempfile.mkdtemp(prefix="swe-fleet-"))
    stack = LocalStack(root, **kwargs)  # type: ignore[arg-type]
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if owned:
            shutil.rmtree(root, ignore_errors=True)
