#!/usr/bin/env python
"""Dispatch benchmark: what does going through ``swe-fleet dispatch`` cost a job's start?

Its own local stack (nats-server and a Ray head on loopback) and one ``swe-fleet dispatch``
process (``--env image``). Measured: seconds from *asking* for a council job to Ray reporting the
job RUNNING, two ways, for the same job:

  (a) direct    ``JobSubmissionClient.submit_job(...)`` with the entrypoint and runtime_env of a
                job the dispatcher submitted (same staged package, already uploaded, same env
                vars, ``entrypoint_num_cpus=0``): the clock starts before the call
  (b) dispatch  a ``council.request`` published to JetStream (what a service does): the clock
                starts before the publish; the dispatcher validates it, reserves a slot in its
                ledger and submits through ``submit_council`` (staging and all)

Both are read the same way: ``GET /api/jobs/{id}`` every POLL_S until RUNNING. Time to RUNNING
does not depend on the LLM (the job is RUNNING once its driver started), so the jobs use the
server backend with no server and are stopped as soon as they are RUNNING; the next measurement
starts when the previous job is terminal. One warm-up of each (not counted), then ROUNDS rounds,
alternating which path goes first. ``ratio_vs_direct`` = median (b) / median (a), target <= 1.2.
Prints a table, writes benchmarks/results/dispatch.json.

    python scripts/bench_dispatch.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import requests
from ray.job_submission import JobStatus, JobSubmissionClient

from swe_fleet._processes import ManagedProcess
from swe_fleet.dispatch.requests import CouncilRequested, submission_id_for
from swe_fleet.errors import JobWaitTimeout, LocalStackError, SubmissionError
from swe_fleet.local.stack import LocalStack, local_stack
from swe_fleet.nats.connection import close_nats, connect_nats
from swe_fleet.spec import CouncilSpec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")
POLL_S = 0.02
TARGET = 1.2
SPEC = CouncilSpec.from_dict(
    {
        "name": "bench-dispatch",
        "tasks": [{"id": "t", "prompt": "Say hi."}],
        "agents": [{"id": "a", "role": "architect"}, {"id": "b", "role": "developer"}],
        "protocol": {"critique_rounds": 0},
        "model": {"max_tokens": 8},
        "backend": "server",
        "server": {"url": "http://127.0.0.1:9"},  # never reached: the job is stopped when RUNNING
    }
)


class Cluster:
    """The Jobs API of the bench's head, read the same way for both paths."""

    def __init__(self, stack: LocalStack) -> None:
        self.url = stack.ray.dashboard_url
        self.headers = {"Authorization": f"Bearer {stack.ray.auth_token}"}
        self.client = JobSubmissionClient(self.url, headers=self.headers)

    def status(self, job_id: str) -> JobStatus | None:
        r = requests.get(f"{self.url}/api/jobs/{job_id}", headers=self.headers, timeout=5)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return JobStatus(r.json()["status"])

    async def wait_running(self, job_id: str, t0: float, timeout_s: float = 120) -> float:
        """Seconds from ``t0`` until the job is RUNNING."""
        while time.perf_counter() - t0 < timeout_s:
            status = await asyncio.to_thread(self.status, job_id)
            if status == JobStatus.RUNNING:
                return time.perf_counter() - t0
            if status is not None and status.is_terminal():
                raise SubmissionError(
                    f"{job_id} ended {status.value} before it was seen RUNNING", job_id=job_id
                )
            await asyncio.sleep(POLL_S)
        raise JobWaitTimeout(f"{job_id} was not RUNNING within {timeout_s} s", job_id=job_id)

    async def stop_and_settle(self, job_id: str) -> None:
        await asyncio.to_thread(self.client.stop_job, job_id)
        for _ in range(600):
            status = await asyncio.to_thread(self.status, job_id)
            if status is not None and status.is_terminal():
                return
            await asyncio.sleep(0.1)
        raise JobWaitTimeout(f"{job_id} did not stop within 60 s", job_id=job_id)


