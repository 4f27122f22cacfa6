"""A finished council for a late reader: its result from the results store (``swe-fleet result``,
a ``request_council`` ticket that is done at once), and its report rendered by headless
Chromium, with Japanese and Spanish task text, every event of the council in the DOM.

One real council (server backend on the session vLLM server) runs once for the module.
"""

from __future__ import annotations

import asyncio
import html.parser
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from swe_fleet.dispatch.producer import request_council
from swe_fleet.dispatch.requests import submission_id_for
from swe_fleet.local.stack import NatsServer
from swe_fleet.local.vllm_server import VLLMServer
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.submission import submit_council
from swe_fleet.submit.wait import wait_until_terminal

from support.councils import consume_all, on_server_backend

pytestmark = [pytest.mark.integration, pytest.mark.llm, pytest.mark.slow]

JAPANESE = "東京の週末の天気を一文で要約してください。"
SPANISH = "¿Cómo se dice «añadir» en inglés? Explícalo en una línea, señor."
REQUEST_ID = "report-i18n"


@pytest.fixture(scope="module")
def council(
    client: JobsApi, session_nats: NatsServer, tiny_spec: CouncilSpec, vllm_server: VLLMServer
) -> tuple[CouncilSpec, str]:
    """The tiny council with Japanese and Spanish tasks, run to the end under the submission id a
    dispatcher gives request ``REQUEST_ID``."""
    doc = on_server_backend(tiny_spec, vllm_server.base_url, max_tokens=32).model_dump(mode="json")
    doc["name"] = "report-i18n"
    doc["tasks"] = [{"id": "ja", "prompt": JAPANESE}, {"id": "es", "prompt": SPANISH}]
    spec = CouncilSpec.from_dict(doc)
    sid = submission_id_for(REQUEST_ID)
    submitted = submit_council(
        client, CouncilSubmission(spec=spec, nats_url=session_nats.url, submission_id=sid)
    )
    status = wait_until_terminal(client, submitted.job_id, timeout_s=900)
    assert status.value == "SUCCEEDED", client.logs(submitted.job_id)[-3000:]
    return spec, sid


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    swe_fleet = str(Path(sys.executable).parent / "swe-fleet")
    return subprocess.run([swe_fleet, *args], capture_output=True, text=True, timeout=120, env=env)


def test_result_prints_the_stored_result_of_every_task(
    council: tuple[CouncilSpec, str], session_nats: NatsServer
) -> None:
    _, sid = council
    started = time.monotonic()
    proc = _cli("result", sid, "--json", "--nats-url", session_nats.url)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    events = consume_all(session_nats.url, None, sid)
    stored_results = {r["task_id"]: r for r in record["results"]}
    published = {e["task_id"]: e for e in events if e["event"] == "council.deliberation.completed"}
    assert stored_results == published  # the very payloads on the stream
    assert [t["prompt"] for t in record["spec"]["tasks"]] == [JAPANESE, SPANISH]
    print(f"swe-fleet result --json: {took:.2f} s (process start included)")

    unknown = _cli("result", "no-such-submission", "--nats-url", session_nats.url)
    assert unknown.returncode == 3
    assert "no stored result for submission no-such-submission" in unknown.stderr


async def test_a_ticket_for_a_finished_request_is_done_at_once_and_publishes_nothing(
    council: tuple[CouncilSpec, str], session_nats: NatsServer
) -> None:
    spec, sid = council
    started = time.monotonic()
    ticket = await request_council(spec, nats_url=session_nats.url, request_id=REQUEST_ID, timeout_s=600)
    took = time.monotonic() - started
    assert ticket.done() and ticket.submission_id == sid
    results = await ticket
    assert [r.task_id for r in results] == ["ja", "es"]
    print(f"request_council for a finished request: done in {took:.3f} s")
    import nats

    nc = await nats.connect(session_nats.url)
    try:
        info = await nc.jetstream().stream_info("COUNCIL_REQUESTS")
        assert info.state.messages == 0  # the request was never published
    except nats.js.errors.NotFoundError:
        pass  # no request was ever published on this server
    finally:
        await nc.close()


class _Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.keys += [v for k, v in attrs if k == "data-key" and v is not None]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    return found


