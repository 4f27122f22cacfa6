"""The environment a local Ray node of ours gets: its own Python first on PATH, and neither an
inherited address nor a no-bytecode setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swe_fleet.local.stack import ray_node_env


def test_a_node_started_with_another_python_runs_jobs_with_it(tmp_path: Path) -> None:
    """A node started with ray_command=[other_python, "-m", ...]: entrypoints' `python` is
    other_python, and no inherited RAY_ADDRESS reaches the node."""
    other = tmp_path / "other" / "bin" / "python"
    env = ray_node_env({"RAY_ADDRESS": "ray://x:1"}, tmp_path / "token", [str(other), "-m", "ray"])
    assert env["PATH"].split(os.pathsep)[0] == str(other.parent)
    assert "RAY_ADDRESS" not in env


def test_a_node_writes_bytecode_when_this_process_may_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PYTHONDONTWRITEBYTECODE in the caller's environment does not reach the node (its jobs'
    runtime_env copies would compile every module again in every job)."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = ray_node_env({}, tmp_path / "token")
    assert "PYTHONDONTWRITEBYTECODE" not in env
