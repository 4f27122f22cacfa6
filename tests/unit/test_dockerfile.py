"""Dockerfile.ray-swe-fleet, read by Docker's own parser, keeps the contract compose and Kubernetes
rely on (hadolint, run by ``make lint``, checks the rest); copies breaking it fail with a message
naming what broke."""

from __future__ import annotations

import pytest

from support.manifests import describe
from support.manifests.dockerfile import check_dockerfile, repository_file_for
from support.manifests.project import DOCKERFILE, REPO_ROOT


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


def test_dockerfile_keeps_the_contract(text):
    """Node entrypoint as CMD, a health check, non-root, the project's Ray, no baked secret."""
    problems = check_dockerfile(text)
    assert not problems, describe(problems)


@pytest.mark.parametrize(
    "path",
    [
        "/opt/swe-fleet/jobs/council.py",
        "/opt/swe-fleet/runtime_envs/image.yaml",
        "/opt/swe-fleet/src/swe_fleet/cli/__init__.py",
    ],
)
def test_image_holds_a_checkout_for_submit_and_rayjobs(text, path):
    """jobs/, runtime_envs/ and src/ land under /opt/swe-fleet (swe-fleet submit and the RayJob
    entrypoint read them there)."""
    source = repository_file_for(path, text, REPO_ROOT)
    assert source is not None and source.is_file(), path


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ('CMD ["swe-fleet", "node", "start"]', "CMD swe-fleet node start", "CMD: must be"),
        ('CMD ["swe-fleet", "node", "start"]', 'CMD ["ray", "start", "--head"]', "CMD: must be"),
        ("ENTRYPOINT []", 'ENTRYPOINT ["/bin/bash", "-c"]', "ENTRYPOINT: must be []"),
        ("HEALTHCHECK --interval", "# HEALTHCHECK --interval", "HEALTHCHECK: missing"),
        ("USER 1000", "USER 0", "USER: the image must end as a non-root user"),
        ("ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.59.0", "ARG RAY_VERSION: must default"),
        (
            "    SWE_FLEET_ROLE=worker",
            "    SWE_FLEET_ROLE=worker \\\n    RAY_AUTH_TOKEN=abc",
            "ENV RAY_AUTH_TOKEN",
        ),
        (
            'ARG VLLM_SPEC="vllm==0.32.0"',
            'ARG VLLM_SPEC="vllm==0.32.0"\nARG HF_TOKEN',
            "ARG HF_TOKEN: a secret baked",
        ),
        ("EXPOSE 6379 8265 10001 52365", "EXPOSE 6379 10001", "8265 is not exposed"),
    ],
)
def test_broken_contract_fails(text, old, new, needle):
    """Each change that would break compose, KubeRay or secrecy is reported."""
    assert old in text, f"the Dockerfile changed: update this test ({old!r})"
    problems = check_dockerfile(text.replace(old, new, 1))
    assert needle in describe(problems), describe(problems)
