"""``swe-fleet node start``: read the config (:mod:`swe_fleet.node.config`), probe for a head,
decide (:mod:`swe_fleet.node.decision`), run Ray.

- Probing is a bounded TCP connect to a possible head's GCS port (name resolution bounded too).
- The node runs as ``ray start --block``, a child in its own session that also gets SIGTERM if
  this process dies; its output is copied to our stderr, and it must report that its node
  runs within ``SWE_FLEET_START_TIMEOUT_S``.
- SIGTERM, SIGINT or SIGHUP to this process stops exactly that child (and what is left of its
  process group), bounded by ``SWE_FLEET_STOP_TIMEOUT_S``, then exits 0.
- If Ray exits on its own (the head went away, a Ray process crashed), this process exits
  non-zero so that the container or pod restarts it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from swe_fleet._processes import ManagedProcess, venv_binary, with_python_first
from swe_fleet.addresses import auth_token_from_env
from swe_fleet.node.config import NodeConfig
from swe_fleet.node.decision import (
    NodeAction,
    NodeDecision,
    ProbeResult,
    decide,
    masked_env,
    wait_for_decision,
)

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def probe_gcs(host: str, port: int, timeout_s: float) -> ProbeResult:
    """Whether something accepts TCP connections on ``host:port`` within ``timeout_s``
    (name resolution included); never raises."""
    started = time.monotonic()
    resolved = _resolve(host, port, timeout_s)
    if isinstance(resolved, str):
        return ProbeResult(host, port, live=False, detail=resolved)
    last = "no address"
    for family, kind, proto, _, sockaddr in resolved:
        remaining = timeout_s - (time.monotonic() - started)
        if remaining <= 0:
            last = f"no answer within {timeout_s:g} s"
            break
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(remaining)
            try:
                sock.connect(sockaddr)
            except TimeoutError:
                last = f"no answer within {timeout_s:g} s"
            except OSError as exc:
                last = exc.strerror or type(exc).__name__
            else:
                return ProbeResult(host, port, live=True, detail="GCS port open")
    return ProbeResult(host, port, live=False, detail=last)


def _resolve(host: str, port: int, timeout_s: float) -> list[Any] | str:
    """getaddrinfo has no timeout of its own: run it in a daemon thread, bounded."""
    found: list[Any] = []
    error: list[str] = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            error.append(f"does not resolve ({exc.strerror or exc})")

    thread = threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return f"name lookup took longer than {timeout_s:g} s"
    return error[0] if error else found


def node_env(base: Mapping[str, str], decision: NodeDecision) -> dict[str, str]:
    """The Ray node's environment: ``base`` with the decision's changes applied, and this
    interpreter's directory first on ``PATH`` (jobs' ``python`` is the node's Python)."""
    env = with_python_first(base)
    for key, value in decision.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def decide_from_env(env: Mapping[str, str], *, wait: bool) -> tuple[NodeConfig, NodeDecision]:
    """Read the config, check auth, and decide; with ``wait`` keep probing (bounded) while
    there is no head to join.

    Raises:
        NodeConfigError / AddressError: bad environment.
        NoHeadFound: ``wait`` and still no head after ``SWE_FLEET_HEAD_WAIT_S``.
    """
    config = NodeConfig.from_env(env, hostname=socket.gethostname())
    config.check_auth(auth_token_from_env(env) is not None)

    def probe(host: str, port: int) -> ProbeResult:
        return probe_gcs(host, port, config.probe_timeout_s)

    ray = (venv_binary("ray"),)
    if not wait:
        decision = decide(config, probe, ray_command=ray)
    else:

        def on_wait(decision: NodeDecision, waited: float) -> None:
            log.info("node.waiting_for_head", waited_s=round(waited, 1), bound_s=config.head_wait_s,
                     reasons=list(decision.reasons[1:]))  # fmt: skip

        decision = wait_for_decision(config, probe, ray_command=ray, on_wait=on_wait)
    if decision.action is NodeAction.HEAD:
        config.check_head_auth()
    return config, decision


#: What ``ray start`` prints once its node runs (head and worker alike).
RAY_STARTED_LINE = "Ray runtime started"


