"""Votes and their aggregation: JSON vote schema, robust vote parsing, the ranking rule.

Ranking rule: candidates are ordered by the mean score they received (higher first); ties go
to the candidate with more counted votes, then to the one listed first in the spec. A candidate
whose proposal failed, or that received no valid vote, ranks after every scored candidate with
``mean_score=None``. The winner is the first-ranked candidate with a score (None if nobody has one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from swe_fleet.errors import InvalidVote
from swe_fleet.events import DeliberationCompleted, RankedAgent
from swe_fleet.spec import CouncilSpec, TaskSpec


def vote_schema(candidates: Sequence[str], lo: int, hi: int) -> dict[str, Any]:
    """JSON schema of one vote: ``{"scores": {candidate: int in [lo, hi]}}``, every candidate."""
    return {
        "type": "object",
        "properties": {
            "scores": {
                "type": "object",
                "properties": {c: {"type": "integer", "minimum": lo, "maximum": hi} for c in candidates},
                "required": list(candidates),
                "additionalProperties": False,
            }
        },
        "required": ["scores"],
        "additionalProperties": False,
    }


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_vote(text: str, candidates: Sequence[str], lo: int, hi: int) -> dict[str, int]:
    """Read a vote from model output, robustly.

    Accepts ``{"scores": {...}}`` or a flat ``{candidate: score}`` object, optionally wrapped in
    prose or a code fence. Integral floats (``7.0``) count as integers; extra keys are ignored.

    Raises:
        InvalidVote: no JSON object, a candidate missing, a score not a number or out of range.
    """
    match = _JSON_OBJECT.search(text)
    if not match:
        raise InvalidVote("no JSON object in the vote")
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise InvalidVote(f"vote is not valid JSON: {exc.msg}") from None
    if isinstance(obj, dict) and isinstance(obj.get("scores"), dict):
        obj = obj["scores"]
    if not isinstance(obj, dict):
        raise InvalidVote("vote JSON is not an object")
    scores: dict[str, int] = {}
    for cand in candidates:
        if cand not in obj:
            raise InvalidVote(f"vote has no score for {cand!r}")
        value = obj[cand]
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise InvalidVote(f"score for {cand!r} is not an integer: {value!r}")
        if not lo <= int(value) <= hi:
            raise InvalidVote(f"score for {cand!r} is {value}, outside {lo}..{hi}")
        scores[cand] = int(value)
    return scores


def rank_task(
    spec: CouncilSpec,
    task: TaskSpec,
    votes: Mapping[str, Mapping[str, int]],
    *,
    votes_expected: int,
    proposals: Mapping[tuple[str, str], str],
    submission_id: str,
    rounds_run: int = 0,
    early_stopped: bool = False,
    transcript: Sequence[str] = (),
) -> DeliberationCompleted:
    """Aggregate one task's votes into its result (rule in the module docstring)."""
    order = {a.id: i for i, a in enumerate(spec.agents)}
    received: dict[str, list[int]] = {a.id: [] for a in spec.agents}
    for ballot in votes.values():
        for cand, score in ballot.items():
            received[cand].append(score)

    def sort_key(agent_id: str) -> tuple[int, float, int, int]:
        got = received[agent_id]
        if not got:
            return (1, 0.0, 0, order[agent_id])
        return (0, -sum(got) / len(got), -len(got), order[agent_id])

    ranked_ids = sorted(received, key=sort_key)
    ranking = [
        RankedAgent(
            agent_id=aid,
            rank=i + 1,
            mean_score=round(sum(received[aid]) / len(received[aid]), 4) if received[aid] else None,
            votes=len(received[aid]),
        )
        for i, aid in enumerate(ranked_ids)
    ]
    winner = ranking[0].agent_id if ranking and ranking[0].mean_score is not None else None
    return DeliberationCompleted(
        submission_id=submission_id,
        council=spec.name,
        task_id=task.id,
        winner=winner,
        ranking=ranking,
        scores={voter: dict(ballot) for voter, ballot in votes.items()},
        votes_counted=len(votes),
        votes_expected=votes_expected,
        winning_proposal=proposals.get((task.id, winner)) if winner else None,
        rounds_run=rounds_run,
        early_stopped=early_stopped,
        transcript=list(transcript),
    )
