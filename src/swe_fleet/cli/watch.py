"""``swe-fleet watch``: a council as a live grid of tasks x phases in the terminal, while it runs or
after it ended; plain lines (one per event) when stdout is not a terminal (CI logs).

:class:`CouncilView` draws :class:`~swe_fleet.report.progress.CouncilProgress` with rich; ``run``
and ``submit`` use it too when attached to a terminal (``submit`` through a :class:`Follower`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from swe_fleet.cli._common import NATS_URL_OPTION, STREAM_OPTION, guard, nats_auth_options, out
from swe_fleet.cli.render import print_event
from swe_fleet.errors import JobWaitTimeout, SweFleetError
from swe_fleet.events import AnyEvent
from swe_fleet.exit_codes import ExitCode
from swe_fleet.report.progress import CellState, CouncilProgress

_STYLE: dict[CellState, str] = {
    "waiting": "dim",
    "running": "bold yellow",
    "done": "green",
    "failed": "bold red",
    "skipped": "dim",
}


class CouncilView:
    """A rich renderable of a council's progress, drawn anew at each refresh (timers move)."""

    def __init__(self, progress: CouncilProgress, title: str) -> None:
        self.progress = progress
        self.title = title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table()

    def table(self) -> Table:
        p = self.progress
        table = Table(title=Text(self.title), title_justify="left")
        table.add_column("task")
        for name in p.phases:
            table.add_column(name)
        table.add_column("outcome")
        for task in p.tasks.values():
            cells = []
            for name in p.phases:
                state = p.state(task, name)
                cell = task.cells.get(name)
                text: str = state
                if cell is not None and cell.planned:
                    text += f" {cell.completed + cell.failed}/{cell.planned}"
                if cell is not None and cell.tokens:
                    text += f"\n{cell.tokens} tok"
                took = p.seconds(task, name)
                if took is not None:
                    text += f" {took:.1f}s"
                cells.append(Text(text, style=_STYLE[state]))
            table.add_row(Text(task.task_id), *cells, Text(p.outcome(task)))
        if p.job_ended:
            table.caption = p.job_ended
        return table


@contextlib.contextmanager
def live_council(progress: CouncilProgress, title: str, console: Console = out) -> Iterator[CouncilView]:
    """The view drawn live on ``console`` for the body (left on screen in its final state)."""
    view = CouncilView(progress, title)
    with Live(view, console=console, refresh_per_second=4, redirect_stderr=True):
        yield view


class Follower:
    """Fold a submission's events into ``progress`` on a thread of its own, until :meth:`stop`
    (``submit`` waits on the job meanwhile). A follower that cannot reach NATS only stops
    drawing: :attr:`error` says why (``submit`` prints it once), the job is followed as before."""

    def __init__(self, progress: CouncilProgress, nats_url: str, stream: str, submission_id: str) -> None:
        from swe_fleet.nats.consumer import ConsumerOptions

        self.progress = progress
        self.opts = ConsumerOptions(
            nats_url=nats_url, stream=stream, durable=None, submission_id=submission_id
        )
        self.error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="swe-fleet-watch", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def stop(self, drain_s: float = 0.0) -> None:
        """Give it ``drain_s`` to finish by itself (every task's result in), then stop it."""
        self._thread.join(drain_s)
        if self._thread.is_alive() and self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(5.0)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            await _follow(self.progress, self.opts, lambda e: None)

        with contextlib.suppress(asyncio.CancelledError):
            try:
                asyncio.run(main())
            except SweFleetError as exc:
                self.error = str(exc)


async def _follow(progress: CouncilProgress, opts: Any, on_event: Any, first: Any = None) -> None:
    """Fold the consumer's events into ``progress`` until it is done; ``first()`` is awaited
    when the first event came."""
    from swe_fleet.nats.consumer import iter_events

    async with contextlib.aclosing(iter_events(opts)) as events:
        async for event in events:
            if first is not None:
                await first()
                first = None
            progress.apply(event)
            on_event(event)
            if progress.done:
                return


#: After the job ended, how long ``submit``'s live view waits for events still on their way.
FOLLOW_DRAIN_S = 5.0


@click.command()
@click.argument("submission_id")
@nats_auth_options
@NATS_URL_OPTION
@STREAM_OPTION
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=None,
    help="give up after this many seconds (exit 6) [default: until every task has its result]",
)
def watch(submission_id: str, nats_url: str, stream: str, timeout_s: float | None) -> None:
    """Watch a council: a live grid of tasks x phases (each slot's state, tokens, time per phase,
    the outcome per task as it lands), until every task has its result or the job ended; one
    line per event when stdout is not a terminal."""

    def body() -> int:
        return asyncio.run(_watch(submission_id, nats_url, stream, timeout_s))

    guard(body)


async def _watch(submission_id: str, nats_url: str, stream: str, timeout_s: float | None) -> int:
    from swe_fleet.cli.report import read_record
    from swe_fleet.nats.consumer import ConsumerOptions

    record = await read_record(nats_url, submission_id)
    progress = CouncilProgress(record.spec if record is not None else None)
    opts = ConsumerOptions(nats_url=nats_url, stream=stream, durable=None, submission_id=submission_id)

    async def learn_the_plan() -> None:
        """Watching began before the job stored its record: it has by its first event."""
        if not progress.planned:
            started = await read_record(nats_url, submission_id)
            if started is not None:
                progress.plan(started.spec)

    def plain(event: AnyEvent) -> None:
        print_event(event, as_json=False)

    try:
        if out.is_terminal:
            with live_council(progress, f"council {submission_id}"):
                await asyncio.wait_for(_follow(progress, opts, lambda e: None, learn_the_plan), timeout_s)
        else:
            await asyncio.wait_for(_follow(progress, opts, plain, learn_the_plan), timeout_s)
    except TimeoutError:
        raise JobWaitTimeout(
            f"council {submission_id} had not ended after {timeout_s:.0f} s (--timeout)",
            submission_id=submission_id,
        ) from None
    return int(ExitCode.OK)
