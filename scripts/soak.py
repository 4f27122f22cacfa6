#!/usr/bin/env python
"""Soak under faults: many small council requests through the dispatcher onto the shared engine
pool, while the dispatcher, nats-server and an engine replica are SIGKILLed at seeded moments.

Not part of the suite (it takes a quarter of an hour). On the embedded local stack: a nats-server
with its own store, a Ray head (2 CPUs), ``swe-fleet dispatch`` (``--env image``: the head runs
from this virtualenv), councils of 1 task x 2 agents, no critique round (propose, vote), on the
shared pool's one replica.

Faults (``--seed``): each fires when the number of finished requests (a result on the stream)
first reaches a threshold drawn from the seed, so they land at different moments of the run and
the schedule is the same on a faster or slower machine:

  dispatcher  SIGKILL the dispatcher, start a new one at once (same durable, same ledger)
  nats        SIGKILL nats-server, start it again 3 s later on the same port and store
  replica     SIGKILL the pool's engine replica (Ray restarts it; its councils rerun the calls)

Afterwards it counts, from the streams as stored and from Ray's job list: requests, jobs,
deliberation results, every planned slot's events (lost: a request without a result or a planned
slot without an event; duplicated: a key stored twice). Writes benchmarks/results/soak.json
(``requests``, ``results``, ``lost``, ``duplicated``, ``wall_s``, ``faults``); target lost = 0
and duplicated = 0.

    python scripts/soak.py [--requests 50] [--seed 7] [--timeout 2700]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")
FAULTS = ("dispatcher", "nats", "replica", "dispatcher", "nats")


def council_spec(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "tasks": [{"id": "add", "prompt": "Write a Python function add(a, b) that returns a + b."}],
        "agents": [{"id": "arch", "role": "architect"}, {"id": "dev", "role": "developer"}],
        "protocol": {"critique_rounds": 0},
        "model": {"name": "smollm2-135m", "max_tokens": 24, "vote_max_tokens": 48, "engine": "shared"},
    }


def start_dispatcher(workdir: Path, nats_url: str, dashboard: str, env: dict[str, str], n: int) -> Any:
    log = (workdir / f"dispatcher-{n}.log").open("wb")
    argv = [
        SWE_FLEET, "dispatch", "--nats-url", nats_url, "--address", dashboard, "--env", "image",
        "--max-in-flight", "4", "--poll", "0.5", "--ack-wait", "10", "--json-logs",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


async def stored(nats_url: str, stream: str, subject: str) -> list[tuple[str, dict[str, Any]]]:
    """(Nats-Msg-Id, payload) of every message of ``subject`` stored in ``stream``, in order."""
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js import api

    from swe_fleet.nats.connection import close_nats, connect_nats

    nc = await connect_nats(nats_url)
    try:
        js = nc.jetstream(timeout=10)
        sub = await js.pull_subscribe(
            subject, stream=stream,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.NONE,
                                      inactive_threshold=30),
        )  # fmt: skip
        out = []
        while True:
            try:
                batch = await sub.fetch(256, timeout=2)
            except NatsTimeout:
                break
            for m in batch:
                out.append(((m.headers or {}).get("Nats-Msg-Id", ""), json.loads(m.data)))
            if batch[-1].metadata.num_pending == 0:
                break
        return out
    finally:
        await close_nats(nc)


async def results_so_far(nats_url: str) -> set[str]:
    try:
        msgs = await asyncio.wait_for(
            stored(nats_url, "AGENT_RESPONSES", "council.deliberation.completed"), 30
        )
    except Exception:  # NATS down for a fault: nothing new known
        return set()
    return {p["submission_id"] for _, p in msgs}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=2700.0, help="bound on the whole run, seconds")
    args = parser.parse_args()
    from swe_fleet._processes import stop_on_signals

    with stop_on_signals():  # SIGTERM or Ctrl-C: stop what it started (the finally below)
        return asyncio.run(soak(args.requests, args.seed, args.timeout))


async def soak(n_requests: int, seed: int, timeout_s: float) -> int:
    from swe_fleet.dispatch.producer import request_council
    from swe_fleet.llm.model import prepare_local_model
    from swe_fleet.local.stack import NatsServer, RayHead
    from swe_fleet.spec import CouncilSpec
    from swe_fleet.submit.engine_jobs import run_engine_job
    from swe_fleet.submit.jobs_api import JobsApi

    prepare_local_model()
    rng = random.Random(seed)
    # Thresholds (finished requests) at which each fault fires: spread over the run.
    thresholds = sorted(rng.sample(range(2, max(n_requests - 5, len(FAULTS) + 3)), len(FAULTS)))
    schedule = list(zip(thresholds, FAULTS, strict=True))
    print(f"fault schedule (finished requests -> fault): {schedule}", flush=True)
    faults: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="swf-soak-") as tmp:
        workdir = Path(tmp)
        nats = NatsServer(workdir / "nats").start()
        store, port = workdir / "nats" / "jetstream", nats.port
        ray = RayHead(workdir / "ray", num_cpus=2).start()
        env = {**os.environ, **ray.client_env()}
        dispatchers: list[Any] = []
        try:
            jobs = JobsApi(ray.dashboard_url, auth_token=ray.auth_token)
            print("starting the pool (engine up) ...", flush=True)
            spec_file = workdir / "soak.json"
            spec_file.write_text(json.dumps(council_spec("soak")))
            run_engine_job(jobs, "up", env_kind="image", spec=CouncilSpec.from_file(spec_file))
            dispatchers.append(start_dispatcher(workdir, nats.url, ray.dashboard_url, env, 0))
            prefix = f"soak{seed}-{int(time.time())}"
            rids = [f"{prefix}-r{i:03d}" for i in range(n_requests)]
            started = time.monotonic()
            tickets = [
                await request_council(CouncilSpec.from_dict(council_spec("soak")), nats_url=nats.url,
                                      request_id=rid, timeout_s=timeout_s)
                for rid in rids
            ]  # fmt: skip
            print(f"{n_requests} requests published", flush=True)
            deadline = started + timeout_s
            finished: set[str] = set()
            while len(finished) < n_requests and time.monotonic() < deadline:
                await asyncio.sleep(2)
                finished |= await results_so_far(nats.url)
                while schedule and len(finished) >= schedule[0][0]:
                    _at, kind = schedule.pop(0)
                    fault: dict[str, Any] = {"kind": kind, "at_finished": len(finished),
                                             "at_s": round(time.monotonic() - started, 1)}  # fmt: skip
                    if kind == "dispatcher":
                        os.kill(dispatchers[-1].pid, signal.SIGKILL)
                        dispatchers[-1].wait(30)
                        dispatchers.append(
                            start_dispatcher(workdir, nats.url, ray.dashboard_url, env, len(dispatchers))
                        )
                    elif kind == "nats":
                        assert nats.process is not None
                        nats.process.popen.kill()
                        nats.stop()
                        await asyncio.sleep(3)
                        nats.start(port=port, store_dir=store)
                    else:  # the replica's pid, as the pool reports it (it runs on this host)
                        replicas = run_engine_job(jobs, "status", env_kind="image")["replicas"]
                        pids = [r["pid"] for r in replicas if "pid" in r]
                        fault["pids"] = pids
                        if pids:
                            os.kill(pids[0], signal.SIGKILL)
                    faults.append(fault)
                    print(f"fault: {fault}", flush=True)
            wall = time.monotonic() - started
            for ticket in tickets:  # counted from the streams below, not by the tickets
                ticket.cancel()
            for ticket in tickets:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ticket
            await asyncio.sleep(5)  # the last jobs' terminal status events
            report = await count(nats.url, jobs, prefix, rids)
        finally:
            for d in dispatchers:
                if d.poll() is None:
                    d.send_signal(signal.SIGTERM)
                    try:
                        d.wait(60)
                    except subprocess.TimeoutExpired:
                        d.kill()
            ray.stop()
            nats.stop()
    out = {"requests": n_requests, **report, "wall_s": round(wall, 1), "faults": faults, "seed": seed,
           "dispatchers_started": len(dispatchers)}  # fmt: skip
    out["target_met"] = out["lost"] == 0 and out["duplicated"] == 0 and len(faults) == len(FAULTS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "detail"}, indent=2))
    return 0 if out["target_met"] else 1


async def count(nats_url: str, jobs: Any, prefix: str, rids: list[str]) -> dict[str, Any]:
    """What the streams and Ray's job list hold, per request."""
    from swe_fleet.events import AGENT_RESPONSES_SUBJECTS, COUNCIL_REQUEST, COUNCIL_REQUESTS_STREAM

    requests = [p for _, p in await stored(nats_url, COUNCIL_REQUESTS_STREAM, COUNCIL_REQUEST)]
    events = [
        m for subject in AGENT_RESPONSES_SUBJECTS for m in await stored(nats_url, "AGENT_RESPONSES", subject)
    ]
    ids = Counter(msg_id for msg_id, _ in events if msg_id)
    ray_jobs = [j for j in jobs.list_jobs() if prefix in (j.submission_id or "")]
    by_sid: dict[str, list[dict[str, Any]]] = {}
    for _, p in events:
        by_sid.setdefault(str(p.get("submission_id")), []).append(p)
    planned_per_request = 4  # 1 task x 2 agents x (propose, vote)
    missing_results, missing_slots, failed_slots = [], 0, 0
    failed_reasons: Counter[str] = Counter()
    results = 0
    for rid in rids:
        mine = [p for sid, ps in by_sid.items() if sid.endswith(rid) for p in ps]
        if any(p["event"] == "council.deliberation.completed" for p in mine):
            results += 1
        else:
            missing_results.append(rid)
        slots = {
            (p["task_id"], p["phase"], p["agent_id"])
            for p in mine
            if p["event"].startswith("agent.response.")
        }
        missing_slots += planned_per_request - len(slots)
        failed = [p for p in mine if p["event"] == "agent.response.failed"]
        failed_slots += len(failed)
        failed_reasons.update(str(p["reason"])[:160] for p in failed)
    return {
        "requests_stored": len([r for r in requests if str(r.get("request_id", "")).startswith(prefix)]),
        "jobs": len(ray_jobs),
        "results": results,
        "lost": len(missing_results) + missing_slots,
        "duplicated": sum(n - 1 for n in ids.values() if n > 1),
        "failed_slots": failed_slots,
        "detail": {
            "requests_without_result": missing_results,
            "slots_without_event": missing_slots,
            "failed_slot_reasons": dict(failed_reasons),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
