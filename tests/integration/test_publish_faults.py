"""Nothing lost: real nats-server processes killed (SIGKILL) and restarted under the publisher,
the outbox and its replay, and consumers that die mid-stream. Counts are read back from the stream."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.js import api

from swe_fleet.errors import OutboxWritten, StreamConfigMismatch
from swe_fleet.events import decode_event
from swe_fleet.local.stack import NatsServer, free_port
from swe_fleet.nats.consumer import ConsumerOptions, Event, iter_events
from swe_fleet.nats.outbox import OUTBOX_DIR_ENV, append_to_outbox, entries_of, read_outbox, replay_outbox
from swe_fleet.nats.publisher import JetStreamPublisher, PublishPolicy, ensure_stream
from swe_fleet.spec import PublishSpec

from support.councils import propose_events

pytestmark = pytest.mark.integration

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")
STREAM = "AGENT_RESPONSES"


async def _stream_contents(url: str) -> tuple[int, list[str]]:
    """(messages in the stream, the key of each stored message) read with a fresh consumer."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        sub = await js.pull_subscribe(
            "", stream=STREAM, config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=30)
        )
        keys: list[str] = []
        while len(keys) < info.state.messages:
            for m in await sub.fetch(500, timeout=5):
                assert m.headers is not None
                key = m.headers["Nats-Msg-Id"]
                assert decode_event(m.data).key == key
                keys.append(key)
        return info.state.messages, keys
    finally:
        await nc.close()


async def _sigkill(server: NatsServer) -> None:
    """SIGKILL the nats-server process this test started (no shutdown, no flush)."""
    assert server.process is not None
    server.process.popen.kill()
    await asyncio.to_thread(server.process.popen.wait, 10)


async def _restart(server: NatsServer, port: int, store: Path) -> None:
    await asyncio.to_thread(server.start, port, store)


