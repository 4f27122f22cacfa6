"""JetStream publisher: ensure the stream, publish each event with its key as ``Nats-Msg-Id``,
retry only transient errors within bounded attempts and total time, check every PubAck.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.js import api
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from swe_fleet.errors import NatsUnreachable, PublishError, StreamConfigMismatch
from swe_fleet.events import AGENT_RESPONSES_SUBJECTS
from swe_fleet.spec import PublishSpec

log = structlog.get_logger(__name__)

#: Errors that go away by themselves (a reconnect, a leader election, a slow server).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)


@dataclass(frozen=True)
class PublishPolicy:
    """How hard one publish tries: attempts and total time both bound it."""

    ack_timeout_s: float = 5.0
    max_attempts: int = 12
    budget_s: float = 60.0
    initial_wait_s: float = 0.2
    max_wait_s: float = 5.0

    @classmethod
    def from_spec(cls, spec: PublishSpec) -> PublishPolicy:
        return cls(ack_timeout_s=spec.ack_timeout_s, budget_s=spec.retry_budget_s)

    def retrying(self, sleep: Callable[[float], Any] | None = None) -> AsyncRetrying:
        """A fresh tenacity controller for one publish (``sleep`` injectable for tests)."""
        kwargs: dict[str, Any] = {}
        if sleep is not None:
            kwargs["sleep"] = sleep
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.budget_s),
            wait=wait_exponential_jitter(multiplier=self.initial_wait_s, max=self.max_wait_s),
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            reraise=False,
            **kwargs,
        )


class _Publishable(Protocol):
    """Anything with ``subject``, ``key`` and ``to_bytes()`` (every council event)."""

    @property
    def subject(self) -> str: ...

    @property
    def key(self) -> str: ...

    def to_bytes(self) -> bytes: ...


@dataclass(frozen=True)
class PublishResult:
    """The checked PubAck of one event."""

    key: str
    stream: str
    seq: int
    duplicate: bool


async def connect_nats(url: str, *, timeout_s: float = 5.0, name: str = "swe-fleet") -> Any:
    """Connect with finite reconnects; bounded by ``timeout_s``.

    Raises:
        NatsUnreachable: no connection within the bound (the URL is named).
    """

    async def _on_error(exc: Exception) -> None:
        log.warning("nats.error", url=url, error=str(exc))

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=[url],
                name=name,
                connect_timeout=min(timeout_s, 2.0),
                allow_reconnect=True,
                max_reconnect_attempts=60,  # finite: -1 makes connect() block forever
                reconnect_time_wait=0.5,
                error_cb=_on_error,
            ),
            timeout_s,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise NatsUnreachable(
            f"cannot reach NATS at {url} within {timeout_s:.0f} s ({type(exc).__name__}: {exc}); "
            "check the URL (publish.nats_url / --nats-url) and that nats-server runs with -js",
            url=url,
        ) from None


async def ensure_stream(
    js: Any,
    name: str,
    subjects: Sequence[str] = AGENT_RESPONSES_SUBJECTS,
    duplicate_window_s: float = 600.0,
) -> api.StreamInfo:
    """Create the stream if missing; check an existing one covers our subjects.

    Raises:
        StreamConfigMismatch: the stream exists without our subjects; it is not changed.
    """
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        try:
            return cast(
                api.StreamInfo,
                await js.add_stream(
                    api.StreamConfig(
                        name=name,
                        subjects=list(subjects),
                        storage=api.StorageType.FILE,
                        duplicate_window=duplicate_window_s,
                    )
                ),
            )
        except nats.js.errors.BadRequestError:
            info = await js.stream_info(name)  # created concurrently by another publisher
    missing = [s for s in subjects if s not in (info.config.subjects or [])]
    if missing:
        raise StreamConfigMismatch(
            f"stream {name!r} exists without subjects {missing}; it is left unchanged. "
            "Add them to the stream, or use another stream name (publish.stream).",
            stream=name,
        )
    return cast(api.StreamInfo, info)


class JetStreamPublisher:
    """Publishes council events to JetStream, exactly once per event key."""

    def __init__(self, nc: Any, stream: str, policy: PublishPolicy) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=policy.ack_timeout_s)
        self.stream = stream
        self.policy = policy
        self.published = 0
        self.duplicates = 0

    @classmethod
    async def connect(cls, spec: PublishSpec) -> JetStreamPublisher:
        """Connect to ``spec.nats_url`` and ensure the stream exists."""
        nc = await connect_nats(spec.nats_url, timeout_s=spec.connect_timeout_s)
        pub = cls(nc, spec.stream, PublishPolicy.from_spec(spec))
        try:
            await asyncio.wait_for(ensure_stream(pub._js, spec.stream), spec.connect_timeout_s * 2)
        except TimeoutError:
            await nc.close()
            raise NatsUnreachable(
                f"NATS at {spec.nats_url} answered but JetStream did not; start nats-server with -js",
                url=spec.nats_url,
            ) from None
        except BaseException:
            await nc.close()
            raise
        return pub

    async def publish(self, event: _Publishable) -> PublishResult:
        """Publish one event with retries; its key is the ``Nats-Msg-Id``.

        Raises:
            PublishError: retries exhausted or a non-transient error (subject and key named).
        """
        payload = event.to_bytes()
        try:
            async for attempt in self.policy.retrying():
                with attempt:
                    ack = await self._js.publish(
                        event.subject,
                        payload,
                        timeout=self.policy.ack_timeout_s,
                        stream=self.stream,
                        headers={"Nats-Msg-Id": event.key},
                    )
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise PublishError(
                f"publishing {event.subject} key={event.key} failed after "
                f"{exc.last_attempt.attempt_number} attempts: {type(last).__name__}: {last}",
                subject=event.subject,
                key=event.key,
            ) from last
        except nats.errors.Error as exc:
            raise PublishError(
                f"publishing {event.subject} key={event.key} failed: {type(exc).__name__}: {exc}",
                subject=event.subject,
                key=event.key,
            ) from exc
        if ack.stream != self.stream:
            raise PublishError(
                f"{event.subject} was stored in stream {ack.stream!r}, not {self.stream!r}: "
                "two streams claim the subject",
                subject=event.subject,
                key=event.key,
            )
        duplicate = bool(ack.duplicate)  # None for new messages on this server version
        self.published += 1
        self.duplicates += duplicate
        return PublishResult(key=event.key, stream=ack.stream, seq=ack.seq, duplicate=duplicate)

    async def publish_all(self, events: Sequence[_Publishable], concurrency: int = 64) -> list[PublishResult]:
        """Publish every event, at most ``concurrency`` in flight; results in input order."""
        sem = asyncio.Semaphore(concurrency)

        async def one(e: _Publishable) -> PublishResult:
            async with sem:
                return await self.publish(e)

        return list(await asyncio.gather(*(one(e) for e in events)))

    async def close(self) -> None:
        """Flush and close (bounded)."""
        try:
            await asyncio.wait_for(self._nc.drain(), 10)
        except (TimeoutError, nats.errors.Error):
            await self._nc.close()
