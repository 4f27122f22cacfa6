"""End to end: `swe-fleet run` on the embedded stack with real vLLM on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from swe_fleet.spec import CouncilSpec

from support.councils import assert_complete_council

pytestmark = [pytest.mark.integration, pytest.mark.llm, pytest.mark.slow, pytest.mark.engine]


def test_run_example_yields_every_event_and_a_result_per_task(
    repo_root: Path, prepared_model: Path, tmp_path: Path
) -> None:
    """`swe-fleet run examples/council.yaml --json --html FILE` (what `make demo` runs): every
    proposal, critique, revision and vote once, one council.deliberation.completed per task with
    its transcript, exit 0; the last line is the path of the report, which holds every event."""
    spec = CouncilSpec.from_file(repo_root / "examples" / "council.yaml")
    report = tmp_path / "council-report.html"
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "swe-fleet"),
            "run",
            "examples/council.yaml",
            "--json",
            "--html",
            str(report),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    phases = assert_complete_council(events, spec)
    assert phases["critique"] >= len(spec.tasks) * len(spec.agents)  # the example runs a critique round
    assert "SUCCEEDED" in proc.stderr
    assert proc.stdout.splitlines()[-1] == f"report: {report}"
    html = report.read_text(encoding="utf-8")
    keys = [json.loads(line)["key"] for line in proc.stdout.splitlines() if line.startswith("{")]
    assert all(f'data-key="{key}"' in html for key in keys)
