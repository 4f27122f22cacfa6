"""The one set of process exit codes: the CLI, the council job's driver and the preflight job.

Scripts and CI depend on them, so each code means one thing wherever a swe-fleet process ends:

====  =====================  ==========================================================
code  name                   meaning
====  =====================  ==========================================================
0     OK                     the job SUCCEEDED (``run``/``submit``), or the command worked
1     JOB_FAILED             the job FAILED; the driver: the council did not really run
2     USAGE                  usage error (unknown option, missing argument)
3     BAD_INPUT              unreadable or invalid spec, wrong address, conflict, bad stream,
                             outbox or configuration, bad ``node start`` environment,
                             a submission with no stored result (``result``, ``report``)
4     JOB_STOPPED            the job was STOPPED
5     UNREACHABLE            the dashboard or NATS did not answer within the bound, or
                             refused our credentials (the message says which);
                             ``node start``: no head answered
6     TIMEOUT                the job did not finish within ``--timeout``
7     LOCAL_STACK            the local stack or the model preparation failed; ``node start``:
                             the Ray node exited on its own
8     PREFLIGHT_FAILED       a preflight check failed (``doctor``; ``submit`` then submits
                             nothing; the preflight job itself)
9     PUBLISH_FAILED         the driver could not get every event acknowledged: those that were
                             not are in the outbox its log names (``swe-fleet outbox replay``)
129   HANGUP                 SIGHUP (the terminal closed): ``run`` stopped its job and stack
130   INTERRUPTED            interrupted (Ctrl-C, SIGINT); the job was stopped
143   TERMINATED             SIGTERM: the driver was stopped (e.g. ``ray job stop``); ``run``
                             stopped its job and stack
====  =====================  ==========================================================

This module imports only the standard library: the preflight node check, which must run on a
node that lacks swe-fleet's dependencies, loads it by file path.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes (see the module docstring)."""

    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    BAD_INPUT = 3
    JOB_STOPPED = 4
    UNREACHABLE = 5
    TIMEOUT = 6
    LOCAL_STACK = 7
    PREFLIGHT_FAILED = 8
    PUBLISH_FAILED = 9
    HANGUP = 129
    INTERRUPTED = 130
    TERMINATED = 143


#: The exit code of ``run`` / ``submit`` for each terminal Ray job status.
JOB_STATUS_EXIT = {
    "SUCCEEDED": ExitCode.OK,
    "FAILED": ExitCode.JOB_FAILED,
    "STOPPED": ExitCode.JOB_STOPPED,
}


def for_job_status(status: str) -> ExitCode:
    """The exit code for a terminal Ray job status (``SUCCEEDED`` ...); FAILED for any other."""
    return JOB_STATUS_EXIT.get(status, ExitCode.JOB_FAILED)
