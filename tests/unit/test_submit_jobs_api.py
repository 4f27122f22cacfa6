"""The Jobs API client against a real HTTP server on loopback (no Ray cluster): every request
bounded, every HTTP failure one of our errors, the address given the only one used."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray

from swe_fleet._processes import free_port
from swe_fleet.errors import AddressError, DashboardUnreachable, SubmissionError
from swe_fleet.submit.jobs_api import JobsApi

#: path -> (status, JSON body); a path missing here answers 404.
Routes = dict[str, tuple[int, Any]]
VERSION: Routes = {"/api/version": (200, {"ray_version": ray.__version__, "version": "x"})}


@pytest.fixture
def dashboard(clean_env: None) -> Iterator[Callable[[Routes], str]]:
    """Start a fake dashboard answering the given routes; returns its URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(routes: Routes) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = routes.get(self.path, (404, {"error": "not found"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_nobody_on_the_port_is_unreachable_naming_the_url(clean_env: None) -> None:
    """A closed port: DashboardUnreachable with the URL and what to check."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DashboardUnreachable, match="did not answer") as info:
        JobsApi(url, request_timeout_s=2)
    assert info.value.url == url and url in str(info.value)


def test_a_dashboard_that_never_answers_is_unreachable_within_the_request_bound(clean_env: None) -> None:
    """Accepts the connection, never answers: DashboardUnreachable after ~request_timeout_s."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        started = time.monotonic()
        with pytest.raises(DashboardUnreachable):
            JobsApi(f"http://127.0.0.1:{sock.getsockname()[1]}", request_timeout_s=1)
        assert time.monotonic() - started < 10


def test_something_that_is_not_a_jobs_api_is_an_address_error(dashboard: Callable[[Routes], str]) -> None:
    """A server without /api/version: AddressError telling to give the dashboard's URL."""
    with pytest.raises(AddressError, match="not as a Ray Jobs API"):
        JobsApi(dashboard({}))


def test_a_refused_token_says_which_variable_to_set(dashboard: Callable[[Routes], str]) -> None:
    """401 from the dashboard: SubmissionError naming RAY_AUTH_TOKEN."""
    url = dashboard({"/api/version": (401, {"error": "Unauthorized"})})
    with pytest.raises(SubmissionError, match="RAY_AUTH_TOKEN"):
        JobsApi(url, auth_token="wrong")


def test_job_lookups_map_404_to_none_and_other_errors_to_submission_errors(
    dashboard: Callable[[Routes], str],
) -> None:
    """find_job: 404 is None; a 500 is SubmissionError naming the job (never DashboardUnreachable:
    the cluster answered); reading a missing job's status is SubmissionError with its job_id."""
    url = dashboard({**VERSION, "/api/jobs/broken": (500, {"error": "boom"})})
    jobs = JobsApi(url)
    assert jobs.server_ray_version == ray.__version__
    assert jobs.find_job("nope") is None
    with pytest.raises(SubmissionError) as info:
        jobs.find_job("broken")
    assert not isinstance(info.value, DashboardUnreachable)
    assert info.value.job_id == "broken" and "500" in str(info.value)
    with pytest.raises(SubmissionError) as status_info:
        jobs.status("nope")
    assert status_info.value.job_id == "nope" and not isinstance(status_info.value, DashboardUnreachable)


def test_alive_nodes_are_listed_and_a_bad_answer_is_an_error(dashboard: Callable[[Routes], str]) -> None:
    """The State API's nodes, dead ones left out; an answer without nodes is SubmissionError."""
    nodes = [{"node_id": "a", "state": "ALIVE"}, {"node_id": "b", "state": "DEAD"}]
    url = dashboard({**VERSION, "/api/v0/nodes?limit=10000": (200, {"data": {"result": {"result": nodes}}})})
    assert [n["node_id"] for n in JobsApi(url).alive_nodes()] == ["a"]
    broken = dashboard({**VERSION, "/api/v0/nodes?limit=10000": (200, {"data": {}})})
    with pytest.raises(SubmissionError, match="did not answer with nodes"):
        JobsApi(broken).alive_nodes()


def test_the_address_given_wins_over_ray_address(
    dashboard: Callable[[Routes], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RAY_ADDRESS naming nothing is ignored (and left as it was): the client uses its URL."""
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")
    url = dashboard(VERSION)
    assert JobsApi(url, request_timeout_s=2).url == url
    assert os.environ["RAY_ADDRESS"].startswith("http://127.0.0.1:")
