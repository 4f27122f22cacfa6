#!/usr/bin/env python3
"""The judging benchmark: does the vote phase put a correct proposal above a wrong one?

Usage: ``.venv/bin/python scripts/bench_judging.py [--tasks benchmarks/judging_tasks.yaml]``.
Prints a table, writes ``benchmarks/results/judging.json``.

Each of the tasks (at least 40: code with a real bug, a wrong formula, a wrong fact) has a
correct and a wrong proposal. A judge agent scores both with the council's own vote request
(:func:`swe_fleet.council.protocol.vote_slots`: the same prompt, JSON schema, token budget and
token probabilities), on the shipped model in the engine backend's own engine class
(:class:`swe_fleet.llm.engine_actor.VLLMEngine`, in this process). Every task is judged twice, with the
correct proposal listed first and then second (position bias): one batch per order.

One generation gives every scoring mode: ``written`` (the JSON's integers), ``expected`` (the
probability-weighted score over the score tokens, on the judgements where both were read) and
``counted`` (what a council counts by default: expected where read, written otherwise). For
each mode: tie rate (both proposals scored the same), pairwise accuracy (correct scored above
wrong) with a 95 % Wilson interval, and the votes that could not be read; beside them the
accuracy of a length-only baseline (the longer proposal wins, a tie counts half). Greedy
decoding makes a rerun identical, so the spread reported is the interval, not reruns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: written: the JSON's integers; expected: probability-weighted scores, only judgements where both
#: were read from the token probabilities; counted: what a council counts (expected where read).
MODES = ("written", "expected", "counted")


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def judge_spec(tasks: list[dict[str, Any]]) -> Any:
    from swe_fleet.spec import CouncilSpec

    return CouncilSpec.from_dict({
        "name": "judging",
        "tasks": [{"id": t["id"], "prompt": t["task"]} for t in tasks],
        # The proposers never speak here; the judge (last) scores both.
        "agents": [{"id": "alpha", "role": "developer"}, {"id": "beta", "role": "developer"},
                   {"id": "judge", "role": "reviewer"}],
        "model": {"max_tokens": 64},
    })  # fmt: skip


def vote_slots(spec: Any, tasks: list[dict[str, Any]], correct_first: bool) -> list[Any]:
    """The judge's vote slot of every task, with the correct proposal under alpha (listed
    first) or under beta (listed second)."""
    from swe_fleet.council import protocol
    from swe_fleet.council.state import CouncilState

    state = CouncilState.start(spec)
    for t in tasks:
        first, second = (t["correct"], t["wrong"]) if correct_first else (t["wrong"], t["correct"])
        state.tasks[t["id"]].proposals.update(alpha=first, beta=second)
    return [s for s in protocol.vote_slots(spec, state) if s.agent.id == "judge"]


def score_pairs(spec: Any, tasks: list[dict[str, Any]], slots: list[Any], completions: list[Any],
                correct_first: bool) -> list[dict[str, Any]]:  # fmt: skip
    """One row per judgement: the correct and the wrong proposal's score in each mode."""
    from swe_fleet.council import protocol
    from swe_fleet.events import AgentResponseCompleted

    rows = []
    correct_id, wrong_id = ("alpha", "beta") if correct_first else ("beta", "alpha")
    for task, slot, completion in zip(tasks, slots, completions, strict=True):
        event = protocol.outcome_event(slot, completion, submission_id="bench", spec=spec)
        row: dict[str, Any] = {"task": task["id"], "kind": task["kind"], "correct_first": correct_first}
        if not isinstance(event, AgentResponseCompleted) or not event.data:
            row["failed"] = getattr(event, "reason", "no vote")
            rows.append(row)
            continue
        written = event.data["scores"]
        read = event.data.get("expected_scores") or {}
        counted = {**written, **read}
        row["written"] = {"correct": written[correct_id], "wrong": written[wrong_id]}
        row["counted"] = {"correct": counted[correct_id], "wrong": counted[wrong_id]}
        if correct_id in read and wrong_id in read:
            row["expected"] = {"correct": read[correct_id], "wrong": read[wrong_id]}
        row["expected_read"] = sorted(read)
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    judged = [r for r in rows if mode in r]
    wins = sum(r[mode]["correct"] > r[mode]["wrong"] for r in judged)
    ties = sum(r[mode]["correct"] == r[mode]["wrong"] for r in judged)
    n = len(rows)  # an unreadable vote counts as a judgement that did not pick the correct one
    return {
        "judgements": n,
        "judged": len(judged),
        "correct_above_wrong": wins,
        "ties": ties,
        "wrong_above_correct": len(judged) - wins - ties,
        # written/counted: votes whose JSON could not be read; expected: also those whose token
        # probabilities did not give both scores
        "unreadable_votes": n - len(judged),
        "tie_rate": round(ties / n, 4) if n else 0.0,
        "accuracy": round(wins / n, 4) if n else 0.0,
        "accuracy_ci95": wilson(wins, n),
    }


