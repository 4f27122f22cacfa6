#!/usr/bin/env python
"""A fleet of small councils: what the shared engine pool saves, and whether councils running at
once batch together.

Workload: tiny councils (2 tasks x 2 agents, 1 critique round, no early stop, answers up to 96
tokens, votes up to 48, temperature 0), the SmolLM2 model on vLLM's CPU build, one engine
replica with the machine's 2 cores. All on the embedded local stack (nats-server, a Ray head),
submitted through the Jobs API like any council.

Consecutive councils (5 in a row, each submitted when the one before has ended):

  (j) per-job   ``model.engine: per-job``: each council starts its own engine
  (s) shared    ``model.engine: shared``: the first council of the row starts the pool (reported
                apart, as ``first_s``), the next four reuse it
  (v) server    ``backend: server`` against a vLLM OpenAI server started once, outside Ray: the
                strongest alternative (a long-lived engine, no pool)

Per council: wall seconds from its submission to its last task's result (the result event's
``created_at``). Target: the median of (s) (councils 2-5) at most 0.4x the median of (j).

Councils at once (shared pool, warm):

  (4) four      4 councils submitted together
  (1) single    one council with the 4 councils' tasks (8 tasks)

Output tokens/s from the first submission to the last task's result. Target: (4) at least 0.9x (1)
(cross-job batching works). Reported apart as well (no target): the jobs' start (submission to
the engine's first running request, from the replicas' timelines in the jobs' council.done
lines) and the tokens/s from then on (``ratio_concurrent_vs_single_generating``), and when the
last council could send its first request (``last_start_s``: its driver's ``engine.ready`` line).

Every configuration runs REPEATS times, alternated within each repeat (a slow minute of the VM
hits all of them), and is reported as min/median/max. Writes benchmarks/results/fleet.json with
``ratio_wall_shared_vs_per_job`` and ``ratio_concurrent_vs_single``.

    python scripts/bench_fleet.py [--repeats 3] [--row 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batching import _done_line, submit_and_wait

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TASKS = [
    ("add", "Write a Python function add(a, b) that returns a + b."),
    ("rev", "Write a Python function rev(s) that reverses a string."),
]


def council_doc(
    name: str, *, engine: str = "shared", copies: int = 1, server_url: str | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "tasks": [{"id": f"{tid}{c}", "prompt": prompt} for c in range(copies) for tid, prompt in TASKS],
        "agents": [{"id": "arch", "role": "architect"}, {"id": "dev", "role": "developer"}],
        "protocol": {"critique_rounds": 1, "early_stop": False},
        "model": {"name": "smollm2-135m", "max_tokens": 96, "vote_max_tokens": 48, "temperature": 0.0,
                  "num_cpus": 2, "engine": engine},
    }  # fmt: skip
    if server_url:
        doc["backend"] = "server"
        doc["server"] = {"url": server_url, "concurrency": 16}
    return doc


def results_at(nats_url: str, submission_id: str) -> list[float]:
    """Wall times (epoch seconds) of the submission's task results, from the stream."""
    from swe_fleet.nats.consumer import ConsumerOptions, iter_events

    async def go() -> list[float]:
        opts = ConsumerOptions(
            nats_url=nats_url, durable=None, idle_timeout_s=1.5, fetch_wait_s=0.3, submission_id=submission_id
        )
        return [
            float(e.created_at)  # epoch seconds, set by the job when it made the event
            async for e in iter_events(opts)
            if e.event == "council.deliberation.completed"
        ]

    return asyncio.run(go())


def one_council(jobs: Any, nats_url: str, doc: dict[str, Any], label: str) -> dict[str, Any]:
    submitted_at = time.time()
    spec, status, _wall, logs, done = submit_and_wait(jobs, nats_url, doc, label)
    if status != "SUCCEEDED":
        raise SystemExit(f"{label}: job {status}\n{logs[-3000:]}")
    sid = str(done["submission_id"])
    finished = results_at(nats_url, sid)
    if len(finished) != len(spec.tasks):
        raise SystemExit(f"{label}: {len(finished)} results for {len(spec.tasks)} tasks")
    return {
        "wall_s": round(max(finished) - submitted_at, 2),
        "output_tokens": int(done["output_tokens"]),
        "engine_start_s": _engine_start(logs),
    }


def _engine_start(logs: str) -> float | None:
    ready = _done_line(logs, "engine.ready")
    return float(ready["replicas"][0]["start_seconds"]) if ready else None


