"""Fixtures of the integration tests that run councils on the session cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from swe_fleet.local.stack import RayHead
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi


@pytest.fixture(scope="session")
def tiny_spec(repo_root: Path) -> CouncilSpec:
    """The smallest real council (tests/data/tiny.yaml): 2 tasks x 2 agents, short answers."""
    return CouncilSpec.from_file(repo_root / "tests" / "data" / "tiny.yaml")


@pytest.fixture(scope="session")
def client(council_cluster: RayHead) -> JobsApi:
    """The session cluster's Jobs API."""
    return JobsApi(council_cluster.dashboard_url, auth_token=council_cluster.auth_token)
