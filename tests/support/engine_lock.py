"""One vLLM engine at a time across the pytest-xdist workers of a run (2 cores, 24 GiB here).

``make test`` runs two workers: the session's engine tests on one, the multi-host cluster and the
tests without an engine on the other. Whatever starts a vLLM engine (a test marked ``engine``,
the session server's first user, a netns council) holds this lock: an exclusive ``flock``
on a file named after the run's id (``PYTEST_XDIST_TESTRUNUID``, the same in every worker of a
run). A serial run (no xdist) needs no lock and takes none.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def engine_lock() -> Iterator[None]:
    """Hold the run's engine lock for the body (not reentrant: never nest it)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run_id:
        yield
        return
    with (Path(tempfile.gettempdir()) / f"swf-engine-{run_id}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
