"""The dispatcher's ledger against a real nats-server's key-value bucket: reservations, found
again and released."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from swe_fleet.dispatch.ledger import Ledger
from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.connection import close_nats, connect_nats

pytestmark = pytest.mark.integration


@pytest.fixture
async def ledger(nats_server: NatsServer) -> AsyncIterator[Ledger]:
    """A ledger on a fresh server's COUNCIL_DISPATCH bucket."""
    nc = await connect_nats(nats_server.url)
    try:
        yield await Ledger.open(nc.jetstream(timeout=5))
    finally:
        await close_nats(nc)


async def test_reserving_twice_finds_the_first_record_and_release_frees_it(ledger: Ledger) -> None:
    """A second reservation of a request id returns the existing record; a released one is new again."""
    first, created = await ledger.reserve("r4", "dispatch-r4", "c")
    again, created_again = await ledger.reserve("r4", "dispatch-r4", "c")
    assert created and not created_again and again.revision == first.revision
    await ledger.release(again)
    assert await ledger.get("r4") is None
    _, created_after = await ledger.reserve("r4", "dispatch-r4", "c")
    assert created_after
    records, forgotten = await ledger.load()
    assert {r.request_id for r in records} == {"r4"} and forgotten == 0
