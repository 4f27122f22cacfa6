"""The one error tree of swe-fleet.

Every error a caller can act on derives from :class:`SweFleetError` and carries the
fields that caller needs. Messages say what happened *and what to do next*.

::

    SweFleetError
    ├── SpecError                 bad council spec (file, field)
    ├── ConfigError               a setting out of its range (setting)
    ├── AddressError              an address of the wrong kind for its use (address, use)
    ├── SubmissionError           Jobs API trouble (submission_id, job_id, url)
    │   ├── DashboardUnreachable  the dashboard did not answer within the bound (url)
    │   ├── DashboardUnauthorized the dashboard refused our token: missing or wrong (url)
    │   ├── SubmissionConflict    same submission_id, different request (submission_id)
    │   └── JobWaitTimeout        the job did not reach a terminal state in time
    ├── PublishError              JetStream publish failed after retries (subject, key)
    │   ├── NatsUnreachable       NATS did not answer within the bound (url)
    │   │   └── NatsRefused       NATS answered but refused this client's credentials
    │   │       └── NatsPermissionDenied  the server denied a subject to these credentials (subject)
    │   └── OutboxWritten         ... and the events not acknowledged are in an outbox file (path, count)
    ├── OutboxError               an outbox file cannot be written, read or parsed (path, line)
    ├── StreamConfigMismatch      an existing stream has an incompatible config (stream, differences)
    ├── UndecodableEvent          a payload on a council subject is not a valid event (reason, payload)
    ├── InvalidVote               a vote that cannot be read (reason)
    ├── LLMError                  the LLM backend failed (backend)
    │   └── ServerStatusError     the vLLM server answered a non-200 status (status, url)
    ├── ModelError                the model could not be located or prepared (model)
    ├── CheckpointMismatch        a checkpoint of another spec under this id (submission_id)
    ├── DispatchError             a council request could not be dispatched or awaited (request_id)
    │   ├── InvalidRequest        a request payload is not a valid council request (reason)
    │   ├── RequestRejected       the dispatcher dead-lettered the request (reason)
    │   ├── CouncilIncomplete     the job ended without every task's result (state, results)
    │   └── DispatchTimeout       no final result within the bound (timeout_s)
    ├── PreflightFailed           a preflight check failed; nothing was submitted (node, check, failures)
    ├── LocalStackError           a local process did not start or stop (process)
    └── NodeStartError            ``swe-fleet node start`` cannot start a Ray node
        ├── NodeConfigError       an entrypoint variable is invalid (variable)
        └── NoHeadFound           no live head answered within the bound (hosts)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class SweFleetError(Exception):
    """Base of every error swe-fleet raises on purpose."""


class SpecError(SweFleetError):
    """A council spec could not be read or is invalid.

    Attributes:
        source: the file (or "<string>") the spec came from.
        field: dotted path of the offending field, or None when the file itself is bad.
    """

    def __init__(self, message: str, *, source: str | Path = "<string>", field: str | None = None):
        self.source = str(source)
        self.field = field
        where = f"{self.source}: {field}" if field else self.source
        super().__init__(f"{where}: {message}")


class ConfigError(SweFleetError):
    """A setting given in code or on the command line is out of its range.

    Attributes:
        setting: the setting to fix (e.g. ``max_in_flight``, ``backoff_s``).
    """

    def __init__(self, message: str, *, setting: str):
        self.setting = setting
        super().__init__(message)


class AddressError(SweFleetError):
    """An address was given where it cannot work (wrong scheme for its use, malformed)."""

    def __init__(self, message: str, *, address: str, use: str):
        self.address = address
        self.use = use
        super().__init__(message)


class SubmissionError(SweFleetError):
    """The Jobs API refused or failed a request.

    Attributes:
        submission_id: the deliberation concerned (event keys, checkpoints), when known.
        job_id: Ray's id of the one job (attempt) concerned, when known.
        url: the Jobs API.
    """

    def __init__(
        self,
        message: str,
        *,
        submission_id: str | None = None,
        job_id: str | None = None,
        url: str | None = None,
    ):
        self.submission_id = submission_id
        self.job_id = job_id
        self.url = url
        super().__init__(message)


class DashboardUnreachable(SubmissionError):
    """The Ray dashboard (Jobs API) did not answer within the bound."""


class DashboardUnauthorized(SubmissionError):
    """The Ray dashboard refused the request's auth token (none was sent, or the wrong one)."""


