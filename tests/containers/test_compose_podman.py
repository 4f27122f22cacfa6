"""The baked image built and the compose topology run for real, with podman, reached from the host.

``make test-containers`` runs this module (it installs podman, runc, debootstrap and
podman-compose first). One module-scoped stack, in order: the images are built
(tests/support/podman.py: Debian base, local Ray base, Dockerfile.ray-swe-fleet, NATS), then
images/compose.yaml + compose.cpu.yaml + compose.podman.yaml come up as a project of this run's
own (a Ray head, a Ray worker, NATS with TLS and the role keys), published on the host's loopback.
From the host, as a user would: the health checks, ``swe-fleet doctor`` on both nodes, a council
submitted with ``--env image`` (its engine runs inside a container), ``swe-fleet consume`` reading
every event once, and the original failure (a GCS address from outside). The last test takes the
project down and finds nothing of it left.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from swe_fleet._processes import free_ports, start_process
from swe_fleet.nats.keys import SERVER_ENV_FILE, inbox_prefix, seed_file
from swe_fleet.spec import CouncilSpec

from support.councils import assert_complete_council
from support.podman import (
    COMPOSE_FILES,
    NATS_IMAGE,
    NODE_IMAGE,
    ComposeStack,
    Podman,
    StepFailed,
    build_all,
    build_debian_base,
    build_image,
    image_size,
    missing_tools,
    require_tools,
)

pytestmark = [pytest.mark.containers, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")
MODEL_OVERRIDE = Path(__file__).with_name("compose.model.yaml")
SPEC = REPO / "tests" / "data" / "tiny.yaml"
#: The cluster reaches NATS by its compose service name; the host by its published port.
CLUSTER_NATS_URL = "tls://nats:4222"
JOB_TIMEOUT_S = 900


@dataclass
class Stack:
    compose: ComposeStack
    workdir: Path
    keys: Path
    secrets: Path
    token: str
    ports: dict[str, int]
    times: dict[str, float]

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    @property
    def host_nats_url(self) -> str:
        return f"tls://127.0.0.1:{self.ports['nats']}"

    def client_env(self, role: str) -> dict[str, str]:
        """A host client's environment: the cluster token, NATS's CA and ``role``'s NKey."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "NATS_", "SWE_FLEET_"))}
        return {
            **base,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "NATS_CA": str(self.secrets / "nats_ca"),
            "NATS_NKEY": str(seed_file(self.keys, role)),
            "NATS_INBOX_PREFIX": inbox_prefix(role),
            "SWE_FLEET_CACHE": str(self.workdir / "client-cache"),
            "COLUMNS": "250",
        }

    def cli(self, role: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SWE_FLEET, *args], env=self.client_env(role), capture_output=True, text=True, timeout=timeout
        )


def _timed(times: dict[str, float], step: str, started: float) -> None:
    times[step] = round(time.monotonic() - started, 1)
    print(f"[containers] {step}: {times[step]:.1f} s", flush=True)


def _write_secrets(workdir: Path) -> tuple[Path, Path, str]:
    """The role keys (``swe-fleet nats keys``), NATS's TLS files and the cluster token, as the
    compose secrets' files: a 0700 folder, each file readable by uid 1000 (the images' user)."""
    import trustme

    keys = workdir / "keys"
    made = subprocess.run([SWE_FLEET, "nats", "keys", str(keys)], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    folder = workdir / "secrets"
    folder.mkdir(mode=0o700)
    ca = trustme.CA()
    cert = ca.issue_cert("nats", "localhost", "127.0.0.1")
    token = secrets.token_hex(32)
    files = {
        "nats_ca": ca.cert_pem.bytes(),
        "nats_tls_cert": cert.cert_chain_pems[0].bytes(),
        "nats_tls_key": cert.private_key_pem.bytes(),
        "ray_auth_token": token.encode(),
        "nats_job_nkey": seed_file(keys, "job").read_bytes(),
    }
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        os.chown(path, 1000, 1000)
        path.chmod(0o400)
    return keys, folder, token


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, prepared_model: Path) -> Iterator[Stack]:
    require_tools()
    workdir = tmp_path_factory.mktemp("containers")
    podman = Podman(workdir)
    times = {k: round(v, 1) for k, v in build_all(podman).items()}
    for step, seconds in times.items():
        print(f"[containers] {step}: {seconds:.1f} s", flush=True)
    keys, folder, token = _write_secrets(workdir)
    ports = dict(zip(("dashboard", "client", "nats"), free_ports(3), strict=True))
    env = {
        "SWE_FLEET_SECRETS_DIR": str(folder),
        "SWE_FLEET_IMAGE": NODE_IMAGE,
        "SWE_FLEET_NATS_IMAGE": NATS_IMAGE,
        "SWE_FLEET_MODEL_DIR": str(prepared_model),
        "SWE_FLEET_PUBLISH_IP": "127.0.0.1",
        "SWE_FLEET_DASHBOARD_HOST_PORT": str(ports["dashboard"]),
        "SWE_FLEET_CLIENT_HOST_PORT": str(ports["client"]),
        "SWE_FLEET_NATS_HOST_PORT": str(ports["nats"]),
    }
    compose = ComposeStack(
        podman=podman,
        podman_compose=os.environ.get("SWE_FLEET_PODMAN_COMPOSE", "podman-compose"),
        project=f"swftest{secrets.token_hex(3)}",
        files=[*COMPOSE_FILES, MODEL_OVERRIDE],
        env=env,
        env_file=keys / SERVER_ENV_FILE,
    )
    started = time.monotonic()
    try:
        compose.up()
        compose.wait_healthy(["ray-head", "ray-gpu-worker", "nats"])
        _timed(times, "compose up (healthy)", started)
        yield Stack(compose, workdir, keys, folder, token, ports, times)
    finally:
        if any(compose.leftovers().values()):
            compose.down()


