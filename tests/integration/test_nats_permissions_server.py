"""The NATS permission model (images/nats/nats-server.conf, docs/security.md) on a real nats-server.

The server runs the shipped config as it is, over TLS, with the four roles' public keys made by
``swe-fleet nats keys``. Each role does its part with the code that does it in production, and
what a role may not do is refused by the server and reported by our client in one line that
names the subject and the credentials, exit 5, with nothing lost. The whole path (a producer's
request, the dispatcher, a council job reading its credentials on its node, a consumer) runs in
``test_a_dispatched_council_over_the_permission_model_leaks_no_secret``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from swe_fleet.dispatch.producer import request_council
from swe_fleet.dispatch.requests import decode_request
from swe_fleet.errors import DispatchTimeout, NatsPermissionDenied, OutboxWritten
from swe_fleet.events import COUNCIL_REQUESTS_STREAM
from swe_fleet.local.stack import NatsServer, RayHead
from swe_fleet.local.vllm_server import VLLMServer
from swe_fleet.nats.checkpoints import KVCheckpoints
from swe_fleet.nats.connection import close_nats, connect_nats, open_jetstream
from swe_fleet.nats.keys import ROLES, SERVER_ENV_FILE, inbox_prefix, seed_file
from swe_fleet.nats.outbox import read_outbox
from swe_fleet.nats.policy import PublishPolicy
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.spec import CouncilSpec, PublishSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import attempt_job_id
from swe_fleet.submit.wait import wait_until_terminal

from support.councils import assert_complete_council, consume_all, on_server_backend, propose_events

pytestmark = pytest.mark.integration

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")
CONFIG = Path(__file__).resolve().parents[2] / "images" / "nats" / "nats-server.conf"


@dataclass
class Model:
    """A nats-server running the shipped permission model, and each role's client variables."""

    server: NatsServer
    keys: Path
    ca: Path

    def env(self, role: str) -> dict[str, str]:
        return {
            "NATS_NKEY": str(seed_file(self.keys, role)),
            "NATS_INBOX_PREFIX": inbox_prefix(role),
            "NATS_CA": str(self.ca),
        }

    def seeds(self) -> list[str]:
        return [seed_file(self.keys, r).read_text().strip() for r in ROLES]

    @property
    def url(self) -> str:
        return self.server.url


def _server_env(keys: Path) -> dict[str, str]:
    """The roles' public keys, as ``swe-fleet nats keys`` wrote them for the server."""
    return dict(line.split("=", 1) for line in (keys / SERVER_ENV_FILE).read_text().splitlines())


