"""The wire contract: subjects, event models, ``schema_version`` and each event's idempotency key.

Every event has a ``key`` that is unique per logical event and stable across retries, replays
and job resubmissions; the publisher sends it as ``Nats-Msg-Id`` so JetStream drops duplicates.

Key layout: ``{submission_id}/{task_id}/{phase}/{round}/{agent_id}`` for agent responses (with
``/failed`` appended for a failure, so that a retried job's later success is not dropped as its
duplicate), ``{submission_id}/{task_id}/deliberation`` for a task's result,
``{submission_id}/job/failed/{job_id}`` for a failed job attempt (published by the driver) and
``{submission_id}/job/status/{job_id}/{state}`` for a job's status (published by the
dispatcher). The segment counts and the fixed third segment keep these families apart: no
phase is called ``failed`` or ``status``.

The dispatcher's job status events on ``council.job.<state>`` (:class:`CouncilJobStatus`) are
council events too. ``council.job.failed`` carries two event types: the driver's
:class:`CouncilJobFailed` (one per crashed attempt, from inside the job) and the dispatcher's
terminal :class:`CouncilJobStatus` (``state: failed``, one per job, also when the driver could not
say anything); consumers tell them apart by ``event``. The subjects and stream of the
dispatcher's input are named here; its payloads (the request and its dead letter) are the request
contract, :mod:`swe_fleet.dispatch.requests`.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from swe_fleet.errors import UndecodableEvent

#: 2: ``council.deliberation.completed`` says its ``outcome`` (decided, tied, failed) with ``tied``,
#: ``reason`` and ``quorum``; rankings carry each candidate's ``spread``; revise slots that need no
#: call end in a completed event with ``data.unchanged`` (version 1 events still decode).
SCHEMA_VERSION = 2

AGENT_RESPONSE_COMPLETED = "agent.response.completed"
AGENT_RESPONSE_FAILED = "agent.response.failed"
DELIBERATION_COMPLETED = "council.deliberation.completed"
COUNCIL_DEAD = "council.dead"
COUNCIL_JOB_FAILED = "council.job.failed"
COUNCIL_REQUEST = "council.request"
COUNCIL_REQUEST_DEAD = "council.request.dead"

#: A council job's states as the dispatcher publishes them (``council.job.<state>``).
JobState = Literal["submitted", "running", "succeeded", "failed", "stopped"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
TERMINAL_JOB_STATES: tuple[JobState, ...] = ("succeeded", "failed", "stopped")

#: Stream that holds every event of a council.
AGENT_RESPONSES_STREAM = "AGENT_RESPONSES"
AGENT_RESPONSES_SUBJECTS = (
    "agent.response.>",
    "council.deliberation.>",
    "council.job.>",
    COUNCIL_DEAD,
)

#: Stream of council requests (the dispatcher's input) and their dead letters.
COUNCIL_REQUESTS_STREAM = "COUNCIL_REQUESTS"
COUNCIL_REQUESTS_SUBJECTS = (COUNCIL_REQUEST, COUNCIL_REQUEST_DEAD)

Phase = Literal["propose", "critique", "revise", "vote"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    submission_id: str
    council: str
    task_id: str
    created_at: float = Field(default_factory=time.time)

    @property
    def subject(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def key(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The JSON payload on the wire."""
        return self.model_dump_json().encode()


class AgentResponseCompleted(_Event):
    """One agent's response in one phase (and round) for one task."""

    event: Literal["agent.response.completed"] = "agent.response.completed"
    phase: Phase
    round: Annotated[int, Field(ge=0)] = 0
    agent_id: str
    role: str
    content: str
    #: Parsed structured output (votes: ``{"scores": {agent_id: int}}``), when the phase has one.
    data: dict[str, Any] | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None

    @property
    def subject(self) -> str:
        return AGENT_RESPONSE_COMPLETED

    @property
    def key(self) -> str:
        return agent_response_key(self.submission_id, self.task_id, self.phase, self.round, self.agent_id)


class AgentResponseFailed(_Event):
    """An agent response that will not come, and why: no consumer waits for it."""

    event: Literal["agent.response.failed"] = "agent.response.failed"
    phase: Phase
    round: Annotated[int, Field(ge=0)] = 0
    agent_id: str
    role: str
    reason: str
    content: str | None = None

    @property
    def subject(self) -> str:
        return AGENT_RESPONSE_FAILED

    @property
    def key(self) -> str:
        # Its own key, not the completed one's: a retried job that then succeeds must not have
        # its completed event dropped as a duplicate of this one.
        base = agent_response_key(self.submission_id, self.task_id, self.phase, self.round, self.agent_id)
        return f"{base}/failed"


