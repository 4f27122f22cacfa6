"""``swe-fleet dispatch`` with a pause after one request's job was submitted (tests only).

    python tests/support/paused_dispatch.py REQUEST_ID=SECONDS [swe-fleet dispatch options]

The dispatcher runs exactly as the real command does, except that right after the Jobs API
accepted the job of ``REQUEST_ID`` and the dispatcher logged ``dispatch.submitted`` (before it
records the job, publishes ``council.job.submitted`` and acks) it logs
``dispatch.test_pause_after_submit`` and sleeps ``SECONDS``: a deterministic window in which a
test kills or stops it. The sleep is not cut short by a stop signal: it stands for a slow
submission. Production code carries no such hook: this wraps the dispatcher's ``submit_council``
(to know the job was just accepted) and the ledger's ``mark_submitted`` (the next step, where
it waits).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

import structlog

from swe_fleet.cli import main
from swe_fleet.dispatch import service
from swe_fleet.dispatch.ledger import DispatchRecord, Ledger
from swe_fleet.dispatch.requests import submission_id_for


def pause_after_submitting(request_id: str, seconds: float) -> None:
    """Make the dispatcher sleep after submitting ``request_id``'s job, before recording it."""
    real_submit = service.submit_council
    real_mark_submitted = Ledger.mark_submitted
    target = submission_id_for(request_id)
    just_submitted = threading.Event()  # set in the submitting thread, read in the event loop

    def submit(*args: Any, **kwargs: Any) -> Any:
        submitted = real_submit(*args, **kwargs)
        if submitted.submission_id == target:
            just_submitted.set()
        return submitted

    async def mark_submitted(self: Ledger, record: DispatchRecord, job_id: str, dashboard_url: str) -> Any:
        if record.request_id == request_id and just_submitted.is_set():
            just_submitted.clear()
            structlog.get_logger("tests").warning(
                "dispatch.test_pause_after_submit", request_id=request_id, seconds=seconds
            )
            await asyncio.sleep(seconds)
        return await real_mark_submitted(self, record, job_id, dashboard_url)

    service.submit_council = submit
    Ledger.mark_submitted = mark_submitted  # type: ignore[method-assign]


if __name__ == "__main__":
    request_id, _, seconds = sys.argv[1].rpartition("=")
    pause_after_submitting(request_id, float(seconds))
    sys.exit(main(["dispatch", *sys.argv[2:]]))
