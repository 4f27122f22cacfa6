"""Spec validation: a bad spec fails with one error naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from swe_fleet.errors import SpecError
from swe_fleet.spec import DEFAULT_ROLE_PROMPTS, AgentSpec, CouncilSpec

MINIMAL = """
tasks: [{id: t1, prompt: do it}]
agents: [{id: a, role: architect}, {id: b, role: developer}]
"""


def test_examples_are_valid(repo_root: Path) -> None:
    """Every shipped example validates."""
    for path in sorted((repo_root / "examples").glob("*.yaml")):
        spec = CouncilSpec.from_file(path)
        assert spec.tasks and len(spec.agents) >= 2


def test_defaults_fill_model_publish_and_prompts() -> None:
    """A minimal spec gets the local model, the default stream and role prompts."""
    spec = CouncilSpec.from_text(MINIMAL)
    assert spec.model.name == "smollm2-135m"
    assert spec.publish.stream == "AGENT_RESPONSES"
    assert spec.agents[0].resolved_role_prompt() == DEFAULT_ROLE_PROMPTS[spec.agents[0].role]
    assert "astronaut" in AgentSpec(id="x", role="astronaut").resolved_role_prompt()


def test_missing_field_names_file_and_field(tmp_path: Path) -> None:
    """A task without a prompt names the file and tasks.0.prompt."""
    path = tmp_path / "bad.yaml"
    path.write_text("tasks: [{id: t1}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n")
    with pytest.raises(SpecError) as info:
        CouncilSpec.from_file(path)
    assert info.value.field == "tasks.0.prompt"
    assert str(path) in str(info.value)


def test_unknown_field_is_refused_by_name() -> None:
    """A misspelt field is an error naming it, not silently ignored."""
    with pytest.raises(SpecError) as info:
        CouncilSpec.from_text(MINIMAL + "modle: {name: x}\n")
    assert info.value.field == "modle"
    assert "unknown field" in str(info.value)


def test_duplicate_agent_ids_are_refused() -> None:
    """Two agents with the same id would share event keys: refused, naming the id."""
    text = "tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}, {id: a, role: y}]\n"
    with pytest.raises(SpecError, match="duplicate id 'a'") as info:
        CouncilSpec.from_text(text)
    assert info.value.field == "agents.1.id"


def test_ids_must_be_key_safe() -> None:
    """An id with a slash would break the event key layout: refused."""
    with pytest.raises(SpecError) as info:
        CouncilSpec.from_text(MINIMAL.replace("id: t1", "id: 't/1'"))
    assert info.value.field == "tasks.0.id"


def test_one_agent_is_not_a_council() -> None:
    """Voting needs someone else to score: fewer than two agents is refused."""
    with pytest.raises(SpecError) as info:
        CouncilSpec.from_text("tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}]\n")
    assert info.value.field == "agents"


def test_unreadable_file_is_a_spec_error(tmp_path: Path) -> None:
    """A missing file is a SpecError naming the file."""
    with pytest.raises(SpecError, match="cannot read"):
        CouncilSpec.from_file(tmp_path / "nope.yaml")


def test_invalid_yaml_and_non_mapping_are_spec_errors() -> None:
    """Broken YAML and a top-level list are refused clearly."""
    with pytest.raises(SpecError, match="not valid YAML"):
        CouncilSpec.from_text("tasks: [")
    with pytest.raises(SpecError, match="expected a mapping"):
        CouncilSpec.from_text("- a\n- b\n")


def test_bad_nats_url_scheme_is_refused() -> None:
    """publish.nats_url must be nats:// or tls://."""
    with pytest.raises(SpecError) as info:
        CouncilSpec.from_text(MINIMAL + "publish: {nats_url: 'http://x:4222'}\n")
    assert info.value.field == "publish.nats_url"


