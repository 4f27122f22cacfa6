#!/usr/bin/env python
"""Pipelined councils: does a council without a phase barrier beat the barrier, a concurrent
client and Ray Data LLM on the same prompts?

Workload (WORKLOAD below): 8 tasks that differ the way real ones do: prompts from one line to a
page, 2 to 5 agents each (``tasks[].agents``), answers of 32 to 192 tokens (``tasks[].max_tokens``),
early stop on, 2 critique rounds, temperature 0, seed 0, the SmolLM2 model on vLLM's CPU build.

  (a) ceiling    raw ``vllm.LLM.chat``, one call per phase across all tasks (the barrier's best
                 case: no Ray, no NATS), in a child process
  (b) barrier    the council job through the Jobs API, engine backend, ``protocol.schedule: barrier``
  (p) pipelined  the council job through the Jobs API, engine backend, ``protocol.schedule: pipelined``
  (c) concurrent every agent's request sent to a vLLM OpenAI server as soon as its inputs exist
                 (64 in flight), no Ray job: what a per-agent design with concurrency does
  (r) ray data   Ray Data LLM (``ray.data.llm.build_processor``, vLLM engine stage on CPU), one
                 pass per phase over the same prompts, in a child process with a Ray of its own

Every configuration sends the same requests with the same sampling parameters (the votes ask
for 20 top logprobs per token, for expected scores: work every configuration does).
Every configuration runs REPEATS times (median reported, every run kept), each with a cold
prefix cache (a fresh engine for (b), (p), (r); a cache reset for (a) and (c)). Reported per run:
output tokens, deliberation seconds (first request to last task's result, engine start apart),
output tokens/s, p50/p95 seconds until a task's result. Ratios: p/a, p/c, p/r (tokens/s).
Also measured, to read the ratios by: the engine alone, output tokens/s by running batch size
(1 to 32 equal requests of 64 tokens; ``engine_tokens_per_s_by_batch``).
Writes benchmarks/results/pipeline.json and benchmarks/results/pipeline_inflight.png (requests in
the engine's running batch over time for (a), (b) and (p): each running request gets one token
per engine step, so this is the tokens in flight per step).

    python scripts/bench_pipeline.py [--repeats 3] [--skip-ray-data] [--ray-data-timeout 900]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batching import reset_server_cache, submit_and_wait

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

AGENTS = ["architect", "developer", "reviewer", "qa", "security"]
PAGE = (
    "We ingest CSV exports from three billing systems. Each file has a header row, but the column "
    "order differs between systems and some columns are optional. Amounts are strings with a "
    "currency symbol and thousands separators in the European style (1.234,56 EUR) or the US "
    "style ($1,234.56). Dates come as ISO 8601, as DD/MM/YYYY, or as Unix seconds. Some rows are "
    "continuation lines of a quoted multi-line description and must be joined to the row before. "
    "Rows whose invoice id was already seen in the last 30 days are duplicates and must be "
    "dropped, but the first occurrence wins even when it arrives in a later file. Malformed rows "
    "must not stop the import: they go to a reject file with the line number and the reason. "
    "The importer runs nightly on a small VM, files reach 2 GB, and memory must stay under 512 MB. "
    "Results go to a Postgres table with a unique constraint on (system, invoice_id); the import "
    "must be idempotent when rerun after a crash halfway through a file. Operators want a summary "
    "at the end: rows read, imported, duplicates, rejected by reason, and the slowest file."
)
#: (prompt, agents, max_tokens): one line to a page, 2 to 5 agents, 32 to 192 tokens.
WORKLOAD: list[tuple[str, int, int]] = [
    ("Write a Python function add(a, b) that returns a + b.", 2, 32),
    ("Write a Python function slugify(title) for URLs: lower case, dashes, ASCII only.", 3, 64),
    (PAGE + " Design the importer's module layout and its main loop.", 5, 192),
    ("Write a SQL query returning each customer's three most recent orders.", 2, 48),
    (
        "Review this plan: cache every HTTP response for one hour in a global dict keyed by URL. "
        "Name what breaks under load, under memory pressure and with authenticated responses.",
        4,
        128,
    ),
    (PAGE[: len(PAGE) // 2] + " How do you detect and join the continuation lines?", 3, 96),
    ("Write a bash one-liner that prints the ten largest files under the current directory.", 2, 40),
    (
        "Propose a retry policy (attempts, backoff, jitter, what is retried) for a payment API "
        "client that must never charge twice; say how idempotency keys are used.",
        5,
        160,
    ),
]


def bench_spec(schedule: str, *, backend: str = "engine", server_url: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"pipeline-{schedule}",
        "tasks": [
            {"id": f"t{i}", "prompt": prompt, "agents": AGENTS[:agents], "max_tokens": tokens}
            for i, (prompt, agents, tokens) in enumerate(WORKLOAD)
        ],
        "agents": [{"id": a, "role": a} for a in AGENTS],
        # Quoted proposals are cut so that a page-long task with five proposals fits 2048 tokens.
        "protocol": {"critique_rounds": 2, "early_stop": True, "schedule": schedule,
                     "max_proposal_chars": 500, "max_critique_chars": 400},
        # The engine gets the machine's 2 cores, like the in-process ceiling.
        # A fresh engine per job (not the shared pool): each run starts with a cold prefix cache.
        "model": {"name": "smollm2-135m", "vote_max_tokens": 64, "temperature": 0.0, "seed": 0,
                  "num_cpus": 2, "engine": "per-job"},
        "backend": backend,
    }  # fmt: skip
    if server_url:
        spec["server"] = {"url": server_url, "concurrency": 64}
    return spec


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil
    return ordered[min(rank, len(ordered)) - 1]


def summary(tokens: int, seconds: float, task_seconds: dict[str, float], **extra: Any) -> dict[str, Any]:
    times = list(task_seconds.values())
    return {
        "output_tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2),
        "task_result_p50_s": round(percentile(times, 50), 3),
        "task_result_p95_s": round(percentile(times, 95), 3),
        "task_seconds": task_seconds,
        **extra,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by tokens/s (the lower middle for an even count) with every run's figures."""
    ordered = sorted(runs, key=lambda r: float(r["tokens_per_s"]))
    rates = [r["tokens_per_s"] for r in runs]
    return {
        **ordered[(len(ordered) - 1) // 2],
        "runs_tokens_per_s": rates,
        "runs_seconds": [r["seconds"] for r in runs],
        "spread_tokens_per_s": [min(rates), max(rates)],
    }


class Null:
    async def publish_all(self, events: Any, concurrency: int = 64) -> list[Any]:
        return list(events)


# ---- (a) raw LLM.chat per phase, in a child process (vLLM offline needs __main__) ----------------


def council_llm() -> tuple[Any, Any]:
    """(the barrier council's spec, a ``vllm.LLM`` built as its engine is) in this process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from swe_fleet.llm.cpu_threads import apply_env_defaults
    from swe_fleet.llm.engine_options import engine_env, llm_options
    from swe_fleet.llm.model import prepare_local_model
    from swe_fleet.spec import CouncilSpec

    spec = CouncilSpec.from_dict(bench_spec("barrier"))
    apply_env_defaults(engine_env(spec.model, os.sched_getaffinity(0)), os.environ)
    from vllm import LLM  # after the engine's environment is set

    return spec, LLM(model=str(prepare_local_model()), **llm_options(spec.model))


def run_ceiling(repeats: int) -> list[dict[str, Any]]:
    from swe_fleet.council.deliberation import run_deliberation
    from swe_fleet.llm.base import ChatRequest, Completion
    from swe_fleet.llm.vllm_io import sampling_params

    spec, llm = council_llm()
    tokens = 0
    timeline: list[tuple[float, int]] = []
    busy = threading.Event()
    stop = threading.Event()

    def sample() -> None:  # requests in the engine while a chat call runs
        while not stop.wait(0.25):
            if busy.is_set():
                timeline.append((round(time.time(), 3), llm.llm_engine.get_num_unfinished_requests()))

    class Raw:
        async def generate(self, batch: list[ChatRequest]) -> list[Completion]:
            nonlocal tokens
            # The engine's own parameters: the votes' top logprobs are work the ceiling does too.
            params = [sampling_params(r) for r in batch]
            busy.set()
            try:
                outs = llm.chat([list(r.messages) for r in batch], sampling_params=params, use_tqdm=False)
            finally:
                busy.clear()
            done = [
                Completion(text=o.outputs[0].text, output_tokens=len(o.outputs[0].token_ids)) for o in outs
            ]
            tokens += sum(c.output_tokens for c in done)
            return done

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    runs = []
    for i in range(repeats):
        llm.reset_prefix_cache()
        tokens, timeline[:] = 0, []
        started = time.monotonic()
        report = asyncio.run(
            run_deliberation(spec, submission_id=f"ceiling-{i}", generator=Raw(), publisher=Null())
        )
        runs.append(summary(tokens, time.monotonic() - started, report.task_seconds, timeline=list(timeline)))
    stop.set()
    return runs


# ---- the engine alone: output tokens/s by running batch size, in a child process -------------------

SCALING_BATCHES = (1, 2, 4, 8, 16, 32)


def run_scaling(repeats: int) -> list[dict[str, Any]]:
    """How much a fuller batch buys on this machine: n equal requests of 64 output tokens each
    (``ignore_eos``; the prompt is in the prefix cache after the first), decode tokens/s."""
    _spec, llm = council_llm()
    from vllm import SamplingParams

    prompt = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
    params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
    llm.chat([prompt], params, use_tqdm=False)  # warm, and the prompt in the prefix cache
    rows = []
    for n in SCALING_BATCHES:
        rates = []
        for _ in range(repeats):
            started = time.monotonic()
            outs = llm.chat([prompt] * n, params, use_tqdm=False)
            rates.append(
                round(sum(len(o.outputs[0].token_ids) for o in outs) / (time.monotonic() - started), 1)
            )
        rows.append({"batch": n, "tokens_per_s": sorted(rates)[len(rates) // 2], "runs_tokens_per_s": rates})
    return rows


# ---- (b), (p): council jobs through the Jobs API --------------------------------------------------


def run_job(jobs: Any, nats_url: str, spec_doc: dict[str, Any], label: str) -> dict[str, Any]:
    _, status, wall, _, done = submit_and_wait(jobs, nats_url, spec_doc, label, timeout_s=3600)
    # A task without an outcome (the tiny model can fail a vote's quorum) fails the job; the
    # deliberation still ran to the end, which is what is measured here.
    task_seconds = {k: float(v) for k, v in done["task_seconds"].items()}
    return summary(
        int(done["output_tokens"]), max(task_seconds.values()), task_seconds,
        job_status=status, job_wall_s=round(wall, 2), llm_calls=done["llm_calls"],
        timeline=[tuple(x) for line in done.get("engine_timelines") or [] for x in line],
    )  # fmt: skip


# ---- (c) the concurrent client, in this process ----------------------------------------------------


def run_concurrent(server_url: str) -> dict[str, Any]:
    from swe_fleet.council.deliberation import run_deliberation
    from swe_fleet.llm.server import ServerGenerator
    from swe_fleet.spec import CouncilSpec

    spec = CouncilSpec.from_dict(bench_spec("pipelined", backend="server", server_url=server_url))

    async def go() -> tuple[Any, Any, float]:
        gen = ServerGenerator(server_url, "smollm2-135m", concurrency=64)
        started = time.monotonic()
        try:
            report = await run_deliberation(spec, submission_id="concurrent", generator=gen, publisher=Null())
        finally:
            await gen.close()
        return gen, report, time.monotonic() - started

    gen, report, seconds = asyncio.run(go())
    return summary(gen.stats.output_tokens, seconds, report.task_seconds, requests=gen.stats.requests)


# ---- (r) Ray Data LLM, one pass per phase, in a child process --------------------------------------


RAY_DATA_SETUP = (
    "Ray of its own in the child: ray.init(num_cpus=4) logical CPUs on the 2 cores (the chat-template, "
    "tokenize and detokenize stages get 0.25 CPU each, the engine stage a {'CPU': 1} bundle), "
    "vLLM engine kwargs as the council's engine, distributed_executor_backend 'mp', batch_size 64"
)


def run_ray_data(repeats: int) -> list[dict[str, Any]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a Ray of our own: no ~/.ray/auth_token left behind
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from swe_fleet.council.deliberation import run_deliberation
    from swe_fleet.llm.base import ChatRequest, Completion
    from swe_fleet.llm.engine_options import engine_env, llm_options
    from swe_fleet.llm.model import prepare_local_model
    from swe_fleet.spec import CouncilSpec

    spec = CouncilSpec.from_dict(bench_spec("barrier"))
    model_dir = str(prepare_local_model())
    env = {
        **engine_env(spec.model, os.sched_getaffinity(0)),
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env})
    stage = {"num_cpus": 0.25, "concurrency": 1}
    config = vLLMEngineProcessorConfig(
        model_source=model_dir,
        engine_kwargs={**llm_options(spec.model), "distributed_executor_backend": "mp"},
        batch_size=64,
        concurrency=1,
        placement_group_config={"bundles": [{"CPU": 1}]},
        chat_template_stage=stage, tokenize_stage=stage, detokenize_stage=stage,
        log_engine_metrics=False,
    )  # fmt: skip
    tokens = 0

    class RayData:
        async def generate(self, batch: list[ChatRequest]) -> list[Completion]:
            nonlocal tokens
            rows = [
                {"i": i, "messages": [dict(m) for m in r.messages],
                 "sampling_params": {"max_tokens": r.max_tokens, "temperature": r.temperature, "seed": r.seed,
                                     # a string: Arrow would turn the schema into a struct
                                     **({"structured_outputs": {"json": json.dumps(r.json_schema)}}
                                        if r.json_schema else {}),
                                     **({"logprobs": r.top_logprobs} if r.top_logprobs else {})}}
                for i, r in enumerate(batch)
            ]  # fmt: skip
            processor = build_processor(
                config,
                postprocess=lambda row: {
                    "i": row["i"],
                    "text": row["generated_text"],
                    "n": row["num_generated_tokens"],
                },
            )
            out = await asyncio.to_thread(lambda: processor(ray.data.from_items(rows)).take_all())
            by_i = {int(r["i"]): r for r in out}
            done = [
                Completion(text=by_i[i]["text"], output_tokens=int(by_i[i]["n"])) for i in range(len(batch))
            ]
            tokens += sum(c.output_tokens for c in done)
            return done

    runs = []
    for i in range(repeats):
        tokens = 0
        started = time.monotonic()
        report = asyncio.run(
            run_deliberation(spec, submission_id=f"raydata-{i}", generator=RayData(), publisher=Null())
        )
        runs.append(summary(tokens, time.monotonic() - started, report.task_seconds))
    ray.shutdown()
    return runs


def child(part: str, repeats: int, timeout_s: float) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Run ``--part`` in a child process; (runs, None) or (None, the error's last lines)."""
    argv = [sys.executable, __file__, "--part", part, "--repeats", str(repeats)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr or b""
        text = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return None, f"no result within {timeout_s:.0f} s; last output: {text[-1500:]}"
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RUNS ")), None)
    if proc.returncode != 0 or line is None:
        return None, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
    return json.loads(line.removeprefix("RUNS ")), None


# ---- driver ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; medians count")
    parser.add_argument("--skip-ray-data", action="store_true", help="leave (r) out (its ratio is null)")
    parser.add_argument(
        "--ray-data-timeout", type=float, default=900.0, help="bound on all (r) runs, seconds"
    )
    parser.add_argument("--part", choices=["ceiling", "scaling", "ray-data"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "ceiling":
        print("RUNS " + json.dumps(run_ceiling(args.repeats)), flush=True)
        return 0
    if args.part == "scaling":
        print("RUNS " + json.dumps(run_scaling(args.repeats)), flush=True)
        return 0
    if args.part == "ray-data":
        print("RUNS " + json.dumps(run_ray_data(args.repeats)), flush=True)
        return 0

    from swe_fleet.llm.model import prepare_local_model
    from swe_fleet.local.stack import LocalStack
    from swe_fleet.local.vllm_server import VLLMServer
    from swe_fleet.submit.jobs_api import JobsApi

    model_dir = prepare_local_model()
    out: dict[str, Any] = {
        "workload": {
            "tasks": [{"prompt_chars": len(p), "agents": a, "max_tokens": t} for p, a, t in WORKLOAD],
            "critique_rounds": 2, "early_stop": True, "temperature": 0, "seed": 0, "repeats": args.repeats,
        },
        "ray_data_setup": RAY_DATA_SETUP,
    }  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {}

    print("(a) ceiling: raw LLM.chat per phase ...", flush=True)
    ceiling, error = child("ceiling", args.repeats, 3600)
    if ceiling is None:
        raise SystemExit(f"(a) failed: {error}")
    runs["ceiling"] = ceiling
    print("the engine alone, tokens/s by batch size ...", flush=True)
    scaling, error = child("scaling", args.repeats, 1800)
    if scaling is None:
        raise SystemExit(f"batch scaling failed: {error}")
    out["engine_tokens_per_s_by_batch"] = scaling

    with tempfile.TemporaryDirectory(prefix="swf-bench-") as tmp:
        stack = LocalStack(Path(tmp)).start()
        server = VLLMServer(Path(tmp) / "vllm", env={"VLLM_SERVER_DEV_MODE": "1"})
        try:
            client = JobsApi(stack.ray.dashboard_url, auth_token=stack.ray.auth_token)
            runs["barrier"], runs["pipelined"] = [], []
            for i in range(args.repeats):  # alternated, so a slow minute of the VM hits both
                for schedule in ("barrier", "pipelined"):
                    print(f"({schedule[0]}) {schedule} council job, run {i + 1} ...", flush=True)
                    runs[schedule].append(
                        run_job(client, stack.nats.url, bench_spec(schedule), f"bench-{schedule}-{i}")
                    )
            print("(c) concurrent client to the vLLM server ...", flush=True)
            server.start(model_dir)
            runs["concurrent"] = []
            for _ in range(args.repeats):
                reset_server_cache(server.base_url)
                runs["concurrent"].append(run_concurrent(server.base_url))
        finally:
            server.stop()
            stack.stop()

    if args.skip_ray_data:
        out["ray_data_error"] = "skipped (--skip-ray-data)"
    else:
        print("(r) Ray Data LLM, one pass per phase ...", flush=True)
        ray_data, error = child("ray-data", args.repeats, args.ray_data_timeout)
        if ray_data is not None:
            runs["ray_data"] = ray_data
        out["ray_data_error"] = error

    for name, every in runs.items():
        out[name] = median_of(every)
    rate = {name: float(out[name]["tokens_per_s"]) for name in runs}
    out["ratio_vs_ceiling"] = round(rate["pipelined"] / rate["ceiling"], 3)
    out["ratio_vs_concurrent"] = round(rate["pipelined"] / rate["concurrent"], 3)
    out["ratio_vs_ray_data"] = round(rate["pipelined"] / rate["ray_data"], 3) if "ray_data" in rate else None
    out["ratio_vs_barrier"] = round(rate["pipelined"] / rate["barrier"], 3)
    out["targets"] = {"ratio_vs_ceiling": 1.15, "ratio_vs_concurrent": 1.15, "ratio_vs_ray_data": 1.0}
    out["targets_met"] = {k: (out[k] is not None and out[k] >= v) for k, v in out["targets"].items()}
    plot = RESULTS / "pipeline_inflight.png"
    plot_inflight({k: out[k].get("timeline") or [] for k in ("ceiling", "barrier", "pipelined")}, plot)
    for name in runs:  # the plot has them; the JSON keeps the figures
        out[name].pop("timeline", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(out, indent=2) + "\n")
    print_table(out, list(runs))
    return 0 if all(out["targets_met"].values()) else 1


LABELS = {
    "ceiling": "(a) raw LLM.chat per phase",
    "barrier": "(b) council job, barrier",
    "pipelined": "(p) council job, pipelined",
    "concurrent": "(c) concurrent client",
    "ray_data": "(r) Ray Data LLM",
}


def print_table(out: dict[str, Any], names: list[str]) -> None:
    print(f"\n{'config':<30} {'out tok':>8} {'seconds':>8} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7}"
          "  tok/s of every run")  # fmt: skip
    for name in names:
        r = out[name]
        every = ", ".join(f"{x:.1f}" for x in r["runs_tokens_per_s"])
        print(f"{LABELS[name]:<30} {r['output_tokens']:>8} {r['seconds']:>8.1f} {r['tokens_per_s']:>7.1f} "
              f"{r['task_result_p50_s']:>7.1f} {r['task_result_p95_s']:>7.1f}  {every}")  # fmt: skip
    if "ray_data" not in names:
        print(f"(r) Ray Data LLM: {out['ray_data_error']}")
    print("\nthe engine alone, output tokens/s by running batch size (64 tokens each; every run):")
    for row in out["engine_tokens_per_s_by_batch"]:
        every = ", ".join(f"{x:.1f}" for x in row["runs_tokens_per_s"])
        print(f"  batch {row['batch']:>3}: {row['tokens_per_s']:>7.1f}  ({every})")
    print(f"\np/a = {out['ratio_vs_ceiling']} (target >= 1.15)   p/c = {out['ratio_vs_concurrent']} "
          f"(target >= 1.15)   p/r = {out['ratio_vs_ray_data']} (target >= 1.0)   "
          f"p/b = {out['ratio_vs_barrier']}")  # fmt: skip


def plot_inflight(timelines: dict[str, list[Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, points in timelines.items():
        if not points:
            continue
        t0 = points[0][0]
        ax.step([t - t0 for t, _ in points], [n for _, n in points], where="post", label=LABELS[name])
    ax.set_xlabel("seconds since the first request (median run)")
    ax.set_ylabel("requests in the running batch")
    ax.set_title("Tokens in flight per engine step: barrier vs pipelined")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
