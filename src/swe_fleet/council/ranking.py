"""Votes and their aggregation: JSON vote schema, robust vote parsing, the outcome rule.

Outcome of a task (``council.deliberation.completed``):

- ``failed`` when no proposal stands, or when fewer votes counted than the quorum
  (``protocol.quorum``; default a majority of the task's voters, the agents that had another
  proposal to score); ``reason`` says which.
- otherwise ``decided`` when one candidate has the best score (below), ``tied`` when several share
  it (``tied`` names them, ``winner`` is None). Ties are never broken: not by vote count, not by
  spec order.

Ranking: by centred score when every scored candidate has one, else by mean score received
(higher first). A centred score is the mean of the scores a candidate received, each minus its
voter's own mean over the candidates of that ballot: a lenient or harsh judge's offset cancels
out, how strongly it prefers stays (ballots of one candidate, in two-agent councils, have no
centred scores: those councils rank by mean). Equal scores share a rank; candidates without a
counted vote (a failed proposal, or no valid vote) come last with ``mean_score=None``. Each row
says its mean, centred score, spread (population standard deviation) and number of votes; the
result says which score ranked (``ranked_by``).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from swe_fleet.errors import InvalidVote
from swe_fleet.events import DeliberationCompleted, RankedAgent, TaskOutcome
from swe_fleet.llm.base import TokenChoice
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


def vote_token_budget(candidates: Sequence[str], floor: int) -> int:
    """Output tokens a vote with these candidates may use: ``floor`` (``model.vote_max_tokens``)
    or, when the candidates need more, a generous bound on their JSON (``{"scores": {`` and, per
    candidate, its quoted id, a colon, a score and a comma: at most one token per character of
    the id plus 6), so a vote among many agents is never cut before its JSON closes."""
    return max(floor, 8 + sum(len(c) + 6 for c in candidates))


def rotated(candidates: Sequence[str], turn: int) -> tuple[str, ...]:
    """``candidates`` starting at position ``turn`` (mod their number): each voter is asked for
    the scores in another order, so no candidate always comes first (position bias)."""
    if not candidates:
        return ()
    k = turn % len(candidates)
    return (*candidates[k:], *candidates[:k])


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


def task_quorum(spec: CouncilSpec, voters: int) -> int:
    """Counted votes a task with ``voters`` voters needs: ``protocol.quorum``, else a majority."""
    return spec.protocol.quorum if spec.protocol.quorum is not None else voters // 2 + 1


#: Alternatives at a score's position that must be scores for its expectation to count.
MIN_SCORE_MASS = 0.5
_SCORE_TOKEN = re.compile(r"[\s:\"]*(\d+)[\s,}\"]*")


def _token_value(text: str) -> int | None:
    match = _SCORE_TOKEN.fullmatch(text)
    return int(match.group(1)) if match else None


def expected_scores(
    text: str, tokens: Sequence[TokenChoice], candidates: Sequence[str], lo: int, hi: int
) -> dict[str, float]:
    """The judge's expected score per candidate: the mean of its probability over the score
    tokens at the position where it wrote that candidate's score (G-Eval, arXiv 2303.16634),
    instead of the one score it happened to write.

    ``tokens`` are the generated tokens with their most likely alternatives (they must spell
    ``text``). At each score's first token, the alternatives that are scores in ``lo..hi`` are
    renormalised; ``1`` is split into 1 and 10 by the probability of a ``0`` after it when the
    judge wrote a ``1`` there (tokenizers that write 10 as ``1`` + ``0``), and left out when it
    did not (a 1 or the start of a 10: nothing tells which). A candidate whose
    position cannot be found, or whose alternatives hold less than :data:`MIN_SCORE_MASS` of
    score tokens, is left out: the caller keeps its written score.
    """
    # vLLM lists the end-of-sequence token (``<|im_end|>``) that the text leaves out.
    if not tokens or not "".join(t for t, _ in tokens).startswith(text):
        return {}
    starts, offset = [], 0
    for token, _ in tokens:
        starts.append(offset)
        offset += len(token)
    out: dict[str, float] = {}
    for cand in candidates:
        match = re.search(rf'"{re.escape(cand)}"\s*:\s*(\d+)', text)
        if not match:
            continue
        at = max(i for i, start in enumerate(starts) if start <= match.start(1))
        mass: dict[int, float] = {}
        for alt, logprob in tokens[at][1]:
            value = _token_value(alt)
            if value is not None and lo <= value <= hi:
                mass[value] = mass.get(value, 0.0) + math.exp(logprob)
        wrote = _token_value(tokens[at][0])
        if 1 in mass and hi >= 10 and 10 not in mass:
            if wrote == 1 and at + 1 < len(tokens):
                zero = sum(math.exp(lp) for alt, lp in tokens[at + 1][1] if alt == "0")
                ten = mass[1] * min(zero, 1.0)
                mass[1], mass[10] = mass[1] - ten, ten
            elif wrote != 1:
                # A "1" the judge did not write may start a 10 or be a 1: nothing tells which.
                del mass[1]
        total = sum(mass.values())
        if total >= MIN_SCORE_MASS:
            out[cand] = round(sum(v * p for v, p in mass.items()) / total, 4)
    return out


def rank_task(
    spec: CouncilSpec,
    task: TaskSpec,
    votes: Mapping[str, Mapping[str, float]],
    *,
    votes_expected: int,
    proposals: Mapping[tuple[str, str], str],
    submission_id: str,
    rounds_run: int = 0,
    early_stopped: bool = False,
    transcript: Sequence[str] = (),
) -> DeliberationCompleted:
    """Aggregate one task's votes into its outcome and ranking (rules in the module docstring).

    ``votes_expected`` is the number of the task's voters (vote slots that were called)."""
    received: dict[str, list[float]] = {a.id: [] for a in spec.agents}
    centred: dict[str, list[float]] = {a.id: [] for a in spec.agents}
    for ballot in votes.values():
        for cand, score in ballot.items():
            received[cand].append(score)
        if len(ballot) >= 2:  # a ballot of one candidate says nothing relative
            offset = sum(ballot.values()) / len(ballot)
            for cand, score in ballot.items():
                centred[cand].append(score - offset)
    # Rounded as published: sums of expected scores in another order differ in the last bit.
    means = {aid: round(sum(got) / len(got), 4) for aid, got in received.items() if got}
    centred_means = {aid: round(sum(got) / len(got), 4) for aid, got in centred.items() if got}
    # Centred on each voter's own mean when every scored candidate has such scores (ballots of two
    # or more): a lenient or harsh judge's offset no longer decides; else the plain means.
    by_centred = bool(centred_means) and set(centred_means) == set(means)
    key = centred_means if by_centred else means
    ordered = sorted(spec.agents, key=lambda a: (a.id not in key, -key.get(a.id, 0.0)))
    ranking = []
    for a in ordered:
        got = received[a.id]
        mine = key.get(a.id)
        ranking.append(
            RankedAgent(
                agent_id=a.id,
                # Equal scores share a rank (1 + the number of candidates with a better one).
                rank=1 + sum(m > mine for m in key.values()) if mine is not None else len(key) + 1,
                mean_score=means.get(a.id),
                centred_score=centred_means.get(a.id),
                spread=round(statistics.pstdev(got), 4) if got else None,
                votes=len(got),
            )
        )
    quorum = task_quorum(spec, votes_expected)
    standing = [a.id for a in spec.agents if (task.id, a.id) in proposals]
    best = max(key.values(), default=None)
    leaders = [a.id for a in spec.agents if a.id in key and key[a.id] == best]
    reason = None
    outcome: TaskOutcome
    if not standing:
        outcome, reason = "failed", "no proposal: every agent's proposal failed"
    elif len(votes) < quorum:
        outcome = "failed"
        reason = f"{len(votes)} of {votes_expected} votes counted; the quorum is {quorum}"
    elif len(leaders) == 1:
        outcome = "decided"
    else:
        outcome = "tied"
    winner = leaders[0] if outcome == "decided" else None
    return DeliberationCompleted(
        submission_id=submission_id,
        council=spec.name,
        task_id=task.id,
        outcome=outcome,
        winner=winner,
        tied=leaders if outcome == "tied" else [],
        reason=reason,
        quorum=quorum,
        ranked_by="centred" if by_centred else "mean",
        ranking=ranking,
        scores={voter: dict(ballot) for voter, ballot in votes.items()},
        votes_counted=len(votes),
        votes_expected=votes_expected,
        winning_proposal=proposals.get((task.id, winner)) if winner else None,
        rounds_run=rounds_run,
        early_stopped=early_stopped,
        transcript=list(transcript),
    )
