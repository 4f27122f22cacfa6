"""Submission ids derive from the submission; each attempt of one gets its own Ray job id."""

from __future__ import annotations

import pytest

from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.request import CouncilSubmission, attempt_job_id

SPEC = CouncilSpec.from_text("tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n")


def test_same_request_same_submission_id() -> None:
    """Two identical requests derive the same id (so a resubmission finds the first job)."""
    a = CouncilSubmission(spec=SPEC, nats_url="nats://n:4222")
    b = CouncilSubmission(spec=CouncilSpec.from_text(SPEC.to_json()), nats_url="nats://n:4222")
    assert a.derived_submission_id() == b.derived_submission_id()
    assert a.derived_submission_id().startswith("council-council-")


@pytest.mark.parametrize(
    "change",
    [
        {"nats_url": "nats://other:4222"},
        {"env_kind": "image"},
        {"extra_env_vars": {"X": "1"}},
    ],
)
def test_any_change_to_the_request_changes_the_id(change: dict[str, object]) -> None:
    """Spec overrides, runtime env and env vars are all part of the request's identity."""
    base = CouncilSubmission(spec=SPEC, nats_url="nats://n:4222")
    other = CouncilSubmission(**{"spec": SPEC, "nats_url": "nats://n:4222", **change})  # type: ignore[arg-type]
    assert base.derived_submission_id() != other.derived_submission_id()


def test_explicit_submission_id_wins() -> None:
    """--submission-id is used as given."""
    assert CouncilSubmission(spec=SPEC, submission_id="mine").derived_submission_id() == "mine"


def test_retries_get_their_own_ray_job_ids() -> None:
    """Ray never takes an id twice: attempt 0 is the id itself, retries are {id}-retry{n}."""
    assert attempt_job_id("council-x", 0) == "council-x"
    assert attempt_job_id("council-x", 2) == "council-x-retry2"
