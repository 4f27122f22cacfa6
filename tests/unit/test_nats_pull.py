"""The one pull loop's outage policy as pure logic: a scripted subscription, an injected clock and
sleep (no server, no real waiting), tenacity style."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from structlog.testing import capture_logs

from swe_fleet.errors import NatsPermissionDenied, NatsUnreachable
from swe_fleet.nats.pull import FETCH_ERRORS, OutagePolicy, PullLoop, sleep_unless

URL = "nats://nats.example:4222"
AWAY = nats.errors.ConnectionReconnectingError
REFUSED = nats.js.errors.ServiceUnavailableError


@dataclass
class Step:
    """What one fetch does: return ``msgs`` or raise ``error``, with the connection in this state."""

    error: BaseException | None = None
    msgs: list[Any] = field(default_factory=list)
    connected: bool = False
    closed: bool = False


@dataclass
class Clock:
    """A clock that only the fake sleep (and fetch waits) move."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedSource:
    """A pull source that plays ``steps`` in order (the last one repeats)."""

    def __init__(self, clock: Clock, steps: Iterable[Step]) -> None:
        self.clock = clock
        self.steps = list(steps)
        self.state = Step(connected=True)
        self.fetches = 0
        self.reopens = 0
        self.reopen_error: BaseException | None = None
        self.denial: NatsPermissionDenied | None = None
        self.denials = 0  # how many the connection has had (a denial before a fetch is not its)

    @property
    def connected(self) -> bool:
        return self.state.connected

    @property
    def closed(self) -> bool:
        return self.state.closed

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's API
        self.state = self.steps[min(self.fetches, len(self.steps) - 1)]
        self.fetches += 1
        if self.state.error is not None:
            if isinstance(self.state.error, TimeoutError):
                self.clock.now += timeout  # a fetch that times out took its whole wait
            raise self.state.error
        return list(self.state.msgs)

    async def reopen(self) -> None:
        self.reopens += 1
        if self.reopen_error is not None:
            raise self.reopen_error

    def denial_mark(self) -> int:
        return self.denials

    def denied(self, url: str, since: int) -> NatsPermissionDenied | None:
        return self.denial if self.denials > since else None


def _loop(source: ScriptedSource, policy: OutagePolicy, clock: Clock) -> PullLoop:
    return PullLoop(
        source,
        batch=10,
        fetch_wait_s=1.0,
        policy=policy,
        url=URL,
        doing="consuming",
        hint="restart me when NATS is back",
        log_as="test",
        sleep=clock.sleep,
        clock=clock,
    )


async def _batches(loop: PullLoop, n: int) -> list[list[Any]]:
    return [await loop.next_batch() for _ in range(n)]


# ---- the policy as values ------------------------------------------------------------------------


def test_waits_double_from_the_initial_wait_up_to_the_cap() -> None:
    """0.1, 0.2, 0.4 ... capped at 2 s; equal bounds make a constant wait."""
    assert [OutagePolicy(initial_wait_s=0.1, max_wait_s=2.0).wait_s(n) for n in range(7)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        2.0,
        2.0,
    ]
    assert {OutagePolicy(initial_wait_s=1.0, max_wait_s=1.0).wait_s(n) for n in range(5)} == {1.0}


@pytest.mark.parametrize(
    ("policy", "away_s", "closed", "verdict"),
    [
        (OutagePolicy(budget_s=10), 10.0, False, None),
        (OutagePolicy(budget_s=10), 10.1, False, "budget"),
        (OutagePolicy(budget_s=10), 0.0, True, "closed"),
        (OutagePolicy(budget_s=10, reopen_when_closed=True), 0.0, True, None),
        (OutagePolicy(budget_s=10, reopen_when_closed=True), 11.0, True, "budget"),
        (OutagePolicy(budget_s=None), 1e9, False, None),
        (OutagePolicy(budget_s=None), 0.0, True, "closed"),
    ],
)
def test_the_loop_gives_up_on_a_closed_connection_or_an_outage_past_its_budget(
    policy: OutagePolicy, away_s: float, closed: bool, verdict: str | None
) -> None:
    """A closed connection ends the loop unless the policy reopens it; else only the budget does."""
    assert policy.gives_up(away_s, closed=closed) == verdict


