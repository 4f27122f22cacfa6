"""Closing a client one way, and what a set-up step's timeout means, against stand-in clients."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest

from swe_fleet.errors import NatsUnreachable, StreamConfigMismatch
from swe_fleet.nats.connection import JetStreamConnection, close_nats

URL = "nats://nats.example:4222"


class StandInClient:
    """Records how it was closed; ``hang`` makes drain() never return."""

    def __init__(self, *, connected: bool = True, closed: bool = False, hang: bool = False) -> None:
        self.is_connected = connected
        self.is_closed = closed
        self.hang = hang
        self.calls: list[str] = []

    async def drain(self) -> None:
        self.calls.append("drain")
        if self.hang:
            await asyncio.sleep(3600)
        self.is_connected, self.is_closed = False, True

    async def close(self) -> None:
        self.calls.append("close")
        if self.is_closed:
            return
        self.is_connected, self.is_closed = False, True
        raise ConnectionResetError("flushing into a dead socket")  # what nats-py does mid-reconnect


async def test_a_connected_client_is_drained_and_a_reconnecting_one_closed_never_raising() -> None:
    """drain when connected; close (its reset error swallowed) when not; nothing for None or a
    closed client; drain=False closes at once."""
    connected, reconnecting, closed = (
        StandInClient(),
        StandInClient(connected=False),
        StandInClient(closed=True),
    )
    await close_nats(connected)
    await close_nats(reconnecting)
    await close_nats(closed)
    await close_nats(None)
    assert (connected.calls, reconnecting.calls, closed.calls) == (["drain"], ["close"], [])
    at_once = StandInClient()
    await close_nats(at_once, drain=False)
    assert at_once.calls == ["close"]


async def test_a_drain_that_hangs_is_cut_off_and_the_client_closed() -> None:
    """A drain past its bound gives way to a plain close: closing never blocks for long."""
    client = StandInClient(hang=True)
    await asyncio.wait_for(close_nats(client, timeout_s=0.05), 5)
    assert client.calls == ["drain", "close"] and client.is_closed


async def test_a_set_up_step_that_times_out_means_jetstream_did_not_answer() -> None:
    """A timeout inside setting_up() is NatsUnreachable naming the URL, the bound and -js; the
    connection is closed."""
    client = StandInClient()
    conn = JetStreamConnection(nc=client, js=None, url=URL, bound_s=0.05)
    with pytest.raises(NatsUnreachable, match="answered but JetStream did not within 0 s") as info:
        async with conn.setting_up():
            await conn.bounded(asyncio.sleep(3600))
    assert info.value.url == URL and "start nats-server with -js" in str(info.value)
    assert client.is_closed


async def test_no_responder_on_the_jetstream_api_also_means_jetstream_did_not_answer() -> None:
    """A server without -js answers JetStream's API with "no responders" (a 503): the same
    NatsUnreachable, naming what came back."""
    client = StandInClient()
    conn = JetStreamConnection(nc=client, js=None, url=URL, bound_s=10)
    with pytest.raises(NatsUnreachable, match=r"did not within 10 s \(ServiceUnavailableError\)"):
        async with conn.setting_up():
            raise nats.js.errors.ServiceUnavailableError
    assert client.is_closed


async def test_any_other_set_up_failure_closes_the_connection_and_propagates_unchanged() -> None:
    """A stream mismatch (or anything else) inside setting_up() closes the connection and is
    raised as it is."""
    client = StandInClient()
    conn = JetStreamConnection(nc=client, js=None, url=URL, bound_s=1)
    with pytest.raises(StreamConfigMismatch):
        async with conn.setting_up():
            raise StreamConfigMismatch("no", stream="S")
    assert client.is_closed
    ok = StandInClient()
    async with JetStreamConnection(nc=ok, js=None, url=URL, bound_s=1).setting_up():
        pass
    assert not ok.is_closed
