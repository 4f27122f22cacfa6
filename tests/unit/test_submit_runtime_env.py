"""The runtime_env both jobs of a submission share (council and preflight), and its fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import swe_fleet
from swe_fleet.errors import SubmissionError
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.runtime_env import load_runtime_env, runtime_env_fingerprint, staged_runtime_env

SPEC = CouncilSpec.from_text("tasks: [{id: t, prompt: p}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n")


def _submission(**kw: object) -> CouncilSubmission:
    return CouncilSubmission(**{"spec": SPEC, "nats_url": "nats://10.0.0.1:4222", **kw})  # type: ignore[arg-type]


def test_staged_runtime_env_holds_the_entrypoints_and_the_spec(repo_root: Path) -> None:
    """The council's, the preflight's and the engine pool's entrypoints and the effective spec
    are staged together;
    pinned adds swe_fleet as py_modules and the pin list; the folder is gone after the block."""
    with staged_runtime_env(_submission(), repo_root) as env:
        staged = Path(env["working_dir"])
        assert sorted(p.name for p in staged.iterdir()) == [
            "council.py",
            "engine.py",
            "preflight.py",
            "spec.json",
        ]
        assert json.loads((staged / "spec.json").read_text())["publish"]["nats_url"] == "nats://10.0.0.1:4222"
        assert env["py_modules"] == [str(Path(swe_fleet.__file__).parent)]
        assert "nats-py==2.16.0" in env["pip"]["packages"]
        assert "excludes" not in env
    assert not staged.exists()
    with staged_runtime_env(_submission(env_kind="image", extra_env_vars={"X": "1"}), repo_root) as env:
        assert "py_modules" not in env and "pip" not in env
        assert env["env_vars"]["X"] == "1" and env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_fingerprint_follows_what_lands_on_nodes_not_the_spec(repo_root: Path) -> None:
    """Two specs in the same environment share a fingerprint; other env vars or kind do not."""
    other_spec = SPEC.with_overrides(model_name="other")
    with (
        staged_runtime_env(_submission(), repo_root) as a,
        staged_runtime_env(_submission(spec=other_spec), repo_root) as b,
    ):
        assert runtime_env_fingerprint(a) == runtime_env_fingerprint(b)
    with staged_runtime_env(_submission(extra_env_vars={"X": "1"}), repo_root) as c:
        assert runtime_env_fingerprint(c) != runtime_env_fingerprint(a)
    with staged_runtime_env(_submission(env_kind="image"), repo_root) as d:
        assert runtime_env_fingerprint(d) != runtime_env_fingerprint(a)


def test_fingerprint_changes_when_an_entrypoint_changes(tmp_path: Path, repo_root: Path) -> None:
    """A different jobs/preflight.py is a different environment."""
    for rel in ("jobs/council.py", "jobs/preflight.py", "jobs/engine.py", "runtime_envs/pinned.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((repo_root / rel).read_text())
    with staged_runtime_env(_submission(), tmp_path) as before:
        fp = runtime_env_fingerprint(before)
    (tmp_path / "jobs" / "preflight.py").write_text("# changed\n")
    with staged_runtime_env(_submission(), tmp_path) as after:
        assert runtime_env_fingerprint(after) != fp


def test_unknown_runtime_env_kind_is_refused(repo_root: Path) -> None:
    """Only pinned and image exist; anything else names the choices."""
    with pytest.raises(SubmissionError, match="pinned, image"):
        load_runtime_env("conda", repo_root)


def test_the_engine_job_env_is_a_councils_without_a_spec_unless_given_one(repo_root: Path) -> None:
    """``swe-fleet engine status``/``down`` stage no spec; ``up`` stages the one it starts."""
    from swe_fleet.submit.runtime_env import staged_engine_env

    with staged_engine_env("pinned") as env:
        assert sorted(p.name for p in Path(env["working_dir"]).iterdir()) == [
            "council.py", "engine.py", "preflight.py",
        ]  # fmt: skip
        assert env["py_modules"] == [str(Path(swe_fleet.__file__).parent)]
    with staged_engine_env("image", SPEC.to_json()) as env:
        assert json.loads((Path(env["working_dir"]) / "spec.json").read_text())["name"] == SPEC.name
        assert "py_modules" not in env
