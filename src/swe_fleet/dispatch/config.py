"""How the dispatcher runs: :class:`DispatcherConfig` (its defaults are the CLI's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swe_fleet.errors import ConfigError
from swe_fleet.events import AGENT_RESPONSES_STREAM, COUNCIL_REQUEST, COUNCIL_REQUESTS_STREAM

if TYPE_CHECKING:
    from swe_fleet.nats.pull import OutagePolicy

#: The durable consumer of ``council.request`` that dispatchers share.
DEFAULT_DURABLE = "swe-fleet-dispatch"


@dataclass(frozen=True)
class DispatcherConfig:
    """How the dispatcher runs.

    Attributes:
        nats_url: NATS of the request stream, the status events and the ledger.
        dashboard_url: the cluster's Jobs API (``http://HEAD:8265``).
        job_nats_url: NATS as the jobs see it (overrides every spec's ``publish.nats_url``);
            default ``nats_url``.
        env_kind: runtime env of the jobs (``pinned`` or ``image``).
        events_stream: where status events go (the stream of the jobs' events, so that a
            terminal status comes after every event of its job).
        max_in_flight: jobs not yet terminal at once; more requests wait in the stream.
        poll_s: how often the status of every job in flight is read.
        ack_wait_s: the request consumer's ack wait (set when the durable is created): how soon
            a request held by a crashed dispatcher is delivered again.
        max_attempts: deliveries of one request before it is dead-lettered.
        spec_dir: where ``spec_ref`` files live (None: requests must carry their spec).
        reservation_timeout_s: a slot reserved for a submission that never created a job (and
            whose request never came back) is freed after this long.
        outage_budget_s: how long NATS may be away before the dispatcher gives up
            (:class:`~swe_fleet.errors.NatsUnreachable`; a supervisor restarts it, nothing is lost).
    """

    nats_url: str
    dashboard_url: str
    auth_token: str | None = None
    job_nats_url: str | None = None
    env_kind: str = "pinned"
    events_stream: str = AGENT_RESPONSES_STREAM
    requests_stream: str = COUNCIL_REQUESTS_STREAM
    durable: str = DEFAULT_DURABLE
    max_in_flight: int = 4
    poll_s: float = 1.0
    ack_wait_s: float = 30.0
    max_attempts: int = 5
    fetch_wait_s: float = 1.0
    spec_dir: Path | None = None
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    outage_budget_s: float = 120.0
    reservation_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.max_attempts < 1:
            raise ConfigError("max_in_flight and max_attempts must be at least 1", setting="max_in_flight")
        if min(self.poll_s, self.ack_wait_s, self.fetch_wait_s, self.request_timeout_s) <= 0:
            raise ConfigError(
                "poll_s, ack_wait_s, fetch_wait_s and request_timeout_s must be positive", setting="poll_s"
            )

    def consumer_config(self) -> Any:
        """The durable request consumer: explicit acks, never dropped by JetStream (the
        dispatcher dead-letters a request itself after ``max_attempts``, payload kept)."""
        from nats.js import api  # imported here: the CLI reads the defaults without nats-py

        return api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subject=COUNCIL_REQUEST,
        )

    def outage_policy(self) -> OutagePolicy:
        """How the dispatcher's pull loop rides out NATS being away: a fetch every second for at
        most ``outage_budget_s``, whatever NATS (or the consumer) answers; a connection closed for
        good ends it at once. The durable is never created again behind the operator's back: a
        new one would deliver the stream's whole history."""
        from swe_fleet.nats.pull import FETCH_ERRORS, OutagePolicy  # see consumer_config

        return OutagePolicy(
            budget_s=self.outage_budget_s, initial_wait_s=1.0, max_wait_s=1.0, errors=FETCH_ERRORS
        )
