"""Process helpers: a child's environment puts its own Python first on PATH."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from swe_fleet._processes import free_ports, with_python_first


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


def test_free_ports_are_distinct_and_bindable() -> None:
    """Ports chosen together never repeat (Ray refuses two components on one port), and each
    is free once the call returns."""
    for _ in range(20):
        ports = free_ports(9)
        assert len(set(ports)) == 9
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
