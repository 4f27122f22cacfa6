"""``swe-fleet run``: one council on the embedded local stack, end to end.

Start nats-server (token and TLS on) and a Ray head, prepare the model, submit through the
Jobs API (exactly as to a remote cluster), stream the events while the job runs (:mod:`swe_fleet.submit.wait`
follows the job meanwhile), and tear everything down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from swe_fleet._tasks import cancel_and_wait
from swe_fleet.events import DeliberationCompleted
from swe_fleet.llm.model import is_prepared, prepare_local_model
from swe_fleet.local import LOCAL_ENV_KIND
from swe_fleet.local.stack import local_stack
from swe_fleet.nats.consumer import ConsumerOptions, Event, iter_events
from swe_fleet.spec import LOCAL_MODEL_ALIAS, CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission, SubmittedJob
from swe_fleet.submit.submission import submit_council
from swe_fleet.submit.wait import JobWatch

#: After the job ends, how long to wait for events still in flight.
DRAIN_IDLE_S = 5.0


def run_locally(
    spec: CouncilSpec,
    *,
    env_kind: str = LOCAL_ENV_KIND,
    timeout_s: float = 1800,
    workdir: Path | None = None,
    on_event: Callable[[Event], None] = lambda e: None,
    on_info: Callable[[str], None] = lambda m: None,
    on_results: Callable[[Sequence[DeliberationCompleted]], None] = lambda r: None,
    on_failure: Callable[[JobsApi, SubmittedJob, str, str], None] = lambda j, s, status, url: None,
    on_finished: Callable[[str, str], None] = lambda url, sid: None,
) -> str:
    """Run ``spec`` on a fresh local stack; return the job's terminal status (``SUCCEEDED`` ...).

    ``on_failure(jobs, submitted, status, nats_url)`` runs, while the stack is still up, when
    the job did not succeed (to say why); ``on_finished(nats_url, submission_id)`` runs after
    the job ended, whatever its status, while the stack is still up (to read it back: a report)."""
    started = time.monotonic()
    if spec.model.name == LOCAL_MODEL_ALIAS:
        cached = is_prepared()
        t = time.monotonic()
        prepare_local_model()
        on_info(
            f"model {LOCAL_MODEL_ALIAS}: {'cached' if cached else 'prepared'} ({time.monotonic() - t:.1f} s)"
        )
    with local_stack(workdir) as stack, _nats_env(stack.client_env):
        on_info(
            f"local stack up in {time.monotonic() - started:.1f} s: dashboard {stack.ray.dashboard_url}, "
            f"NATS {stack.nats.url}"
        )
        jobs = JobsApi(stack.ray.dashboard_url, auth_token=stack.ray.auth_token)
        submitted = submit_council(
            jobs, CouncilSubmission(spec=spec, env_kind=env_kind, nats_url=stack.nats.url)
        )
        on_info(f"submitted {submitted.submission_id} through the Jobs API")
        try:
            status, results = asyncio.run(
                _follow(jobs, submitted, stack.nats.url, spec, timeout_s, on_event, on_info)
            )
        except BaseException:
            with contextlib.suppress(Exception):
                jobs.stop(submitted.job_id)
            raise
        if status != "SUCCEEDED":
            tail = "\n".join(jobs.logs(submitted.job_id).splitlines()[-25:])
            on_info(f"job {submitted.job_id} ended {status}; last log lines:\n{tail}")
            on_failure(jobs, submitted, status, stack.nats.url)
        on_finished(stack.nats.url, submitted.submission_id)
        on_results(results)
        on_info(f"done in {time.monotonic() - started:.1f} s: {status}")
        return status


@contextlib.contextmanager
def _nats_env(env: Mapping[str, str]) -> Iterator[None]:
    """This process's NATS variables are the local stack's while it runs (its consumer, and
    whatever ``on_failure`` reads); the caller's own come back afterwards."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("NATS_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("NATS_")]:
            del os.environ[key]
        os.environ.update(saved)


async def _follow(
    jobs: JobsApi,
    submitted: SubmittedJob,
    nats_url: str,
    spec: CouncilSpec,
    timeout_s: float,
    on_event: Callable[[Event], None],
    on_info: Callable[[str], None],
) -> tuple[str, list[DeliberationCompleted]]:
    """Consume the submission's events while the job runs; its status and the results, in task order."""
    results: list[DeliberationCompleted] = []
    all_results = asyncio.Event()

    async def consume() -> None:
        opts = ConsumerOptions(
            nats_url=nats_url, durable=None, submission_id=submitted.submission_id, fetch_wait_s=0.5
        )
        async for event in iter_events(opts):
            on_event(event)
            if isinstance(event, DeliberationCompleted):
                results.append(event)
                if len(results) >= len(spec.tasks):
                    all_results.set()

    watch = JobWatch(
        jobs,
        submitted.job_id,
        timeout_s=timeout_s,
        on_status=lambda s: on_info(f"job {submitted.job_id}: {s.value}"),
        after_timeout="it is stopped with the local stack",
    )
    consumer = asyncio.create_task(consume())
    # Polled on this loop, not in a thread that blocks until the job ends: Ctrl-C
    # (cancellation) takes effect at once, and a consumer that dies raises now, not at the end.
    waiter = asyncio.create_task(watch.wait_async())
    try:
        done, _ = await asyncio.wait({consumer, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if consumer in done:
            consumer.result()  # a consumer that died raises here
        status = await waiter
        # Events published just before the job ended may still be on their way.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_results.wait(), DRAIN_IDLE_S)
        if consumer.done():
            consumer.result()
    finally:
        await cancel_and_wait([waiter, consumer])
    return status.value, sorted(results, key=lambda r: [t.id for t in spec.tasks].index(r.task_id))
