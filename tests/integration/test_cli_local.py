"""``swe-fleet local up`` stops everything it started on a stop signal, also in the background,
and its NATS requires a token over TLS, which it gives to clients by reference.

Each test starts it the way scripts, CI, ``timeout`` and service managers do: in the background,
with SIGINT ignored (as a non-interactive shell's ``cmd &`` does), output to a pipe.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from swe_fleet.errors import NatsRefused
from swe_fleet.nats.auth import NatsAuth
from swe_fleet.nats.connection import close_nats, connect_nats

pytestmark = pytest.mark.integration

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")
#: Bounds: the stack starts in ~10-20 s here; stopping it takes a few seconds.
UP_TIMEOUT_S = 180
STOPPED_TIMEOUT_S = 60


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _alive(pids: list[int]) -> list[int]:
    found = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except psutil.NoSuchProcess:
            continue
    return found


#: What each ``local up`` (by PID) printed: ``export KEY=VALUE`` lines.
EXPORTS: dict[int, dict[str, str]] = {}


@pytest.fixture
def local_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """``swe-fleet local up`` in the background, once it printed its addresses, and the PIDs of
    every process it started (its descendants). Whatever a failing test leaves is killed."""
    proc = subprocess.Popen(
        [SWE_FLEET, "local", "up", "--workdir", str(tmp_path / "stack")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint,  # exactly what a background job inherits
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        assert proc.stdout is not None
        lines = []
        while not any(line.startswith("export NATS_URL=") for line in lines):
            assert time.monotonic() < deadline, "local up printed no addresses in time"
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"local up exited {proc.returncode}: {proc.stderr.read()}"  # type: ignore[union-attr]
            lines.append(line)
        pids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(pids) >= 2, "expected nats-server and a Ray head under local up"
        EXPORTS[proc.pid] = dict(
            line.strip().removeprefix("export ").split("=", 1) for line in lines if line.startswith("export ")
        )
        yield proc, pids
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _alive(pids):
            psutil.Process(pid).kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_stops_everything_local_up_started(
    sig: signal.Signals, local_up: tuple[subprocess.Popen[str], list[int]]
) -> None:
    """SIGINT (ignored by inheritance, as in a background job), SIGTERM or SIGHUP: local up
    stops nats-server and the Ray head, exits 0, and no process it started is alive."""
    proc, pids = local_up
    proc.send_signal(sig)
    assert proc.wait(STOPPED_TIMEOUT_S) == 0, proc.stderr.read()  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(pids) == []


def test_a_second_signal_while_stopping_kills_what_is_left(
    local_up: tuple[subprocess.Popen[str], list[int]],
) -> None:
    """SIGTERM, then SIGTERM again while the stack is still stopping: local up kills the process
    groups of what it started at once and exits 143 (128 + SIGTERM); nothing is left."""
    proc, pids = local_up
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # the Ray head takes seconds to stop in order
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(STOPPED_TIMEOUT_S) == 128 + signal.SIGTERM, proc.stderr.read()  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(pids) == []


def test_local_ups_nats_requires_its_token_over_tls_and_the_printed_variables_give_both(
    local_up: tuple[subprocess.Popen[str], list[int]],
) -> None:
    """Secure by default, like Ray's token: an anonymous client (no CA, no token) is refused at
    once; the printed NATS_TOKEN_FILE and NATS_CA (files, mode 0600 for the secret) connect."""
    proc, _ = local_up
    env = EXPORTS[proc.pid]
    assert {"NATS_URL", "NATS_TOKEN_FILE", "NATS_CA", "RAY_ADDRESS"} <= set(env)
    assert os.stat(env["NATS_TOKEN_FILE"]).st_mode & 0o077 == 0
    token = Path(env["NATS_TOKEN_FILE"]).read_text().strip()
    assert token not in "\n".join(f"{k}={v}" for k, v in env.items())  # by reference only

    async def attempt(auth: NatsAuth) -> str:
        try:
            nc = await connect_nats(env["NATS_URL"], timeout_s=10, auth=auth)
        except NatsRefused as exc:
            return str(exc)
        await close_nats(nc)
        return "connected"

    assert "not trusted" in asyncio.run(attempt(NatsAuth()))
    assert "refused the credentials" in asyncio.run(attempt(NatsAuth(ca_file=Path(env["NATS_CA"]))))
    assert asyncio.run(attempt(NatsAuth.from_env(env))) == "connected"
