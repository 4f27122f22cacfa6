"""The ledger's records and the in-flight view it owns, against a stand-in key-value bucket: every
write keeps the view current, so no caller can forget to."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import nats.js.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swe_fleet.dispatch.ledger import RETENTION_S, DispatchRecord, Ledger, PendingPublish, ledger_key
from swe_fleet.errors import DispatchError


class StandInBucket:
    """A key-value bucket with revisions and compare-and-set, as nats-py's KeyValue answers."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int]] = {}
        self.revision = 0

    def _next(self) -> int:
        self.revision += 1
        return self.revision

    async def create(self, key: str, value: bytes) -> int:
        if key in self.data:
            raise nats.js.errors.KeyWrongLastSequenceError
        self.data[key] = (value, self._next())
        return self.revision

    async def update(self, key: str, value: bytes, last: int) -> int:
        if key not in self.data or self.data[key][1] != last:
            raise nats.js.errors.KeyWrongLastSequenceError
        self.data[key] = (value, self._next())
        return self.revision

    async def get(self, key: str) -> Any:
        if key not in self.data:
            raise nats.js.errors.KeyNotFoundError
        value, revision = self.data[key]
        return SimpleNamespace(value=value, revision=revision)

    async def delete(self, key: str, last: int) -> None:
        if self.data[key][1] != last:
            raise nats.js.errors.KeyWrongLastSequenceError
        del self.data[key]

    async def watchall(self, ignore_deletes: bool) -> Any:
        entries = [SimpleNamespace(value=v, revision=r) for v, r in self.data.values()]
        return _Watcher([*entries, None])


class _Watcher:
    def __init__(self, entries: list[Any]) -> None:
        self.entries = entries

    async def updates(self, timeout: float) -> Any:  # noqa: ASYNC109 - nats-py's API
        return self.entries.pop(0)

    async def stop(self) -> None:
        return None


def _pending(state: str = "running") -> PendingPublish:
    return PendingPublish.model_validate(
        {"state": state, "subject": f"council.job.{state}", "key": "k", "payload": "{}", "after_seq": 0}
    )


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


async def test_a_request_is_in_flight_from_its_reservation_until_a_terminal_state_is_published() -> None:
    """reserve, mark_submitted, an intent and a non-terminal state keep the view current; the
    terminal state takes the request out of it and says a slot is free."""
    ledger = Ledger(StandInBucket())
    record, created = await ledger.reserve("r1", "dispatch-r1", "c")
    assert created and ledger.in_flight == 1 and ledger.in_flight_record("r1") == record
    record = await ledger.mark_submitted(record, "dispatch-r1", "http://dash")
    assert ledger.in_flight_record("r1") == record and record.job_id == "dispatch-r1"
    record = await ledger.write_intent(record, _pending("running"))
    assert ledger.in_flight_record("r1") == record and record.pending is not None
    record = await ledger.mark_published(record, "running")
    assert ledger.in_flight_record("r1") == record and record.published == ("running",)
    assert not ledger.slot_freed.is_set()
    record = await ledger.mark_published(record, "succeeded")
    assert ledger.in_flight == 0 and ledger.in_flight_record("r1") is None
    assert ledger.slot_freed.is_set() and record.published == ("running", "succeeded")
    assert (await ledger.get("r1")) == record  # the bucket holds what the call returned


async def test_a_released_reservation_frees_its_slot_and_a_found_record_is_tracked_as_it_is() -> None:
    """release() empties the view; reserving an id whose record exists returns that record (in
    flight unless terminal)."""
    ledger = Ledger(StandInBucket())
    record, _ = await ledger.reserve("r1", "dispatch-r1", "c")
    await ledger.release(record)
    assert ledger.in_flight == 0 and ledger.slot_freed.is_set() and await ledger.get("r1") is None

    done = await ledger.mark_published(
        await ledger.mark_submitted((await ledger.reserve("r2", "s", "c"))[0], "s", "u"), "failed"
    )
    fresh = Ledger(ledger._kv)  # another run of the dispatcher, same bucket
    again, created = await fresh.reserve("r2", "s", "c")
    assert not created and again == done and fresh.in_flight == 0


async def test_loading_forgets_old_finished_records_and_starts_the_view_from_the_others() -> None:
    """A restarted ledger counts what a previous run left in flight (reservations included) and
    deletes terminal records older than RETENTION_S."""
    bucket = StandInBucket()
    before = Ledger(bucket)
    reserved, _ = await before.reserve("waiting", "s1", "c")
    running = await before.mark_submitted((await before.reserve("running", "s2", "c"))[0], "s2", "u")
    finished = await before.mark_published(
        await before.mark_submitted((await before.reserve("finished", "s3", "c"))[0], "s3", "u"), "succeeded"
    )
    after = Ledger(bucket)
    records, forgotten = await after.load(now=finished.updated_at + RETENTION_S + 1)
    assert forgotten == 1 and {r.request_id for r in records} == {"waiting", "running", "finished"}
    assert sorted(after.in_flight_ids()) == ["running", "waiting"] and "finished" not in bucket.data
    assert after.in_flight_record("running") == running and after.in_flight_record("waiting") == reserved


async def test_a_record_changed_under_the_ledger_is_a_dispatch_error_and_the_view_keeps_the_last() -> None:
    """A second writer of the same record (two dispatchers on one durable) is refused, naming the
    request; the view is not changed by the failed write."""
    ledger = Ledger(StandInBucket())
    record, _ = await ledger.reserve("r1", "s", "c")
    await ledger.mark_submitted(record, "s", "u")
    with pytest.raises(DispatchError, match="changed under this dispatcher") as info:
        await ledger.mark_submitted(record, "other", "u")  # an old revision
    assert info.value.request_id == "r1" and ledger.in_flight_record("r1").job_id == "s"  # type: ignore[union-attr]


async def test_holding_a_request_serialises_its_work_and_forgets_the_lock_of_a_finished_one() -> None:
    """Two workers on one request take turns; is_held says so meanwhile; once the request is
    out of flight its lock is dropped."""
    ledger = Ledger(StandInBucket())
    order: list[str] = []

    async def work(name: str) -> None:
        async with ledger.holding("r1"):
            order.append(f"{name} in")
            await asyncio.sleep(0.01)
            order.append(f"{name} out")

    first = asyncio.create_task(work("a"))
    await asyncio.sleep(0)
    assert ledger.is_held("r1")
    await asyncio.gather(first, work("b"))
    assert order == ["a in", "a out", "b in", "b out"]
    assert not ledger.is_held("r1") and ledger._locks == {}
