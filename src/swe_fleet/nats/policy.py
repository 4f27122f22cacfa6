"""What is worth retrying, and how hard one publish tries: :data:`TRANSIENT_ERRORS` and
:class:`PublishPolicy` (a tenacity controller with bounds on attempts and on total time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from swe_fleet.errors import NatsRefused, NatsUnreachable
from swe_fleet.spec import PublishSpec

#: Errors that go away by themselves (a reconnect, a restart, a leader election, a slow server).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    # no PubAck in time (also FlushTimeoutError), or asyncio's own timeout
    nats.errors.TimeoutError,
    TimeoutError,
    # the connection is down, being re-established, or was given up (we reconnect it)
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    NatsUnreachable,
    # nobody serves the subject yet: the stream is still recovering after a server restart
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    # 503: JetStream not (yet) available
    nats.js.errors.ServiceUnavailableError,
)


def describe_error(exc: BaseException | None) -> str:
    """``Type: message`` of an error, never an empty string (``TimeoutError()`` has no message)."""
    if exc is None:
        return "none"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no answer in time)"


@dataclass(frozen=True)
class PublishPolicy:
    """How hard one publish tries: attempts and total time both bound it.

    Attributes:
        ack_timeout_s: wait for one PubAck (clamped to what is left of the budget).
        max_attempts: attempts per event, the first included.
        budget_s: total seconds one event may spend being retried; no attempt starts after it.
        initial_wait_s, max_wait_s: exponential backoff with jitter between attempts.
    """

    ack_timeout_s: float = 5.0
    max_attempts: int = 12
    budget_s: float = 60.0
    initial_wait_s: float = 0.2
    max_wait_s: float = 5.0

    @classmethod
    def from_spec(cls, spec: PublishSpec) -> PublishPolicy:
        """The policy of a spec's ``publish`` section (ack timeout and retry budget)."""
        return cls(ack_timeout_s=spec.ack_timeout_s, budget_s=spec.retry_budget_s)

    @property
    def retry_horizon_s(self) -> float:
        """Longest time between the first and the last copy of one event reaching the server."""
        return self.budget_s + self.ack_timeout_s

    def retrying(
        self, sleep: Callable[[float], Any] | None = None, *, already_spent_s: float = 0.0
    ) -> AsyncRetrying:
        """A fresh tenacity controller for one publish.

        Args:
            sleep: injectable for tests (no real waiting).
            already_spent_s: time this publish already used before the controller started (the
                publisher's first attempt runs outside tenacity); the budget counts it.
        """
        kwargs: dict[str, Any] = {}
        if sleep is not None:
            kwargs["sleep"] = sleep
        return AsyncRetrying(
            # stop_before_delay: never sleep into an attempt that would start after the budget.
            stop=stop_after_attempt(self.max_attempts) | stop_before_delay(self.budget_s - already_spent_s),
            wait=wait_exponential_jitter(
                multiplier=self.initial_wait_s, max=self.max_wait_s, jitter=self.initial_wait_s
            ),
            # Refused credentials or a denied subject are no outage: retrying cannot help.
            retry=retry_if_exception_type(TRANSIENT_ERRORS) & retry_if_not_exception_type(NatsRefused),
            reraise=False,
            **kwargs,
        )