def _headless(html_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on the file, with every network request sent to a closed port (the
    report must need none)."""
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--proxy-server=127.0.0.1:9", f"--user-data-dir={html_file.parent / 'profile'}",
        *args, html_file.as_uri(),
    ]  # fmt: skip
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(html_file.parent)}
    )


def test_the_report_in_chromium_shows_every_event_and_the_japanese_and_spanish_text(
    council: tuple[CouncilSpec, str], session_nats: NatsServer, tmp_path: Path
) -> None:
    _, sid = council
    html_file, md_file = tmp_path / "report.html", tmp_path / "report.md"
    proc = _cli("report", sid, "--html", str(html_file), "--md", str(md_file), "--nats-url", session_nats.url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(html_file), str(md_file)]

    dumped = _headless(html_file, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = _Dom()
    dom.feed(dumped.stdout)
    events: list[dict[str, Any]] = consume_all(session_nats.url, None, sid)
    keys = [e.get("key") or _key_of(e) for e in events]
    assert sorted(dom.keys) == sorted(keys)  # every event of the council, once
    text = "".join(dom.text)
    assert JAPANESE in text and SPANISH in text

    screenshot = tmp_path / "report.png"
    shot = _headless(html_file, f"--screenshot={screenshot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    print(f"screenshot: {screenshot}")
    assert JAPANESE in md_file.read_text(encoding="utf-8")


def _key_of(e: dict[str, Any]) -> str:
    """An event's key from its JSON payload (the consumer's dump has no ``key`` field)."""
    from swe_fleet.events import decode_event

    return decode_event(json.dumps(e).encode()).key


def _in_a_terminal(argv: list[str], timeout_s: float = 300) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal (200 x 50) as stdin, stdout and stderr; its exit code
    and everything it wrote (escape codes included)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def _last_frame(output: str) -> str:
    """The live view's last drawing, without escape codes (rich moves the cursor up to redraw)."""
    import re

    last = output.rsplit("\x1b[1A", 1)[-1]
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last)


def test_watch_draws_a_finished_council_s_final_grid_in_a_terminal(
    council: tuple[CouncilSpec, str], session_nats: NatsServer
) -> None:
    spec, sid = council
    swe_fleet = str(Path(sys.executable).parent / "swe-fleet")
    code, output = _in_a_terminal(
        [swe_fleet, "watch", sid, "--nats-url", session_nats.url, "--timeout", "120"]
    )
    assert code == 0, output[-3000:]
    frame = _last_frame(output)
    assert "waiting" not in frame and "running" not in frame, frame
    for task in spec.tasks:
        row = next(line for line in frame.splitlines() if f" {task.id} " in line)
        assert row.count("done 2/2") == 4 and ("decided" in row or "tied" in row), frame


def test_watch_follows_a_running_council_until_every_task_has_its_result(
    client: JobsApi, session_nats: NatsServer, tiny_spec: CouncilSpec, vllm_server: VLLMServer, tmp_path: Path
) -> None:
    """Watching starts before the council does: the grid grows from the events, states change
    (something is running, later everything is done) and the watch ends by itself."""
    spec = on_server_backend(tiny_spec, vllm_server.base_url, max_tokens=24)
    sid = f"watch-live-{int(time.time())}"
    swe_fleet = str(Path(sys.executable).parent / "swe-fleet")
    import threading

    watched: dict[str, Any] = {}
    argv = [swe_fleet, "watch", sid, "--nats-url", session_nats.url, "--timeout", "600"]

    def watch() -> None:
        watched["code"], watched["output"] = _in_a_terminal(argv, timeout_s=660)

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(3)  # the watch is listening before the first event exists
    submitted = submit_council(
        client, CouncilSubmission(spec=spec, nats_url=session_nats.url, submission_id=sid)
    )
    status = wait_until_terminal(client, submitted.job_id, timeout_s=900)
    assert status.value == "SUCCEEDED", client.logs(submitted.job_id)[-3000:]
    watcher.join(120)
    assert not watcher.is_alive() and watched["code"] == 0, watched.get("output", "")[-3000:]
    output = watched["output"]
    assert "running" in output  # an earlier drawing had a phase under way
    frame = _last_frame(output)
    assert "running" not in frame and "waiting" not in frame, frame
    assert all(f" {t.id} " in frame for t in spec.tasks), frame


def test_result_of_a_council_still_running_says_so_and_exits_3(nats_server: NatsServer) -> None:
    """The record a job stores at its start (the spec, no results yet) is not a result."""
    from swe_fleet.nats.connection import close_nats, connect_nats
    from swe_fleet.nats.results import CouncilRecord, ResultsStore

    spec = CouncilSpec.from_text(
        "tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n"
    )

    async def started() -> None:
        nc = await connect_nats(nats_server.url)
        try:
            store = await ResultsStore.open(nc.jetstream())
            record = CouncilRecord(
                submission_id="still-running", council="c", spec=spec.model_dump(mode="json"), results=[],
                complete=False,
            )  # fmt: skip
            await store.put(record)
        finally:
            await close_nats(nc)

    asyncio.run(started())
    proc = _cli("result", "still-running", "--nats-url", nats_server.url)
    assert proc.returncode == 3
    assert (
        "council still-running has not finished" in proc.stderr
        and "swe-fleet watch still-running" in proc.stderr
    )
