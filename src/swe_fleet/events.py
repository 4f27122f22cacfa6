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

The dispatcher's side of the contract lives here too: the request a service publishes on
``council.request`` (stream ``COUNCIL_REQUESTS``, :class:`CouncilRequested`), the dead letter of a
request that cannot be dispatched (``council.request.dead``, :class:`CouncilRequestDead`) and the
job status events on ``council.job.<state>`` (:class:`CouncilJobStatus`). ``council.job.failed``
carries two event types: the driver's :class:`CouncilJobFailed` (one per crashed attempt, from
inside the job) and the dispatcher's terminal :class:`CouncilJobStatus` (``state: failed``, one per
job, also when the driver could not say anything); consumers tell them apart by ``event``.
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from swe_fleet.errors import InvalidRequest, UndecodableEvent
from swe_fleet.spec import CouncilSpec, Identifier

SCHEMA_VERSION = 1

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

#: A request bigger than this is refused (NATS' default max_payload is 1 MiB anyway).
MAX_REQUEST_BYTES = 1024 * 1024

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
    mean_score: float | None
    votes: int


class DeliberationCompleted(_Event):
    """The outcome of one task: ranking, winner and the score matrix."""

    event: Literal["council.deliberation.completed"] = "council.deliberation.completed"
    winner: str | None
    ranking: list[RankedAgent]
    #: scores[voter][candidate] for every vote that counted.
    scores: dict[str, dict[str, int]]
    votes_counted: int
    votes_expected: int
    #: The winning proposal's text (its final revision).
    winning_proposal: str | None = None
    #: Critique rounds that ran for this task, and whether they ended early (no objections).
    rounds_run: int = 0
    early_stopped: bool = False
    #: The transcript by reference: keys of this task's agent-response events, in order.
    transcript: list[str] = Field(default_factory=list)

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


# ---- the dispatcher's input: council requests ----------------------------------------------------

#: A ``spec_ref`` is a relative path under the dispatcher's ``--spec-dir``.
SpecRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}$")]


class CouncilRequested(BaseModel):
    """A request for one council: published by a service on ``council.request``.

    Exactly one of ``spec`` (the council spec itself) and ``spec_ref`` (a spec file under the
    dispatcher's ``--spec-dir``) is given. The ``request_id`` names the request for good: the
    job's submission id is derived from it, so the same request delivered twice starts one job,
    and a different request under a used id is refused (dead-lettered).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    event: Literal["council.request"] = "council.request"
    request_id: Identifier
    spec: CouncilSpec | None = None
    spec_ref: SpecRef | None = None
    created_at: float = Field(default_factory=time.time)

    @model_validator(mode="after")
    def _one_spec(self) -> CouncilRequested:
        if (self.spec is None) == (self.spec_ref is None):
            raise ValueError("spec: give exactly one of spec (the council spec) and spec_ref (a file name)")
        return self

    @property
    def subject(self) -> str:
        return COUNCIL_REQUEST

    @property
    def key(self) -> str:
        """``request/{request_id}``: a producer's retried publish is stored once."""
        return f"request/{self.request_id}"

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class CouncilRequestDead(BaseModel):
    """A request the dispatcher could not turn into a job, with the payload and the reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    event: Literal["council.request.dead"] = "council.request.dead"
    reason: str
    #: The request as it arrived (UTF-8, undecodable bytes replaced).
    payload: str
    #: The request's id when it could be read from the payload.
    request_id: str | None = None
    #: Where the request sits in ``COUNCIL_REQUESTS``, and how often it was delivered.
    stream_seq: int | None = None
    deliveries: int | None = None
    created_at: float = Field(default_factory=time.time)

    @property
    def subject(self) -> str:
        return COUNCIL_REQUEST_DEAD

    @property
    def key(self) -> str:
        """Keyed by the request's stream sequence: a redelivered bad request is dead once."""
        return f"request/dead/{self.stream_seq if self.stream_seq is not None else self.request_id}"

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


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


def submission_id_for(request_id: str) -> str:
    """The submission id (Ray job id, event key prefix) the dispatcher gives request ``request_id``."""
    return f"dispatch-{request_id}"


def decode_request(payload: bytes) -> CouncilRequested:
    """Parse and validate a council request; never raises anything but :class:`InvalidRequest`.

    Raises:
        InvalidRequest: too big, not JSON, not an object, a newer ``schema_version``, an unknown
            field, an invalid spec, or neither/both of ``spec`` and ``spec_ref``; the reason
            names the field, and ``request_id`` is set when the payload has a usable one.
    """
    if len(payload) > MAX_REQUEST_BYTES:
        raise InvalidRequest(f"the request is {len(payload)} bytes; at most {MAX_REQUEST_BYTES} are accepted")
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: deeply nested arrays exhaust the parser's stack; still just bad input.
        raise InvalidRequest(f"not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"expected a JSON object, got {type(raw).__name__}")
    request_id = _request_id_of(raw)
    version = raw.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidRequest(f"schema_version is not an integer: {version!r:.50}", request_id=request_id)
    if version > SCHEMA_VERSION:
        raise InvalidRequest(
            f"schema_version {version} is newer than this dispatcher's ({SCHEMA_VERSION}); upgrade swe-fleet",
            request_id=request_id,
        )
    try:
        return CouncilRequested.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequest(_first_problem(exc), request_id=request_id) from None
    except RecursionError:
        raise InvalidRequest("the request is nested too deeply", request_id=request_id) from None


def _request_id_of(raw: dict[str, Any]) -> str | None:
    value = raw.get("request_id")
    return value[:200] if isinstance(value, str) and value else None


def _first_problem(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        return f"unknown field {loc}{more}"
    msg = str(first["msg"]).removeprefix("Value error, ")
    # Model validators name the field at the start of their message ("tasks.0.id: duplicate id").
    named = re.match(r"^([\w.]+): (.*)$", msg, re.S) if first["type"] == "value_error" else None
    if named:
        loc = named[1] if loc == "<root>" else f"{loc}.{named[1]}"
        msg = named[2]
    return f"invalid field {loc}: {msg}{more}"


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of every council event (for consumers in other languages)."""
    return _ADAPTER.json_schema()


def request_json_schema() -> dict[str, Any]:
    """The JSON Schema of a ``council.request`` payload (for producers in other languages)."""
    return CouncilRequested.model_json_schema()
