"""Fixtures that start real servers: nats-server per test, one Ray head per session."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from swe_fleet.local.stack import NatsServer, RayHead

REPO_ROOT = Path(__file__).resolve().parents[1]

# CI runs `.venv/bin/python -m pytest` without activating the virtualenv: its bin directory is
# not on PATH there. Take it off PATH here too, so that a test relying on a bare `python`,
# `ray` or `swe-fleet` (or a Ray node that forgets to put its own Python first) fails on a
# developer's activated shell exactly as it would in CI.
_VENV_BIN = str(Path(sys.executable).parent)
os.environ["PATH"] = os.pathsep.join(
    d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d and d != _VENV_BIN
)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream and its own store, for one test."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def session_nats() -> Iterator[NatsServer]:
    """One nats-server for the session's council jobs (they filter by submission id)."""
    with tempfile.TemporaryDirectory(prefix="swf-test-nats-") as d:
        server = NatsServer(Path(d)).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """One real Ray head per session (start ~5-10 s; its pip runtime_env cache lives with it)."""
    with tempfile.TemporaryDirectory(prefix="swf-test-ray-") as d:
        head = RayHead(Path(d), num_cpus=2).start()
        try:
            yield head
        finally:
            head.stop()


@pytest.fixture(scope="session")
def prepared_model() -> Path:
    """The local SmolLM2 folder (converted once, cached across sessions)."""
    from swe_fleet.llm.model import prepare_local_model

    return prepare_local_model()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RAY_* / SWE_FLEET_* from the developer's shell leaks into address tests."""
    for key in list(os.environ):
        if key.startswith(("RAY_", "SWE_FLEET_")):
            monkeypatch.delenv(key)