class RankedAgent(BaseModel):
    """One row of a task's ranking."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: str
    rank: int
    #: Mean of the scores it received (None: no vote counted for it).
    mean_score: float | None
    #: Mean of those scores each minus its voter's mean over that ballot (None: no ballot of two
    #: or more candidates scored it).
    centred_score: float | None = None
    #: Their population standard deviation (0.0 for a single vote; None without votes).
    spread: float | None = None
    votes: int


#: ``decided``: a unique winner from at least a quorum of counted votes; ``tied``: the best score
#: shared by several candidates (``tied`` names them, ``winner`` is None); ``failed``: no
#: proposal, or fewer counted votes than the quorum (``reason`` says which).
TaskOutcome = Literal["decided", "tied", "failed"]


class DeliberationCompleted(_Event):
    """The outcome of one task: decided, tied or failed, with the ranking and the score matrix."""

    event: Literal["council.deliberation.completed"] = "council.deliberation.completed"
    outcome: TaskOutcome
    winner: str | None
    #: The candidates sharing the best score when ``outcome`` is ``tied`` (spec order).
    tied: list[str] = Field(default_factory=list)
    #: Why the outcome is ``failed`` (None otherwise).
    reason: str | None = None
    #: Counted votes the task needed for an outcome.
    quorum: int = 1
    #: Which score ranked the candidates: ``centred`` (each voter's offset removed) or ``mean``.
    ranked_by: Literal["centred", "mean"] = "mean"
    ranking: list[RankedAgent]
    #: scores[voter][candidate] for every vote that counted (expected scores under
    #: ``protocol.scoring: expected``, else the written integers).
    scores: dict[str, dict[str, float]]
    votes_counted: int
    votes_expected: int
    #: The winning proposal's text (its final revision).
    winning_proposal: str | None = None
    #: Critique rounds that ran for this task, and whether they ended early (no objections).
    rounds_run: int = 0
    early_stopped: bool = False
    #: The transcript by reference: keys of this task's agent-response events, in order.
    transcript: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _outcome_of_version_1(cls, data: Any) -> Any:
        """A version 1 result has no ``outcome``: it was decided when it named a winner."""
        if isinstance(data, dict) and "outcome" not in data and data.get("schema_version") == 1:
            return {**data, "outcome": "decided" if data.get("winner") else "failed"}
        return data

    @property
    def subject(self) -> str:
        return DELIBERATION_COMPLETED

    @property
    def key(self) -> str:
        return f"{self.submission_id}/{self.task_id}/deliberation"


class CouncilJobFailed(_Event):
    """The job died and will publish nothing more (``task_id`` is ``*``: it concerns every task)."""

    event: Literal["council.job.failed"] = "council.job.failed"
    reason: str
    #: The Ray job (attempt) that failed; a retry of the same submission has its own.
    job_id: str = "local"

    @property
    def subject(self) -> str:
        return COUNCIL_JOB_FAILED

    @property
    def key(self) -> str:
        return f"{self.submission_id}/job/failed/{self.job_id}"


class CouncilJobStatus(_Event):
    """A council job's state as the dispatcher saw it: each state at most once per job.

    ``submitted`` comes first; ``running`` when the driver started (always before
    ``succeeded``; a job that failed before its driver ran has none); then exactly one terminal
    state. ``task_id`` is ``*``: it concerns every task.
    """

    event: Literal["council.job.status"] = "council.job.status"
    task_id: str = "*"
    state: JobState
    #: The request this job was dispatched for.
    request_id: str
    #: The Ray job (its Jobs API submission id).
    job_id: str
    #: Ray's status message (why it failed or was stopped), when there is one.
    message: str | None = None
    dashboard_url: str | None = None

    @property
    def subject(self) -> str:
        return job_status_subject(self.state)

    @property
    def key(self) -> str:
        return job_status_key(self.submission_id, self.job_id, self.state)


CouncilEvent = Annotated[
    AgentResponseCompleted
    | AgentResponseFailed
    | DeliberationCompleted
    | CouncilJobFailed
    | CouncilJobStatus,
    Field(discriminator="event"),
]
_ADAPTER: TypeAdapter[CouncilEvent] = TypeAdapter(CouncilEvent)

#: Every event type a council consumer can receive.
AnyEvent = (
    AgentResponseCompleted | AgentResponseFailed | DeliberationCompleted | CouncilJobFailed | CouncilJobStatus
)


def job_status_subject(state: JobState) -> str:
    """``council.job.<state>``."""
    return f"council.job.{state}"


def job_status_key(submission_id: str, job_id: str, state: JobState) -> str:
    """The idempotency key of one job status event."""
    return f"{submission_id}/job/status/{job_id}/{state}"


#: Every subject a job status event can have.
COUNCIL_JOB_STATUS_SUBJECTS = tuple(job_status_subject(s) for s in JOB_STATES)


def agent_response_key(submission_id: str, task_id: str, phase: str, round_: int, agent_id: str) -> str:
    """The idempotency key of one agent response."""
    return f"{submission_id}/{task_id}/{phase}/{round_}/{agent_id}"


def decode_event(payload: bytes) -> AnyEvent:
    """Parse a wire payload into its typed event.

    Raises:
        UndecodableEvent: not JSON, not an event, or a newer ``schema_version``.
    """
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UndecodableEvent(f"not JSON: {exc}", payload) from None
    version = raw.get("schema_version", SCHEMA_VERSION) if isinstance(raw, dict) else SCHEMA_VERSION
    if not isinstance(version, int) or isinstance(version, bool):
        raise UndecodableEvent(f"schema_version is not an integer: {version!r}", payload)
    if version > SCHEMA_VERSION:
        raise UndecodableEvent(
            f"schema_version {raw['schema_version']} is newer than this consumer's "
            f"({SCHEMA_VERSION}); upgrade swe-fleet",
            payload,
        )
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UndecodableEvent(f"invalid event at {loc or '<root>'}: {first['msg']}", payload) from None


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of every council event (for consumers in other languages)."""
    return _ADAPTER.json_schema()