def length_baseline(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The longer proposal wins; equal lengths count half."""

    def point(t: dict[str, Any]) -> float:
        longer, shorter = len(t["correct"]), len(t["wrong"])
        return 1.0 if longer > shorter else 0.5 if longer == shorter else 0.0

    points = sum(point(t) for t in tasks)
    return {"accuracy": round(points / len(tasks), 4), "accuracy_ci95": wilson(points, len(tasks))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=Path, default=ROOT / "benchmarks" / "judging_tasks.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS / "judging.json")
    args = parser.parse_args()
    tasks = yaml.safe_load(args.tasks.read_text())
    if len(tasks) < 40:
        sys.exit(f"{args.tasks}: {len(tasks)} tasks; the benchmark needs at least 40")

    from swe_fleet.llm.engine_actor import VLLMEngine

    spec = judge_spec(tasks)
    started = time.monotonic()
    engine = VLLMEngine(spec.model, replica=0)
    load_s = time.monotonic() - started
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for correct_first in (True, False):
        slots = vote_slots(spec, tasks, correct_first)
        completions = asyncio.run(engine.chat([s.request for s in slots]))
        rows += score_pairs(spec, tasks, slots, completions, correct_first)
    judge_s = time.monotonic() - started

    result = {
        "model": spec.model.name,
        "tasks": len(tasks),
        "judgements": len(rows),
        "top_logprobs": slots[0].request.top_logprobs,
        "modes": {mode: summarise(rows, mode) for mode in MODES},
        "length_baseline": length_baseline(tasks),
        # What a council counts by default (protocol.scoring: expected, written where unread).
        "tie_rate": summarise(rows, "counted")["tie_rate"],
        "accuracy": summarise(rows, "counted")["accuracy"],
        "expected_coverage": round(sum("expected" in r for r in rows) / len(rows), 4),
        # Position bias: judgements whose expected score put the first-listed proposal higher.
        "first_listed_scored_higher": sum(
            (r["expected"]["correct"] > r["expected"]["wrong"]) == r["correct_first"]
            for r in rows
            if "expected" in r
        ),
        "engine_load_s": round(load_s, 1),
        "judging_s": round(judge_s, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python scripts/bench_judging.py",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{len(tasks)} tasks x 2 orders = {len(rows)} judgements on {spec.model.name} ({judge_s:.0f} s); "
          f"expected scores read for {result['expected_coverage']:.0%}")  # fmt: skip
    print(f"{'mode':<16}{'tie rate':>10}{'accuracy':>10}  {'95% CI':<16}{'unreadable':>11}")
    for mode in MODES:
        m = result["modes"][mode]
        lo, hi = m["accuracy_ci95"]
        ci = f"[{lo:.3f}, {hi:.3f}]"
        print(f"{mode:<16}{m['tie_rate']:>10.3f}{m['accuracy']:>10.3f}  {ci:<16}{m['unreadable_votes']:>11}")
    b = result["length_baseline"]
    lo, hi = b["accuracy_ci95"]
    print(f"{'length only':<16}{'-':>10}{b['accuracy']:>10.3f}  [{lo:.3f}, {hi:.3f}]")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