def start_dispatcher(stack: LocalStack, workdir: Path) -> ManagedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": stack.ray.auth_token}
    env.pop("RAY_ADDRESS", None)  # Ray's client would prefer it to --address
    log_path = workdir / "dispatcher.log"
    argv = [
        SWE_FLEET, "dispatch", "--nats-url", stack.nats.url, "--address", stack.ray.dashboard_url,
        "--env", "image", "--json-logs",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc = ManagedProcess("dispatcher", popen, log_path)
    deadline = time.monotonic() + 120
    while '"dispatch.started"' not in log_path.read_text(errors="replace"):
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise LocalStackError(f"the dispatcher did not start:\n{proc.tail()}", process="dispatcher")
        time.sleep(0.2)
    return proc


async def bench(stack: LocalStack, rounds: int) -> dict[str, list[float]]:
    cluster = Cluster(stack)
    nc = await connect_nats(stack.nats.url)
    js = nc.jetstream(timeout=5)
    counter = iter(range(10_000))
    template: dict[str, Any] = {}

    async def via_dispatcher() -> float:
        rid = f"bench-{next(counter)}"
        payload = CouncilRequested(request_id=rid, spec=SPEC).to_bytes()
        t0 = time.perf_counter()
        await js.publish("council.request", payload, headers={"Nats-Msg-Id": f"request/{rid}"})
        job_id = submission_id_for(rid)
        seconds = await cluster.wait_running(job_id, t0)
        if not template:  # the job the direct path copies
            info = await asyncio.to_thread(cluster.client.get_job_info, job_id)
            template.update(
                job_id=job_id,
                entrypoint=info.entrypoint,
                runtime_env=info.runtime_env,
                metadata=info.metadata,
            )
        await cluster.stop_and_settle(job_id)
        return seconds

    async def direct() -> float:
        job_id = f"direct-{next(counter)}"
        entrypoint = template["entrypoint"].replace(template["job_id"], job_id)
        t0 = time.perf_counter()
        await asyncio.to_thread(
            cluster.client.submit_job,
            entrypoint=entrypoint,
            runtime_env=template["runtime_env"],
            submission_id=job_id,
            metadata=template["metadata"],
            entrypoint_num_cpus=0,
        )
        seconds = await cluster.wait_running(job_id, t0)
        await cluster.stop_and_settle(job_id)
        return seconds

    paths: dict[str, Callable[[], Awaitable[float]]] = {"dispatch": via_dispatcher, "direct": direct}
    samples: dict[str, list[float]] = {"direct": [], "dispatch": []}
    try:
        for name in ("dispatch", "direct"):  # warm-up: package upload, first workers
            print(f"  warm-up {name:<9} {await paths[name]():6.3f} s", file=sys.stderr)
        for r in range(rounds):
            order = ("direct", "dispatch") if r % 2 == 0 else ("dispatch", "direct")
            for name in order:
                seconds = await paths[name]()
                samples[name].append(seconds)
                print(f"  round {r} {name:<9} {seconds:6.3f} s", file=sys.stderr)
    finally:
        await close_nats(nc)
    return samples


def report(samples: dict[str, list[float]], rounds: int) -> dict[str, Any]:
    def summary(values: list[float]) -> dict[str, Any]:
        ordered = sorted(values)
        return {
            "median_s": round(statistics.median(values), 4),
            "min_s": round(ordered[0], 4),
            "max_s": round(ordered[-1], 4),
            "samples_s": [round(v, 4) for v in values],
        }

    direct, dispatch = statistics.median(samples["direct"]), statistics.median(samples["dispatch"])
    ratio = dispatch / direct
    return {
        "ratio_vs_direct": round(ratio, 3),
        "target_ratio": TARGET,
        "met": ratio <= TARGET,
        "overhead_ms_median": round((dispatch - direct) * 1000, 1),
        "rounds": rounds,
        "poll_s": POLL_S,
        "paths": {"direct": summary(samples["direct"]), "dispatch": summary(samples["dispatch"])},
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "runtime_env": "image",
        },
        "command": "python scripts/bench_dispatch.py --rounds " + str(rounds),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\ntime from request to job RUNNING, median of {result['rounds']} rounds")
    print(f"{'path':<34}{'median s':>10}{'min s':>8}{'max s':>8}")
    labels = {
        "direct": "(a) JobSubmissionClient.submit_job",
        "dispatch": "(b) council.request -> dispatch",
    }
    for name, label in labels.items():
        d = result["paths"][name]
        print(f"{label:<34}{d['median_s']:>10.3f}{d['min_s']:>8.3f}{d['max_s']:>8.3f}")
    verdict = "met" if result["met"] else "NOT met"
    print(
        f"ratio_vs_direct (b)/(a) = {result['ratio_vs_direct']:.3f} (target <= {TARGET}: {verdict}); "
        f"median overhead {result['overhead_ms_median']:.0f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "dispatch.json")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="swf-bench-dispatch-") as d,
        local_stack(Path(d) / "stack") as stack,
    ):
        dispatcher = start_dispatcher(stack, Path(d))
        try:
            samples = asyncio.run(bench(stack, args.rounds))
        finally:
            dispatcher.stop()
    result = report(samples, args.rounds)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
