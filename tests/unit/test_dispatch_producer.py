"""request_council's ticket: which events end the wait, and how (results, rejection, failure, timeout)."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import pytest

from swe_fleet.dispatch import producer
from swe_fleet.dispatch.producer import TICKET_OUTAGE_POLICY, _Waiter
from swe_fleet.dispatch.requests import CouncilRequestDead, CouncilRequested, submission_id_for
from swe_fleet.errors import CouncilIncomplete, DispatchTimeout, RequestRejected
from swe_fleet.events import CouncilJobStatus, DeliberationCompleted, JobState, RankedAgent
from swe_fleet.nats.connection import JetStreamConnection
from swe_fleet.nats.pull import Subscription
from swe_fleet.spec import CouncilSpec

SPEC = CouncilSpec.from_dict(
    {
        "tasks": [{"id": "t1", "prompt": "p"}, {"id": "t2", "prompt": "q"}],
        "agents": [{"id": "a", "role": "x"}, {"id": "b", "role": "y"}],
    }
)
RID = "r-1"
SID = submission_id_for(RID)
REQUEST_SEQ = 41


def _waiter(spec: CouncilSpec | None = SPEC, timeout_s: float = 60) -> _Waiter:
    request = (
        CouncilRequested(request_id=RID, spec=spec)
        if spec
        else CouncilRequested(request_id=RID, spec_ref="x")
    )
    return _Waiter(request, SID, REQUEST_SEQ, spec, timeout_s, "nats://127.0.0.1:1")


def _result(task_id: str, sid: str = SID) -> bytes:
    return DeliberationCompleted(
        submission_id=sid,
        council="c",
        task_id=task_id,
        outcome="decided",
        winner="a",
        ranking=[RankedAgent(agent_id="a", rank=1, mean_score=7.0, votes=1)],
        scores={},
        votes_counted=1,
        votes_expected=2,
    ).to_bytes()


def _status(state: JobState, message: str | None = None) -> bytes:
    return CouncilJobStatus(
        submission_id=SID, council="c", state=state, request_id=RID, job_id=SID, message=message
    ).to_bytes()


def test_every_task_result_resolves_the_ticket_in_spec_order() -> None:
    """The ticket resolves as soon as every task has its result, ordered as in the spec; other
    submissions' events, status events before the end, and junk are ignored."""
    w = _waiter()
    for data in (
        _status("submitted"),
        _status("running"),
        _result("t2"),
        _result("t1", sid="other"),
        b"junk",
    ):
        assert w._take("event", data) is None
    out = w._take("event", _result("t1"))
    assert out is not None and [r.task_id for r in out] == ["t1", "t2"]


@pytest.mark.parametrize("state", ["failed", "stopped"])
def test_a_job_that_ends_without_every_result_raises_council_incomplete(state: JobState) -> None:
    """A failed or stopped job raises CouncilIncomplete with its state, reason and the results so far."""
    w = _waiter()
    w._take("event", _result("t1"))
    with pytest.raises(CouncilIncomplete, match="exit code 1") as info:
        w._take("event", _status(state, "exit code 1"))
    assert info.value.state == state and info.value.submission_id == SID
    assert [r.task_id for r in info.value.results] == ["t1"]


def test_a_spec_ref_request_resolves_when_the_job_succeeded() -> None:
    """Without the spec the ticket cannot count tasks: the succeeded status (which comes after
    every result) resolves it with what arrived."""
    w = _waiter(spec=None)
    assert w._take("event", _result("t1")) is None
    out = w._take("event", _status("succeeded"))
    assert out is not None and [r.task_id for r in out] == ["t1"]


def test_only_this_requests_dead_letter_rejects_it() -> None:
    """A dead letter with this request's id and stream sequence raises RequestRejected with the
    reason; another request's (even under the same id) does not."""
    w = _waiter()
    other = CouncilRequestDead(reason="conflict", payload="{}", request_id=RID, stream_seq=REQUEST_SEQ + 1)
    assert w._take("dead", other.to_bytes()) is None
    ours = CouncilRequestDead(reason="unknown field x", payload="{}", request_id=RID, stream_seq=REQUEST_SEQ)
    with pytest.raises(RequestRejected, match="unknown field x") as info:
        w._take("dead", ours.to_bytes())
    assert info.value.request_id == RID and info.value.reason == "unknown field x"


class _QuietSub:
    """A pull subscription with nothing to deliver (nats-py's fetch signature)."""

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's API
        await asyncio.sleep(timeout)
        raise nats.errors.TimeoutError

    async def unsubscribe(self) -> None:
        return None


