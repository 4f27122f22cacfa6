"""Connecting against real nats-server processes: nobody listening, and a server without JetStream,
fail within their bounds with the one NatsUnreachable every caller (publisher, consumer,
dispatcher, producer) gets."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swe_fleet._processes import ManagedProcess, free_port, start_process, venv_binary, wait_for_line
from swe_fleet.dispatch.producer import request_council
from swe_fleet.errors import NatsUnreachable
from swe_fleet.nats.connection import connect_nats, open_jetstream
from swe_fleet.nats.consumer import ConsumerOptions, iter_events
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.nats.streams import StreamRequirement
from swe_fleet.spec import CouncilSpec, PublishSpec

pytestmark = pytest.mark.integration

SPEC = CouncilSpec.from_dict(
    {
        "tasks": [{"id": "t", "prompt": "p"}],
        "agents": [{"id": "a", "role": "x"}, {"id": "b", "role": "y"}],
    }
)


@pytest.fixture
def plain_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server WITHOUT JetStream (no -js), for one test; yields its URL."""
    port = free_port()
    argv = [venv_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "--http_port", "0"]
    process: ManagedProcess = start_process("nats-server", argv, tmp_path / "plain-nats.log")
    try:
        wait_for_line(process, re.compile(r"Server is ready"), 20)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.stop()


async def test_unreachable_nats_fails_fast_naming_the_url() -> None:
    """Nobody listening: NatsUnreachable within the bound, naming the URL."""
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(NatsUnreachable, match=url.replace(".", r"\.")):
        await connect_nats(url, timeout_s=3)
    assert time.monotonic() - started < 10


async def test_nats_without_jetstream_is_the_same_nats_unreachable_for_every_caller(plain_nats: str) -> None:
    """NATS answers but JetStream does not: open_jetstream, the publisher, the consumer and
    request_council each raise NatsUnreachable "answered but JetStream did not ... -js", naming
    the URL, within twice the connect bound."""
    publish = PublishSpec(nats_url=plain_nats, connect_timeout_s=1)
    consume = ConsumerOptions(nats_url=plain_nats, connect_timeout_s=1)
    callers = {
        "open_jetstream": lambda: open_jetstream(
            plain_nats, connect_timeout_s=1, streams=[StreamRequirement("AGENT_RESPONSES")]
        ),
        "publisher": lambda: JetStreamPublisher.connect(publish),
        "consumer": lambda: anext(aiter(iter_events(consume))),
        "request_council": lambda: request_council(SPEC, nats_url=plain_nats, connect_timeout_s=1),
    }
    for name, call in callers.items():
        started = time.monotonic()
        with pytest.raises(NatsUnreachable, match="answered but JetStream did not within 2 s") as info:
            await call()
        assert time.monotonic() - started < 10, name
        assert info.value.url == plain_nats and "-js" in str(info.value), name