def test_spec_hash_is_stable_and_sensitive() -> None:
    """Same spec, same hash; any change, a different hash."""
    a = CouncilSpec.from_text(MINIMAL)
    b = CouncilSpec.from_text(MINIMAL)
    assert a.spec_hash() == b.spec_hash()
    assert a.with_overrides(nats_url="nats://h:1").spec_hash() != a.spec_hash()


def test_json_spec_is_accepted() -> None:
    """JSON is YAML: a JSON spec loads the same."""
    spec = CouncilSpec.from_text(CouncilSpec.from_text(MINIMAL).to_json())
    assert spec == CouncilSpec.from_text(MINIMAL)


@pytest.mark.parametrize(
    ("doc", "field", "said"),
    [
        ("tasks: [{id: t1, prompt: x}]\nagents: [{id: qa, role: a}, {id: QA, role: b}]",
         "agents.1.id", "'QA' equals 'qa' except for case"),
        ("tasks: [{id: T, prompt: x}, {id: t, prompt: y}]\nagents: [{id: a, role: a}, {id: b, role: b}]",
         "tasks.1.id", "'t' equals 'T' except for case"),
        ("tasks: [{id: t1, prompt: '  \n '}]\nagents: [{id: a, role: a}, {id: b, role: b}]",
         "tasks.0.prompt", "is blank"),
        ("tasks: [{id: t1, prompt: x}]\nagents: [{id: a, role: a, role_prompt: ' '}, {id: b, role: b}]",
         "agents.0.role_prompt", "is blank"),
        ("tasks: [{id: t1, prompt: x}]\nagents: [{id: a, role: a}, {id: b, role: b}]\n"
         "protocol: {council_prompt: '\t'}", "protocol.council_prompt", "is blank"),
        ("tasks: [{id: t1, prompt: x}]\nagents: [{id: a, role: a}, {id: b, role: b}]\nprotocol: {quorum: 2}",
         "protocol.quorum", "at most 1 voters"),
    ],
)  # fmt: skip
def test_colliding_ids_blank_prompts_and_an_impossible_quorum_are_refused(
    doc: str, field: str, said: str
) -> None:
    """Ids equal but for case collide in critique routing and file names; a blank prompt asks
    nothing; a quorum above the voters a task can have never decides: each names its field."""
    with pytest.raises(SpecError) as info:
        CouncilSpec.from_text(doc)
    assert info.value.field == field, str(info.value)
    assert said in str(info.value)


def test_a_task_naming_an_agent_the_council_lacks_is_refused() -> None:
    """tasks.N.agents must name the council's agents, each once; the error names the task."""
    base = "agents: [{id: a, role: x}, {id: b, role: y}, {id: c, role: z}]\n"
    with pytest.raises(SpecError, match=r"'d' is not an agent of this council \(agents: a, b, c\)") as info:
        CouncilSpec.from_text("tasks: [{id: t, prompt: p}, {id: u, prompt: q, agents: [a, d]}]\n" + base)
    assert "tasks.1.agents" in str(info.value)
    with pytest.raises(SpecError, match="named twice"):
        CouncilSpec.from_text("tasks: [{id: t, prompt: p, agents: [a, a]}]\n" + base)
    with pytest.raises(SpecError) as short:
        CouncilSpec.from_text("tasks: [{id: t, prompt: p, agents: [a]}]\n" + base)
    assert short.value.field == "tasks.0.agents"
    with pytest.raises(SpecError, match="at most 1 voters with 2 agents"):
        CouncilSpec.from_text("tasks: [{id: t, prompt: p, agents: [a, b]}]\nprotocol: {quorum: 2}\n" + base)
    spec = CouncilSpec.from_text("tasks: [{id: t, prompt: p, agents: [c, a], max_tokens: 7}]\n" + base)
    narrowed = spec.for_task(spec.tasks[0])
    assert [a.id for a in narrowed.agents] == ["a", "c"] and narrowed.model.max_tokens == 7
    assert narrowed.name == spec.name and narrowed.protocol == spec.protocol