@dataclass(frozen=True)
class NodeExit:
    """How the node ended.

    Attributes:
        stopped: we got a stop signal and stopped the node (a clean end).
        returncode: ``ray start``'s exit code.
        reason: why the node ended, in words.
    """

    stopped: bool
    returncode: int | None
    reason: str


def run_node(
    decision: NodeDecision, env: Mapping[str, str], *, start_timeout_s: float, stop_timeout_s: float
) -> NodeExit:
    """Run ``decision.argv`` (``ray start --block``) until it exits or we get a stop signal.

    Ray's output is copied line by line to our stderr (the container's log). If it has not said
    that its node runs within ``start_timeout_s`` the node is stopped: ``ray start`` pointed at
    something that is not a Ray GCS retries for ever. A stop signal terminates only our child:
    SIGTERM to it, a bounded wait, then what is left of its process group
    (:meth:`ManagedProcess.stop`).
    """
    if decision.action is NodeAction.WAIT or not decision.argv:
        raise ValueError("run_node needs a head or worker decision")
    received: list[int] = []
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in _STOP_SIGNALS}
    try:
        popen = subprocess.Popen(
            list(decision.argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it never touches anything else
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        started = _forward_output(popen)
        # The output goes to our stderr as it comes; there is no log file to tail.
        child = ManagedProcess(name=f"ray-{decision.action.value}", popen=popen, log_path=Path(os.devnull))
        log.info("node.started", role=decision.action.value, pid=popen.pid, head=decision.head)
        deadline = time.monotonic() + start_timeout_s
        while popen.poll() is None and not stop.is_set():
            if not started.is_set() and time.monotonic() > deadline:
                log.error("node.start_timeout", pid=popen.pid, bound_s=start_timeout_s, head=decision.head)
                child.stop(timeout_s=stop_timeout_s)
                return NodeExit(
                    stopped=False,
                    returncode=popen.returncode,
                    reason=f"ray start did not report {RAY_STARTED_LINE!r} within {start_timeout_s:g} s "
                    f"(SWE_FLEET_START_TIMEOUT_S); is {decision.head} a Ray head's GCS port?",
                )
            stop.wait(0.5)
        if stop.is_set():
            name = signal.Signals(received[0]).name
            log.info("node.stopping", signal=name, pid=popen.pid, bound_s=stop_timeout_s)
            child.stop(timeout_s=stop_timeout_s)
            log.info("node.stopped", pid=popen.pid, returncode=popen.returncode)
            return NodeExit(stopped=True, returncode=popen.returncode, reason=f"stopped on {name}")
        log.error("node.exited", role=decision.action.value, pid=popen.pid, returncode=popen.returncode)
        child.stop(timeout_s=5)  # whatever Ray left behind in its group
        return NodeExit(
            stopped=False,
            returncode=popen.returncode,
            reason=f"ray start exited on its own with code {popen.returncode} (its output is above)",
        )
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)


def _forward_output(popen: subprocess.Popen[bytes]) -> threading.Event:
    """Copy the child's output to our stderr in a daemon thread; the event is set once Ray
    says its node runs."""
    started = threading.Event()
    marker = RAY_STARTED_LINE.encode()

    def pump() -> None:
        assert popen.stdout is not None
        for line in iter(popen.stdout.readline, b""):
            if marker in line:
                started.set()
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.buffer.write(line)
                sys.stderr.buffer.flush()

    threading.Thread(target=pump, name="ray-output", daemon=True).start()
    return started


def log_decision(decision: NodeDecision) -> None:
    """One structured line with everything the decision was based on (token values masked)."""
    log.info(
        "node.decision",
        action=decision.action.value,
        reasons=list(decision.reasons),
        argv=" ".join(decision.argv),
        env=masked_env(decision.env),
        head=decision.head,
        dashboard_url=decision.clients.dashboard_url if decision.clients else None,
        client_url=decision.clients.client_url if decision.clients else None,
    )


#: Loaded here, not in the forked child: dlopen there can deadlock on a lock that another thread
#: of ours (a name lookup still running) held at fork time.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    # If the entrypoint is killed outright (SIGKILL, OOM), Ray still gets its SIGTERM.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