def test_the_nodes_and_nats_report_healthy_by_their_own_checks_and_nodes_run_as_uid_1000(
    stack: Stack,
) -> None:
    """Each container's health check (the image's and compose's) reports healthy; the Ray
    nodes run as uid 1000; only 8265 and 10001 (and NATS's 4222) are published, on loopback."""
    assert stack.compose.health() == {"ray-head": "healthy", "ray-gpu-worker": "healthy", "nats": "healthy"}
    podman = stack.compose.podman
    names = stack.compose.containers()
    for service in ("ray-head", "ray-gpu-worker"):
        assert podman.output(["exec", names[service], "id", "-u"]).strip() == "1000"
    published = {
        service: sorted(podman.output(["port", name]).split("\n")) for service, name in names.items()
    }
    ports = stack.ports
    head = [f"10001/tcp -> 127.0.0.1:{ports['client']}", f"8265/tcp -> 127.0.0.1:{ports['dashboard']}"]
    assert [p for p in published["ray-head"] if p] == sorted(head)
    assert [p for p in published["ray-gpu-worker"] if p] == []
    assert [p for p in published["nats"] if p] == [f"4222/tcp -> 127.0.0.1:{stack.ports['nats']}"]
    print(f"[containers] image {NODE_IMAGE}: {image_size(podman, NODE_IMAGE) / 1e9:.2f} GB", flush=True)


def test_doctor_from_the_host_passes_on_both_nodes(stack: Stack) -> None:
    """``swe-fleet doctor --env image`` through the published Jobs API: every check passes (or is
    skipped) on the head and on the worker, and NATS answers each node at its compose name."""
    started = time.monotonic()
    proc = stack.cli(
        "producer", "doctor", str(SPEC), "--address", stack.dashboard_url, "--nats-url", CLUSTER_NATS_URL,
        "--client-nats-url", stack.host_nats_url, "--env", "image", "--json", timeout=600,
    )  # fmt: skip
    _timed(stack.times, "doctor", started)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert not [r for r in rows if r["status"] not in ("ok", "skip")], rows
    nodes = {r["node"] for r in rows if r["name"] == "nats"} - {"client"}
    assert len(nodes) == 2 and any("head" in n for n in nodes), nodes
    client_nats = next(r for r in rows if r["name"] == "nats" and r["node"] == "client")
    assert stack.host_nats_url in client_nats["detail"], client_nats