class SubmissionConflict(SubmissionError):
    """A job with this submission_id exists but was submitted with a different request."""


class JobWaitTimeout(SubmissionError):
    """The job did not reach a terminal state within the wait bound."""


class PublishError(SweFleetError):
    """An event could not be published to JetStream after the retry budget."""

    def __init__(self, message: str, *, subject: str | None = None, key: str | None = None):
        self.subject = subject
        self.key = key
        super().__init__(message)


class NatsUnreachable(PublishError):
    """NATS did not accept a connection within the bound."""

    def __init__(self, message: str, *, url: str):
        self.url = url
        super().__init__(message)


class NatsRefused(NatsUnreachable):
    """NATS answered but refused this client: its credentials, or its TLS (an untrusted
    certificate, TLS required or not offered). The message names the variable that sets it."""


class NatsPermissionDenied(NatsRefused):
    """NATS let this client in but denied it a subject: its role may not publish or read there
    (docs/security.md has the roles). The message names the subject and the credentials used.

    Attributes:
        denied_subject: the subject the server named.
    """

    def __init__(self, message: str, *, url: str, denied_subject: str):
        self.denied_subject = denied_subject
        super().__init__(message, url=url)


class OutboxWritten(PublishError):
    """Publishing failed, and every event not acknowledged was appended to an outbox file.

    Nothing is lost: ``swe-fleet outbox replay PATH`` publishes them later, deduplicated by key.

    Attributes:
        path: the outbox file (JSONL, one event per line).
        count: how many events this failure appended to it.
    """

    def __init__(
        self, message: str, *, path: Path, count: int, subject: str | None = None, key: str | None = None
    ):
        self.path = path
        self.count = count
        super().__init__(message, subject=subject, key=key)


class OutboxError(SweFleetError):
    """An outbox file could not be written, read, or has a line that is not an outbox entry.

    Attributes:
        path: the outbox file.
        line: 1-based number of the offending line, or None when the file itself is the problem.
    """

    def __init__(self, message: str, *, path: Path, line: int | None = None):
        self.path = path
        self.line = line
        super().__init__(message)


class StreamConfigMismatch(SweFleetError):
    """A JetStream stream exists with a config we cannot use; it is never silently changed.

    Attributes:
        stream: the stream's name.
        differences: one human-readable line per incompatible setting.
    """

    def __init__(self, message: str, *, stream: str, differences: tuple[str, ...] = ()):
        self.stream = stream
        self.differences = differences
        super().__init__(message)


class UndecodableEvent(SweFleetError):
    """A payload on a council subject that is not a valid event of this schema.

    Attributes:
        reason: what is wrong with it (also the message).
        payload: the bytes as they arrived.
    """

    def __init__(self, reason: str, payload: bytes):
        self.reason = reason
        self.payload = payload
        super().__init__(reason)


class ResultNotFound(SweFleetError):
    """Nothing is known of a submission: no result in the results store (``swe-fleet result``),
    or neither a result nor an event (``swe-fleet report``).

    Attributes:
        submission_id: the submission asked for.
    """

    def __init__(self, message: str, *, submission_id: str):
        self.submission_id = submission_id
        super().__init__(message)


