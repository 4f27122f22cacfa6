"""Fixtures that start real servers: a nats-server per test, and once per run a Ray head (with
the pinned runtime_env built), a nats-server and a vLLM server, shared by every worker.

Most council tests are about delivery, ids or outcomes, not the engine: they run the server
backend against the one session vLLM server, and only the tests marked ``engine`` start
engines of their own. Each test keeps its own submission ids (and, where it matters, its own
nats-server), so tests stay independent.

``make test`` runs three workers (``pytest -n 3 --dist loadgroup``): the ``engine`` tests in
order on one of them, the multi-host (``netns``) tests on another, and the rest, each module
of session-resource tests kept together (its module-scoped fixtures are built once), wherever a
worker is free. The session resources are started by the first worker that needs them and
stopped by the controller when the run is over (tests/support/shared.py).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swe_fleet.local.stack import RAY_TEMP_ROOT_ENV, NatsServer, RayHead
from swe_fleet.local.vllm_server import VLLMServer

from support.engine_lock import engine_lock
from support.shared import SHARED_DIR_ENV, StopRecipe, ensure_shared_dir, shared, stop_all

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The run's session resources: a test that uses one runs beside the others of its module.
SESSION_FIXTURES = frozenset({"prepared_model", "vllm_server", "council_cluster", "ray_head", "session_nats"})


def pytest_configure(config: pytest.Config) -> None:
    """The controller (or a serial run) names the run's shared directory; workers inherit it."""
    if not hasattr(config, "workerinput"):
        ensure_shared_dir()


def pytest_unconfigure(config: pytest.Config) -> None:
    """When the whole run is over, the controller stops the run's session resources."""
    if not hasattr(config, "workerinput") and os.environ.get(SHARED_DIR_ENV):
        stop_all(Path(os.environ.pop(SHARED_DIR_ENV)))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (it runs in the same hook)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``make test`` (see the module docstring): ``engine`` tests in one group, ``netns``
    tests in another, each module's session-resource tests in one of its own. Two engines never
    run at once: an ``engine`` test holds the engine lock (tests/support/engine_lock.py) for its
    setup, call and teardown, and the netns tests around their councils."""
    for item in items:
        if item.get_closest_marker("netns"):
            item.add_marker(pytest.mark.xdist_group("netns"))
        elif item.get_closest_marker("engine"):
            item.add_marker(pytest.mark.xdist_group("engine"))
        elif set(getattr(item, "fixturenames", ())) & SESSION_FIXTURES:
            item.add_marker(pytest.mark.xdist_group(f"session-{item.path.stem}"))


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
    """An ``engine`` test holds the engine lock for its setup, call and teardown. The netns
    tests take it themselves, around their councils only."""
    if not item.get_closest_marker("engine"):
        return (yield)
    with engine_lock():
        return (yield)


# CI runs `.venv/bin/python -m pytest` without activating the virtualenv: its bin directory is
# not on PATH there. Take it off PATH here too, so that a test relying on a bare `python`,
# `ray` or `swe-fleet` (or a Ray node that forgets to put its own Python first) fails on a
# developer's activated shell exactly as it would in CI.
_VENV_BIN = str(Path(sys.executable).parent)
os.environ["PATH"] = os.pathsep.join(
    d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d and d != _VENV_BIN
)


#: Ray nodes keep their temp dirs (and the ~3.4 GB copy of this virtualenv that each node's first
#: pip runtime_env makes) on a tmpfs when there is room: 5-8x faster than this machine's disk to
#: copy, and seconds instead of a minute to delete. A developer's own setting wins.
_TMPFS, _TMPFS_NEEDS = Path("/dev/shm"), 14 * 1024**3
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
def session_nats() -> NatsServer:
    """One nats-server for the run's council jobs (they filter by submission id), shared by
    every worker (tests/support/shared.py)."""

    def start() -> tuple[dict[str, Any], StopRecipe]:
        workdir = Path(tempfile.mkdtemp(prefix="swf-test-nats-"))
        server = NatsServer(workdir).start()
        assert server.process is not None
        return {"workdir": str(workdir), "url": server.url, "port": server.port}, StopRecipe(
            [server.process.pid], [str(workdir)]
        )

    state = shared("session_nats", start)
    return NatsServer(Path(state["workdir"]), url=state["url"], port=state["port"])


@pytest.fixture(scope="session")
def ray_head() -> RayHead:
    """One real Ray head for the run (start ~5-10 s; its pip runtime_env cache lives with it),
    shared by every worker. Its ``process`` is None: the run's controller stops it at the end."""

    def start() -> tuple[dict[str, Any], StopRecipe]:
        workdir = Path(tempfile.mkdtemp(prefix="swf-test-ray-"))
        head = RayHead(workdir, num_cpus=2).start()
        paths = {"workdir": workdir, "token_path": head.token_path, "temp_dir": head.temp_dir}
        state = {k: getattr(head, k) for k in _HEAD_VALUES} | {k: str(v) for k, v in paths.items()}
        return state, StopRecipe([int(head.pid or 0)], [str(workdir), str(head.temp_dir)])

    state = shared("ray_head", start)
    paths = {k: Path(state[k]) for k in ("token_path", "temp_dir")}
    return RayHead(Path(state["workdir"]), num_cpus=2, **paths, **{k: state[k] for k in _HEAD_VALUES})


#: What a worker needs of the run's Ray head besides its paths.
_HEAD_VALUES = ("dashboard_url", "client_url", "gcs_address", "auth_token", "pid", "ports")


@pytest.fixture(scope="session")
def council_cluster(
    ray_head: RayHead, session_nats: NatsServer, prepared_model: Path, repo_root: Path
) -> RayHead:
    """The session's Ray head with the pinned runtime_env already built (a passing preflight
    ran in it, once per run), so that no council test pays for the pip install."""
    from support.councils import warm_runtime_env

    def warm() -> tuple[dict[str, Any], StopRecipe]:
        warm_runtime_env(ray_head, session_nats.url, repo_root)
        return {"warm": True}, StopRecipe()

    shared("council_cluster", warm)
    return ray_head


@pytest.fixture(scope="session")
def vllm_server(prepared_model: Path) -> VLLMServer:
    """One real vLLM CPU server for the run's server-backend councils (start ~40 s), shared by
    every worker; never restarted (the restart test has a server of its own)."""

    def start() -> tuple[dict[str, Any], StopRecipe]:
        workdir = Path(tempfile.mkdtemp(prefix="swf-test-vllm-"))
        server = VLLMServer(workdir).start(prepared_model)
        assert server.process is not None
        state = {
            "workdir": str(workdir), "port": server.port, "base_url": server.base_url,
            "served_model_name": server.served_model_name,
        }  # fmt: skip
        return state, StopRecipe([server.process.pid], [str(workdir)])

    state = shared("vllm_server", start)
    return VLLMServer(
        Path(state["workdir"]), served_model_name=state["served_model_name"], port=state["port"],
        base_url=state["base_url"],
    )  # fmt: skip


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
