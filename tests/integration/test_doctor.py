"""`swe-fleet doctor` (client side) against a real Ray head and real nats-servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swe_fleet.local import NatsServer, RayHead, free_port

pytestmark = pytest.mark.integration

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")


def _doctor(
    spec: Path, address: str, nats_url: str, env: dict[str, str]
) -> tuple[int, dict[str, dict[str, str]]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run(
        [SWE_FLEET, "doctor", str(spec), "--address", address, "--nats-url", nats_url, "--json"],
        capture_output=True, text=True, timeout=120, env={**clean, **env},
    )  # fmt: skip
    rows = {c["name"]: c for c in json.loads(proc.stdout)}
    return proc.returncode, rows


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