class InvalidVote(SweFleetError):
    """A vote that cannot be read: no JSON object, a candidate missing, a score out of range.

    Attributes:
        reason: what is wrong with it (also the message).
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class LLMError(SweFleetError):
    """The LLM backend failed to produce completions."""

    def __init__(self, message: str, *, backend: str):
        self.backend = backend
        super().__init__(message)


class ServerStatusError(LLMError):
    """The vLLM server answered with a non-200 status.

    It never leaves the server backend's ``generate`` (a failed request becomes a completion
    with ``error``); it lets the retry policy tell transient statuses (429, 5xx) from the
    request's own fault (other 4xx).

    Attributes:
        status: the HTTP status.
        url: the URL that answered it.
        server_message: the server's error message (``error.message`` of vLLM's JSON body).
    """

    def __init__(self, *, status: int, url: str, server_message: str) -> None:
        self.status = status
        self.url = url
        self.server_message = server_message
        super().__init__(f"HTTP {status} from {url}: {server_message}", backend="server")


class ModelError(SweFleetError):
    """A model could not be located or prepared."""

    def __init__(self, message: str, *, model: str):
        self.model = model
        super().__init__(message)


class CheckpointMismatch(SweFleetError):
    """A saved checkpoint belongs to another spec than the one being run under its id."""

    def __init__(self, message: str, *, submission_id: str):
        self.submission_id = submission_id
        super().__init__(message)


class DispatchError(SweFleetError):
    """A council request could not be dispatched, or its outcome could not be awaited.

    Attributes:
        request_id: the request concerned, when known.
    """

    def __init__(self, message: str, *, request_id: str | None = None):
        self.request_id = request_id
        super().__init__(message)


class InvalidRequest(DispatchError):
    """A ``council.request`` payload that is not a valid request (the dispatcher dead-letters it).

    Attributes:
        reason: what is wrong, naming the field; also the message.
    """

    def __init__(self, reason: str, *, request_id: str | None = None):
        self.reason = reason
        super().__init__(reason, request_id=request_id)


class RequestRejected(DispatchError):
    """The dispatcher dead-lettered the request (``council.request.dead``); no job will run.

    Attributes:
        reason: the dispatcher's reason.
    """

    def __init__(self, message: str, *, reason: str, request_id: str | None = None):
        self.reason = reason
        super().__init__(message, request_id=request_id)


class CouncilIncomplete(DispatchError):
    """The council's job ended (failed, stopped, or succeeded with results missing) before
    every task had its ``council.deliberation.completed``.

    Attributes:
        state: the job's terminal state (``failed``, ``stopped``, ``succeeded``).
        submission_id: the deliberation's id (event keys, ``swe-fleet submit --retry-failed``).
        results: the task results that did arrive.
    """

    def __init__(
        self,
        message: str,
        *,
        state: str,
        submission_id: str,
        results: Sequence[Any] = (),
        request_id: str | None = None,
    ):
        self.state = state
        self.submission_id = submission_id
        self.results = list(results)
        super().__init__(message, request_id=request_id)


class DispatchTimeout(DispatchError):
    """No final result within the bound; the job (if any) keeps running.

    Attributes:
        timeout_s: the bound.
        submission_id: the deliberation's id.
    """

    def __init__(self, message: str, *, timeout_s: float, submission_id: str, request_id: str | None = None):
        self.timeout_s = timeout_s
        self.submission_id = submission_id
        super().__init__(message, request_id=request_id)


class PreflightFailed(SweFleetError):
    """A preflight check failed (a node lacks a pinned module, NATS is unreachable from a node ...),
    so the council job was not submitted.

    Attributes:
        node: where the first failing check ran (a node's ``IP (node-id prefix)``, ``client``
            or ``cluster``).
        check: the first failing check's name (e.g. ``module nats``).
        failures: one line per failing check: node, check, what was found and the fix.
    """

    def __init__(self, message: str, *, node: str, check: str, failures: tuple[str, ...] = ()):
        self.node = node
        self.check = check
        self.failures = failures
        super().__init__(message)


class LocalStackError(SweFleetError):
    """A process of the embedded local stack did not start (or stop) as expected."""

    def __init__(self, message: str, *, process: str):
        self.process = process
        super().__init__(message)


class NodeStartError(SweFleetError):
    """``swe-fleet node start`` could not start this Ray node."""


class NodeConfigError(NodeStartError):
    """An environment variable of the node entrypoint is missing, malformed or contradictory.

    Attributes:
        variable: the variable to fix (e.g. ``HEAD_ADDRESS``, ``SWE_FLEET_NUM_CPUS``).
    """

    def __init__(self, message: str, *, variable: str):
        self.variable = variable
        super().__init__(message)


class NoHeadFound(NodeStartError):
    """No live Ray head answered on any host this node may join, within the wait bound.

    Attributes:
        hosts: the ``host:port`` addresses probed.
        waited_s: how long this node waited for one of them.
    """

    def __init__(self, message: str, *, hosts: tuple[str, ...], waited_s: float):
        self.hosts = hosts
        self.waited_s = waited_s
        super().__init__(message)