class _Conn:
    is_connected = False
    is_closed = False
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_no_outcome_within_the_bound_raises_dispatch_timeout() -> None:
    """With nothing arriving, the ticket raises DispatchTimeout naming the submission, and closes
    its connection."""
    conn = _Conn()
    nats_conn = JetStreamConnection(nc=conn, js=None, url="nats://127.0.0.1:1", bound_s=1)
    subs = [Subscription(conn, _QuietSub()) for _ in range(2)]
    with pytest.raises(DispatchTimeout, match=SID) as info:
        await asyncio.wait_for(_waiter(timeout_s=0.3).run(nats_conn, *subs), 10)
    assert info.value.timeout_s == 0.3 and info.value.request_id == RID
    assert conn.closed


def test_a_tickets_consumers_wait_out_reconnects_until_the_connection_gives_up() -> None:
    """No time bound of their own (the ticket's timeout is one): half-second waits while NATS
    reconnects, and a connection closed for good ends them at once."""
    assert TICKET_OUTAGE_POLICY.budget_s is None
    assert {TICKET_OUTAGE_POLICY.wait_s(n) for n in range(5)} == {0.5}
    assert TICKET_OUTAGE_POLICY.gives_up(1e6, closed=False) is None
    assert TICKET_OUTAGE_POLICY.gives_up(0, closed=True) == "closed"


class _DeliverThenSwallowOneCancel:
    """Delivers ``payloads`` once, then fetches nothing; the first cancel it gets is lost, as
    nats-py's fetch loses one that arrives with a message (tests/unit/test_tasks.py)."""

    def __init__(self, payloads: list[bytes]) -> None:
        self._msgs = [_Msg(p) for p in payloads]
        self.swallowed = 0

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's API
        msgs, self._msgs = self._msgs, []
        if msgs:
            return msgs
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
        raise nats.errors.TimeoutError

    async def unsubscribe(self) -> None:
        return None


class _Msg:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def ack(self) -> None:
        return None


async def test_the_ticket_ends_with_its_results_even_when_a_consumer_loses_its_cancel() -> None:
    """Seen in a suite run: a ticket had both results yet never finished, stopping its
    consumers with one cancel each and one was lost. It ends, and closes its connection."""
    conn = _Conn()
    nats_conn = JetStreamConnection(nc=conn, js=None, url="nats://127.0.0.1:1", bound_s=1)
    events = _DeliverThenSwallowOneCancel([_result("t2"), _result("t1")])
    dead = _DeliverThenSwallowOneCancel([])
    run = asyncio.ensure_future(
        _waiter().run(nats_conn, Subscription(conn, events), Subscription(conn, dead))
    )
    done, _ = await asyncio.wait([run], timeout=10)
    assert done, "the ticket did not end"
    assert [r.task_id for r in run.result()] == ["t1", "t2"]
    assert events.swallowed + dead.swallowed >= 1  # the lost cancel happened
    assert conn.closed


def _completed(task_id: str) -> DeliberationCompleted:
    return DeliberationCompleted.model_validate_json(_result(task_id))


async def _run_on(payloads: list[bytes]) -> list[DeliberationCompleted]:
    conn = _Conn()
    nats_conn = JetStreamConnection(nc=conn, js=None, url="nats://127.0.0.1:1", bound_s=1)
    events = Subscription(conn, _DeliverThenSwallowOneCancel(payloads))
    dead = Subscription(conn, _DeliverThenSwallowOneCancel([]))
    return await asyncio.wait_for(_waiter().run(nats_conn, events, dead), 10)


async def test_a_succeeded_job_whose_results_went_by_before_the_ticket_listened_resolves_from_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen in a suite run: a second ticket for a request whose job was ending looked in the
    results store before the job had completed its record, then listened after the results had
    been published, and saw only `succeeded`. The job completes its record before it exits, so
    the ticket reads the missing results from the store, in spec order."""
    looked: list[str] = []

    async def stored(conn: Any, sid: str, spec: Any) -> list[DeliberationCompleted]:
        looked.append(sid)
        return [_completed("t2"), _completed("t1")]

    monkeypatch.setattr(producer, "_stored_results", stored)
    out = await _run_on([_result("t1"), _status("succeeded")])
    assert looked == [SID]
    assert [r.task_id for r in out] == ["t1", "t2"]


async def test_a_succeeded_job_with_results_in_neither_the_stream_nor_the_store_raises_council_incomplete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store is read once; results that are nowhere are reported missing, not waited for."""

    async def stored(conn: Any, sid: str, spec: Any) -> None:
        return None

    monkeypatch.setattr(producer, "_stored_results", stored)
    with pytest.raises(CouncilIncomplete, match=r"ended succeeded.*missing: \['t2'\]") as info:
        await _run_on([_result("t1"), _status("succeeded")])
    assert info.value.state == "succeeded"
    assert [r.task_id for r in info.value.results] == ["t1"]
