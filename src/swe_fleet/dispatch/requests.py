"""The request contract: what a service publishes on ``council.request`` (stream
``COUNCIL_REQUESTS``, :class:`CouncilRequested`), its validation (:func:`decode_request`, which
never raises anything but :class:`~swe_fleet.errors.InvalidRequest`), the submission id a request
gets (:func:`submission_id_for`), its spec (:func:`resolve_spec`) and the dead letter of a request
that cannot be dispatched (``council.request.dead``, :class:`CouncilRequestDead`).

The subjects and the stream are named in :mod:`swe_fleet.events` with every other subject.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swe_fleet.errors import InvalidRequest, SpecError
from swe_fleet.events import COUNCIL_REQUEST, COUNCIL_REQUEST_DEAD
from swe_fleet.spec import CouncilSpec, Identifier

#: The request and dead-letter payloads' own schema version (council events have theirs).
SCHEMA_VERSION = 1

#: A request bigger than this is refused (NATS' default max_payload is 1 MiB anyway).
MAX_REQUEST_BYTES = 1024 * 1024

#: How much of a bad payload a dead letter carries (the rest is cut, and the cut is marked).
MAX_DEAD_PAYLOAD_CHARS = 256 * 1024

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
        """The JSON payload on the wire (unset optional fields left out)."""
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

    @classmethod
    def of(
        cls,
        data: bytes,
        *,
        reason: str,
        request_id: str | None,
        stream_seq: int | None,
        deliveries: int | None,
    ) -> CouncilRequestDead:
        """The dead letter of the request ``data`` (cut after :data:`MAX_DEAD_PAYLOAD_CHARS`)."""
        payload = data.decode("utf-8", errors="replace")
        if len(payload) > MAX_DEAD_PAYLOAD_CHARS:
            cut = len(payload) - MAX_DEAD_PAYLOAD_CHARS
            payload = f"{payload[:MAX_DEAD_PAYLOAD_CHARS]}...[{cut} more characters cut]"
        return cls(
            reason=reason,
            payload=payload,
            request_id=request_id,
            stream_seq=stream_seq,
            deliveries=deliveries,
        )

    @property
    def subject(self) -> str:
        return COUNCIL_REQUEST_DEAD

    @property
    def key(self) -> str:
        """Keyed by the request's stream sequence: a redelivered bad request is dead once."""
        return f"request/dead/{self.stream_seq if self.stream_seq is not None else self.request_id}"

    def to_bytes(self) -> bytes:
        """The JSON payload on the wire."""
        return self.model_dump_json().encode()


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


def resolve_spec(request: CouncilRequested, spec_dir: Path | None) -> CouncilSpec:
    """The request's spec: its own, or the ``spec_ref`` file under ``spec_dir``.

    Raises:
        InvalidRequest: no ``spec_dir``, a reference leaving it, or an unreadable/invalid file.
    """
    if request.spec is not None:
        return request.spec
    ref = request.spec_ref or ""
    rid = request.request_id
    if spec_dir is None:
        raise InvalidRequest(
            f"spec_ref {ref!r}: this dispatcher has no --spec-dir; send the spec itself", request_id=rid
        )
    base = spec_dir.resolve()
    path = (base / ref).resolve()
    if ".." in PurePosixPath(ref).parts or not path.is_relative_to(base):
        raise InvalidRequest(f"spec_ref {ref!r} leaves the spec directory", request_id=rid)
    try:
        return CouncilSpec.from_file(path)
    except SpecError as exc:
        # The dispatcher's own directory layout is none of the requester's business.
        raise InvalidRequest(f"spec_ref {str(exc).replace(str(path), ref)}", request_id=rid) from None


def request_json_schema() -> dict[str, Any]:
    """The JSON Schema of a ``council.request`` payload (for producers in other languages)."""
    return CouncilRequested.model_json_schema()


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
