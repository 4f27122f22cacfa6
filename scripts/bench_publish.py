#!/usr/bin/env python
"""Publish benchmark: what do retries, PubAck checks and the outbox cost against raw nats-py?

Its own nats-server (JetStream, temp store, loopback). N events (real council event payloads,
serialized once up front so every variant sends the same bytes), CONCURRENCY in flight:

  (a) raw          nats-py ``js.publish(subject, payload, headers={"Nats-Msg-Id": key})``,
                   CONCURRENCY in flight through a semaphore
  (b) publish      ``JetStreamPublisher.publish`` in the same harness (retries, keys, ack checks)
  (c) publish_all  ``JetStreamPublisher.publish_all(events, concurrency=CONCURRENCY)``: the API a
                   council job calls (per-event latency is not observable from outside)

Each run gets a fresh stream (deleted and created again: keys repeat across runs). The variants
are interleaved, REPS times. Reported: throughput (msg/s) and publish latency p50/p99 (ms), the
median over the repetitions; ``ratio_vs_raw`` = (c) / (a) median throughput (target >= 0.8).

Both modes run in the same run of the script, each on its own nats-server: ``plain`` (no auth,
no TLS) and ``tls_auth``, a server that requires a token over TLS (the local stack's, made by
:class:`~swe_fleet.local.stack.LocalNatsSecurity`); there raw nats-py gets the same TLS context
and token as our publisher (which reads them from NATS_TOKEN_FILE and NATS_CA, like every client):
``ratio_vs_raw_tls`` (target >= 0.8). Prints a table per mode, writes benchmarks/results/publish.json.

    python scripts/bench_publish.py [--events 5000] [--concurrency 100] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats
from nats.js import api

from swe_fleet.events import AGENT_RESPONSES_STREAM, AGENT_RESPONSES_SUBJECTS, AgentResponseCompleted
from swe_fleet.local.stack import LocalNatsSecurity, NatsServer
from swe_fleet.nats.auth import NatsAuth
from swe_fleet.nats.outbox import OutboxEntry
from swe_fleet.nats.policy import PublishPolicy
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.nats.streams import default_duplicate_window_s

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ("raw", "publish", "publish_all")
#: Servers: no auth, no TLS; a token over TLS.
MODES = ("plain", "tls_auth")


@dataclass
class Run:
    variant: str
    rep: int
    seconds: float
    latencies_ms: list[float]

    def summary(self, n: int) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "variant": self.variant,
            "rep": self.rep,
            "seconds": round(self.seconds, 4),
            "msg_per_s": round(n / self.seconds, 1),
            "p50_ms": round(_percentile(lat, 50), 3) if lat else None,
            "p99_ms": round(_percentile(lat, 99), 3) if lat else None,
        }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def make_events(n: int) -> list[OutboxEntry]:
    """N council events, serialized once (about the size of a short agent response)."""
    return [
        OutboxEntry.from_event(
            AgentResponseCompleted(
                submission_id="bench",
                council="bench",
                task_id=f"task{i // 4}",
                phase="propose",
                agent_id=f"agent{i % 4}",
                role="developer",
                content=f"def solution_{i}(xs):\n    return sorted(set(xs))\n" * 4,
                prompt_tokens=120,
                output_tokens=64,
                finish_reason="stop",
            )
        )
        for i in range(n)
    ]


async def fresh_stream(js: Any) -> None:
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(AGENT_RESPONSES_STREAM)
    await js.add_stream(
        api.StreamConfig(
            name=AGENT_RESPONSES_STREAM,
            subjects=list(AGENT_RESPONSES_SUBJECTS),
            storage=api.StorageType.FILE,
            duplicate_window=default_duplicate_window_s(),
        )
    )


async def timed_harness(
    events: list[OutboxEntry], concurrency: int, publish: Callable[[OutboxEntry], Awaitable[Any]]
) -> tuple[float, list[float]]:
    """CONCURRENCY in flight via a semaphore; latency of each publish call (after the semaphore)."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(e: OutboxEntry) -> None:
        async with sem:
            t0 = time.perf_counter()
            await publish(e)
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(e) for e in events))
    return time.perf_counter() - started, latencies


def connect_options(url: str) -> dict[str, Any]:
    """What raw nats-py gets: the TLS context and credentials our clients read from NATS_*."""
    return NatsAuth.from_env().connect_options(url)


