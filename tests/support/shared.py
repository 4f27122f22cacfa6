"""Session resources shared by every pytest-xdist worker of a run: one vLLM server, one Ray head,
one nats-server for the whole run, however many workers use them.

The controller (or a serial run) makes a directory for the run and names it in
``SWF_SHARED_DIR`` before the workers start; they inherit it. The first worker that needs a
resource starts it under a file lock and writes what the others need to reconnect to it
(URLs, ports, token) and what stops it (process groups, directories) to ``NAME.json``; the
others wait on the lock and read it. A worker that ends early leaves the resources running for
the others: the controller stops them all, by process group, when the whole run is over
(:func:`stop_all`, called from ``tests/conftest.py``). Only processes this run started are
ever signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Names the run's directory; set by the controller, inherited by the workers.
SHARED_DIR_ENV = "SWF_SHARED_DIR"


@dataclass
class StopRecipe:
    """How the controller stops a resource: SIGTERM to each process group (the leader's PID),
    SIGKILL after a bound, then the directories removed."""

    process_groups: list[int] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)


def ensure_shared_dir() -> Path:
    """The run's directory (made here when this process is the controller or a serial run)."""
    if not os.environ.get(SHARED_DIR_ENV):
        os.environ[SHARED_DIR_ENV] = tempfile.mkdtemp(prefix="swf-shared-")
    return Path(os.environ[SHARED_DIR_ENV])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def shared(name: str, start: Callable[[], tuple[dict[str, Any], StopRecipe]]) -> dict[str, Any]:
    """The run's one ``name``: its state, started by ``start`` in the first process that asks
    (the others wait for it). ``start`` returns the state others need and how to stop it; a
    ``start`` that raises leaves nothing behind, and the next process to ask tries again."""
    root = ensure_shared_dir()
    with _locked(root / f"{name}.lock"):
        record = root / f"{name}.json"
        if record.exists():
            return dict(json.loads(record.read_text())["state"])
        state, stop = start()
        record.write_text(json.dumps({"state": state, "stop": asdict(stop)}))
        return state


def stop_all(root: Path, timeout_s: float = 30.0) -> None:
    """Stop every resource recorded under ``root`` (this run's), then remove ``root``."""
    recipes = [StopRecipe(**json.loads(p.read_text())["stop"]) for p in sorted(root.glob("*.json"))]
    groups = [g for r in recipes for g in r.process_groups]
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
        time.sleep(0.2)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    for directory in (d for r in recipes for d in r.directories):
        shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
