"""The environment a Ray node of ours gets: its own Python first on PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from swe_fleet.local.stack import _ray_node_env, with_python_first


def test_this_interpreter_goes_first_and_only_once() -> None:
    here = str(Path(sys.executable).parent)
    env = with_python_first({"PATH": os.pathsep.join(["/usr/bin", here, "/bin"]), "X": "1"})
    assert env["PATH"].split(os.pathsep) == [here, "/usr/bin", "/bin"]
    assert env["X"] == "1"


def test_another_environment_s_python_goes_first(tmp_path: Path) -> None:
    env = with_python_first({"PATH": "/usr/bin"}, tmp_path / "venv" / "bin" / "python")
    assert env["PATH"].split(os.pathsep) == [str(tmp_path / "venv" / "bin"), "/usr/bin"]


def test_a_node_started_with_another_python_runs_jobs_with_it(tmp_path: Path) -> None:
    """RayWorker(ray_command=[other_python, "-m", ...]): entrypoints' `python` is other_python,
    and no inherited RAY_ADDRESS reaches the node."""
    other = tmp_path / "other" / "bin" / "python"
    env = _ray_node_env({"RAY_ADDRESS": "ray://x:1"}, tmp_path / "token", [str(other), "-m", "ray"])
    assert env["PATH"].split(os.pathsep)[0] == str(other.parent)
    assert "RAY_ADDRESS" not in env
