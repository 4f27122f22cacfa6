"""Fixtures that start real servers: a nats-server per test, and once per session a Ray head
(with the pinned runtime_env built) and a vLLM server.

Most council tests are about delivery, ids or outcomes, not the engine: they run the server
backend against the one session vLLM server, and only the tests about the engine backend start
engines of their own. Each test keeps its own submission ids (and, where it matters, its own
nats-server), so tests stay independent.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from swe_fleet.local.stack import NatsServer, RayHead
from swe_fleet.local.vllm_server import VLLMServer

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Fixtures that start or use a vLLM engine or the session cluster its councils run on.
ENGINE_FIXTURES = frozenset({"prepared_model", "vllm_server", "council_cluster"})


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (it runs in the same hook)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n 2 --dist loadgroup`` (``make test``): every test that runs vLLM or
    shares the session's council cluster goes to one worker, in collection order, so that no
    two engines ever run at once and the session fixtures are built once; the other tests
    (NATS, Ray heads without engines, units) run on the other worker beside them."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("llm") or item.get_closest_marker("netns") or fixtures & ENGINE_FIXTURES:
            item.add_marker(pytest.mark.xdist_group("engine"))


@pytest.hookimpl(trylast=True)  # after pytest-xdist tagged the grouped node ids
def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly if pytest-xdist did not group them (it tags node ids, which pytest 9.2 no
    longer lets it do: pytest-xdist#1386): two engines at once would only show up as a slow
    or flaky suite."""
    if not getattr(session.config.option, "loadgroup", False):
        return  # not an xdist worker under --dist loadgroup
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist did not group {len(lost)} engine tests, e.g. {lost[0]}")


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
def council_cluster(
    ray_head: RayHead, session_nats: NatsServer, prepared_model: Path, repo_root: Path
) -> RayHead:
    """The session's Ray head with the pinned runtime_env already built (a passing preflight
    ran in it), so that no council test pays for the pip install."""
    from support.councils import warm_runtime_env

    warm_runtime_env(ray_head, session_nats.url, repo_root)
    return ray_head


@pytest.fixture(scope="session")
def vllm_server(prepared_model: Path) -> Iterator[VLLMServer]:
    """One real vLLM CPU server for the session's server-backend councils (start ~40 s).

    A test that kills it restarts it on the same port before it ends (see
    tests/integration/test_council_job.py), so the URL stays valid for the rest of the session.
    """
    with tempfile.TemporaryDirectory(prefix="swf-test-vllm-") as d:
        server = VLLMServer(Path(d)).start(prepared_model)
        try:
            yield server
        finally:
            server.stop()


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
