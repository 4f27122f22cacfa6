#!/usr/bin/env python
"""Late readers: how long until a finished council's result is in hand?

Its own nats-server (JetStream, temp store, loopback). The stream holds BACKLOG other councils'
events (real payloads from the scripted council, 2 tasks x 3 agents x 4 phases, renamed per
council) and then the council asked for; its record is in the results store. Measured:

  (k) store      ``ResultsStore.get`` in a client already connected (one key-value get)
  (t) ticket     ``request_council`` for the finished request: connect, look in the store,
                 a ticket already done (nothing published)
  (c) cli        ``swe-fleet result ID --json``, a new process (Python start and imports included)
  (r) replay     what a late reader had before: a fresh consumer reads the stream from the start
                 and keeps the council's ``council.deliberation.completed`` events (nats-py,
                 filtered by subject, no ack), until nothing is pending

Every variant REPS times, interleaved; min/median/max seconds. Prints a table, writes
benchmarks/results/result.json (``ratio_replay_vs_store``: median (r) / median (k)).

    python scripts/bench_result.py [--backlog 500] [--reps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from swe_fleet.dispatch.producer import request_council
from swe_fleet.dispatch.requests import submission_id_for
from swe_fleet.events import AGENT_RESPONSES_STREAM, DELIBERATION_COMPLETED, decode_event
from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.history import read_stream
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.nats.results import CouncilRecord, ResultsStore
from swe_fleet.spec import PublishSpec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from support.scripted_council import run_scripted  # noqa: E402

SPEC = """
name: late
tasks: [{id: t1, prompt: first task}, {id: t2, prompt: second task}]
agents: [{id: a, role: architect}, {id: b, role: developer}, {id: c, role: qa}]
protocol: {critique_rounds: 1, early_stop: false}
"""
REQUEST_ID = "late-reader"


async def fill(url: str, backlog: int) -> tuple[Any, list[Any]]:
    """BACKLOG councils' events, then the one asked for, and its record in the store."""
    sid = submission_id_for(REQUEST_ID)
    spec, _, pub, report = await run_scripted(SPEC, submission_id=sid)
    publisher = await JetStreamPublisher.connect(PublishSpec(nats_url=url))
    try:
        for n in range(backlog):
            other = [e.model_copy(update={"submission_id": f"other-{n}"}) for e in pub.events]
            await publisher.publish_all(other)
        await publisher.publish_all(pub.events)
    finally:
        await publisher.close()
    nc = await nats.connect(url)
    try:
        store = await ResultsStore.open(nc.jetstream())
        await store.put(
            CouncilRecord(
                submission_id=sid,
                council=spec.name,
                spec=spec.model_dump(mode="json"),
                results=report.results,
            )
        )
    finally:
        await nc.close()
    return spec, report.results


async def measure(url: str, spec: Any, results: list[Any], reps: int) -> dict[str, list[float]]:
    sid = submission_id_for(REQUEST_ID)
    times: dict[str, list[float]] = {"store": [], "ticket": [], "cli": [], "replay": []}
    nc = await nats.connect(url)
    js = nc.jetstream()
    store = await ResultsStore.open(js)
    swe_fleet = str(Path(sys.executable).parent / "swe-fleet")
    try:
        for _ in range(reps):
            t = time.perf_counter()
            record = await store.get(sid)
            times["store"].append(time.perf_counter() - t)
            assert record is not None and record.results == results

            t = time.perf_counter()
            ticket = await request_council(spec, nats_url=url, request_id=REQUEST_ID, timeout_s=30)
            got = await ticket
            times["ticket"].append(time.perf_counter() - t)
            assert ticket.done() and got == results

            t = time.perf_counter()
            proc = subprocess.run(  # noqa: ASYNC221 - the process is what is timed, nothing else runs
                [swe_fleet, "result", sid, "--json", "--nats-url", url],
                capture_output=True,
                text=True,
                timeout=60,
            )
            times["cli"].append(time.perf_counter() - t)
            assert proc.returncode == 0 and len(json.loads(proc.stdout)["results"]) == len(results), (
                proc.stderr
            )

            t = time.perf_counter()
            found = [
                e
                for e in map(
                    decode_event, await read_stream(js, AGENT_RESPONSES_STREAM, [DELIBERATION_COMPLETED])
                )
                if e.submission_id == sid
            ]
            times["replay"].append(time.perf_counter() - t)
            assert sorted(e.key for e in found) == sorted(r.key for r in results)
    finally:
        await nc.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlog", type=int, default=500, help="other councils in the stream before it")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="swf-bench-result-") as d:
        server = NatsServer(Path(d)).start()
        try:
            spec, results = asyncio.run(fill(server.url, args.backlog))
            times = asyncio.run(measure(server.url, spec, results, args.reps))
        finally:
            server.stop()
    rows = {
        name: {
            "min_s": round(min(v), 4),
            "median_s": round(statistics.median(v), 4),
            "max_s": round(max(v), 4),
            "n": len(v),
        }
        for name, v in times.items()
    }
    header = f"{'variant':<8} {'min s':>9} {'median s':>9} {'max s':>9}"
    print(f"{header}  (backlog {args.backlog} councils, n={args.reps})")
    for name, r in rows.items():
        print(f"{name:<8} {r['min_s']:>9.4f} {r['median_s']:>9.4f} {r['max_s']:>9.4f}")
    out = {
        "backlog_councils": args.backlog,
        "events_in_stream": (args.backlog + 1) * 26,
        "variants": rows,
        "ratio_replay_vs_store": round(rows["replay"]["median_s"] / rows["store"]["median_s"], 1),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "result.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
