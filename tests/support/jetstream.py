"""Helpers of the nats-server tests: read a stream back, collect events, kill and restart the
server a test started, wait for a condition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from nats.js import api

from swe_fleet.events import AGENT_RESPONSES_STREAM, decode_event
from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.consumer import ConsumerOptions, iter_events


async def collect_events(url: str, durable: str | None, **kw: Any) -> list[Any]:
    """Every event a consumer gets until 1.5 s pass without one."""
    opts = ConsumerOptions(nats_url=url, durable=durable, idle_timeout_s=1.5, fetch_wait_s=0.3, **kw)
    return [e async for e in iter_events(opts)]


async def stream_contents(url: str, stream: str = AGENT_RESPONSES_STREAM) -> tuple[int, list[str]]:
    """(messages in the stream, the key of each stored message) read with a fresh consumer."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        sub = await js.pull_subscribe(
            "", stream=stream, config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=30)
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


async def sigkill(server: NatsServer) -> None:
    """SIGKILL the nats-server process this test started (no shutdown, no flush)."""
    assert server.process is not None
    server.process.popen.kill()
    await asyncio.to_thread(server.process.popen.wait, 10)


async def restart(server: NatsServer, port: int, store: Path) -> None:
    """Start the server again on the same port and store."""
    await asyncio.to_thread(server.start, port, store)


async def until(predicate: Callable[[], bool], timeout_s: float = 20) -> None:
    """Poll ``predicate`` (a counter the code under test owns) until it holds."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls a counter the code under test owns
            await asyncio.sleep(0.005)
