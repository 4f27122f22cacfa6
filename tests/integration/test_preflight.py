"""`swe-fleet doctor` and the preflight before `submit`, against a real Ray head and real
nats-servers: the client's checks, and the preflight job on every node (the session head)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from swe_fleet._processes import free_port
from swe_fleet.local.stack import NatsServer, RayHead
from swe_fleet.preflight.cache import PreflightCache
from swe_fleet.preflight.job import node_expectations, run_preflight_job
from swe_fleet.preflight.node_check import parse_pins, parse_report
from swe_fleet.preflight.orchestration import ensure_preflight
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.request import CouncilSubmission
from swe_fleet.submit.runtime_env import staged_runtime_env

from support.councils import ray_job_submit

pytestmark = pytest.mark.integration

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")


def _doctor(
    spec: Path, address: str, nats_url: str, env: dict[str, str], *args: str
) -> tuple[int, dict[str, dict[str, str]]]:
    """Client-side rows by check name (add "--cluster" and "--env" for the node half)."""
    code, rows = _doctor_rows(spec, address, nats_url, env, *(args or ("--client-only",)))
    return code, {c["name"]: c for c in rows if c["node"] == "client"}


def _doctor_rows(
    spec: Path, address: str, nats_url: str, env: dict[str, str], *args: str
) -> tuple[int, list[dict[str, str]]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run(
        [SWE_FLEET, "doctor", str(spec), "--address", address, "--nats-url", nats_url, "--json", *args],
        capture_output=True, text=True, timeout=300, env={**clean, **env},
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def test_doctor_passes_on_a_healthy_stack(
    ray_head: RayHead, nats_server: NatsServer, repo_root: Path
) -> None:
    """Dashboard, version, token, NATS and stream all pass: exit 0."""
    code, rows = _doctor(
        repo_root / "examples" / "council.yaml", ray_head.dashboard_url, nats_server.url,
        {"RAY_AUTH_TOKEN": ray_head.auth_token},
    )  # fmt: skip
    assert code == 0, rows
    statuses = {n: r["status"] for n, r in rows.items()}
    assert statuses == dict.fromkeys(("dashboard", "ray-version", "auth", "nats", "stream"), "ok") | {
        "llm-server": "skip"
    }


def test_doctor_names_the_missing_token_and_unreachable_nats(ray_head: RayHead, repo_root: Path) -> None:
    """No token for a token cluster, and no NATS: exit 8, each failure with its fix."""
    dead_nats = f"nats://127.0.0.1:{free_port()}"
    code, rows = _doctor(repo_root / "examples" / "council.yaml", ray_head.dashboard_url, dead_nats, {})
    assert code == 8
    assert rows["auth"]["status"] == "FAIL" and "RAY_AUTH_TOKEN" in rows["auth"]["fix"]
    assert rows["nats"]["status"] == "FAIL" and dead_nats in rows["nats"]["detail"]
    assert rows["stream"]["status"] == "skip"


def test_doctor_reports_an_unfit_stream(ray_head: RayHead, nats_server: NatsServer, repo_root: Path) -> None:
    """A memory-storage stream of the same name is reported with what differs."""
    import asyncio

    import nats

    async def make_bad_stream() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().add_stream(
            name="AGENT_RESPONSES", subjects=["agent.response.>"], storage="memory"
        )
        await nc.close()

    asyncio.run(make_bad_stream())
    code, rows = _doctor(
        repo_root / "examples" / "council.yaml", ray_head.dashboard_url, nats_server.url,
        {"RAY_AUTH_TOKEN": ray_head.auth_token},
    )  # fmt: skip
    assert code == 8
    assert rows["stream"]["status"] == "FAIL" and "memory" in rows["stream"]["detail"]


# ---- the cluster half: one task per node, in the council's runtime_env --------------------------


def _token_env(head: RayHead, tmp_path: Path) -> dict[str, str]:
    return {"RAY_AUTH_TOKEN": head.auth_token, "SWE_FLEET_CACHE": str(tmp_path / "cache")}


def test_doctor_checks_every_node_in_the_runtime_env(
    ray_head: RayHead, nats_server: NatsServer, repo_root: Path, tmp_path: Path
) -> None:
    """--env image on the session head (this virtualenv is its "image"): every pinned module at
    its version, swe-fleet, NATS from the node, disk: exit 0, rows named by the node."""
    code, rows = _doctor_rows(
        repo_root / "tests" / "data" / "tiny.yaml", ray_head.dashboard_url, nats_server.url,
        _token_env(ray_head, tmp_path), "--env", "image",
    )  # fmt: skip
    assert code == 0, rows
    node_rows = {r["name"]: r for r in rows if r["node"].startswith("127.0.0.1 (head ")}
    pins = parse_pins((repo_root / "images" / "requirements-worker.txt").read_text())
    for pin in pins:
        assert node_rows[f"module {pin.module}"]["status"] == "ok"
        assert node_rows[f"module {pin.module}"]["detail"] == f"{pin.dist} {pin.version}"
    names = ("swe-fleet", "nats", "disk", "gpu", "llm-server", "model")
    assert {n: node_rows[n]["status"] for n in names} == {
        "swe-fleet": "ok", "nats": "ok", "disk": "ok", "gpu": "skip", "llm-server": "skip", "model": "ok",
    }  # fmt: skip
    assert len({r["node_id"] for r in node_rows.values()}) == 1


def test_doctor_names_a_model_the_nodes_do_not_have(
    ray_head: RayHead, nats_server: NatsServer, repo_root: Path, tmp_path: Path
) -> None:
    """model.name a folder no node has: doctor exits 8 with one failure, `model` on the head,
    naming the path and the fix (before, the job failed after its engine died)."""
    missing = tmp_path / "no-such-model"
    spec = tmp_path / "missing-model.yaml"
    spec.write_text((repo_root / "tests" / "data" / "tiny.yaml").read_text().replace(
        "name: smollm2-135m", f"name: {missing}"))  # fmt: skip
    code, rows = _doctor_rows(spec, ray_head.dashboard_url, nats_server.url, _token_env(ray_head, tmp_path),
                              "--env", "image")  # fmt: skip
    assert code == 8, rows
    failures = [(r["node"].split(" ")[0], r["name"]) for r in rows if r["status"] == "FAIL"]
    assert failures == [("127.0.0.1", "model")], rows
    (row,) = [r for r in rows if r["name"] == "model"]
    assert str(missing) in row["detail"] and "config.json" in row["detail"] and "every node" in row["fix"]


def test_submit_refuses_when_a_node_cannot_reach_nats(
    ray_head: RayHead, repo_root: Path, tmp_path: Path
) -> None:
    """NATS unreachable from the node: submit exits 8 naming the node, `nats` and the fix, and
    submits nothing. The preflight job ran in the very runtime_env the council job gets."""
    dead_nats = f"nats://127.0.0.1:{free_port()}"
    spec_path = repo_root / "tests" / "data" / "tiny.yaml"
    env = {**os.environ, **ray_head.client_env(), **_token_env(ray_head, tmp_path)}
    argv = [sys.executable, str(repo_root / "scripts" / "submit_council.py"), str(spec_path),
            "--address", ray_head.dashboard_url, "--nats-url", dead_nats, "--env", "image"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 8, proc.stderr[-3000:]
    assert "127.0.0.1 (head " in proc.stderr and ": nats: " in proc.stderr and dead_nats in proc.stderr
    assert "--nats-url" in proc.stderr  # the fix
    assert not proc.stdout.strip()

    client = JobsApi(ray_head.dashboard_url, auth_token=ray_head.auth_token)
    request = CouncilSubmission(spec=CouncilSpec.from_file(spec_path), env_kind="image", nats_url=dead_nats)
    jobs = {j.submission_id: j for j in client.list_jobs()}  # Ray's submission_id: our job ids
    assert request.derived_submission_id() not in jobs
    # The same request, submitted anyway: the council job's runtime_env is the preflight's.
    forced = subprocess.run([*argv, "--skip-preflight", "--no-wait"], capture_output=True, text=True,
                            timeout=120, env=env)  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-3000:]
    council = client.info(forced.stdout.strip().splitlines()[-1])
    preflight = [
        j for j in client.list_jobs()
        if (j.metadata or {}).get("swe_fleet_preflight") and dead_nats in j.entrypoint
    ]  # fmt: skip
    assert len(preflight) == 1 and preflight[0].status.value == "FAILED"  # a failing one is kept
    assert preflight[0].runtime_env == council.runtime_env


def test_a_runtime_env_that_cannot_be_built_is_reported_for_the_drivers_node(
    ray_head: RayHead, nats_server: NatsServer, repo_root: Path
) -> None:
    """A runtime_env Ray cannot set up fails the preflight job before it reports: one
    `runtime-env` row on the head (where the driver runs), with Ray's error."""
    client = JobsApi(ray_head.dashboard_url, auth_token=ray_head.auth_token)
    request = CouncilSubmission(
        spec=CouncilSpec.from_file(repo_root / "tests" / "data" / "tiny.yaml"),
        env_kind="image",
        nats_url=nats_server.url,
    )
    with staged_runtime_env(request, repo_root) as runtime_env:
        runtime_env["conda"] = "swe-fleet-no-such-env"  # no conda here: set-up fails at once
        checks = run_preflight_job(
            client, request, runtime_env, node_expectations(request, root=repo_root), timeout_s=120
        )
    assert [(c.name, c.status) for c in checks] == [("runtime-env", "FAIL")]
    assert checks[0].node.startswith("127.0.0.1 (head ") and "Conda" in checks[0].detail
    assert "pip" in checks[0].fix


