"""Stopping asyncio tasks for good: cancel, and cancel again, until they have ended (bounded).

One ``task.cancel()`` followed by ``await task`` can wait forever on Python 3.11: a cancellation
that reaches ``asyncio.wait_for`` in the same loop iteration as the result it waits for is
swallowed, and the task gets the result instead. nats-py's ``Subscription.next_msg`` (under
every ``fetch`` and ``request``) waits that way, so a pull loop cancelled while a message (or
the server's "no messages" status, once a second) is arriving carries on fetching: its owner's
``await`` never returns. Seen as a council ticket that had its results but never finished; the
lost cancel is reproduced deterministically in tests/unit/test_tasks.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: How often a task that has not ended yet is cancelled again.
RECANCEL_S = 0.1
#: How long :func:`cancel_and_wait` waits by default for the tasks to end.
STOP_TIMEOUT_S = 10.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], timeout_s: float = STOP_TIMEOUT_S
) -> set[asyncio.Future[Any]]:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again every
    :data:`RECANCEL_S` (a cancel can be lost, see the module docstring).

    The tasks' exceptions are retrieved (not news to a caller that is stopping them).

    Returns:
        The tasks still running after ``timeout_s`` (none unless a task ignores cancellation).
    """
    tasks = set(tasks)
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending:
        for t in pending:
            t.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, left))
    for t in tasks - pending:
        if not t.cancelled():
            t.exception()
    return pending