def at_once(jobs: Any, nats_url: str, docs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """Submit every council in ``docs`` together; output tokens/s from the first submission to
    the last task's result."""
    from swe_fleet.spec import CouncilSpec
    from swe_fleet.submit.request import CouncilSubmission
    from swe_fleet.submit.submission import submit_council
    from swe_fleet.submit.wait import wait_until_terminal

    started = time.time()
    stamp = int(started)
    submitted = [
        submit_council(
            jobs,
            CouncilSubmission(
                spec=CouncilSpec.from_dict(d), nats_url=nats_url, submission_id=f"{label}-{i}-{stamp}"
            ),
        )
        for i, d in enumerate(docs)
    ]
    tokens, last, first_running, last_ready = 0, 0.0, float("inf"), 0.0
    for job, doc in zip(submitted, docs, strict=True):
        status = wait_until_terminal(jobs, job.job_id, timeout_s=1800)
        logs = jobs.logs(job.job_id)
        if status.value != "SUCCEEDED":
            raise SystemExit(f"{label}: job {status.value}\n{logs[-3000:]}")
        done = _done_line(logs, "council.done")
        if done is None:
            raise SystemExit(f"{label}: no council.done line\n{logs[-3000:]}")
        tokens += int(done["output_tokens"])
        first_running = min(first_running, _first_running(done))
        last_ready = max(last_ready, _logged_at(logs, "engine.ready"))
        finished = results_at(nats_url, job.submission_id)
        if len(finished) != len(doc["tasks"]):
            raise SystemExit(f"{label}: {len(finished)} results for {len(doc['tasks'])} tasks")
        last = max(last, *finished)
    seconds = last - started
    generating = last - first_running
    return {
        "seconds": round(seconds, 2),
        "output_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
        # Apart: the jobs' start (submission to the engine's first running request of any of
        # them) and the rest, where the engine batches what the running councils send.
        "start_s": round(first_running - started, 2),
        # When the last of the councils could send its first request (its driver logged
        # engine.ready): the councils run from then on, each one as long as one council takes.
        "last_start_s": round(last_ready - started, 2),
        "generating_s": round(generating, 2),
        "generating_tokens_per_s": round(tokens / generating, 2),
    }


def _first_running(done: dict[str, Any]) -> float:
    """Wall time of the first engine sample with a request running, from a council.done line's
    replica timelines (``[[wall time, running], ...]`` per replica)."""
    times = [t for timeline in done.get("engine_timelines") or [] for t, running in timeline if running > 0]
    if not times:
        raise SystemExit(f"no engine timeline in the council.done line: {sorted(done)}")
    return min(times)


def _logged_at(logs: str, event: str) -> float:
    """Wall time (epoch seconds) of the driver's ``event`` log line (its ISO timestamp)."""
    line = _done_line(logs, event)
    if line is None or "timestamp" not in line:
        raise SystemExit(f"no timestamped {event} line in the job's log")
    return datetime.fromisoformat(str(line["timestamp"])).timestamp()


def at_once_spreads(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Each figure of the councils-at-once runs (:func:`at_once`), as a spread per configuration."""
    return {
        key: {config: spread([run[config][key] for run in runs]) for config in ("four", "single")}
        for key in ("tokens_per_s", "generating_tokens_per_s", "start_s", "last_start_s")
    }


def spread(values: list[float]) -> dict[str, float]:
    median = round(statistics.median(values), 2)
    return {"min": min(values), "median": median, "max": max(values), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    parser.add_argument("--row", type=int, default=5, help="consecutive councils per run")
    args = parser.parse_args()

    from swe_fleet.llm.model import prepare_local_model
    from swe_fleet.local.stack import LocalStack
    from swe_fleet.local.vllm_server import VLLMServer
    from swe_fleet.submit.engine_jobs import run_engine_job
    from swe_fleet.submit.jobs_api import JobsApi

    model_dir = prepare_local_model()
    walls: dict[str, list[float]] = {"per_job": [], "shared": [], "shared_first": [], "server": []}
    starts: list[float] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="swf-bench-fleet-") as tmp:
        stack = LocalStack(Path(tmp)).start()
        server = VLLMServer(Path(tmp) / "vllm")
        try:
            os.environ.update(stack.client_env)  # its NATS token and CA, for reading the results
            jobs = JobsApi(stack.ray.dashboard_url, auth_token=stack.ray.auth_token)
            url = stack.nats.url
            print("warming the runtime_env (an engine status job) ...", flush=True)
            run_engine_job(jobs, "status")
            server.start(model_dir)
            for r in range(args.repeats):
                run: dict[str, Any] = {"repeat": r}
                run_engine_job(jobs, "down")  # CPUs free for per-job engines; the pool starts cold
                for config, doc in (
                    ("per_job", council_doc("fleet-j", engine="per-job")),
                    ("shared", council_doc("fleet-s")),
                    ("server", council_doc("fleet-v", server_url=server.base_url)),
                ):
                    row = []
                    for k in range(args.row):
                        print(f"run {r + 1}: ({config}) council {k + 1}/{args.row} ...", flush=True)
                        row.append(one_council(jobs, url, doc, f"fleet-{config}-{r}-{k}"))
                    run[config] = row
                    if config == "shared":
                        walls["shared_first"].append(row[0]["wall_s"])
                        walls["shared"] += [c["wall_s"] for c in row[1:]]
                    else:
                        walls[config] += [c["wall_s"] for c in row]
                    if config == "per_job":
                        starts += [c["engine_start_s"] for c in row if c["engine_start_s"] is not None]
                        run_engine_job(jobs, "down")
                # The pool is warm now (the shared row left it up).
                order = ("four", "single") if r % 2 == 0 else ("single", "four")
                for config in order:
                    print(f"run {r + 1}: ({'4' if config == 'four' else '1'}) {config} ...", flush=True)
                    docs = [council_doc(f"fleet-4-{i}") for i in range(4)] if config == "four" else [
                        council_doc("fleet-1", copies=4)
                    ]  # fmt: skip
                    run[config] = at_once(jobs, url, docs, f"fleet-{config}-{r}")
                runs.append(run)
            run_engine_job(jobs, "down")
        finally:
            server.stop()
            stack.stop()

    out: dict[str, Any] = {
        "workload": {
            "council": "2 tasks x 2 agents, 1 critique round, no early stop, max_tokens 96, votes 48",
            "row": args.row, "repeats": args.repeats, "replicas": 1, "num_cpus": 2,
        },
        "wall_s": {name: spread(values) for name, values in walls.items()},
        "per_job_engine_start_s": spread(starts) if starts else None,
        **at_once_spreads(runs),
        "runs": runs,
    }  # fmt: skip
    out["ratio_wall_shared_vs_per_job"] = round(
        out["wall_s"]["shared"]["median"] / out["wall_s"]["per_job"]["median"], 3
    )
    out["ratio_wall_server_vs_per_job"] = round(
        out["wall_s"]["server"]["median"] / out["wall_s"]["per_job"]["median"], 3
    )
    out["ratio_concurrent_vs_single"] = round(
        out["tokens_per_s"]["four"]["median"] / out["tokens_per_s"]["single"]["median"], 3
    )
    # Not the target: the same ratio without the jobs' start (how well the engine batches the
    # councils once they run), to tell the two costs apart.
    out["ratio_concurrent_vs_single_generating"] = round(
        out["generating_tokens_per_s"]["four"]["median"] / out["generating_tokens_per_s"]["single"]["median"],
        3,
    )
    out["targets"] = {
        "ratio_wall_shared_vs_per_job": {"at_most": 0.4, "met": out["ratio_wall_shared_vs_per_job"] <= 0.4},
        "ratio_concurrent_vs_single": {"at_least": 0.9, "met": out["ratio_concurrent_vs_single"] >= 0.9},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fleet.json").write_text(json.dumps(out, indent=2) + "\n")
    print_table(out)
    return 0


def print_table(out: dict[str, Any]) -> None:
    print("\nconsecutive councils: wall s from submit to the last task's result (min / median / max, n)")
    labels = {"per_job": "(j) per-job engine", "shared_first": "(s) shared, first (pool start)",
              "shared": "(s) shared, councils 2-5", "server": "(v) vLLM server, outside Ray"}  # fmt: skip
    for name, label in labels.items():
        s = out["wall_s"][name]
        print(f"  {label:<32} {s['min']:>7.1f} {s['median']:>7.1f} {s['max']:>7.1f}  n={s['n']}")
    print("\ncouncils at once, shared pool: output tokens/s (min / median / max)")
    for name, label in (("four", "(4) four councils at once"), ("single", "(1) one council, 4x the tasks")):
        s = out["tokens_per_s"][name]
        print(f"  {label:<32} {s['min']:>7.1f} {s['median']:>7.1f} {s['max']:>7.1f}  n={s['n']}")
    print("  apart: the jobs' start (s to the first running request; to the last council's first"
          " request), then tokens/s while generating")  # fmt: skip
    for name in ("four", "single"):
        st, ls, g = out["start_s"][name], out["last_start_s"][name], out["generating_tokens_per_s"][name]
        tag = "4" if name == "four" else "1"
        print(f"  ({tag}) start {st['median']:>5.1f} s ({st['min']:.1f}-{st['max']:.1f}), "
              f"last {ls['median']:>5.1f} s ({ls['min']:.1f}-{ls['max']:.1f}), "
              f"generating {g['median']:>6.1f} tok/s ({g['min']:.1f}-{g['max']:.1f})")  # fmt: skip
    for key, target in out["targets"].items():
        bound = f"<= {target['at_most']}" if "at_most" in target else f">= {target['at_least']}"
        print(f"{key} = {out[key]} (target {bound}: {'met' if target['met'] else 'NOT met'})")
    print(f"ratio_wall_server_vs_per_job = {out['ratio_wall_server_vs_per_job']}")
    print(
        f"ratio_concurrent_vs_single_generating = {out['ratio_concurrent_vs_single_generating']} (no target)"
    )
    print(f"written: {RESULTS / 'fleet.json'}")


if __name__ == "__main__":
    sys.exit(main())
