"""The one pull loop: batches from a JetStream pull subscription, a quiet stream told apart from
NATS being away, and an outage ridden out within an :class:`OutagePolicy`.

Every reader of a pull subscription goes through :class:`PullLoop`: the consumer
(:func:`~swe_fleet.nats.consumer.iter_events`), the dispatcher (its requests) and
``request_council``'s ticket (results and dead letters). They differ only in their policy value:

- a fetch that times out while the connection is up is a quiet stream: no outage;
- any other of the policy's ``errors`` (the connection down or reconnecting, no responders, a
  consumer that refuses) begins or continues an outage: the loop waits (growing, capped waits),
  binds the subscription anew if the policy says so, and raises
  :class:`~swe_fleet.errors.NatsUnreachable` once the connection is closed for good (unless the
  policy reopens it) or the outage outlasts ``budget_s``.

The policy is a pure value and the loop takes its clock and its sleep as arguments, so both are
tested without a server or real waiting (tests/unit/test_nats_pull.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import nats.errors
import structlog

from swe_fleet.errors import NatsPermissionDenied, NatsUnreachable
from swe_fleet.nats.connection import denial_mark, permission_denial
from swe_fleet.nats.policy import TRANSIENT_ERRORS

log = structlog.get_logger(__name__)

#: What a fetch can raise while NATS, or the consumer, is away: the transient errors and any
#: other refusal of the client or the server.
FETCH_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, nats.errors.Error)

#: Why a pull loop gives up: the connection was closed for good, or the outage outlasted its budget.
GiveUp = Literal["closed", "budget"]


@dataclass(frozen=True)
class OutagePolicy:
    """How a pull loop rides out NATS being away.

    Attributes:
        budget_s: how long an outage may last before the loop gives up; None: no time bound of
            its own (the connection giving up, or the caller's own deadline, ends it).
        initial_wait_s, max_wait_s: the wait after each failed fetch of an outage doubles from
            ``initial_wait_s`` up to ``max_wait_s`` (equal values: a constant wait).
        reopen_when_closed: a connection closed for good (the client gave up reconnecting) is
            opened again; False: the loop gives up at once.
        reopen_after: after this many waits on a live connection that keeps refusing (the
            consumer was deleted, or expired), bind the subscription anew; None: never.
        errors: what a failed fetch may raise and still be an outage (anything else propagates).
    """

    budget_s: float | None = 120.0
    initial_wait_s: float = 0.1
    max_wait_s: float = 2.0
    reopen_when_closed: bool = False
    reopen_after: int | None = None
    errors: tuple[type[BaseException], ...] = TRANSIENT_ERRORS

    def wait_s(self, waits: int) -> float:
        """The wait after a failed fetch, when ``waits`` waits of this outage came before it."""
        return float(min(self.initial_wait_s * 2**waits, self.max_wait_s))

    def gives_up(self, away_s: float, *, closed: bool) -> GiveUp | None:
        """Why the loop stops after a failed fetch ``away_s`` into an outage, or None to go on."""
        if closed and not self.reopen_when_closed:
            return "closed"
        if self.budget_s is not None and away_s > self.budget_s:
            return "budget"
        return None

    def reopens(self, waits: int, *, connected: bool, closed: bool) -> bool:
        """Whether to bind the subscription anew after the ``waits``-th wait of an outage."""
        if closed:
            return self.reopen_when_closed
        return connected and self.reopen_after is not None and waits >= self.reopen_after


class PullSource(Protocol):
    """What a pull loop reads: a pull subscription and the state of its connection."""

    @property
    def connected(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    async def fetch(self, batch: int, timeout: float) -> list[Any]: ...  # noqa: ASYNC109 - nats-py's API

    async def reopen(self) -> None: ...

    def denial_mark(self) -> int:
        """How many denials this source's connection has had (see :meth:`denied`)."""
        ...

    def denied(self, url: str, since: int) -> NatsPermissionDenied | None:
        """What the server denied this source's connection after ``since`` denials (a fetch it
        denies only times out)."""
        ...


@dataclass
class Subscription:
    """A pull subscription on a connection its owner manages (:class:`PullSource`).

    It is never bound anew by the loop (:meth:`reopen` does nothing): the dispatcher does not
    create its durable again behind the operator's back, and a ticket's consumers live as long
    as their connection.
    """

    nc: Any
    sub: Any

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    @property
    def closed(self) -> bool:
        return bool(self.nc.is_closed)

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109 - nats-py's API
        return list(await self.sub.fetch(batch, timeout=timeout))

    async def reopen(self) -> None:
        return None

    def denial_mark(self) -> int:
        return denial_mark(self.nc)

    def denied(self, url: str, since: int) -> NatsPermissionDenied | None:
        return permission_denial(self.nc, url, since=since)

    async def unsubscribe(self) -> None:
        """End the subscription; never raises (call it before draining the connection: a pull
        subscription's late "no messages" status would keep the drain waiting)."""
        with contextlib.suppress(*FETCH_ERRORS):
            await self.sub.unsubscribe()


class PullLoop:
    """Fetches batches from ``source`` under ``policy`` (see the module docstring).

    Args:
        batch, fetch_wait_s: at most this many messages per fetch; each fetch waits at most
            ``fetch_wait_s``.
        url, doing, hint: for the error: whose NATS, what the loop was doing ("consuming"), and
            what to do next.
        log_as: prefix of the loop's log events (``<log_as>.nats_away``, ``<log_as>.nats_back``).
        sleep, clock: injectable for tests (the waits of an outage; time since the outage began).
    """

    def __init__(
        self,
        source: PullSource,
        *,
        batch: int,
        fetch_wait_s: float,
        policy: OutagePolicy,
        url: str,
        doing: str,
        hint: str,
        log_as: str,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.batch = batch
        self.fetch_wait_s = fetch_wait_s
        self.policy = policy
        self._url = url
        self._doing = doing
        self._hint = hint
        self._log_as = log_as
        self._sleep = sleep
        self._clock = clock
        self._away_since: float | None = None
        self._waits = 0
        self._active_at = clock()

    @property
    def away(self) -> bool:
        """NATS is away: the last fetch failed as an outage."""
        return self._away_since is not None

    @property
    def idle_s(self) -> float:
        """Seconds since the last message arrived, or since the loop began (an outage does not count)."""
        return self._clock() - self._active_at

    async def next_batch(self) -> list[Any]:
        """One fetch: its messages, or ``[]`` for a quiet stream or a wait during an outage.

        Raises:
            NatsUnreachable: the policy gave up on the outage.
        """
        mark = self.source.denial_mark()
        try:
            msgs = await self.source.fetch(self.batch, timeout=self.fetch_wait_s)
        except self.policy.errors as exc:
            if isinstance(exc, TimeoutError) and self.source.connected:
                # Only a denial during this fetch: the connection is shared (a dispatcher's
                # follower, ledger and status publisher use it too).
                denied = self.source.denied(self._url, mark)
                if denied is not None:
                    raise denied from None  # not quiet: the server drops what this role may not ask
                self._back()
                return []  # a quiet stream
            await self._ride_out(exc)
            return []
        self._back()
        if msgs:
            self._active_at = self._clock()
        return msgs

    async def batches(
        self, ready: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncGenerator[list[Any], None]:
        """:meth:`next_batch` again and again; ``ready`` (awaited before each fetch) ends it with False."""
        while ready is None or await ready():
            yield await self.next_batch()

    async def _ride_out(self, exc: BaseException) -> None:
        now = self._clock()
        if self._away_since is None:
            self._away_since = now
            log.warning(f"{self._log_as}.nats_away", url=self._url, error=f"{type(exc).__name__}: {exc}")
        why = self.policy.gives_up(now - self._away_since, closed=self.source.closed)
        if why is not None:
            raise NatsUnreachable(self._give_up_message(why, exc), url=self._url) from exc
        await self._sleep(self.policy.wait_s(self._waits))
        self._waits += 1
        self._active_at = self._clock()  # an outage is not idleness
        if self.policy.reopens(self._waits, connected=self.source.connected, closed=self.source.closed):
            with contextlib.suppress(*TRANSIENT_ERRORS):  # still away: the next fetch fails again
                await self.source.reopen()

    def _back(self) -> None:
        if self._away_since is not None:
            log.info(
                f"{self._log_as}.nats_back", url=self._url, after_s=round(self._clock() - self._away_since, 1)
            )
        self._away_since, self._waits = None, 0

    def _give_up_message(self, why: GiveUp, exc: BaseException) -> str:
        error = f"{type(exc).__name__}: {exc}"
        if why == "closed":
            return (
                f"the connection to NATS at {self._url} was closed for good while {self._doing} "
                f"({error}); {self._hint}"
            )
        return (
            f"NATS at {self._url} was unreachable for more than {self.policy.budget_s:.0f} s while "
            f"{self._doing} ({error}); {self._hint}"
        )


async def sleep_unless(stop: asyncio.Event, seconds: float, *, also: asyncio.Event | None = None) -> None:
    """Sleep up to ``seconds``; wake early when ``stop`` (or ``also``) is set."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if also is not None:
        waiters.append(asyncio.ensure_future(also.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
