"""Process helpers: a child's environment puts its own Python first on PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from swe_fleet._processes import with_python_first


def test_this_interpreter_goes_first_and_only_once() -> None:
    """This interpreter's directory leads PATH once; other variables are kept."""
    here = str(Path(sys.executable).parent)
    env = with_python_first({"PATH": os.pathsep.join(["/usr/bin", here, "/bin"]), "X": "1"})
    assert env["PATH"].split(os.pathsep) == [here, "/usr/bin", "/bin"]
    assert env["X"] == "1"


def test_another_environment_s_python_goes_first(tmp_path: Path) -> None:
    """Given another environment's python, its directory leads PATH."""
    env = with_python_first({"PATH": "/usr/bin"}, tmp_path / "venv" / "bin" / "python")
    assert env["PATH"].split(os.pathsep) == [str(tmp_path / "venv" / "bin"), "/usr/bin"]
