"""End to end: `swe-fleet run` on the embedded stack with real vLLM on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from swe_fleet.spec import CouncilSpec

pytestmark = [pytest.mark.integration, pytest.mark.llm, pytest.mark.slow]


def test_run_example_yields_every_event_and_a_result_per_task(repo_root: Path, prepared_model: Path) -> None:
    """`swe-fleet run examples/council.yaml --json`: tasks x agents proposals, tasks x agents
    vote outcomes, one council.deliberation.completed per task, exit 0."""
    spec = CouncilSpec.from_file(repo_root / "examples" / "council.yaml")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "swe-fleet"), "run", "examples/council.yaml", "--json"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    keys = Counter(
        (e["submission_id"], e["task_id"], e.get("phase"), e.get("agent_id"), e["event"]) for e in events
    )
    assert max(keys.values()) == 1, "an event was shown twice"
    pairs = len(spec.tasks) * len(spec.agents)
    phases = Counter((e.get("phase"), e["event"]) for e in events)
    assert (
        phases[("propose", "agent.response.completed")] + phases[("propose", "agent.response.failed")]
        == pairs
    )
    assert phases[("vote", "agent.response.completed")] + phases[("vote", "agent.response.failed")] == pairs
    results = [e for e in events if e["event"] == "council.deliberation.completed"]
    assert sorted(r["task_id"] for r in results) == sorted(t.id for t in spec.tasks)
    for r in results:
        assert len(r["ranking"]) == len(spec.agents)
    assert "SUCCEEDED" in proc.stderr
