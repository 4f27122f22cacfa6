"""One council submission, its idempotent ``submission_id``, and the Ray job id of each attempt.

``submission_id`` names the deliberation (event keys, checkpoints, the wire field). It is
derived from the submission (spec, runtime env, overrides), so the same submission twice names
the same deliberation; an explicit id is used as given. Ray never accepts a job id twice, so
attempt ``n`` of a deliberation is the Ray job :func:`attempt_job_id` ``(submission_id, n)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from swe_fleet.spec import CouncilSpec

#: Attempts of one deliberation (``--retry-failed``) before the id must change.
MAX_ATTEMPTS = 20


def attempt_job_id(submission_id: str, attempt: int) -> str:
    """The Ray job id of attempt ``attempt`` (0 is the first) of deliberation ``submission_id``."""
    return submission_id if attempt == 0 else f"{submission_id}-retry{attempt}"


@dataclass(frozen=True)
class CouncilSubmission:
    """Everything that defines one council submission (and so its ``submission_id``).

    Attributes:
        spec: the council spec as the user gave it.
        env_kind: the runtime env (:data:`swe_fleet.submit.RUNTIME_ENV_KINDS`).
        nats_url: overrides the spec's ``publish.nats_url`` (as the cluster sees it).
        extra_env_vars: added to the runtime_env's ``env_vars``.
        submission_id: an explicit id; None derives one from the rest.
    """

    spec: CouncilSpec
    env_kind: str = "pinned"
    nats_url: str | None = None
    extra_env_vars: Mapping[str, str] = field(default_factory=dict)
    submission_id: str | None = None

    def effective_spec(self) -> CouncilSpec:
        """The spec the job runs: the given one with this submission's overrides."""
        return self.spec.with_overrides(nats_url=self.nats_url)

    def request_hash(self) -> str:
        """sha256 over the effective spec, the runtime env kind and extra env vars."""
        doc = {
            "spec": json.loads(self.effective_spec().to_json()),
            "env": self.env_kind,
            "env_vars": dict(sorted(self.extra_env_vars.items())),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def derived_submission_id(self) -> str:
        """``council-{name}-{hash[:16]}`` unless an explicit id was given."""
        return self.submission_id or f"council-{self.spec.name}-{self.request_hash()[:16]}"


@dataclass(frozen=True)
class SubmittedJob:
    """The Ray job a submission refers to; ``created`` is False when it already existed.

    Attributes:
        submission_id: the deliberation (event keys, checkpoint).
        job_id: Ray's id of this attempt (``submission_id`` for the first attempt,
            ``{submission_id}-retry{n}`` after).
        created: this call submitted the job (False: it found it).
        dashboard_url: the Jobs API the job lives on.
    """

    submission_id: str
    job_id: str
    created: bool
    dashboard_url: str
