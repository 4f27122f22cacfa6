"""What the preflight job expects of every node: from the spec and the checkout's pin list."""

from __future__ import annotations

import json
from pathlib import Path

import swe_fleet
from swe_fleet.preflight.job import node_expectations, read_worker_pins
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.request import CouncilSubmission

SPEC = CouncilSpec.from_text("tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n")


def _submission(**kw: object) -> CouncilSubmission:
    return CouncilSubmission(**{"spec": SPEC, "nats_url": "nats://10.0.0.1:4222", **kw})  # type: ignore[arg-type]


def test_expectations_come_from_the_spec_and_the_pin_list(repo_root: Path) -> None:
    """Engine specs expect GPUs per replica and no server; server specs the server URL."""
    gpu = CouncilSpec.from_dict({**json.loads(SPEC.to_json()), "model": {"num_gpus": 1, "replicas": 2}})
    exp = node_expectations(_submission(spec=gpu), root=repo_root)
    assert (exp.gpus_per_replica, exp.replicas, exp.llm_server_url) == (1, 2, None)
    assert exp.pins == read_worker_pins(repo_root) and exp.swe_fleet_version == swe_fleet.__version__
    server = SPEC.with_overrides(backend="server", server_url="http://10.0.0.3:8000")
    exp = node_expectations(_submission(spec=server), root=repo_root)
    assert (exp.llm_server_url, exp.gpus_per_replica) == ("http://10.0.0.3:8000", 0)