@pytest.mark.parametrize(
    ("policy", "waits", "connected", "closed", "reopens"),
    [
        (OutagePolicy(reopen_after=3), 2, True, False, False),
        (OutagePolicy(reopen_after=3), 3, True, False, True),
        (OutagePolicy(reopen_after=3), 3, False, False, False),  # reconnecting: the client will
        (OutagePolicy(reopen_after=None), 99, True, False, False),
        (OutagePolicy(reopen_when_closed=True), 1, False, True, True),
        (OutagePolicy(reopen_when_closed=False, reopen_after=1), 5, False, True, False),
    ],
)
def test_the_subscription_is_bound_anew_only_where_the_policy_says(
    policy: OutagePolicy, waits: int, connected: bool, closed: bool, reopens: bool
) -> None:
    """Reopen a closed connection (if allowed), or a live one refused reopen_after times in a row."""
    assert policy.reopens(waits, connected=connected, closed=closed) is reopens


# ---- the loop --------------------------------------------------------------------------------------


async def test_a_fetch_timeout_on_a_live_connection_is_a_quiet_stream_not_an_outage() -> None:
    """No message within the fetch wait on a live connection: an empty batch, no wait, no outage."""
    clock = Clock()
    source = ScriptedSource(clock, [Step(nats.errors.TimeoutError(), connected=True)])
    loop = _loop(source, OutagePolicy(budget_s=1), clock)
    assert await _batches(loop, 5) == [[]] * 5
    assert clock.sleeps == [] and not loop.away
    assert loop.idle_s == 5.0  # five fetch waits without a message


async def test_outage_waits_grow_and_the_first_answered_fetch_ends_the_outage() -> None:
    """Waits double while NATS is away; the next answer ends the outage (logged once each way)
    and the waits of a later outage start over."""
    clock = Clock()
    steps = [Step(AWAY())] * 4 + [Step(msgs=["m1"], connected=True), Step(AWAY())]
    loop = _loop(
        ScriptedSource(clock, steps), OutagePolicy(budget_s=60, initial_wait_s=0.5, max_wait_s=2), clock
    )
    with capture_logs() as logs:
        batches = await _batches(loop, 6)
    assert batches == [[], [], [], [], ["m1"], []]
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.0, 0.5]
    assert [entry["event"] for entry in logs] == ["test.nats_away", "test.nats_back", "test.nats_away"]
    assert logs[1]["after_s"] == 5.5 and logs[0]["url"] == URL


async def test_an_outage_past_the_budget_raises_nats_unreachable_naming_url_and_what_to_do() -> None:
    """After budget_s of failed fetches: NatsUnreachable with the URL, what the loop did, the
    last error and the hint; the error is chained."""
    clock = Clock()
    loop = _loop(
        ScriptedSource(clock, [Step(AWAY())]), OutagePolicy(budget_s=5, initial_wait_s=1, max_wait_s=1), clock
    )
    with pytest.raises(NatsUnreachable) as info:
        await _batches(loop, 20)
    message = str(info.value)
    assert info.value.url == URL and URL in message
    assert "more than 5 s while consuming" in message and "restart me when NATS is back" in message
    assert "ConnectionReconnectingError" in message and isinstance(info.value.__cause__, AWAY)
    assert clock.sleeps == [1.0] * 6 and clock.now == 6.0  # gave up at the first failure past 5 s


async def test_a_connection_closed_for_good_ends_the_loop_at_once_when_the_policy_does_not_reopen() -> None:
    """The client gave up reconnecting: NatsUnreachable "closed for good" before any wait."""
    clock = Clock()
    source = ScriptedSource(clock, [Step(nats.errors.ConnectionClosedError(), closed=True)])
    with pytest.raises(NatsUnreachable, match="closed for good while consuming"):
        await _loop(source, OutagePolicy(budget_s=None), clock).next_batch()
    assert clock.sleeps == [] and source.reopens == 0


async def test_a_connection_closed_for_good_is_reopened_when_the_policy_says_so() -> None:
    """With reopen_when_closed, a closed connection is waited on and opened again; a reopen that
    fails while NATS is still away is not an error (the next fetch fails again)."""
    clock = Clock()
    closed = Step(nats.errors.ConnectionClosedError(), closed=True)
    source = ScriptedSource(clock, [closed, closed, Step(msgs=["m"], connected=True)])
    source.reopen_error = NatsUnreachable("still down", url=URL)
    loop = _loop(source, OutagePolicy(budget_s=60, reopen_when_closed=True), clock)
    assert await _batches(loop, 3) == [[], [], ["m"]]
    assert source.reopens == 2