def test_a_council_runs_in_the_containers_and_the_host_reads_every_event_once(stack: Stack) -> None:
    """``swe-fleet submit --env image`` from the host: the job (engine backend: vLLM inside a
    container) succeeds; ``swe-fleet consume`` on the host reads every planned slot exactly once."""
    sid = f"ct-{secrets.token_hex(4)}"
    started = time.monotonic()
    proc = stack.cli(
        "producer", "submit", str(SPEC), "--address", stack.dashboard_url, "--nats-url", CLUSTER_NATS_URL,
        "--client-nats-url", stack.host_nats_url, "--env", "image", "--submission-id", sid,
        "--timeout", str(JOB_TIMEOUT_S), "--logs", timeout=JOB_TIMEOUT_S + 60,
    )  # fmt: skip
    _timed(stack.times, "council", started)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The engine ran on a node of the compose network (the containers' addresses), not the host.
    done = next(
        json.loads(line[line.index("{") :])
        for line in reversed(proc.stdout.splitlines() + proc.stderr.splitlines())
        if '"council.done"' in line and "{" in line
    )
    assert done["backend"] == "engine" and done["llm_calls"] > 0, done
    consumed = stack.cli(
        "consumer", "consume", "--nats-url", stack.host_nats_url, "--submission-id", sid, "--json",
        "--idle-timeout", "3", timeout=120,
    )  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr[-2000:]
    events = [json.loads(line) for line in consumed.stdout.splitlines() if line.strip()]
    assert_complete_council(events, CouncilSpec.from_file(SPEC))
    keys = [e["key"] for e in events]
    assert len(keys) == len(set(keys))
    counts: dict[str, int] = {}
    for e in events:
        counts[e["event"]] = counts.get(e["event"], 0) + 1
    print(f"[containers] events read on the host: {len(events)} {counts}", flush=True)


def test_a_gcs_address_from_the_host_fails_and_doctor_names_the_address_to_use(
    stack: Stack, tmp_path: Path
) -> None:
    """The original failure: ``ray.init("localhost:6379")`` on the host never reaches the
    cluster (6379 is not published); ``swe-fleet doctor`` given that address refuses it and names
    the Jobs API URL to use instead."""
    script = "import ray; ray.init('localhost:6379'); print('CONNECTED', flush=True)"
    proc = start_process("ray-init-gcs", [sys.executable, "-c", script], tmp_path / "ray-init.log",
                         stack.client_env("consumer"))  # fmt: skip
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.alive():
            if "Failed to connect to GCS" in proc.log_path.read_text(errors="replace"):
                break
            time.sleep(0.5)
    finally:
        proc.stop(timeout_s=5)
    output = proc.log_path.read_text(errors="replace")
    assert "CONNECTED" not in output
    assert "Failed to connect to GCS at address localhost:6379" in output or (
        "Failed to connect to GCS" in output
    ), output[-2000:]
    refused = stack.cli("consumer", "doctor", str(SPEC), "--address", "localhost:6379", timeout=60)
    assert refused.returncode != 0
    said = refused.stderr + refused.stdout
    assert "GCS address" in said and "http://localhost:8265" in said, said[-2000:]


def test_down_removes_the_projects_containers_network_and_volume_and_nothing_else(stack: Stack) -> None:
    """``compose down -v`` of this project: none of its containers, networks or volumes remain;
    the images built (and whatever else podman holds) stay."""
    podman = stack.compose.podman
    others = set(podman.output(["ps", "-a", "-q"]).split()) - {
        podman.output(["inspect", "--format", "{{.Id}}", n]).strip()[:12]
        for n in stack.compose.containers().values()
    }
    started = time.monotonic()
    stack.compose.down()
    _timed(stack.times, "teardown", started)
    assert stack.compose.leftovers() == {"container": [], "volume": [], "network": []}
    assert set(podman.output(["ps", "-a", "-q"]).split()) == others
    assert podman.image_exists(NODE_IMAGE) and podman.image_exists(NATS_IMAGE)
    print(f"[containers] times: {json.dumps(stack.times)}", flush=True)


# ---- bad input: one clear error naming the step and its log, nothing left running -----------------


def test_a_missing_podman_names_the_packages_to_install(tmp_path: Path) -> None:
    """Without podman (a PATH that lacks it), the first step fails naming what to install."""
    assert missing_tools(str(tmp_path)) == ["debootstrap", "podman", "runc"]
    with pytest.raises(StepFailed, match=r"'tools' failed: .*apt-get install -y debootstrap podman runc"):
        require_tools(str(tmp_path))


def test_a_failing_base_build_names_the_step_and_its_log(tmp_path: Path) -> None:
    """debootstrap from a mirror that does not answer: StepFailed names ``debian`` and its log
    (which holds debootstrap's own error); no image and no container is left."""
    podman = Podman(tmp_path / "work")
    before = podman.output(["ps", "-a", "-q"])
    with pytest.raises(StepFailed) as failed:
        build_debian_base(podman, mirror="http://127.0.0.1:9/debian", cache=tmp_path / "cache",
                          image="localhost/swe-fleet-test-broken:base")  # fmt: skip
    assert failed.value.step == "debian" and failed.value.log == podman.log_path("debian")
    assert str(podman.log_path("debian")) in str(failed.value)
    assert "debootstrap" in podman.log_path("debian").read_text()
    assert not podman.image_exists("localhost/swe-fleet-test-broken:base")
    assert podman.output(["ps", "-a", "-q"]) == before


def test_a_failing_image_build_names_the_step_and_its_log(tmp_path: Path) -> None:
    """Dockerfile.ray-swe-fleet on a base that does not exist: StepFailed names ``image`` and its
    log; nothing is tagged, nothing left running."""
    podman = Podman(tmp_path / "work")
    before = podman.output(["ps", "-a", "-q"])
    with pytest.raises(StepFailed) as failed:
        build_image(
            podman, "image", "localhost/swe-fleet-test-broken:image", REPO / "Dockerfile.ray-swe-fleet",
            build_args={"BASE_IMAGE": "localhost/swe-fleet-no-such-base:0"},
        )  # fmt: skip
    assert failed.value.step == "image" and "exited" in str(failed.value)
    assert "no-such-base" in podman.log_path("image").read_text()
    assert not podman.image_exists("localhost/swe-fleet-test-broken:image")
    assert podman.output(["ps", "-a", "-q"]) == before
