"""Token budgets checked before anything is submitted: the field and the limit named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swe_fleet.council.budget import TEMPLATE_TOKENS, check_token_budget, token_budget_problems
from swe_fleet.errors import SpecError
from swe_fleet.llm.base import ModelLimits
from swe_fleet.llm.limits import model_limits
from swe_fleet.spec import CouncilSpec

BASE = {
    "tasks": [{"id": "t1", "prompt": "do it"}],
    "agents": [{"id": "a", "role": "architect"}, {"id": "b", "role": "qa"}],
}


def _spec(**model: object) -> CouncilSpec:
    return CouncilSpec.from_dict({**BASE, "model": model})


def words(text: str) -> int:
    """A stand-in tokenizer: one token per word."""
    return len(text.split())


def test_output_limits_beyond_the_context_name_their_field() -> None:
    """max_tokens or the vote budget at or beyond the context: no room for any prompt."""
    (p,) = token_budget_problems(_spec(max_tokens=2048), 2048, source="model.max_model_len")
    assert p.field == "model.max_tokens" and "context of 2048 tokens (model.max_model_len)" in p.message
    (v,) = token_budget_problems(_spec(vote_max_tokens=4096), 2048)
    assert v.field == "model.vote_max_tokens"
    assert token_budget_problems(_spec(max_tokens=128), 2048, words) == []


def test_a_task_prompt_that_cannot_fit_with_max_tokens_names_the_task() -> None:
    """The proposal prompt (council prompt, task, role, ask) plus max_tokens must fit."""
    tasks = [{"id": "ok", "prompt": "short"}, {"id": "long", "prompt": "w " * 900}]
    spec = CouncilSpec.from_dict({**BASE, "tasks": tasks, "model": {"max_tokens": 128}})
    (p,) = token_budget_problems(spec, 1024, words)
    assert p.field == "tasks.1.prompt" and "'long'" in p.message and "max_tokens 128" in p.message
    assert token_budget_problems(spec, 900 + 128 + TEMPLATE_TOKENS + 200, words) == []


def test_check_token_budget_raises_a_spec_error_for_the_first_field_and_counts_the_rest() -> None:
    limits = ModelLimits(context=512, source="test", count_tokens=None)
    with pytest.raises(SpecError) as info:
        check_token_budget(_spec(max_tokens=600, vote_max_tokens=600), limits, source="c.yaml")
    assert info.value.field == "model.max_tokens" and "(and 1 more problem(s))" in str(info.value)
    assert str(info.value).startswith("c.yaml: model.max_tokens: ")
    said = check_token_budget(_spec(max_tokens=100), limits)
    assert (
        said == "token budget fits the context of 512 tokens (test; prompts not counted: no tokenizer here)"
    )
    unknown = check_token_budget(
        _spec(max_tokens=10**6), ModelLimits(None, "http://s/v1/models did not answer")
    )
    assert unknown.startswith("token budget not checked")


def test_max_model_len_beyond_what_the_model_takes_is_refused(tmp_path: Path) -> None:
    """A model folder's config.json says how far the model goes; the engine would refuse more."""
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    spec = _spec(name=str(tmp_path), max_model_len=4096)
    limits = model_limits(spec)
    assert (limits.context, limits.model_max, limits.count_tokens) == (4096, 1024, None)
    with pytest.raises(SpecError) as info:
        check_token_budget(spec, limits)
    assert info.value.field == "model.max_model_len" and "1024 tokens" in str(info.value)


def test_an_unreachable_server_leaves_the_context_unknown_and_says_so() -> None:
    spec = CouncilSpec.from_dict({**BASE, "backend": "server", "server": {"url": "http://127.0.0.1:9"}})
    limits = model_limits(spec)
    assert limits.context is None and "did not answer from here" in limits.source
