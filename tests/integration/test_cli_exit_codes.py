"""CLI exit codes are a contract: each outcome, through a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from swe_fleet._processes import free_port
from swe_fleet.local.stack import NatsServer, RayHead
from swe_fleet.local.vllm_server import VLLMServer
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.submission import submit_council

from support.councils import on_server_backend, propose_events

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")


def _run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWE_FLEET, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_invalid_spec_exits_3_naming_file_and_field(tmp_path: Path) -> None:
    """A spec without tasks: exit 3, the file and field named, nothing contacted."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents: [{id: a, role: x}, {id: b, role: y}]\n")
    proc = _run(["submit", str(bad), "--address", f"http://127.0.0.1:{free_port()}"])
    assert proc.returncode == 3
    assert str(bad) in proc.stderr and "tasks" in proc.stderr


@pytest.mark.parametrize("command", ["submit", "run", "doctor"])
def test_a_spec_whose_budget_cannot_fit_exits_3_before_anything_starts(tmp_path: Path, command: str) -> None:
    """model.max_tokens beyond the model's context (model.max_model_len): refused naming the field
    and the limit, exit 3, before a cluster is contacted or a process started."""
    spec = tmp_path / "too-long.yaml"
    spec.write_text(
        "tasks: [{id: t1, prompt: do it}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n"
        "model: {max_tokens: 4096, max_model_len: 2048}\n"
    )
    extra = [] if command == "run" else ["--address", f"http://127.0.0.1:{free_port()}"]
    proc = _run([command, str(spec), *extra], timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"{spec}: model.max_tokens: 4096 output tokens" in proc.stderr
    assert "context of 2048 tokens (model.max_model_len)" in proc.stderr
    assert "local.started" not in proc.stderr  # `run` started nothing


def test_run_with_a_model_this_host_does_not_have_exits_3_before_anything_starts(tmp_path: Path) -> None:
    """`run` is its own node: a model folder that is not there is refused up front (exit 3,
    model.name and the path named), no stack started. On a cluster the preflight says it per node
    (exit 8: tests/integration/test_preflight.py)."""
    spec = tmp_path / "missing-model.yaml"
    spec.write_text(
        "tasks: [{id: t1, prompt: do it}]\nagents: [{id: a, role: x}, {id: b, role: y}]\n"
        f"model: {{name: {tmp_path / 'no-such-model'}}}\n"
    )
    proc = _run(["run", str(spec)], timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"{spec}: model.name: " in proc.stderr and str(tmp_path / "no-such-model") in proc.stderr
    assert "local.started" not in proc.stderr


def test_unreadable_spec_exits_3(tmp_path: Path) -> None:
    """A missing spec file: exit 3, naming it."""
    proc = _run(["run", str(tmp_path / "missing.yaml")])
    assert proc.returncode == 3
    assert "missing.yaml" in proc.stderr


def test_ray_client_address_for_jobs_api_exits_3(repo_root: Path) -> None:
    """ray:// given to submit: exit 3 and the http:// address to use instead."""
    proc = _run(
        [
            "submit",
            str(repo_root / "examples" / "council.yaml"),
            "--address",
            "ray://127.0.0.1:10001",
        ]
    )
    assert proc.returncode == 3
    assert "http://127.0.0.1:8265" in proc.stderr


@pytest.mark.parametrize("command", ["submit", "doctor"])
def test_ray_client_address_in_ray_address_exits_3_naming_the_variable(
    command: str, repo_root: Path, clean_env: None
) -> None:
    """RAY_ADDRESS=ray://... (no --address): refused like --address ray://..., naming the
    variable and the http:// address to use; it is never turned into http://HOST:8265 silently."""
    proc = _run(
        [command, str(repo_root / "examples" / "council.yaml")], env={"RAY_ADDRESS": "ray://127.0.0.1:10001"}
    )
    assert proc.returncode == 3, proc.stderr
    assert "RAY_ADDRESS='ray://127.0.0.1:10001'" in proc.stderr
    assert "http://127.0.0.1:8265" in proc.stderr and "did not answer" not in proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("token", [None, "0" * 64], ids=["missing-token", "wrong-token"])
def test_a_refused_token_exits_5_naming_the_dashboard_and_the_fix(
    token: str | None, ray_head: RayHead, repo_root: Path, tmp_path: Path, clean_env: None
) -> None:
    """The cluster refuses the request (no token, or the wrong one): exit 5, "unreachable or
    unauthorised", naming the dashboard and the variable to set; not 1 ("job FAILED"): no job
    exists. (HOME is empty: no ~/.ray/auth_token to fall back on.)"""
    env = {"HOME": str(tmp_path), "RAY_AUTH_MODE": "token"} | ({"RAY_AUTH_TOKEN": token} if token else {})
    proc = _run(
        ["submit", str(repo_root / "examples" / "council.yaml"), "--address", ray_head.dashboard_url], env=env
    )
    assert proc.returncode == 5, proc.stderr
    assert ray_head.dashboard_url in proc.stderr and "refused" in proc.stderr
    assert "RAY_AUTH_TOKEN" in proc.stderr


def test_unreachable_dashboard_exits_5_quickly(repo_root: Path) -> None:
    """Nobody on the dashboard port: exit 5 within the bound, naming the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = _run(
        [
            "submit",
            str(repo_root / "examples" / "council.yaml"),
            "--address",
            url,
            "--request-timeout",
            "3",
        ]
    )
    assert proc.returncode == 5, proc.stderr
    assert url in proc.stderr
    assert time.monotonic() - started < 60


def test_unreachable_nats_consume_exits_5(tmp_path: Path) -> None:
    """consume against a closed port: exit 5 naming the NATS URL."""
    url = f"nats://127.0.0.1:{free_port()}"
    proc = _run(["consume", "--nats-url", url, "--idle-timeout", "1"])
    assert proc.returncode == 5
    assert url in proc.stderr


@pytest.mark.integration
def test_consume_json_prints_each_event_once(nats_server: NatsServer) -> None:
    """consume --json prints one JSON line per event and exits 0 when idle."""
    import asyncio

    from swe_fleet.nats.publisher import JetStreamPublisher
    from swe_fleet.spec import PublishSpec

    async def publish() -> None:
        pub = await JetStreamPublisher.connect(PublishSpec(nats_url=nats_server.url))
        await pub.publish_all(propose_events("s", 3))
        await pub.close()

    asyncio.run(publish())
    proc = _run(["consume", "--nats-url", nats_server.url, "--json", "--idle-timeout", "2"])
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3
    # Each line carries the key consumers deduplicate by (the Nats-Msg-Id it was published with).
    assert sorted(line["key"] for line in lines) == sorted(e.key for e in propose_events("s", 3))
    again = _run(["consume", "--nats-url", nats_server.url, "--json", "--idle-timeout", "2"])
    assert again.returncode == 0 and not again.stdout.strip()  # the durable consumer acked them


def _consume(url: str, submission_id: str) -> list[Any]:
    import asyncio

    from swe_fleet.nats.consumer import ConsumerOptions, iter_events

    async def go() -> list[Any]:
        opts = ConsumerOptions(nats_url=url, durable=None, idle_timeout_s=3, submission_id=submission_id)
        return [e async for e in iter_events(opts)]

    return asyncio.run(go())


@pytest.mark.integration
@pytest.mark.llm
@pytest.mark.slow
class TestJobOutcomes:
    """Exit codes that follow a real job's terminal state on the session cluster."""

    @pytest.mark.engine  # its job starts an engine (on a model that does not exist)
    def test_failed_job_exits_1(
        self, council_cluster: RayHead, session_nats: NatsServer, tmp_path: Path, repo_root: Path
    ) -> None:
        """A model folder that does not exist fails the job: submit exits 1 and says why (the
        job's one-line council.job.failed reason) and what to do next; every event's reason is
        one line, the traceback stays in the job log."""
        spec = (
            (repo_root / "tests" / "data" / "tiny.yaml")
            .read_text()
            .replace("name: smollm2-135m", f"name: {tmp_path / 'no-such-model'}")
        )
        path = tmp_path / "broken-model.yaml"
        path.write_text(spec)
        proc = _run(
            [
                "submit",
                str(path),
                "--address",
                council_cluster.dashboard_url,
                "--nats-url",
                session_nats.url,
                "--timeout",
                "600",
                "--skip-preflight",  # the model check would refuse it (exit 8): this is about the job
            ],
            env=council_cluster.client_env(),
            timeout=700,
        )
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "FAILED" in proc.stderr
        said = [line for line in proc.stderr.splitlines() if line.startswith("job ") and " FAILED: " in line]
        assert said and "vLLM engine failed to start" in said[-1] and "no-such-model" in said[-1], proc.stderr
        assert "next: the same command with --retry-failed" in proc.stderr
        # Not silence: every proposal has its failed event and every task its result.
        sid = proc.stdout.strip().splitlines()[-1]
        events = _consume(session_nats.url, sid)
        failed = [e for e in events if e.event == "agent.response.failed"]
        # Every planned slot (2 tasks x 2 agents x propose, critique, revise, vote) failed once:
        # the proposals because the backend is unavailable, the rest having nothing to work on.
        assert len(failed) == 16 and len({e.key for e in failed}) == 16
        proposals = [e for e in failed if e.phase == "propose"]  # type: ignore[union-attr]
        assert len(proposals) == 4 and all("unavailable" in e.reason for e in proposals)  # type: ignore[union-attr]
        assert all(e.reason.startswith("nothing to ") for e in failed if e not in proposals)  # type: ignore[union-attr]
        job_failed = [e for e in events if e.event == "council.job.failed"]
        assert len(job_failed) == 1 and "vLLM engine failed to start" in job_failed[0].reason  # type: ignore[union-attr]
        reasons = [e.reason for e in failed + job_failed]  # type: ignore[union-attr]
        assert all("\n" not in r and len(r) <= 400 and "Traceback" not in r for r in reasons), reasons
        results = [e for e in events if e.event == "council.deliberation.completed"]
        assert sorted((e.task_id, e.outcome, e.reason) for e in results) == [  # type: ignore[union-attr]
            ("add", "failed", "no proposal: every agent's proposal failed"),
            ("rev", "failed", "no proposal: every agent's proposal failed"),
        ]

    def test_stopped_job_exits_4(
        self,
        council_cluster: RayHead,
        session_nats: NatsServer,
        vllm_server: VLLMServer,
        tmp_path: Path,
        repo_root: Path,
    ) -> None:
        """A job stopped while running: following it exits 4 (and resubmission found the same job).

        Stopped once RUNNING: a job stopped while still PENDING is marked STOPPED by Ray, yet its
        driver may start and run the whole council anyway."""
        spec = on_server_backend(
            CouncilSpec.from_file(repo_root / "tests" / "data" / "tiny.yaml"), vllm_server.base_url
        )
        path = tmp_path / "tiny-server.yaml"
        path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        head = council_cluster
        jobs = JobsApi(head.dashboard_url, auth_token=head.auth_token)
        done = submit_council(
            jobs,
            CouncilSubmission(
                spec=CouncilSpec.from_file(path), nats_url=session_nats.url, submission_id="stop-me"
            ),
        )
        deadline = time.monotonic() + 120
        while (state := jobs.status(done.job_id).value) == "PENDING":
            assert time.monotonic() < deadline, "the job never left PENDING"
            time.sleep(0.2)
        assert state == "RUNNING", jobs.logs(done.job_id)[-2000:]
        jobs.stop(done.job_id)
        proc = _run(
            [
                "submit",
                str(path),
                "--address",
                head.dashboard_url,
                "--nats-url",
                session_nats.url,
                "--submission-id",
                "stop-me",
            ],
            env=head.client_env(),
        )
        assert proc.returncode == 4, proc.stderr[-2000:]
        assert "already submitted" in proc.stderr

    def test_a_council_without_an_outcome_exits_1_naming_the_tasks(
        self,
        council_cluster: RayHead,
        session_nats: NatsServer,
        vllm_server: VLLMServer,
        tmp_path: Path,
        repo_root: Path,
    ) -> None:
        """Every request refused by the server (max_tokens beyond the model's context, submitted
        past the token budget check with --skip-preflight): every slot has its failed event, no
        task has an outcome, the job FAILED and submit exits 1 naming both tasks and why (never
        SUCCEEDED with exit 0)."""
        spec = on_server_backend(
            CouncilSpec.from_file(repo_root / "tests" / "data" / "tiny.yaml"),
            vllm_server.base_url,
            max_tokens=100_000,
        )
        path = tmp_path / "too-long.yaml"
        path.write_text(yaml.safe_dump({**spec.model_dump(mode="json"), "name": "no-outcome"}))
        proc = _run(
            ["submit", str(path), "--address", council_cluster.dashboard_url, "--nats-url", session_nats.url,
             "--timeout", "600", "--skip-preflight"],  # the token budget check would refuse it: exit 3
            env=council_cluster.client_env(),
            timeout=700,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr[-2000:]
        said = [line for line in proc.stderr.splitlines() if line.startswith("job ") and " FAILED: " in line]
        assert said, proc.stderr[-2000:]
        assert "no outcome for 2 of 2 tasks: add: no proposal" in said[-1] and "rev: no proposal" in said[-1]
        sid = proc.stdout.strip().splitlines()[-1]
        events = _consume(session_nats.url, sid)
        failed = [e for e in events if e.event == "agent.response.failed"]
        assert len(failed) == 16 and len({e.key for e in failed}) == 16
        results = [e for e in events if e.event == "council.deliberation.completed"]
        assert sorted((e.task_id, e.outcome) for e in results) == [("add", "failed"), ("rev", "failed")]  # type: ignore[union-attr]
