"""Fixtures that start real servers: a nats-server per test, and once per session a Ray head
(with the pinned runtime_env built) and a vLLM server.

Most council tests are about delivery, ids or outcomes, not the engine: they run the server
backend against the one session vLLM server, and only the tests about the engine backend start
engines of their own. Each test keeps its own submission ids (and, where it matters, its own
nats-server), so tests stay independent.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swe_fleet.local.stack import RAY_TEMP_ROOT_ENV, NatsServer, RayHead
from swe_fleet.local.vllm_server import VLLMServer

from support.engine_lock import engine_lock
from support.virtualenvs import layered_virtualenv

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Fixtures that start or use a vLLM engine or the session cluster its councils run on.
ENGINE_FIXTURES = frozenset({"prepared_model", "vllm_server", "council_cluster"})


def _runs_vllm(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(item.get_closest_marker("llm") or fixtures & ENGINE_FIXTURES)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (it runs in the same hook)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n 2 --dist loadgroup`` (``make test``): the tests that share the session's
    vLLM server and council cluster go to one worker ("engine"), the multi-host cluster's tests to
    the other ("netns", beside the tests without an engine), each group in collection order, so
    that the session fixtures and the netns cluster are built once. Two engines never start or
    run a council at once: whatever does holds the engine lock (tests/support/engine_lock.py), so
    the netns cluster comes up, builds its runtime_envs and checks its nodes beside the engine
    tests, and runs its councils between them (or beside a test that only sends the running
    session server a few small requests)."""
    for item in items:
        if item.get_closest_marker("netns"):
            item.add_marker(pytest.mark.xdist_group("netns"))
        elif _runs_vllm(item):
            item.add_marker(pytest.mark.xdist_group("engine"))


@pytest.hookimpl(trylast=True)  # after pytest-xdist tagged the grouped node ids
def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly if pytest-xdist did not group them (it tags node ids, which pytest 9.2 no
    longer lets it do: pytest-xdist#1386): engines built twice would only show up as a slow suite."""
    if not getattr(session.config.option, "loadgroup", False):
        return  # not an xdist worker under --dist loadgroup
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist did not group {len(lost)} engine tests, e.g. {lost[0]}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A test that starts a vLLM engine (marked ``engine``, or the first user of the session's
    vLLM server, which starts in its setup) holds the engine lock for its setup, call and
    teardown; the netns tests take it themselves, around their councils only. The other tests
    of the engine group only send a few small requests to the running session server: they
    run while the netns cluster runs a council."""
    starts_server = "vllm_server" in getattr(item, "fixturenames", ()) and not _VLLM_SERVER_STARTED
    asked = time.time()
    if item.get_closest_marker("netns") or not (item.get_closest_marker("engine") or starts_server):
        result = yield
        _timeline(item, asked, asked, locked=False)
        return result
    with engine_lock():
        got = time.time()
        result = yield
    _timeline(item, asked, got, locked=True)
    if starts_server:
        _VLLM_SERVER_STARTED.append(True)
    return result


def _timeline(item: pytest.Item, asked: float, started: float, *, locked: bool) -> None:
    """With ``SWF_TEST_TIMELINE=DIR``: one JSON line per test in ``DIR/<worker>.jsonl`` (when it
    asked for the engine lock, when it started, when it ended), to see where a run's time goes
    (``python scripts/suite_timeline.py DIR``)."""
    folder = os.environ.get("SWF_TEST_TIMELINE")
    if not folder:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    line = {"test": item.nodeid, "worker": worker, "asked": asked, "started": started,
            "ended": time.time(), "locked": locked}  # fmt: skip
    Path(folder).mkdir(parents=True, exist_ok=True)
    with (Path(folder) / f"{worker}.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


#: Whether this worker's session vLLM server has started (its first user held the lock).
_VLLM_SERVER_STARTED: list[bool] = []


# CI runs `.venv/bin/python -m pytest` without activating the virtualenv: its bin directory is
# not on PATH there. Take it off PATH here too, so that a test relying on a bare `python`,
# `ray` or `swe-fleet` (or a Ray node that forgets to put its own Python first) fails on a
# developer's activated shell exactly as it would in CI.
_VENV_BIN = str(Path(sys.executable).parent)
os.environ["PATH"] = os.pathsep.join(
    d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d and d != _VENV_BIN
)


#: Ray nodes keep their temp dirs (sockets, logs, their runtime_envs: small, since the nodes that
#: build pip runtime_envs run from thin virtualenvs) on a tmpfs when there is room: this machine's
#: disk is slow. A developer's own setting wins.
_TMPFS, _TMPFS_NEEDS = Path("/dev/shm"), 4 * 1024**3
if (
    RAY_TEMP_ROOT_ENV not in os.environ
    and os.access(_TMPFS, os.W_OK)
    and shutil.disk_usage(_TMPFS).free >= _TMPFS_NEEDS
):
    os.environ[RAY_TEMP_ROOT_ENV] = str(_TMPFS)


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
def node_virtualenv() -> Iterator[Path]:
    """The ``bin`` folder of a thin virtualenv layered over this one, for the session's Ray nodes:
    their pip runtime_envs then copy a few files instead of 3.4 GB (tests/support/virtualenvs.py)."""
    with tempfile.TemporaryDirectory(prefix="swf-test-venv-") as d:
        yield layered_virtualenv(Path(d) / "node")


@pytest.fixture(scope="session")
def ray_head(node_virtualenv: Path) -> Iterator[RayHead]:
    """One real Ray head per session (start ~5-10 s; its pip runtime_env cache lives with it),
    running from :func:`node_virtualenv`."""
    with tempfile.TemporaryDirectory(prefix="swf-test-ray-") as d:
        head = RayHead(Path(d), num_cpus=2, ray_command=[str(node_virtualenv / "ray")]).start()
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
