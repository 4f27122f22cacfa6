"""The producer side of the dispatcher: publish a council request, await its results.

::

    ticket = await swe_fleet.request_council(spec, nats_url="nats://NATS:4222")
    results = await ticket  # one DeliberationCompleted per task, in the spec's order

No Ray SDK on the producer: the request goes to ``council.request`` (stream ``COUNCIL_REQUESTS``)
with ``Nats-Msg-Id`` ``request/{request_id}``, so a retried publish is stored once; a
``swe-fleet dispatch`` turns it into a job. The ticket listens from *before* the publish on:
``council.deliberation.completed`` and the dispatcher's ``council.job.<state>`` events of that
submission (same stream, so a terminal status always comes after the job's results), and
``council.request.dead`` for this request. It resolves when every task has its result (or, for
a ``spec_ref`` request, when the job succeeded), and raises
:class:`~swe_fleet.errors.RequestRejected` (dead-lettered), :class:`~swe_fleet.errors.CouncilIncomplete`
(the job failed or was stopped) or :class:`~swe_fleet.errors.DispatchTimeout`.

A request whose results are already in the results store (:mod:`swe_fleet.nats.results`: its job
finished, the same council under the same ``request_id``) gets a ticket that is done at once,
and nothing is published. Otherwise only events published after the call are seen; a job that
succeeds with results the ticket did not see (it was ending when the ticket started listening)
has them read from the results store, which the job completes before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Generator, Sequence
from typing import Any

import structlog
from nats.js import api
from pydantic import ValidationError

from swe_fleet._tasks import cancel_and_wait
from swe_fleet.dispatch.requests import (
    CouncilRequestDead,
    CouncilRequested,
    decode_request,
    submission_id_for,
)
from swe_fleet.errors import (
    CouncilIncomplete,
    DispatchTimeout,
    PublishError,
    RequestRejected,
    UndecodableEvent,
)
from swe_fleet.events import (
    AGENT_RESPONSES_STREAM,
    AGENT_RESPONSES_SUBJECTS,
    COUNCIL_JOB_STATUS_SUBJECTS,
    COUNCIL_REQUEST_DEAD,
    COUNCIL_REQUESTS_STREAM,
    COUNCIL_REQUESTS_SUBJECTS,
    DELIBERATION_COMPLETED,
    TERMINAL_JOB_STATES,
    CouncilJobStatus,
    DeliberationCompleted,
    decode_event,
)
from swe_fleet.nats.connection import JetStreamConnection, open_jetstream
from swe_fleet.nats.policy import PublishPolicy
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.nats.pull import FETCH_ERRORS, OutagePolicy, PullLoop, Subscription
from swe_fleet.nats.results import ResultsStore
from swe_fleet.nats.streams import StreamRequirement
from swe_fleet.spec import CouncilSpec

log = structlog.get_logger(__name__)

#: A ticket's consumers outlive a vanished producer by this long, then the server removes them.
CONSUMER_INACTIVE_S = 300.0
#: How a ticket's consumers ride out NATS reconnecting: a fetch every half second with no time
#: bound of their own (the ticket's ``timeout_s`` is one); a connection closed for good ends them.
TICKET_OUTAGE_POLICY = OutagePolicy(budget_s=None, initial_wait_s=0.5, max_wait_s=0.5)


class CouncilTicket:
    """A published council request; ``await`` it for the results (see the module docstring).

    Attributes:
        request_id: the request's id.
        submission_id: the job's submission id (event keys, ``swe-fleet consume --submission-id``).
    """

    def __init__(
        self, request_id: str, submission_id: str, task: asyncio.Future[list[DeliberationCompleted]]
    ):
        self.request_id = request_id
        self.submission_id = submission_id
        self._task = task

    def __await__(self) -> Generator[Any, None, list[DeliberationCompleted]]:
        return self._task.__await__()

    def done(self) -> bool:
        return self._task.done()

    def cancel(self) -> None:
        """Stop waiting (the job, if any, keeps running)."""
        self._task.cancel()


async def request_council(
    spec: CouncilSpec | None = None,
    *,
    nats_url: str,
    spec_ref: str | None = None,
    request_id: str | None = None,
    timeout_s: float = 3600.0,
    events_stream: str = AGENT_RESPONSES_STREAM,
    requests_stream: str = COUNCIL_REQUESTS_STREAM,
    connect_timeout_s: float = 5.0,
) -> CouncilTicket:
    """Publish a council request for a dispatcher and return a ticket to await its results.

    Args:
        spec: the council; or ``spec_ref``, a spec file under the dispatcher's ``--spec-dir``.
        nats_url: the NATS of the dispatcher (and of the jobs' events).
        request_id: the request's name for good (default: a new unique one). The same id
            again starts no second job; another request under a used id is dead-lettered.
        timeout_s: how long the ticket waits for the results.

    Returns:
        A ticket: ``await ticket`` gives one ``DeliberationCompleted`` per task.

    Raises:
        InvalidRequest: the request is invalid (nothing is published).
        NatsUnreachable / PublishError / StreamConfigMismatch: the request could not be published.
    """
    request = _build_request(spec, spec_ref, request_id or f"req-{uuid.uuid4().hex}")
    conn = await open_jetstream(
        nats_url,
        name="swe-fleet-request",
        connect_timeout_s=connect_timeout_s,
        streams=[
            StreamRequirement(requests_stream, COUNCIL_REQUESTS_SUBJECTS),
            StreamRequirement(events_stream, AGENT_RESPONSES_SUBJECTS),
        ],
    )
    sid = submission_id_for(request.request_id)
    async with conn.setting_up():
        # Listening starts before the look in the results store and before the request exists:
        # a job that ends after the look has its terminal status seen by the ticket.
        events = Subscription(
            conn.nc,
            await conn.bounded(
                _listen(conn.js, events_stream, [DELIBERATION_COMPLETED, *COUNCIL_JOB_STATUS_SUBJECTS])
            ),
        )
        dead = Subscription(
            conn.nc, await conn.bounded(_listen(conn.js, requests_stream, [COUNCIL_REQUEST_DEAD]))
        )
        stored = await _stored_results(conn, sid, spec)
        if stored is not None:
            log.info("request.already_done", request_id=request.request_id, submission_id=sid)
            for sub in (events, dead):
                await sub.unsubscribe()
            await conn.close()
            done: asyncio.Future[list[DeliberationCompleted]] = asyncio.get_running_loop().create_future()
            done.set_result(stored)
            return CouncilTicket(request.request_id, sid, done)
        publisher = JetStreamPublisher(conn.nc, requests_stream, PublishPolicy(), url=nats_url)
        ack = await publisher.publish(request)
    log.info("request.published", request_id=request.request_id, seq=ack.seq, duplicate=ack.duplicate)
    waiter = _Waiter(request, sid, ack.seq, spec, timeout_s, nats_url)
    task = asyncio.create_task(waiter.run(conn, events, dead), name=f"council-{request.request_id}")
    return CouncilTicket(request.request_id, sid, task)


#: A look in the results store before a request is one quick try: a store that does not answer
#: (or that this producer may not read) only means the ticket waits for the events as usual.
STORE_LOOKUP_POLICY = PublishPolicy(ack_timeout_s=2.0, max_attempts=1, budget_s=2.0)
_STORE_ERRORS: tuple[type[BaseException], ...] = (PublishError, UndecodableEvent, TimeoutError, *FETCH_ERRORS)
#: The parts of a spec that make two councils the same council (not where they publish).
_SAME_COUNCIL = ("name", "tasks", "agents", "protocol")


async def _stored_results(
    conn: JetStreamConnection, submission_id: str, spec: CouncilSpec | None
) -> list[DeliberationCompleted] | None:
    """The results of a request that already finished, from the results store (None: not
    there, for another council, or the store did not answer in time: the ticket waits as usual)."""
    try:
        record = await ResultsStore.lookup(conn.js, submission_id, STORE_LOOKUP_POLICY)
    except _STORE_ERRORS as exc:
        log.warning("request.results_store_unread", submission_id=submission_id, error=str(exc))
        return None
    if record is None or not record.complete:
        return None
    if spec is not None:
        mine = spec.model_dump(mode="json")
        if any(record.spec.get(k) != mine[k] for k in _SAME_COUNCIL):
            return None  # another council under this id: the dispatcher dead-letters the request
    return list(record.results)


def _build_request(spec: CouncilSpec | None, spec_ref: str | None, request_id: str) -> CouncilRequested:
    doc: dict[str, Any] = {"request_id": request_id}
    if spec is not None:
        doc["spec"] = spec.model_dump(mode="json")
    if spec_ref is not None:
        doc["spec_ref"] = spec_ref
    # The dispatcher's own validator: what passes here is what it accepts.
    return decode_request(json.dumps(doc).encode())


async def _listen(js: Any, stream: str, subjects: Sequence[str]) -> Any:
    """An ephemeral pull consumer of ``subjects``, from the next message on."""
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.NEW,
        filter_subjects=list(subjects),
        inactive_threshold=CONSUMER_INACTIVE_S,
    )
    return await js.pull_subscribe("", stream=stream, config=config)


class _Waiter:
    """Reads a ticket's two consumers until the outcome is known."""

    def __init__(
        self,
        request: CouncilRequested,
        sid: str,
        request_seq: int,
        spec: CouncilSpec | None,
        timeout_s: float,
        nats_url: str,
    ) -> None:
        self.nats_url = nats_url
        self.request = request
        self.sid = sid
        self.request_seq = request_seq
        self.spec = spec
        self.task_ids = [t.id for t in spec.tasks] if spec is not None else None
        self.timeout_s = timeout_s
        self.results: dict[str, DeliberationCompleted] = {}

    async def run(
        self, conn: JetStreamConnection, events: Subscription, dead: Subscription
    ) -> list[DeliberationCompleted]:
        """Wait for the outcome (see :func:`request_council`); closes ``conn`` at the end."""
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        pumps = [
            asyncio.create_task(self._pump(events, "event", queue)),
            asyncio.create_task(self._pump(dead, "dead", queue)),
        ]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    [getter, *pumps],
                    timeout=max(deadline - loop.time(), 0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter not in done:
                    getter.cancel()
                    for p in pumps:
                        if p in done:
                            p.result()  # a consumer that died raises here
                    raise DispatchTimeout(
                        f"request {self.request.request_id}: no final result within {self.timeout_s:.0f} s "
                        f"({len(self.results)} task result(s) so far); the job, if any, keeps running "
                        f"(submission {self.sid})",
                        timeout_s=self.timeout_s,
                        submission_id=self.sid,
                        request_id=self.request.request_id,
                    )
                kind, data = getter.result()
                outcome = self._take(kind, data)
                if isinstance(outcome, CouncilJobStatus):
                    return await self._from_store(conn, outcome)
                if outcome is not None:
                    return outcome
        finally:
            await cancel_and_wait(pumps)
            for sub in (events, dead):
                await sub.unsubscribe()
            await conn.close()

    async def _pump(self, sub: Subscription, kind: str, queue: asyncio.Queue[tuple[str, bytes]]) -> None:
        """Move a consumer's messages into ``queue`` (acked); ride out NATS reconnecting."""
        pull = PullLoop(
            sub,
            batch=16,
            fetch_wait_s=1.0,
            policy=TICKET_OUTAGE_POLICY,
            url=self.nats_url,
            doing="awaiting a council",
            hint=(
                "the job, if any, keeps running; read its events with "
                f"swe-fleet consume --submission-id {self.sid}"
            ),
            log_as="request",
        )
        async for msgs in pull.batches():
            for msg in msgs:
                await queue.put((kind, msg.data))
                with contextlib.suppress(*FETCH_ERRORS):
                    await msg.ack()

    def _take(self, kind: str, data: bytes) -> list[DeliberationCompleted] | CouncilJobStatus | None:
        """The outcome ``data`` settles: the results; a ``succeeded`` status with results
        missing (look in the results store: :meth:`_from_store`); None (not yet). Raises for a
        rejection or a job that ended otherwise."""
        rid = self.request.request_id
        if kind == "dead":
            try:
                dead = CouncilRequestDead.model_validate_json(data)
            except ValidationError:
                return None
            if dead.request_id == rid and dead.stream_seq == self.request_seq:
                raise RequestRejected(
                    f"the dispatcher rejected request {rid}: {dead.reason}",
                    reason=dead.reason,
                    request_id=rid,
                )
            return None
        try:
            event = decode_event(data)
        except UndecodableEvent:
            return None
        if event.submission_id != self.sid:
            return None
        if isinstance(event, DeliberationCompleted):
            self.results[event.task_id] = event
            if self.task_ids is not None and set(self.task_ids) <= set(self.results):
                return self._ordered()
        elif isinstance(event, CouncilJobStatus) and event.state in TERMINAL_JOB_STATES:
            if event.state != "succeeded":
                raise self._incomplete(event)
            return event if self._missing() else self._ordered()
        return None

    async def _from_store(
        self, conn: JetStreamConnection, status: CouncilJobStatus
    ) -> list[DeliberationCompleted]:
        """The job succeeded but results are missing: a second ticket for a request whose job was
        ending listened after the job had published them. The job writes its complete record
        before it exits, so the results store has them now (or they were lost: raise)."""
        stored = await _stored_results(conn, self.sid, self.spec)
        for result in stored or []:
            self.results.setdefault(result.task_id, result)
        if self._missing():
            raise self._incomplete(status)
        log.info("request.results_from_store", request_id=self.request.request_id, submission_id=self.sid)
        return self._ordered()

    def _missing(self) -> list[str]:
        return [t for t in self.task_ids or [] if t not in self.results]

    def _incomplete(self, status: CouncilJobStatus) -> CouncilIncomplete:
        why = f": {status.message}" if status.message else ""
        missing = self._missing()
        return CouncilIncomplete(
            f"the job of request {self.request.request_id} ended {status.state}{why}; "
            f"{len(self.results)} task result(s) arrived, missing: {missing or 'unknown'}",
            state=status.state,
            submission_id=self.sid,
            results=self._ordered(),
            request_id=self.request.request_id,
        )

    def _ordered(self) -> list[DeliberationCompleted]:
        order = self.task_ids or list(self.results)
        return [self.results[t] for t in order if t in self.results]
