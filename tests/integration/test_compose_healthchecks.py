"""The health checks of images/compose.yaml, run for real (no Docker engine here, so the exact
commands run on this host): the head's against a real Ray head with token auth, the worker's
against a node's dashboard agent, NATS's against a real nats-server with JetStream. Ports are
the only thing changed: the fixtures listen on free ports, the containers on Ray's defaults."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swe_fleet._processes import ManagedProcess, free_port, venv_binary, with_python_first
from swe_fleet.local.stack import RayHead

from support.manifests.compose import load_compose
from support.manifests.project import COMPOSE_FILE

pytestmark = pytest.mark.integration
CHECK_TIMEOUT_S = 30
#: Within how long a fresh node passes its check (the compose file allows 90 s).
START_PERIOD_S = 60


@pytest.fixture(scope="module")
def checks() -> dict[str, list[str]]:
    """Each service's health check command (the words after CMD)."""
    data, problems = load_compose(COMPOSE_FILE.read_text())
    assert data is not None and not problems
    return {name: s["healthcheck"]["test"][1:] for name, s in data["services"].items()}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, check=False)


def _client_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any Ray token or address, HOME empty (no ~/.ray/auth_token), and
    this interpreter first on PATH: the checks' ``python`` is the image's, which has swe_fleet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SWE_FLEET_"))}
    return {**with_python_first(env), "HOME": str(home), **extra}


def _dashboard_port(head: RayHead) -> str:
    return head.dashboard_url.rsplit(":", 1)[1]


def test_head_check_passes_with_the_cluster_token(checks, ray_head, tmp_path):
    """With RAY_AUTH_TOKEN set, the head's check gets the Jobs API version: exit 0."""
    env = _client_env(
        tmp_path, RAY_DASHBOARD_PORT=_dashboard_port(ray_head), RAY_AUTH_TOKEN=ray_head.auth_token
    )
    result = _run(checks["ray-head"], env)
    assert result.returncode == 0, result.stderr


def test_head_check_reads_the_token_from_the_secret_file(checks, ray_head, tmp_path):
    """RAY_AUTH_TOKEN_PATH (the compose secret's file) is how the containers pass the token."""
    token_file = tmp_path / "ray_auth_token"
    token_file.write_text(ray_head.auth_token + "\n")
    env = _client_env(
        tmp_path, RAY_DASHBOARD_PORT=_dashboard_port(ray_head), RAY_AUTH_TOKEN_PATH=str(token_file)
    )
    result = _run(checks["ray-head"], env)
    assert result.returncode == 0, result.stderr


def test_head_check_fails_without_the_token(checks, ray_head, tmp_path):
    """Without the token the Jobs API answers 401 and the check fails: a head whose token
    configuration is broken is unhealthy, not silently fine."""
    result = _run(checks["ray-head"], _client_env(tmp_path, RAY_DASHBOARD_PORT=_dashboard_port(ray_head)))
    assert result.returncode != 0
    assert "401" in result.stderr


def test_worker_check_passes_while_the_raylet_lives(checks, ray_head, tmp_path):
    """The dashboard agent's /api/healthz (public) answers 200 for a live node. The agent starts
    a few seconds after the dashboard, so the check is retried as Docker does (start_period)."""
    agent = ray_head.ports["dashboard-agent-listen-port"]
    argv = [w.replace(":52365/", f":{agent}/") for w in checks["ray-gpu-worker"]]
    assert argv != checks["ray-gpu-worker"], "the worker check no longer uses port 52365: update this test"
    deadline = time.monotonic() + START_PERIOD_S
    while (result := _run(argv, _client_env(tmp_path))).returncode != 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("service", ["ray-head", "ray-gpu-worker", "vllm"])
def test_checks_fail_quickly_when_nothing_listens(checks, service, tmp_path):
    """Nothing on the port: the check exits non-zero within its own timeout."""
    port = str(free_port())
    argv = [re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", w) for w in checks[service]]
    env = _client_env(tmp_path, RAY_DASHBOARD_PORT=port, RAY_AUTH_TOKEN="x")
    assert _run(argv, env).returncode != 0


@pytest.fixture
def nats_with_monitor(tmp_path: Path) -> Iterator[str]:
    """A real nats-server with JetStream and its HTTP monitor on a free port; yields that port."""
    log = tmp_path / "nats.log"
    argv = [venv_binary("nats-server"), "-js", "-sd", str(tmp_path / "js"), "-a", "127.0.0.1", "-p", "-1",
            "--http_port", "-1"]  # fmt: skip
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc = ManagedProcess(name="nats-server", popen=popen, log_path=log)
    try:
        deadline = time.monotonic() + 20
        while not (m := re.search(r"Starting http monitor on [\d.]+:(\d+)", log.read_text())) or (
            "Server is ready" not in log.read_text()
        ):
            if time.monotonic() > deadline or not proc.alive():
                pytest.fail(f"nats-server did not become ready within 20 s:\n{proc.tail()}")
            time.sleep(0.1)
        yield m.group(1)
    finally:
        proc.stop()


@pytest.mark.skipif(shutil.which("wget") is None, reason="the NATS image's check uses wget")
def test_nats_check_passes_against_jetstream_and_fails_without_a_server(checks, nats_with_monitor, tmp_path):
    """The exact wget command of the NATS service: 0 against a live server, non-zero once gone."""
    argv = [w.replace("127.0.0.1:8222", f"127.0.0.1:{nats_with_monitor}") for w in checks["nats"]]
    assert argv != checks["nats"], "the NATS check no longer uses port 8222: update this test"
    assert _run(argv, _client_env(tmp_path)).returncode == 0
    dead = [w.replace(f":{nats_with_monitor}/", f":{free_port()}/") for w in argv]
    assert _run(dead, _client_env(tmp_path)).returncode != 0