async def test_a_live_connection_that_keeps_refusing_is_bound_anew_after_reopen_after_waits() -> None:
    """A consumer that was deleted answers 503 on a live connection: after 3 waits (and after
    each one from then on) the subscription is bound anew."""
    clock = Clock()
    source = ScriptedSource(clock, [Step(REFUSED(code=503, description="no responders"), connected=True)])
    loop = _loop(source, OutagePolicy(budget_s=60, reopen_after=3), clock)
    reopens = []
    for _ in range(5):
        await loop.next_batch()
        reopens.append(source.reopens)
    assert reopens == [0, 0, 1, 2, 3]


async def test_an_outage_is_not_idleness() -> None:
    """The idle time restarts after each wait of an outage: a consumer's idle timeout does not
    fire because NATS was away."""
    clock = Clock()
    steps = [Step(nats.errors.TimeoutError(), connected=True)] * 3 + [Step(AWAY())] * 3
    loop = _loop(
        ScriptedSource(clock, steps), OutagePolicy(budget_s=60, initial_wait_s=1, max_wait_s=1), clock
    )
    await _batches(loop, 3)
    assert loop.idle_s == 3.0
    await _batches(loop, 3)
    assert loop.idle_s == 0.0 and loop.away


async def test_errors_outside_the_policy_propagate_and_fetch_errors_widen_it() -> None:
    """A non-transient refusal is raised by the default policy; the dispatcher's policy
    (FETCH_ERRORS) counts any NATS error as an outage."""
    clock = Clock()
    bad = Step(nats.errors.BadSubjectError())
    with pytest.raises(nats.errors.BadSubjectError):
        await _loop(ScriptedSource(clock, [bad]), OutagePolicy(), clock).next_batch()
    loop = _loop(ScriptedSource(clock, [bad]), OutagePolicy(errors=FETCH_ERRORS), clock)
    assert await loop.next_batch() == [] and loop.away


async def test_without_a_budget_the_loop_rides_out_any_outage_until_the_connection_closes() -> None:
    """budget_s=None: hours of reconnecting are waited out; the connection giving up ends it."""
    clock = Clock()
    steps = [Step(AWAY())] * 5000 + [Step(nats.errors.ConnectionClosedError(), closed=True)]
    loop = _loop(
        ScriptedSource(clock, steps), OutagePolicy(budget_s=None, initial_wait_s=2, max_wait_s=2), clock
    )
    await _batches(loop, 5000)
    assert clock.now == 10_000.0
    with pytest.raises(NatsUnreachable, match="closed for good"):
        await loop.next_batch()


async def test_batches_end_when_ready_says_no() -> None:
    """batches() asks ``ready`` before every fetch and ends when it answers False."""
    clock = Clock()
    source = ScriptedSource(clock, [Step(msgs=["a"], connected=True)])
    answers = iter([True, True, False])

    async def ready() -> bool:
        return next(answers)

    got = [b async for b in _loop(source, OutagePolicy(), clock).batches(ready)]
    assert got == [["a"], ["a"]] and source.fetches == 2


async def test_sleep_unless_wakes_early_when_stop_or_the_other_event_is_set() -> None:
    """An interruptible sleep: the stop event (or a second one) ends it before the time is up."""
    stop, other = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    asyncio.get_running_loop().call_later(0.05, other.set)
    await sleep_unless(stop, 30, also=other)
    loop.call_later(0.05, stop.set)
    await sleep_unless(stop, 30)
    assert loop.time() - started < 5


def test_a_fetch_the_server_denied_raises_instead_of_passing_for_a_quiet_stream() -> None:
    """A denied MSG.NEXT only times out on a live connection: with a denial during that fetch it
    is NatsPermissionDenied at once, not a quiet stream waited on for ever; a denial the shared
    connection had before (another user's) leaves the quiet stream quiet."""
    clock = Clock()
    source = ScriptedSource(clock, [Step(error=nats.errors.TimeoutError(), connected=True)])
    loop = PullLoop(
        source, batch=1, fetch_wait_s=1.0, policy=OutagePolicy(), url="nats://x", doing="consuming",
        hint="", log_as="t", sleep=clock.sleep, clock=clock,
    )  # fmt: skip
    assert asyncio.run(loop.next_batch()) == []  # quiet
    source.denial = NatsPermissionDenied("no", url="nats://x", denied_subject="$JS.API.CONSUMER.MSG.NEXT.S.c")
    source.denials = 1  # an old denial (another user of the connection): still a quiet stream
    assert asyncio.run(loop.next_batch()) == []

    async def denied_during_the_fetch(batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109
        source.denials += 1
        raise nats.errors.TimeoutError

    source.fetch = denied_during_the_fetch  # type: ignore[method-assign]
    with pytest.raises(NatsPermissionDenied):
        asyncio.run(loop.next_batch())