def test_a_passing_preflight_is_cached_for_the_next_submission(
    ray_head: RayHead, nats_server: NatsServer, repo_root: Path, tmp_path: Path
) -> None:
    """The second preflight of the same cluster and runtime_env is answered from the cache: no
    second preflight job."""
    client = JobsApi(ray_head.dashboard_url, auth_token=ray_head.auth_token)
    request = CouncilSubmission(
        spec=CouncilSpec.from_file(repo_root / "tests" / "data" / "tiny.yaml"),
        env_kind="image",
        nats_url=nats_server.url,
    )
    cache = PreflightCache(tmp_path / "preflight")
    submitted_jobs: list[str] = []
    submit_job = client.submit_job

    def counting_submit_job(**kwargs: Any) -> None:
        submitted_jobs.append(kwargs["job_id"])
        submit_job(**kwargs)

    client.submit_job = counting_submit_job  # type: ignore[method-assign]
    with staged_runtime_env(request, repo_root) as runtime_env:
        first = ensure_preflight(client, request, runtime_env, root=repo_root, cache=cache)
        assert first and not any(c.failed for c in first)
    with staged_runtime_env(request, repo_root) as runtime_env:  # a fresh staging, same content
        assert ensure_preflight(client, request, runtime_env, root=repo_root, cache=cache) == []
    assert len(submitted_jobs) == 1
    assert submitted_jobs[0] not in {j.submission_id for j in client.list_jobs()}  # passed: deleted


def test_plain_ray_job_submit_of_the_preflight_from_the_runtime_env_comments_works(
    repo_root: Path, ray_head: RayHead, nats_server: NatsServer
) -> None:
    """`ray job submit --runtime-env runtime_envs/image.yaml -- python jobs/preflight.py --pins
    images/requirements-worker.txt --nats-url URL` (no swe-fleet client involved) checks the node
    and prints the report line."""
    code, output = ray_job_submit(
        repo_root, ray_head, "runtime_envs/image.yaml",
        ["python", "jobs/preflight.py", "--pins", "images/requirements-worker.txt",
         "--nats-url", nats_server.url],
        timeout_s=300,
    )  # fmt: skip
    assert code == 0, output[-3000:]
    report = parse_report(output)
    assert report is not None, output[-3000:]
    names = {c["name"] for c in report["checks"] if c["status"] == "ok"}
    assert {"module nats", "module yaml", "swe-fleet", "nats", "disk"} <= names
