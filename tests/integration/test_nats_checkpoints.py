"""Checkpoints in the JetStream key-value bucket, against a real nats-server."""

from __future__ import annotations

import pytest

from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.checkpoints import MAX_CHECKPOINT_BYTES, KVCheckpoints
from swe_fleet.nats.connection import close_nats, connect_nats

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
    import os

    nc = await connect_nats(nats_server.url)
    try:
        store = await KVCheckpoints.open(nc.jetstream())
        await store.save("s", {"done": ["propose"]})
        noise = os.urandom(2 * MAX_CHECKPOINT_BYTES).hex()  # compresses to ~2x the limit
        await store.save("s", {"done": ["propose", "vote"], "blob": noise})
        assert await store.load("s") == {"done": ["propose"]}
    finally:
        await close_nats(nc)
