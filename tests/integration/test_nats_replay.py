"""The outbox and its replay against real nats-server processes: an outage longer than the
budget spools what was not acknowledged, and a replay (API and CLI) stores each event once."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swe_fleet._processes import free_port
from swe_fleet.errors import OutboxWritten
from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.outbox import OUTBOX_DIR_ENV, append_to_outbox, entries_of, read_outbox
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.nats.replay import replay_outbox
from swe_fleet.spec import PublishSpec

from support.councils import propose_events
from support.jetstream import restart, sigkill, stream_contents, until

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")

pytestmark = pytest.mark.integration


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
        await until(lambda: pub.published >= 60)
        await sigkill(nats_server)

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

    await restart(nats_server, port, store)
    messages, stored = await stream_contents(nats_server.url)
    assert messages >= acked
    assert set(stored) | set(spooled) == {e.key for e in events}  # nothing lost, before any replay
    copy = tmp_path / "copy.jsonl"
    shutil.copy(err.path, copy)
    first = await replay_outbox(err.path, nats_server.url)
    assert first.published + first.duplicates == err.count and first.removed
    assert not err.path.exists()
    messages, keys = await stream_contents(nats_server.url)
    assert messages == 300 and len(set(keys)) == 300 and set(keys) == {e.key for e in events}

    again = await replay_outbox(copy, nats_server.url)
    assert (again.published, again.duplicates) == (0, err.count)
    assert (await stream_contents(nats_server.url))[0] == 300


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
