"""What the dispatcher republishes of Ray's job message: the status line, never the log tail."""

from __future__ import annotations

import pytest

from swe_fleet.dispatch.follower import job_status_line

SECRET = "s3cr3t-value-never-republished"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (None, None),
        ("   ", None),
        ("Job was intentionally stopped.", "Job was intentionally stopped."),
        (
            # Ray's job_supervisor.py, word for word, with a log tail that printed a secret.
            "Job entrypoint command failed with exit code 1, last available logs (truncated to "
            f"20,000 chars):\nconnecting with token {SECRET}\nRuntimeError: boom {SECRET}\n",
            "Job entrypoint command failed with exit code 1 (its log: ray job logs)",
        ),
        (
            "Job entrypoint command failed with exit code 3. No logs available.",
            "Job entrypoint command failed with exit code 3. No logs available.",
        ),
        (
            f'Traceback (most recent call last):\n  File "x.py"\nValueError: {SECRET}',
            "the job's supervisor failed; its traceback is in the job's log (ray job logs)",
        ),
    ],
)
def test_a_terminal_status_carries_only_rays_status_line(message: str | None, expected: str | None) -> None:
    assert job_status_line(message) == expected