def _start_model(workdir: Path) -> Model:
    import trustme

    keys = workdir / "keys"
    made = subprocess.run([SWE_FLEET, "nats", "keys", str(keys)], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {"ca": workdir / "ca.pem", "cert": workdir / "server.pem", "key": workdir / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    env = _server_env(keys) | {"NATS_TLS_CERT": str(files["cert"]), "NATS_TLS_KEY": str(files["key"])}
    server = NatsServer(workdir / "nats", args=["-c", str(CONFIG)], env=env).start()
    return Model(server, keys, files["ca"])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    m = _start_model(tmp_path_factory.mktemp("permissions"))
    try:
        yield m
    finally:
        m.server.stop()


@pytest.fixture
def as_role(monkeypatch: pytest.MonkeyPatch, model: Model) -> Any:
    """Switch this process's NATS_* variables to a role's."""

    def switch(role: str) -> None:
        for key in [k for k in os.environ if k.startswith("NATS_")]:
            monkeypatch.delenv(key)
        for key, value in model.env(role).items():
            monkeypatch.setenv(key, value)

    return switch


def _cli(model: Model, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    return subprocess.run(
        [SWE_FLEET, *args], env={**clean, **model.env(role)}, capture_output=True, text=True, timeout=120
    )


def test_the_shipped_config_is_valid_for_nats_server(model: Model) -> None:
    """``nats-server -t``: the config parses, every role's key is a user NKey (the server runs it)."""
    env = _server_env(model.keys) | {
        "NATS_TLS_CERT": "/nonexistent.pem",
        "NATS_TLS_KEY": "/nonexistent.key",
        "NATS_STORE_DIR": "/tmp",
    }
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "nats-server"), "-t", "-c", str(CONFIG)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    # -t loads the certificate too: a missing one is the only complaint, named by path.
    assert checked.returncode == 1 and "/nonexistent.pem" in checked.stderr, checked.stderr
    assert "nkey" not in checked.stderr.lower(), checked.stderr


def test_a_job_publishes_and_checkpoints_and_a_consumer_reads(model: Model, as_role: Any) -> None:
    """The job role stores a council's events and a checkpoint; the consumer role reads each event
    once with ``swe-fleet consume``."""
    as_role("job")
    events = propose_events("perm-job", 4)

    async def job() -> dict[str, Any] | None:
        publisher = await JetStreamPublisher.connect(PublishSpec(nats_url=model.url))
        try:
            await publisher.publish_all(events)
        finally:
            await publisher.close()
        nc = await connect_nats(model.url)
        try:
            store = await KVCheckpoints.open(nc.jetstream())
            await store.save("perm-job", {"phase": "propose"})
            return await store.load("perm-job")
        finally:
            await close_nats(nc)

    assert asyncio.run(job()) == {"phase": "propose"}
    read = _cli(model, "consumer", "consume", "--nats-url", model.url, "--submission-id", "perm-job",
                "--json", "--idle-timeout", "3")  # fmt: skip
    assert read.returncode == 0, read.stderr[-2000:]
    keys = [json.loads(line)["key"] for line in read.stdout.splitlines() if line.startswith("{")]
    assert sorted(keys) == sorted(e.key for e in events)


def test_a_producers_request_is_accepted_and_its_ticket_listens(model: Model, as_role: Any) -> None:
    """The dispatcher role creates both streams, as ``swe-fleet dispatch`` does at start; a
    producer publishes council.request and its ticket's consumers are allowed (nobody
    dispatches: it times out, as promised)."""
    as_role("dispatcher")
    from swe_fleet.events import (
        AGENT_RESPONSES_STREAM,
        AGENT_RESPONSES_SUBJECTS,
        COUNCIL_REQUESTS_SUBJECTS,
    )
    from swe_fleet.nats.streams import StreamRequirement

    async def dispatcher_sets_up() -> None:
        streams = [
            StreamRequirement(COUNCIL_REQUESTS_STREAM, COUNCIL_REQUESTS_SUBJECTS),
            StreamRequirement(AGENT_RESPONSES_STREAM, AGENT_RESPONSES_SUBJECTS),
        ]
        conn = await open_jetstream(model.url, streams=streams)
        await conn.close()

    asyncio.run(dispatcher_sets_up())
    as_role("producer")
    spec = CouncilSpec.from_file(Path(__file__).resolve().parents[1] / "data" / "tiny.yaml")

    async def produce() -> None:
        ticket = await request_council(spec, nats_url=model.url, timeout_s=2)
        await ticket

    with pytest.raises(DispatchTimeout):
        asyncio.run(produce())


def test_what_a_role_may_not_do_is_refused_and_named_and_nothing_is_lost(
    model: Model, as_role: Any, tmp_path: Path
) -> None:
    """A producer publishing agent.response.completed: refused by the server; the publisher
    reports NatsPermissionDenied naming the subject and the producer's key, and spools the
    events to the outbox. A consumer asking for a council (council.request) is refused the same
    way, and ``swe-fleet outbox replay`` as a consumer exits 5 in one line, no traceback."""
    as_role("producer")
    events = propose_events("perm-forged", 2)
    outbox = tmp_path / "outbox.jsonl"

    async def forge() -> None:
        publisher = await JetStreamPublisher.connect(PublishSpec(nats_url=model.url), outbox=outbox)
        try:
            await publisher.publish_all(events)
        finally:
            await publisher.close(drain=False)

    with pytest.raises(OutboxWritten) as written:
        asyncio.run(forge())
    denied = written.value.__cause__
    assert isinstance(denied, NatsPermissionDenied), repr(denied)
    assert denied.denied_subject == "agent.response.completed"
    assert "publish to agent.response.completed" in str(denied) and "producer.nk" in str(denied)
    assert sorted(e.key for e in read_outbox(outbox)) == sorted(e.key for e in events)

    as_role("consumer")
    spec = CouncilSpec.from_file(Path(__file__).resolve().parents[1] / "data" / "tiny.yaml")

    async def ask() -> None:
        await request_council(spec, nats_url=model.url, timeout_s=5)

    # request_council first looks at the requests stream, which a consumer may not even do.
    with pytest.raises(NatsPermissionDenied) as asked:
        asyncio.run(ask())
    assert asked.value.denied_subject == "$js.api.stream.info.council_requests", str(asked.value)
    assert "consumer.nk" in str(asked.value)

    async def publish_request() -> None:
        nc = await connect_nats(model.url)
        try:
            doc = {"request_id": "perm-r1", "spec": spec.model_dump(mode="json")}
            publisher = JetStreamPublisher(nc, COUNCIL_REQUESTS_STREAM, PublishPolicy(ack_timeout_s=2))
            await publisher.publish(decode_request(json.dumps(doc).encode()))
        finally:
            await close_nats(nc, drain=False)

    # The publish itself, as request_council makes it once set up: refused on council.request.
    with pytest.raises(NatsPermissionDenied) as published:
        asyncio.run(publish_request())
    assert published.value.denied_subject == "council.request" and "consumer.nk" in str(published.value)

    replay = _cli(model, "consumer", "outbox", "replay", str(outbox), "--nats-url", model.url)
    assert replay.returncode == 5, replay.stderr[-2000:]
    said = [line for line in replay.stderr.splitlines() if "error:" in line]
    assert len(said) == 1 and "permission to publish to agent.response.completed" in said[0], replay.stderr
    assert "Traceback" not in replay.stderr
    assert not any(seed in replay.stderr + str(denied) for seed in model.seeds())


async def _ledger(url: str) -> str:
    """The dispatcher's ledger records, read as the dispatcher reads them."""
    from swe_fleet.dispatch.ledger import Ledger

    nc = await connect_nats(url)
    try:
        records, _ = await (await Ledger.open(nc.jetstream(), timeout_s=10)).load()
        return repr(records)
    finally:
        await close_nats(nc)


async def _checkpoint(url: str, sid: str) -> str:
    """The job's last checkpoint, read as the job reads it."""
    nc = await connect_nats(url)
    try:
        return json.dumps(await (await KVCheckpoints.open(nc.jetstream())).load(sid))
    finally:
        await close_nats(nc)


def _scan(root: Path, needles: list[str]) -> list[str]:
    """Files under ``root`` (text logs) that contain any of ``needles``."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size < 50 * 1024**2:
            text = path.read_text(errors="replace")
            hits += [f"{path}: {n[:6]}..." for n in needles if n in text]
    return hits


@pytest.mark.llm
def test_a_dispatched_council_over_the_permission_model_leaks_no_secret(
    model: Model,
    as_role: Any,
    tmp_path: Path,
    vllm_server: VLLMServer,
    repo_root: Path,
) -> None:
    """The whole path, each hop with its own role over TLS: a producer's request_council, a real
    ``swe-fleet dispatch`` (dispatcher), a Ray head whose environment names the job's seed file
    and the CA (what a compose secret or a Kubernetes Secret mount gives a node), the council job
    it submits (job), and ``swe-fleet consume`` (consumer). Every planned slot arrives once, and
    no seed is anywhere: the job's entrypoint, runtime_env, metadata, message and logs (Jobs API),
    the events, the dispatcher's ledger and log, the job's checkpoint, the logs of the Ray head
    and of nats-server."""
    head = RayHead(tmp_path / "ray", num_cpus=1, env=model.env("job")).start()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "RAY_"))}
    dispatcher_log = tmp_path / "dispatcher.log"
    with dispatcher_log.open("wb") as log:
        dispatcher = subprocess.Popen(
            [SWE_FLEET, "dispatch", "--nats-url", model.url, "--address", head.dashboard_url,
             "--env", "image", "--poll", "0.5", "--json-logs"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**clean, **head.client_env(), **model.env("dispatcher")},
        )  # fmt: skip
    try:
        # The dispatcher owns the requests stream: a producer before it would be told to wait for it.
        deadline = time.monotonic() + 60
        while '"dispatch.started"' not in dispatcher_log.read_text():
            assert dispatcher.poll() is None and time.monotonic() < deadline, dispatcher_log.read_text()
            time.sleep(0.2)
        spec = on_server_backend(
            CouncilSpec.from_file(repo_root / "tests" / "data" / "tiny.yaml"), vllm_server.base_url
        )
        as_role("producer")

        async def produce() -> tuple[str, str, list[Any]]:
            ticket = await request_council(spec, nats_url=model.url, timeout_s=600)
            return ticket.request_id, ticket.submission_id, await ticket

        async def ask_again(request_id: str) -> tuple[bool, list[Any]]:
            ticket = await request_council(spec, nats_url=model.url, request_id=request_id, timeout_s=600)
            return ticket.done(), await ticket

        rid, sid, results = asyncio.run(produce())
        assert [r.task_id for r in results] == [t.id for t in spec.tasks]
        # The ticket resolves on the last result event; the job writes the results store after
        # it and completes it before it exits. Once the job has ended, the producer may read
        # it: asked again, the ticket is done at once.
        jobs = JobsApi(head.dashboard_url, auth_token=head.auth_token)
        job_id = attempt_job_id(sid, 0)
        ended = wait_until_terminal(jobs, job_id, timeout_s=120)
        assert ended.value == "SUCCEEDED", jobs.logs(job_id)[-3000:]
        assert asyncio.run(ask_again(rid)) == (True, results)
        as_role("consumer")
        events = [e for e in consume_all(model.url, None, sid) if e["event"] != "council.job.status"]
        assert_complete_council(events, spec)
        stored = _cli(model, "consumer", "result", sid, "--json", "--nats-url", model.url)
        assert stored.returncode == 0, stored.stderr[-2000:]
        assert json.loads(stored.stdout)["results"] == [r.model_dump(mode="json") for r in results]
        written = _cli(
            model, "consumer", "report", sid, "--md", str(tmp_path / "r.md"), "--nats-url", model.url
        )
        assert written.returncode == 0 and f"# Council {spec.name}: {sid}" in (tmp_path / "r.md").read_text()

        info = json.dumps(jobs.info(job_id).model_dump(mode="json"))
        job_logs = jobs.logs(job_id)
        assert "runtime_env" in info and sid in info
        as_role("dispatcher")
        ledger = asyncio.run(_ledger(model.url))
        as_role("job")
        checkpoints = asyncio.run(_checkpoint(model.url, sid))
    finally:
        dispatcher.terminate()
        dispatcher.wait(30)
        head.stop()
    seeds = model.seeds()
    texts = {
        "job info": info, "job logs": job_logs, "events": json.dumps(events),
        "ledger": ledger, "checkpoints": checkpoints, "dispatcher log": dispatcher_log.read_text(),
    }  # fmt: skip
    assert sid in texts["ledger"] and "submitted" in texts["dispatcher log"]
    assert [name for name, text in texts.items() if any(seed in text for seed in seeds)] == []
    assert str(model.keys) not in info  # the job does not even know where its seed is
    assert head.temp_dir is not None
    assert _scan(head.temp_dir / "session_latest" / "logs", seeds) == []
    assert _scan(model.server.workdir, seeds) == []


def test_roles_keep_to_their_own_inboxes_and_the_dispatchers_durable_and_delete_nothing(
    model: Model, as_role: Any
) -> None:
    """What the model closes besides publishing: a consumer may not subscribe to another role's
    inboxes (where pulled requests and API answers travel) nor to the default ones; a producer
    may not bind the dispatcher's durable (its requests would never be served) nor delete a
    consumer. The dispatcher may read the events stream by sequence, as it does to resolve a
    status it was about to publish when it stopped."""
    from swe_fleet.dispatch.config import DEFAULT_DURABLE
    from swe_fleet.dispatch.ledger import Ledger
    from swe_fleet.dispatch.status import StatusPublisher
    from swe_fleet.events import AGENT_RESPONSES_STREAM, COUNCIL_REQUEST, COUNCIL_REQUESTS_SUBJECTS
    from swe_fleet.nats.connection import permission_denial
    from swe_fleet.nats.streams import StreamRequirement

    async def denied_to(role: str, attempt: Any) -> list[str]:
        as_role(role)
        nc = await connect_nats(model.url)
        try:
            with contextlib.suppress(Exception):  # the attempt itself only times out
                await attempt(nc)
            await nc.flush(timeout=5)
            # The server's -ERR comes before its PONG, but nats-py hands it to the error callback
            # (where the denial is recorded) as a task of its own: give that task its turn.
            deadline = asyncio.get_running_loop().time() + 5
            while (denial := permission_denial(nc, model.url)) is None:
                if asyncio.get_running_loop().time() > deadline:
                    return []
                await asyncio.sleep(0.05)
            return [denial.denied_subject]
        finally:
            await close_nats(nc, drain=False)

    async def spy(nc: Any) -> None:
        await nc.subscribe("_INBOX_DISPATCHER.>")

    async def default_inbox(nc: Any) -> None:
        await nc.subscribe("_INBOX.>")

    async def hijack(nc: Any) -> None:
        await nc.jetstream(timeout=2).pull_subscribe(
            COUNCIL_REQUEST, durable=DEFAULT_DURABLE, stream=COUNCIL_REQUESTS_STREAM
        )

    async def delete(nc: Any) -> None:
        await nc.jetstream(timeout=2).delete_consumer(COUNCIL_REQUESTS_STREAM, DEFAULT_DURABLE)

    async def dispatcher_reads_by_sequence() -> bool:
        as_role("dispatcher")
        streams = [
            StreamRequirement(COUNCIL_REQUESTS_STREAM, COUNCIL_REQUESTS_SUBJECTS),
            StreamRequirement(AGENT_RESPONSES_STREAM),
        ]
        conn = await open_jetstream(model.url, streams=streams)
        try:
            ledger = await Ledger.open(conn.js, timeout_s=10)
            status = StatusPublisher(ledger, None, conn.js, AGENT_RESPONSES_STREAM, timeout_s=10)  # type: ignore[arg-type]
            return await status.stream_holds("council.job.succeeded", "no-such-key", 0)
        finally:
            await conn.close()

    assert asyncio.run(dispatcher_reads_by_sequence()) is False  # answered (nothing there), not denied
    assert asyncio.run(denied_to("consumer", spy)) == ["_inbox_dispatcher.>"]
    assert asyncio.run(denied_to("consumer", default_inbox)) == ["_inbox.>"]
    hijacked = asyncio.run(denied_to("producer", hijack))
    assert hijacked and DEFAULT_DURABLE in hijacked[0], hijacked
    deleted = asyncio.run(denied_to("producer", delete))
    assert deleted and deleted[0].startswith("$js.api.consumer.delete."), deleted
