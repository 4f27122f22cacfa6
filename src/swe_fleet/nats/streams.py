"""JetStream streams: create one when missing, refuse (never change) an existing one that does not
fit, and the duplicate window that makes exactly-once by key hold.

Exactly once, by key: JetStream drops a message whose ``Nats-Msg-Id`` it stored within the
stream's *duplicate window*. A retry (or an outbox replay) of a publish whose first attempt did
land, but whose ack was lost, is therefore answered ``duplicate`` as long as it comes within the
window. The window must cover the retry horizon
(:attr:`~swe_fleet.nats.policy.PublishPolicy.retry_horizon_s`); by default it is
:func:`default_duplicate_window_s`, ``max(600 s, 2 x budget)``, and an existing stream with a
shorter window is refused (:class:`~swe_fleet.errors.StreamConfigMismatch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import nats.js.errors
from nats.js import api

from swe_fleet.errors import ConfigError, StreamConfigMismatch
from swe_fleet.events import AGENT_RESPONSES_SUBJECTS
from swe_fleet.nats.policy import PublishPolicy

#: Floor of :func:`default_duplicate_window_s` (JetStream's own default is 2 minutes).
MIN_DUPLICATE_WINDOW_S = 600.0


@dataclass(frozen=True)
class StreamRequirement:
    """A stream some code needs: its name, the subjects it must take, the window of a new one.

    Attributes:
        duplicate_window_s: the window of a stream created for this requirement; None:
            :func:`default_duplicate_window_s` of the publishers' policy.
    """

    name: str
    subjects: Sequence[str] = AGENT_RESPONSES_SUBJECTS
    duplicate_window_s: float | None = None
    retention: StreamRetention | None = None


@dataclass(frozen=True)
class StreamRetention:
    """How long and how much a stream created now keeps (None: no limit, JetStream's default).

    Set when the stream is created, by whichever client creates it first; an existing stream
    keeps its own (change it with ``nats stream edit``). A consumer that falls further behind
    than this loses the oldest events, which is why the results store exists
    (:mod:`swe_fleet.nats.results`).
    """

    max_age_s: float | None = None
    max_bytes: int | None = None


def default_duplicate_window_s(policy: PublishPolicy | None = None) -> float:
    """The duplicate window a new stream gets: ``max(600, 2 x budget, retry horizon)`` seconds.

    Twice the retry budget covers every retry of a publish with room to spare; the 10-minute
    floor also covers a prompt outbox replay. A longer window costs server memory (one id per
    message in the window), not correctness.
    """
    p = policy or PublishPolicy()
    return max(MIN_DUPLICATE_WINDOW_S, 2 * p.budget_s, p.retry_horizon_s)


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether every subject matched by ``subject`` (may hold wildcards) is matched by ``pattern``."""
    p_tokens, s_tokens = pattern.split("."), subject.split(".")
    for i, p in enumerate(p_tokens):
        if p == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens):
            return False
        s = s_tokens[i]
        if s == ">" or (p != "*" and p != s):
            return False
    return len(p_tokens) == len(s_tokens)


def stream_config_differences(
    config: api.StreamConfig, subjects: Sequence[str], retry_horizon_s: float
) -> list[str]:
    """What makes an existing stream unfit for our events (empty: fit). Pure, for tests."""
    differences = []
    have = list(config.subjects or [])
    missing = [s for s in subjects if not any(subject_covers(h, s) for h in have)]
    if missing:
        differences.append(f"subjects {have} do not cover {missing}")
    if config.storage == api.StorageType.MEMORY:
        differences.append("storage is memory (events must survive a server restart: file storage)")
    window = config.duplicate_window or 0.0
    if window < retry_horizon_s:
        differences.append(
            f"duplicate_window {window:g} s is shorter than the retry horizon {retry_horizon_s:g} s "
            "(a retried event could be stored twice)"
        )
    return differences


async def ensure_stream(
    js: Any,
    name: str,
    subjects: Sequence[str] = AGENT_RESPONSES_SUBJECTS,
    duplicate_window_s: float | None = None,
    *,
    policy: PublishPolicy | None = None,
    retention: StreamRetention | None = None,
) -> api.StreamInfo:
    """Create the stream if missing (file storage, ``duplicate_window_s``); check an existing one.

    Args:
        duplicate_window_s: window of a stream this call creates; default
            :func:`default_duplicate_window_s` of ``policy``. Must cover ``policy``'s retry horizon.
        policy: the retry policy of the publishers; an existing stream's window must cover its
            :attr:`~swe_fleet.nats.policy.PublishPolicy.retry_horizon_s` (default policy when None).
        retention: the limits of a stream this call creates (:class:`StreamRetention`).

    Raises:
        StreamConfigMismatch: the stream exists with subjects that do not cover ours, memory
            storage, or a duplicate window shorter than the retry horizon; it is not changed.
        ConfigError: ``duplicate_window_s`` is shorter than the retry horizon.
    """
    policy = policy or PublishPolicy()
    window = default_duplicate_window_s(policy) if duplicate_window_s is None else duplicate_window_s
    if window < policy.retry_horizon_s:
        raise ConfigError(
            f"duplicate_window_s={window:g} is shorter than the retry horizon {policy.retry_horizon_s:g} s",
            setting="duplicate_window_s",
        )
    keep = retention or StreamRetention()
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
                        duplicate_window=window,
                        max_age=keep.max_age_s,
                        max_bytes=keep.max_bytes,
                    )
                ),
            )
        except nats.js.errors.BadRequestError:
            info = await js.stream_info(name)  # created concurrently by another publisher
    differences = stream_config_differences(info.config, subjects, policy.retry_horizon_s)
    if differences:
        raise StreamConfigMismatch(
            f"stream {name!r} exists with an incompatible config: {'; '.join(differences)}. "
            "It is left unchanged: fix the stream (nats stream edit) or use another stream name "
            "(publish.stream).",
            stream=name,
            differences=tuple(differences),
        )
    return cast(api.StreamInfo, info)
