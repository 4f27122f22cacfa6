"""Streams against a real nats-server: a new one gets file storage and the window asked for; an
existing one that does not fit is refused, each difference named, and left as it is."""

from __future__ import annotations

import nats
import pytest
from nats.js import api

from swe_fleet.errors import StreamConfigMismatch
from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.policy import PublishPolicy
from swe_fleet.nats.streams import ensure_stream

STREAM = "AGENT_RESPONSES"

pytestmark = pytest.mark.integration


async def test_existing_stream_without_our_subjects_is_reported_not_changed(
    nats_server: NatsServer,
) -> None:
    """A stream of the same name with other subjects raises StreamConfigMismatch and stays as it was."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="AGENT_RESPONSES", subjects=["other.>"])
    with pytest.raises(StreamConfigMismatch, match="left unchanged"):
        await ensure_stream(js, "AGENT_RESPONSES")
    info = await js.stream_info("AGENT_RESPONSES")
    await nc.close()
    assert info.config.subjects == ["other.>"]


@pytest.mark.parametrize(
    ("storage", "window", "expected"),
    [
        (api.StorageType.MEMORY, 600.0, ["storage is memory"]),
        (api.StorageType.FILE, 30.0, ["duplicate_window 30 s"]),
        (api.StorageType.MEMORY, 30.0, ["storage is memory", "duplicate_window 30 s"]),
    ],
)
async def test_incompatible_existing_stream_is_refused_naming_each_difference_and_left_as_is(
    nats_server: NatsServer, storage: api.StorageType, window: float, expected: list[str]
) -> None:
    """Memory storage or a window shorter than the retry horizon: StreamConfigMismatch, stream unchanged."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        await js.add_stream(
            name=STREAM, subjects=["agent.>", "council.>"], storage=storage, duplicate_window=window
        )
        with pytest.raises(StreamConfigMismatch, match="left unchanged") as info:
            await ensure_stream(js, STREAM, policy=PublishPolicy())
        info_after = await js.stream_info(STREAM)
    finally:
        await nc.close()
    assert len(info.value.differences) == len(expected)
    for diff, what in zip(info.value.differences, expected, strict=True):
        assert what in diff
    assert (info_after.config.storage, info_after.config.duplicate_window) == (storage, window)


async def test_new_stream_gets_file_storage_and_the_requested_duplicate_window(
    nats_server: NatsServer,
) -> None:
    """ensure_stream creates a file stream with the default (600 s) or the given window."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        info = await ensure_stream(js, STREAM)
        other = await ensure_stream(js, "OTHER", ["other.>"], duplicate_window_s=900)
    finally:
        await nc.close()
    assert (info.config.storage, info.config.duplicate_window) == (api.StorageType.FILE, 600)
    assert other.config.duplicate_window == 900


async def test_a_spec_s_retention_limits_the_stream_its_publisher_creates_and_not_an_existing_one(
    nats_server: NatsServer,
) -> None:
    """``publish.stream_max_age_s`` / ``stream_max_bytes`` are the new stream's limits; a stream
    that already exists keeps its own."""
    from swe_fleet.nats.publisher import JetStreamPublisher
    from swe_fleet.spec import PublishSpec

    spec = PublishSpec(nats_url=nats_server.url, stream_max_age_s=3600, stream_max_bytes=10_000_000)
    publisher = await JetStreamPublisher.connect(spec)
    await publisher.close()
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().stream_info(STREAM)
        assert (info.config.max_age, info.config.max_bytes) == (3600, 10_000_000)
        other = PublishSpec(nats_url=nats_server.url, stream_max_age_s=60)
        publisher = await JetStreamPublisher.connect(other)
        await publisher.close()
        assert (await nc.jetstream().stream_info(STREAM)).config.max_age == 3600
    finally:
        await nc.close()
