"""The dispatcher's wire contract: request validation (never a crash), spec references, status
event keys and subjects, and what consumers make of status events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swe_fleet.cli import format_event
from swe_fleet.dispatch.config import DispatcherConfig
from swe_fleet.dispatch.ledger import DispatchRecord, ledger_key
from swe_fleet.dispatch.service import resolve_spec, retry_delay_s
from swe_fleet.errors import ConfigError, InvalidRequest
from swe_fleet.events import (
    AGENT_RESPONSES_SUBJECTS,
    COUNCIL_JOB_STATUS_SUBJECTS,
    JOB_STATES,
    CouncilJobFailed,
    CouncilJobStatus,
    CouncilRequestDead,
    CouncilRequested,
    agent_response_key,
    decode_event,
    decode_request,
    request_json_schema,
    submission_id_for,
)
from swe_fleet.nats.consumer import COUNCIL_SUBJECTS
from swe_fleet.nats.publisher import subject_covers

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


def test_status_events_have_one_key_per_job_and_state() -> None:
    """Every state of a job has its own key and subject; no key collides with the driver's
    job-failed key or an agent response's key."""
    sid = submission_id_for("r-1")
    events = [
        CouncilJobStatus(submission_id=sid, council="c", state=s, request_id="r-1", job_id=sid)
        for s in JOB_STATES
    ]
    keys = {e.key for e in events}
    assert len(keys) == len(JOB_STATES)
    assert [e.subject for e in events] == list(COUNCIL_JOB_STATUS_SUBJECTS)
    assert (
        CouncilJobFailed(submission_id=sid, council="c", task_id="*", reason="x", job_id=sid).key not in keys
    )
    assert agent_response_key(sid, "job", "propose", 0, "status") not in keys
    assert sid == "dispatch-r-1"


def test_status_events_are_decoded_by_consumers_not_dead_lettered() -> None:
    """A status event on council.job.failed decodes as CouncilJobStatus, next to the driver's
    CouncilJobFailed on the same subject; the consumer's default subjects and the events stream
    cover every status subject."""
    status = CouncilJobStatus(
        submission_id="s", council="c", state="failed", request_id="r", job_id="s", message="exit 1"
    )
    assert decode_event(status.to_bytes()) == status
    driver = CouncilJobFailed(submission_id="s", council="c", task_id="*", reason="boom", job_id="s")
    assert isinstance(decode_event(driver.to_bytes()), CouncilJobFailed)
    for subject in COUNCIL_JOB_STATUS_SUBJECTS:
        assert subject in COUNCIL_SUBJECTS
        assert any(subject_covers(p, subject) for p in AGENT_RESPONSES_SUBJECTS)


def test_a_status_event_renders_as_one_line() -> None:
    """swe-fleet consume prints a status event with its state, request and reason."""
    line = format_event(
        CouncilJobStatus(
            submission_id="s", council="c", state="failed", request_id="r", job_id="s", message="a\nb"
        )
    )
    assert "\n" not in line and "FAILED" in line and "request r" in line and "a b" in line


def test_a_dead_letter_is_keyed_by_its_stream_sequence() -> None:
    """Dead-lettering the same request twice (a redelivery) stores it once."""
    a = CouncilRequestDead(reason="x", payload="{}", stream_seq=7)
    b = CouncilRequestDead(reason="x", payload="{}", stream_seq=7, deliveries=2)
    assert a.key == b.key == "request/dead/7" and a.subject == "council.request.dead"


@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True),
)
def test_ledger_keys_are_valid_and_one_to_one(a: str, b: str) -> None:
    """Every request id maps to a valid KV key, and different ids to different keys."""
    from nats.js.kv import _is_key_valid

    assert _is_key_valid(ledger_key(a))
    assert (ledger_key(a) == ledger_key(b)) == (a == b)


def test_a_record_is_terminal_once_a_terminal_state_was_published() -> None:
    """submitted and running keep a job in flight; succeeded, failed or stopped end it."""
    base = DispatchRecord(
        request_id="r", submission_id="s", council="c", reserved_at=0, updated_at=0, job_id="s"
    )
    assert not base.model_copy(update={"published": ("submitted", "running")}).terminal
    for state in ("succeeded", "failed", "stopped"):
        assert base.model_copy(update={"published": ("submitted", state)}).terminal
    assert "revision" not in json.loads(base.model_dump_json())


def test_retry_delays_grow_and_are_capped() -> None:
    """A request that keeps failing to submit comes back less and less often, at most every minute."""
    delays = [retry_delay_s(n) for n in range(1, 10)]
    assert delays == sorted(delays) and delays[0] == 2.0 and delays[-1] == 60.0


def test_the_request_consumer_never_drops_a_request_itself() -> None:
    """max_deliver is unlimited (the dispatcher dead-letters, with the payload); acks are explicit."""
    cfg = DispatcherConfig(nats_url="nats://x:1", dashboard_url="http://x:2", ack_wait_s=7)
    c = cfg.consumer_config()
    assert c.max_deliver == -1 and c.ack_wait == 7 and c.filter_subject == "council.request"
    with pytest.raises(ConfigError, match="max_in_flight"):
        DispatcherConfig(nats_url="nats://x:1", dashboard_url="http://x:2", max_in_flight=0)


def test_the_request_schema_is_exported_with_its_required_fields() -> None:
    """Producers in other languages get a JSON Schema naming request_id, spec and spec_ref."""
    schema = request_json_schema()
    assert schema["required"] == ["request_id"]
    assert {"request_id", "spec", "spec_ref"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
