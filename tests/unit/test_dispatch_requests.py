"""The request contract: request validation (never a crash), spec references, the submission
id, dead letters and the exported schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swe_fleet.dispatch.requests import (
    MAX_DEAD_PAYLOAD_CHARS,
    CouncilRequestDead,
    CouncilRequested,
    decode_request,
    request_json_schema,
    resolve_spec,
    submission_id_for,
)
from swe_fleet.errors import InvalidRequest

SPEC: dict[str, Any] = {
    "name": "tiny",
    "tasks": [{"id": "t1", "prompt": "Say hi."}],
    "agents": [{"id": "a", "role": "architect"}, {"id": "b", "role": "developer"}],
}


def _payload(**doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_a_valid_request_decodes_with_its_spec() -> None:
    """request_id plus an inline spec is a request; its key names the request."""
    req = decode_request(_payload(request_id="r-1", spec=SPEC))
    assert req.request_id == "r-1" and req.spec is not None and req.spec.name == "tiny"
    assert req.key == "request/r-1" and req.subject == "council.request"
    assert decode_request(req.to_bytes()) == req


def test_a_request_may_reference_its_spec_instead() -> None:
    """spec_ref (a relative file name) replaces the inline spec."""
    req = decode_request(_payload(request_id="r-2", spec_ref="councils/tiny.yaml"))
    assert req.spec is None and req.spec_ref == "councils/tiny.yaml"


@pytest.mark.parametrize(
    ("payload", "reason", "request_id"),
    [
        (b"\xff\xfe not json", "not JSON", None),
        (b"[1, 2]", "expected a JSON object, got list", None),
        (_payload(request_id="r", spec=SPEC, priority=3), "unknown field priority", "r"),
        (_payload(request_id="r", spec={**SPEC, "tasks": []}), "invalid field spec.tasks", "r"),
        (_payload(request_id="r", spec={**SPEC, "agnets": []}), "unknown field spec.agnets", "r"),
        (_payload(request_id="r"), "invalid field spec: give exactly one of spec", "r"),
        (_payload(request_id="r", spec=SPEC, spec_ref="x.yaml"), "give exactly one", "r"),
        (_payload(spec=SPEC), "invalid field request_id: Field required", None),
        (_payload(request_id="has space", spec=SPEC), "invalid field request_id", "has space"),
        (_payload(request_id="r", spec_ref="/etc/passwd"), "invalid field spec_ref", "r"),
        (_payload(request_id="r", spec=SPEC, schema_version=99), "newer than this dispatcher", "r"),
        (_payload(request_id="r", spec=SPEC, schema_version="1"), "not an integer", "r"),
        (b"[" * 100_000, "not JSON", None),
    ],
)
def test_bad_requests_raise_invalid_request_naming_the_problem(
    payload: bytes, reason: str, request_id: str | None
) -> None:
    """Each kind of bad request gives one InvalidRequest whose reason names the field, and the
    request id when the payload has one."""
    with pytest.raises(InvalidRequest) as info:
        decode_request(payload)
    assert reason in info.value.reason
    assert info.value.request_id == request_id


def test_an_oversized_request_is_refused_before_parsing() -> None:
    """A payload over the size limit is refused with the limit named."""
    with pytest.raises(InvalidRequest, match="at most"):
        decode_request(b" " * (1024 * 1024 + 1))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_REQUEST_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "request_id": _JSON | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True),
        "spec": _JSON
        | st.just(SPEC)
        | st.builds(
            lambda extra: {**SPEC, **extra},
            st.dictionaries(
                st.sampled_from(["tasks", "agents", "model", "protocol", "backend", "x"]), _JSON, max_size=2
            ),
        ),
        "spec_ref": _JSON | st.text(max_size=30),
        "schema_version": _JSON,
        "event": _JSON,
        "created_at": _JSON,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=200)
    | _JSON.map(lambda v: json.dumps(v).encode())
    | _REQUEST_LIKE.map(lambda v: json.dumps(v).encode())
)
def test_arbitrary_payloads_never_crash_the_validator(payload: bytes) -> None:
    """Whatever arrives, the validator returns a request or raises InvalidRequest, nothing else."""
    outcome: CouncilRequested | InvalidRequest
    try:
        outcome = decode_request(payload)
    except InvalidRequest as exc:
        outcome = exc
    if isinstance(outcome, InvalidRequest):
        assert outcome.reason
    else:
        assert (outcome.spec is None) != (outcome.spec_ref is None)


def test_spec_ref_is_read_from_the_spec_dir(tmp_path: Path) -> None:
    """A spec_ref names a file under --spec-dir; its spec is the request's."""
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "tiny.json").write_text(json.dumps(SPEC))
    req = decode_request(_payload(request_id="r", spec_ref="c/tiny.json"))
    assert resolve_spec(req, tmp_path).name == "tiny"


@pytest.mark.parametrize(
    ("ref", "spec_dir", "reason"),
    [
        ("tiny.json", None, "no --spec-dir"),
        ("c/../../secret.yaml", "dir", "leaves the spec directory"),
        ("missing.yaml", "dir", "spec_ref missing.yaml: cannot read"),
        ("bad.yaml", "dir", "spec_ref bad.yaml: tasks"),
    ],
)
def test_bad_spec_refs_are_invalid_requests(
    tmp_path: Path, ref: str, spec_dir: str | None, reason: str
) -> None:
    """No spec dir, a path leaving it, a missing or invalid file: InvalidRequest with the reason,
    and the dispatcher's own paths are not in it."""
    (tmp_path / "bad.yaml").write_text("agents: [{id: a, role: x}, {id: b, role: y}]\n")
    req = decode_request(_payload(request_id="r", spec_ref=ref))
    with pytest.raises(InvalidRequest) as info:
        resolve_spec(req, tmp_path if spec_dir else None)
    assert reason in info.value.reason
    assert str(tmp_path) not in info.value.reason


def test_a_dead_letter_is_keyed_by_its_stream_sequence() -> None:
    """Dead-lettering the same request twice (a redelivery) stores it once."""
    a = CouncilRequestDead(reason="x", payload="{}", stream_seq=7)
    b = CouncilRequestDead(reason="x", payload="{}", stream_seq=7, deliveries=2)
    assert a.key == b.key == "request/dead/7" and a.subject == "council.request.dead"


def test_the_request_schema_is_exported_with_its_required_fields() -> None:
    """Producers in other languages get a JSON Schema naming request_id, spec and spec_ref."""
    schema = request_json_schema()
    assert schema["required"] == ["request_id"]
    assert {"request_id", "spec", "spec_ref"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_the_submission_id_is_derived_from_the_request_id() -> None:
    """The same request id always names the same deliberation (and so finds its job again)."""
    assert submission_id_for("r-1") == submission_id_for("r-1") == "dispatch-r-1"


def test_a_dead_letter_keeps_the_payload_and_cuts_a_huge_one_saying_how_much() -> None:
    """The dead letter of a request carries its payload as text (bad bytes replaced), cut after
    MAX_DEAD_PAYLOAD_CHARS with the number of characters left out."""
    small = CouncilRequestDead.of(b"\xffnot json", reason="r", request_id=None, stream_seq=3, deliveries=1)
    assert small.payload == "\ufffdnot json" and small.key == "request/dead/3"
    big = CouncilRequestDead.of(
        b"x" * (MAX_DEAD_PAYLOAD_CHARS + 10), reason="r", request_id="q", stream_seq=4, deliveries=2
    )
    assert big.payload == "x" * MAX_DEAD_PAYLOAD_CHARS + "...[10 more characters cut]"
    assert (big.request_id, big.deliveries) == ("q", 2)
