"""Replaying an outbox (CLI: ``swe-fleet outbox replay PATH``): every spooled event published again
with its key as ``Nats-Msg-Id``.

Replay is idempotent: replaying a file twice, or replaying events whose first publish did reach
the stream (an ack lost on the way back), is answered ``duplicate`` instead of storing a second
message. This holds while the first copy is inside the stream's duplicate window (see
:func:`swe_fleet.nats.streams.default_duplicate_window_s`); replay promptly, or let consumers
deduplicate by ``key`` beyond it.

It sits above both :mod:`~swe_fleet.nats.outbox` (the file) and
:mod:`~swe_fleet.nats.publisher` (which spools to the file), so neither imports the other's user.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from swe_fleet.errors import NatsUnreachable
from swe_fleet.events import AGENT_RESPONSES_STREAM
from swe_fleet.nats.outbox import outbox_size, read_outbox, remove_if_unchanged
from swe_fleet.nats.policy import TRANSIENT_ERRORS, PublishPolicy
from swe_fleet.nats.publisher import JetStreamPublisher

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did.

    Attributes:
        published: entries stored for the first time.
        duplicates: entries the stream already had (answered ``duplicate`` by JetStream).
        removed: the file was removed (every entry acknowledged and nothing appended meanwhile).
    """

    path: Path
    published: int
    duplicates: int
    removed: bool


async def replay_outbox(
    path: Path,
    nats_url: str,
    *,
    stream: str = AGENT_RESPONSES_STREAM,
    concurrency: int = 64,
    connect_timeout_s: float = 5.0,
    retry_budget_s: float = 60.0,
    remove_when_done: bool = True,
) -> ReplayResult:
    """Publish every entry of the outbox ``path`` with its key as ``Nats-Msg-Id``.

    The whole file is parsed before anything is sent. The file is removed only when every entry
    was acknowledged (stored or duplicate) and nothing was appended to it meanwhile; otherwise it
    is left as it is and the replay can simply run again.

    Raises:
        OutboxError: unreadable file or a corrupt line (named); nothing was published.
        NatsUnreachable: NATS did not answer (connect, or retries exhausted on transient errors).
        PublishError: an entry was refused for a non-transient reason (subject and key named).
    """
    size_read = outbox_size(path)
    entries = read_outbox(path)
    policy = PublishPolicy(ack_timeout_s=min(5.0, retry_budget_s), budget_s=retry_budget_s)
    publisher = await JetStreamPublisher.open(
        nats_url, stream=stream, policy=policy, connect_timeout_s=connect_timeout_s
    )
    try:
        outcome = await publisher.try_publish_all(entries, concurrency=concurrency)
    finally:
        await publisher.close()
    failure = outcome.failure
    if failure is not None:
        if isinstance(failure.__cause__, TRANSIENT_ERRORS):
            raise NatsUnreachable(
                f"replay of {path} stopped: NATS at {nats_url} did not acknowledge {failure.key} within "
                f"{retry_budget_s:.0f} s ({failure.__cause__}); the outbox is unchanged, "
                "replay it again when NATS is back",
                url=nats_url,
            ) from failure
        raise failure
    results = outcome.acknowledged
    duplicates = sum(r.duplicate for r in results)
    removed = remove_when_done and remove_if_unchanged(path, size_read)
    published = len(results) - duplicates
    log.info("outbox.replayed", path=str(path), published=published, duplicates=duplicates, removed=removed)
    return ReplayResult(path=path, published=published, duplicates=duplicates, removed=removed)
