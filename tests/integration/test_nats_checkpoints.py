"""Checkpoints in the JetStream key-value bucket, against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator

import pytest

from swe_fleet.errors import PublishError
from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.checkpoints import MAX_CHECKPOINT_BYTES, KVCheckpoints
from swe_fleet.nats.connection import close_nats, connect_nats
from swe_fleet.nats.policy import PublishPolicy

pytestmark = pytest.mark.integration


async def test_checkpoint_round_trips_and_is_keyed_by_submission(nats_server: NatsServer) -> None:
    """A saved checkpoint loads back equal; another submission id has none."""
    nc = await connect_nats(nats_server.url)
    try:
        store = await KVCheckpoints.open(nc.jetstream())
        ckpt = {"spec_hash": "h", "done": ["propose"], "state": {"t1": {"proposals": {"a": "x" * 5000}}}}
        await store.save("raysubmit_AbC-1", ckpt)
        assert await store.load("raysubmit_AbC-1") == ckpt
        assert await store.load("other") is None
    finally:
        await close_nats(nc)


async def test_oversized_checkpoint_is_skipped_not_fatal(nats_server: NatsServer) -> None:
    """A checkpoint beyond one NATS message is skipped (the previous one stays), never an error."""
    nc = await connect_nats(nats_server.url)
    try:
        store = await KVCheckpoints.open(nc.jetstream())
        await store.save("s", {"done": ["propose"]})
        noise = os.urandom(2 * MAX_CHECKPOINT_BYTES).hex()  # compresses to ~2x the limit
        await store.save("s", {"done": ["propose", "vote"], "blob": noise})
        assert await store.load("s") == {"done": ["propose"]}
    finally:
        await close_nats(nc)


async def _paused(server: NatsServer, seconds: float) -> None:
    """SIGSTOP the nats-server (it keeps its connections, answers nothing), SIGCONT after ``seconds``."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


async def _pause(server: NatsServer, seconds: float) -> asyncio.Task[None]:
    """Start :func:`_paused` and return once the server is stopped."""
    task = asyncio.create_task(_paused(server, seconds))
    await asyncio.sleep(0.2)
    return task


@contextlib.asynccontextmanager
async def _store(server: NatsServer, policy: PublishPolicy) -> AsyncIterator[KVCheckpoints]:
    nc = await connect_nats(server.url)
    try:
        yield await KVCheckpoints.open(nc.jetstream(), policy)
    finally:
        await close_nats(nc)


async def test_a_pause_shorter_than_the_budget_only_delays_a_save_and_a_load(nats_server: NatsServer) -> None:
    """NATS paused for 4 s, longer than one attempt's 1 s bound, shorter than the 30 s budget:
    the save and the load both get through once it answers again."""
    async with _store(nats_server, PublishPolicy(ack_timeout_s=1.0, budget_s=30.0, max_wait_s=1.0)) as store:
        pause = await _pause(nats_server, 4.0)
        started = time.monotonic()
        await store.save("s", {"done": ["propose"]}, after="propose")
        assert time.monotonic() - started >= 3.0  # it really waited for the pause to end
        await pause
        pause = await _pause(nats_server, 4.0)
        assert await store.load("s") == {"done": ["propose"]}
        await pause


async def test_a_pause_beyond_the_budget_fails_naming_the_operation(nats_server: NatsServer) -> None:
    """NATS paused for longer than the 3 s budget: PublishError naming the save, the phase it
    followed, the attempts and the last error (never an empty message)."""
    async with _store(nats_server, PublishPolicy(ack_timeout_s=1.0, budget_s=3.0, max_wait_s=0.5)) as store:
        pause = await _pause(nats_server, 8.0)
        with pytest.raises(PublishError) as caught:
            await store.save("sid-1", {"done": ["propose"]}, after="critique.1")
        message = str(caught.value)
        assert message.startswith("saving the checkpoint of sid-1 after critique.1 failed")
        pattern = r"in \d+ attempts over \d+ s \(retry budget 3 s\); last error: \w+"
        assert re.search(pattern, message), message
        assert caught.value.key == "sid-1"
        await pause