async def run_variant(variant: str, url: str, events: list[OutboxEntry], concurrency: int, rep: int) -> Run:
    admin = await nats.connect(url, **connect_options(url))
    try:
        await fresh_stream(admin.jetstream())
    finally:
        await admin.close()
    if variant == "raw":
        nc = await nats.connect(url, **connect_options(url))
        js = nc.jetstream(timeout=5)
        try:

            async def raw(e: OutboxEntry) -> Any:
                return await js.publish(e.subject, e.payload, headers={"Nats-Msg-Id": e.key})

            seconds, lat = await timed_harness(events, concurrency, raw)
        finally:
            await nc.drain()
        return Run(variant, rep, seconds, lat)
    pub = await JetStreamPublisher.open(url, stream=AGENT_RESPONSES_STREAM, policy=PublishPolicy())
    try:
        if variant == "publish":
            seconds, lat = await timed_harness(events, concurrency, pub.publish)
        else:
            started = time.perf_counter()
            results = await pub.publish_all(events, concurrency=concurrency)
            seconds, lat = time.perf_counter() - started, []
            assert len(results) == len(events) and not any(r.duplicate for r in results)
    finally:
        await pub.close()
    assert pub.published == len(events) and pub.duplicates == 0
    return Run(variant, rep, seconds, lat)


async def bench(url: str, n: int, concurrency: int, reps: int) -> list[Run]:
    events = make_events(n)
    # Warm-up (connection set-up, JIT-free but caches and the store's first block).
    await run_variant("raw", url, events[:500], concurrency, -1)
    runs = []
    for rep in range(reps):
        order = VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS))  # no variant always first
        for variant in order:
            run = await run_variant(variant, url, events, concurrency, rep)
            print(f"  rep {rep} {variant:<12} {n / run.seconds:>9.0f} msg/s", file=sys.stderr)
            runs.append(run)
    return runs


def report(runs: list[Run], n: int, concurrency: int, reps: int) -> dict[str, Any]:
    per_variant: dict[str, Any] = {}
    for v in VARIANTS:
        mine = [r.summary(n) for r in runs if r.variant == v]
        lat = [r.summary(n) for r in runs if r.variant == v and r.latencies_ms]
        per_variant[v] = {
            "msg_per_s_median": statistics.median(x["msg_per_s"] for x in mine),
            "p50_ms_median": statistics.median(x["p50_ms"] for x in lat) if lat else None,
            "p99_ms_median": statistics.median(x["p99_ms"] for x in lat) if lat else None,
            "runs": mine,
        }
    raw = per_variant["raw"]["msg_per_s_median"]
    return {
        "ratio_vs_raw": round(per_variant["publish_all"]["msg_per_s_median"] / raw, 3),
        "ratio_publish_vs_raw": round(per_variant["publish"]["msg_per_s_median"] / raw, 3),
        "target_ratio": 0.8,
        "events": n,
        "concurrency": concurrency,
        "reps": reps,
        "variants": per_variant,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "nats_py": version("nats-py"),
        },
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['events']} events, {result['concurrency']} in flight, median of {result['reps']} runs")
    print(f"{'variant':<14}{'msg/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for v, d in result["variants"].items():
        p50 = "-" if d["p50_ms_median"] is None else f"{d['p50_ms_median']:.2f}"
        p99 = "-" if d["p99_ms_median"] is None else f"{d['p99_ms_median']:.2f}"
        print(f"{v:<14}{d['msg_per_s_median']:>10.0f}{p50:>10}{p99:>10}")
    print(
        f"ratio_vs_raw (publish_all / raw) = {result['ratio_vs_raw']:.3f}   "
        f"publish / raw = {result['ratio_publish_vs_raw']:.3f}   (target >= {result['target_ratio']})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "publish.json")
    args = parser.parse_args()
    results = {}
    for mode in MODES:
        with tempfile.TemporaryDirectory(prefix="swf-bench-nats-") as d:
            server_args: list[str] = []
            if mode == "tls_auth":
                security = LocalNatsSecurity.make(Path(d) / "tls")
                server_args = ["-c", str(security.config)]
                os.environ.update(security.client_env())
            server = NatsServer(Path(d), args=server_args).start()
            try:
                print(f"mode {mode}: {server.url}", file=sys.stderr)
                runs = asyncio.run(bench(server.url, args.events, args.concurrency, args.reps))
            finally:
                server.stop()
                for key in ("NATS_TOKEN_FILE", "NATS_CA"):
                    os.environ.pop(key, None)
        results[mode] = report(runs, args.events, args.concurrency, args.reps)
        print(f"\n== {mode}")
        print_table(results[mode])
    result = {
        **results["plain"],
        "ratio_vs_raw_tls": results["tls_auth"]["ratio_vs_raw"],
        "tls_auth": results["tls_auth"],
    }
    print(
        f"\nratio_vs_raw = {result['ratio_vs_raw']:.3f}   ratio_vs_raw_tls = {result['ratio_vs_raw_tls']:.3f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
