"""The Jobs API client against a real Ray head: it talks to the address it is given, whatever the
environment says."""

from __future__ import annotations

import os

import pytest

from swe_fleet.local.stack import RayHead
from swe_fleet.submit.jobs_api import JobsApi

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("variable", ["RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"])
def test_an_explicit_address_wins_over_the_environment(
    ray_head: RayHead, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """With RAY_ADDRESS (or RAY_API_SERVER_ADDRESS) naming no cluster, a client given the head's
    URL still reaches that head (Ray's own client would follow the variable), and the variable
    is left as it was."""
    monkeypatch.setenv(variable, "http://127.0.0.1:9")
    client = JobsApi(ray_head.dashboard_url, auth_token=ray_head.auth_token, request_timeout_s=5)
    assert client.url == ray_head.dashboard_url
    assert isinstance(client.list_jobs(), list)
    assert client.server_ray_version
    assert os.environ[variable] == "http://127.0.0.1:9"
