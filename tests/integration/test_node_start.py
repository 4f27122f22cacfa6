"""``swe-fleet node start`` exit codes and output, through real subprocesses on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")


def _node_start(
    env: dict[str, str], tmp_path: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``swe-fleet node start`` with only ``env`` on top of a clean environment (no RAY_*,
    SWE_FLEET_* or a token file of the developer's)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SWE_FLEET_", "HEAD_ADDRESS"))}
    return subprocess.run(
        [SWE_FLEET, "node", "start", *args],
        env={**base, "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback TCP port that accepts connections but is no Ray GCS."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dry_run_with_a_reachable_head_prints_the_worker_decision_as_json(
    listener: int, tmp_path: Path
) -> None:
    """--dry-run --json: exit 0, action worker, the exact ray start argv, RAY_ADDRESS unset for
    the node, the client URLs; the token's value appears nowhere."""
    proc = _node_start(
        {
            "HEAD_ADDRESS": f"127.0.0.1:{listener}",
            "SWE_FLEET_NUM_CPUS": "3",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": "tok-123-secret",
        },
        tmp_path,
        "--dry-run",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["action"] == "worker"
    argv = doc["argv"]
    assert argv[0].endswith("ray") and argv[1:5] == ["start", "--block", "--address", f"127.0.0.1:{listener}"]
    assert argv[argv.index("--num-cpus") + 1] == "3"
    assert doc["env"] == {"SWE_FLEET_ROLE": "worker", "RAY_ADDRESS": None}
    assert doc["clients"] == {"dashboard_url": "http://127.0.0.1:8265", "client_url": "ray://127.0.0.1:10001"}
    assert "tok-123-secret" not in proc.stdout + proc.stderr


def test_a_head_without_token_auth_is_refused_unless_an_open_dashboard_is_allowed(tmp_path: Path) -> None:
    """A head's dashboard listens on every interface: without RAY_AUTH_MODE=token the entrypoint
    refuses (exit 3, naming the variable and the way out) and starts nothing;
    SWE_FLEET_ALLOW_OPEN_DASHBOARD=1 or token auth lets the same node decide to be the head."""
    port = _closed_port()
    head = {"SWE_FLEET_HEAD_HOSTS": f"127.0.0.1:{port}", "SWE_FLEET_HOSTNAME": "127.0.0.1"}
    refused = _node_start(head, tmp_path, "--dry-run")
    assert refused.returncode == 3, refused.stderr
    assert "RAY_AUTH_MODE" in refused.stderr and "without token auth" in refused.stderr
    assert "SWE_FLEET_ALLOW_OPEN_DASHBOARD=1" in refused.stderr and "Traceback" not in refused.stderr
    for extra in ({"SWE_FLEET_ALLOW_OPEN_DASHBOARD": "1"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t"}):
        allowed = _node_start(head | extra, tmp_path, "--dry-run")
        assert allowed.returncode == 0, allowed.stderr
        assert "decision: head" in allowed.stdout


def test_dry_run_without_a_live_head_exits_5_with_the_decision(tmp_path: Path) -> None:
    """--dry-run and nothing on HEAD_ADDRESS: exit 5; the decision (wait) and the probe are shown."""
    port = _closed_port()
    proc = _node_start({"HEAD_ADDRESS": f"127.0.0.1:{port}"}, tmp_path, "--dry-run")
    assert proc.returncode == 5
    assert "decision: wait" in proc.stdout and f"nothing answers on 127.0.0.1:{port}" in proc.stdout


def test_no_head_within_the_wait_bound_exits_5_naming_the_hosts_probed(tmp_path: Path) -> None:
    """Not a listed host, no head answers within SWE_FLEET_HEAD_WAIT_S: exit 5, every host named."""
    a, b = _closed_port(), _closed_port()
    proc = _node_start(
        {
            "SWE_FLEET_HEAD_HOSTS": f"127.0.0.1:{a},127.0.0.2:{b}",
            "SWE_FLEET_HOSTNAME": "worker-7",
            "SWE_FLEET_HEAD_WAIT_S": "2",
        },
        tmp_path,
    )
    assert proc.returncode == 5
    assert f"127.0.0.1:{a}" in proc.stderr and f"127.0.0.2:{b}" in proc.stderr
    assert "no live Ray head after" in proc.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "HEAD_ADDRESS"),
        ({"HEAD_ADDRESS": "ray://h:10001"}, "HEAD_ADDRESS"),
        ({"HEAD_ADDRESS": "h", "SWE_FLEET_NUM_GPUS": "-1"}, "SWE_FLEET_NUM_GPUS"),
        ({"HEAD_ADDRESS": "h", "RAY_ADDRESS": "http://h:8265"}, "HEAD_ADDRESS"),
        (
            {"HEAD_ADDRESS": "h", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/nonexistent/t"},
            "RAY_AUTH_TOKEN",
        ),
    ],
)
def test_bad_environment_exits_3_naming_what_to_set(env: dict[str, str], named: str, tmp_path: Path) -> None:
    """Missing or malformed variables, a client RAY_ADDRESS on a node, token mode without a
    token: exit 3 before anything is probed or started, the variable named."""
    proc = _node_start(env, tmp_path)
    assert proc.returncode == 3
    assert named in proc.stderr


def test_ray_start_that_never_reports_running_is_stopped_and_exits_7(listener: int, tmp_path: Path) -> None:
    """HEAD_ADDRESS answers TCP but is no Ray GCS: ray start retries for ever, so after
    SWE_FLEET_START_TIMEOUT_S the entrypoint stops it (nothing of it is left) and exits 7."""
    temp_dir = Path(f"/tmp/swf-cli-{os.getpid()}")
    proc = _node_start(
        {
            "HEAD_ADDRESS": f"127.0.0.1:{listener}",
            "SWE_FLEET_START_TIMEOUT_S": "5",
            "SWE_FLEET_STOP_TIMEOUT_S": "5",
            "SWE_FLEET_TEMP_DIR": str(temp_dir),
            "RAY_AUTH_MODE": "disabled",
        },
        tmp_path,
        timeout=90,
    )
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert "did not report 'Ray runtime started' within 5 s" in proc.stderr
    time.sleep(1)
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if str(temp_dir) in " ".join(p.info["cmdline"] or [])
    ]
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert leftovers == []
