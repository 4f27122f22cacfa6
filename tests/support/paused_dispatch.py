"""``swe-fleet dispatch`` with a pause after one request's job was submitted (tests only).

    python tests/support/paused_dispatch.py REQUEST_ID=SECONDS [swe-fleet dispatch options]

The dispatcher runs exactly as the real command does, except that right after the Jobs API
accepted the job of ``REQUEST_ID`` (before its ``council.job.submitted`` event and the ack) it
logs ``dispatch.test_pause_after_submit`` and sleeps ``SECONDS``: a deterministic window in which
a test kills or stops it. The sleep is not cut short by a stop signal: it stands for a slow
submission. Production code carries no such hook; this wraps the client's ``submit`` instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import structlog

from swe_fleet.cli import main
from swe_fleet.events import submission_id_for
from swe_fleet.submit import client as submit_client


def pause_after_submitting(request_id: str, seconds: float) -> None:
    """Make every council job client sleep after submitting ``request_id``'s job."""
    real_submit = submit_client.CouncilJobClient.submit
    target = submission_id_for(request_id)

    def submit(self: Any, request: Any, **kwargs: Any) -> Any:
        submitted = real_submit(self, request, **kwargs)
        if submitted.submission_id == target:
            structlog.get_logger("tests").warning(
                "dispatch.test_pause_after_submit", request_id=request_id, seconds=seconds
            )
            time.sleep(seconds)
        return submitted

    submit_client.CouncilJobClient.submit = submit  # type: ignore[method-assign]


if __name__ == "__main__":
    request_id, _, seconds = sys.argv[1].rpartition("=")
    pause_after_submitting(request_id, float(seconds))
    sys.exit(main(["dispatch", *sys.argv[2:]]))