async def _until(predicate: Callable[[], bool], timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls a counter the code under test owns
            await asyncio.sleep(0.005)


async def test_sigkill_mid_publish_then_restart_stores_every_event_exactly_once(
    nats_server: NatsServer,
) -> None:
    """SIGKILL after ~150 of 500 acks, restart on the same store and port: 500 messages, 500 distinct keys."""
    port, store = nats_server.port, nats_server.workdir / "jetstream"
    pub = await JetStreamPublisher.connect(
        PublishSpec(nats_url=nats_server.url, retry_budget_s=30, ack_timeout_s=2)
    )
    events = propose_events("kill-mid-publish", 500)
    acked_at_kill: list[int] = []

    async def kill_and_restart() -> None:
        await _until(lambda: pub.published >= 150)
        await _sigkill(nats_server)
        acked_at_kill.append(pub.published)
        await asyncio.sleep(1.0)
        await _restart(nats_server, port, store)

    try:
        results, _ = await asyncio.gather(pub.publish_all(events, concurrency=32), kill_and_restart())
    finally:
        await pub.close()
    assert 150 <= acked_at_kill[0] < 500  # killed mid-publish
    assert [r.key for r in results] == [e.key for e in events]
    messages, keys = await _stream_contents(nats_server.url)
    assert messages == 500
    assert len(keys) == len(set(keys)) == 500 and set(keys) == {e.key for e in events}


async def test_outage_longer_than_the_budget_spools_to_the_outbox_and_replay_is_exactly_once(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outage > 3 s budget: OutboxWritten names the file; replay stores each once; again: duplicates."""
    monkeypatch.setenv(OUTBOX_DIR_ENV, str(tmp_path / "spool"))
    port, store = nats_server.port, nats_server.workdir / "jetstream"
    pub = await JetStreamPublisher.connect(
        PublishSpec(nats_url=nats_server.url, retry_budget_s=3, ack_timeout_s=1)
    )
    events = propose_events("outage", 300)

    async def kill_for_good() -> None:
        await _until(lambda: pub.published >= 60)
        await _sigkill(nats_server)

    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(OutboxWritten) as info:
            await asyncio.gather(pub.publish_all(events, concurrency=16), kill_for_good())
        elapsed = asyncio.get_running_loop().time() - started
        acked = pub.published
    finally:
        await pub.close()
    err = info.value
    assert err.path == tmp_path / "spool" / "outage.jsonl"
    assert str(err.path) in str(err) and "swe-fleet outbox replay" in str(err)
    assert err.count == len(events) - acked and err.count > 0
    assert elapsed < 3 + 1 + 5  # budget + one ack wait + slack: bounded, not 60 s
    spooled = [e.key for e in read_outbox(err.path)]
    assert len(spooled) == len(set(spooled)) == err.count

    await _restart(nats_server, port, store)
    messages, stored = await _stream_contents(nats_server.url)
    assert messages >= acked
    assert set(stored) | set(spooled) == {e.key for e in events}  # nothing lost, before any replay
    copy = tmp_path / "copy.jsonl"
    shutil.copy(err.path, copy)
    first = await replay_outbox(err.path, nats_server.url)
    assert first.published + first.duplicates == err.count and first.removed
    assert not err.path.exists()
    messages, keys = await _stream_contents(nats_server.url)
    assert messages == 300 and len(set(keys)) == 300 and set(keys) == {e.key for e in events}

    again = await replay_outbox(copy, nats_server.url)
    assert (again.published, again.duplicates) == (0, err.count)
    assert (await _stream_contents(nats_server.url))[0] == 300


async def test_consumer_killed_mid_stream_loses_nothing(nats_server: NatsServer) -> None:
    """Consumer killed at event 30 of 100, restarted on its durable: all keys seen, only unacked again."""
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
    events = propose_events("consumer-killed", 100)
    try:
        await pub.publish_all(events)
    finally:
        await pub.close()
    opts = ConsumerOptions(
        nats_url=nats_server.url,
        durable="killed",
        ack_wait_s=1,
        max_deliver=4,
        fetch_batch=16,
        fetch_wait_s=0.3,
    )
    first: list[Event] = []
    thirty = asyncio.Event()

    async def consume_until_killed() -> None:
        async for e in iter_events(opts):
            first.append(e)
            if len(first) == 30:
                thirty.set()
                await asyncio.sleep(3600)  # "working" on the 30th when it dies

    task = asyncio.create_task(consume_until_killed())
    await asyncio.wait_for(thirty.wait(), 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    restarted = ConsumerOptions(**{**opts.__dict__, "idle_timeout_s": 2.5})
    second = [e async for e in iter_events(restarted)]
    first_keys, second_keys = [e.key for e in first], [e.key for e in second]
    assert set(first_keys) | set(second_keys) == {e.key for e in events}
    assert first_keys[-1] in second_keys  # held unacked when killed: redelivered
    assert not set(first_keys[:29]) & set(second_keys)  # acked: not redelivered
    assert len(second_keys) == len(set(second_keys)) == 71


async def test_consumer_iterates_on_across_a_nats_sigkill_and_restart(nats_server: NatsServer) -> None:
    """A durable iter_events keeps going across SIGKILL + restart of nats-server: all 200 keys arrive."""
    port, store = nats_server.port, nats_server.workdir / "jetstream"
    spec = PublishSpec(nats_url=nats_server.url, retry_budget_s=20)
    pub = await JetStreamPublisher.connect(spec)
    try:
        await pub.publish_all(propose_events("across", 100))
    finally:
        await pub.close()
    seen: list[str] = []
    opts = ConsumerOptions(nats_url=nats_server.url, durable="across", idle_timeout_s=4, fetch_wait_s=0.5)

    async def consume() -> None:
        async for e in iter_events(opts):
            seen.append(e.key)

    task = asyncio.create_task(consume())
    await _until(lambda: len(seen) >= 100)
    await _sigkill(nats_server)
    await asyncio.sleep(2.0)  # longer than a fetch wait: the iterator sees the outage
    assert not task.done()
    await _restart(nats_server, port, store)
    pub = await JetStreamPublisher.connect(spec)
    try:
        await pub.publish_all(propose_events("across", 100, start=100))
    finally:
        await pub.close()
    await asyncio.wait_for(task, 40)
    assert set(seen) == {e.key for e in propose_events("across", 200)}


async def test_consumer_deleted_under_the_iterator_is_created_again(nats_server: NatsServer) -> None:
    """The durable deleted mid-stream (an operator, an expiry): the iterator binds anew and misses nothing."""
    spec = PublishSpec(nats_url=nats_server.url)
    pub = await JetStreamPublisher.connect(spec)
    try:
        await pub.publish_all(propose_events("gone", 20))
        seen: list[str] = []
        opts = ConsumerOptions(nats_url=nats_server.url, durable="gone", idle_timeout_s=3, fetch_wait_s=0.3)

        async def consume() -> None:
            async for e in iter_events(opts):
                seen.append(e.key)

        task = asyncio.create_task(consume())
        await _until(lambda: len(seen) >= 20)
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().delete_consumer(STREAM, "gone")
        finally:
            await nc.close()
        await pub.publish_all(propose_events("gone", 20, start=20))
        await asyncio.wait_for(task, 30)
    finally:
        await pub.close()
    assert set(seen) == {e.key for e in propose_events("gone", 40)}


async def test_a_connection_closed_for_good_is_reopened_by_the_next_publish(nats_server: NatsServer) -> None:
    """Once the client gave up reconnecting, the next publish opens a new connection and succeeds."""
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
    try:
        await pub._nc.close()  # what the client does after max_reconnect_attempts
        [result] = await pub.publish_all(propose_events("reopen", 1))
    finally:
        await pub.close()
    assert result.seq == 1 and not result.duplicate


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


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SWE_FLEET, "outbox", "replay", *args], capture_output=True, text=True, timeout=60)


async def test_cli_replay_exit_codes(nats_server: NatsServer, tmp_path: Path) -> None:
    """outbox replay: 0 and counts (file removed), 3 for a corrupt line (named), 5 for NATS unreachable."""
    path = tmp_path / "o.jsonl"
    pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
    try:
        await pub.publish_all(propose_events("cli", 2))  # these two are already stored
    finally:
        await pub.close()
    append_to_outbox(path, entries_of(propose_events("cli", 5)))

    unreachable = f"nats://127.0.0.1:{free_port()}"
    down = await asyncio.to_thread(_cli, str(path), "--nats-url", unreachable, "--connect-timeout", "1")
    assert down.returncode == 5, down.stderr
    assert unreachable in down.stderr
    assert path.exists()

    ok = await asyncio.to_thread(_cli, str(path), "--nats-url", nats_server.url)
    assert ok.returncode == 0, ok.stderr
    assert "published=3 duplicates=2" in ok.stdout
    assert not path.exists()

    path.write_text(entries_of(propose_events("cli", 1))[0].to_line() + "{broken\n")
    bad = await asyncio.to_thread(_cli, str(path), "--nats-url", nats_server.url)
    assert bad.returncode == 3
    assert f"{path}:2:" in bad.stderr.replace("\n", "")
    assert path.exists()
    missing = await asyncio.to_thread(_cli, str(tmp_path / "none.jsonl"), "--nats-url", nats_server.url)
    assert missing.returncode == 3 and "none.jsonl" in missing.stderr
