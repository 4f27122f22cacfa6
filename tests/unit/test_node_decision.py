"""The node entrypoint's decision (head, worker, wait), its ray start argv and env, as pure functions."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from swe_fleet.errors import NoHeadFound
from swe_fleet.node.config import NodeConfig, same_host
from swe_fleet.node.decision import (
    NodeAction,
    ProbeResult,
    decide,
    masked_env,
    wait_for_decision,
)


class FakeProbe:
    """Answers 'live' for the given addresses; records every probe."""

    def __init__(self, live: Iterable[str] = ()) -> None:
        self.live = set(live)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> ProbeResult:
        address = f"{host}:{port}"
        self.calls.append(address)
        ok = address in self.live
        return ProbeResult(host, port, live=ok, detail="GCS port open" if ok else "Connection refused")


def config(hostname: str = "node-a", **env: str) -> NodeConfig:
    return NodeConfig.from_env(env, hostname=hostname)


def test_head_address_makes_a_worker_that_joins_it_with_the_default_gcs_port() -> None:
    """HEAD_ADDRESS without a port: a worker whose ray start joins host:6379, no head flags."""
    d = decide(config(HEAD_ADDRESS="ray-head"), FakeProbe(["ray-head:6379"]))
    assert d.action is NodeAction.WORKER
    assert d.argv[:5] == ("ray", "start", "--block", "--address", "ray-head:6379")
    assert "--head" not in d.argv and "--dashboard-host" not in d.argv
    assert d.env == {"SWE_FLEET_ROLE": "worker", "RAY_ADDRESS": None}
    assert d.clients is not None
    assert (d.clients.dashboard_url, d.clients.client_url) == ("http://ray-head:8265", "ray://ray-head:10001")


def test_head_address_wins_over_the_whitelist_and_says_so() -> None:
    """HEAD_ADDRESS and SWE_FLEET_HEAD_HOSTS both set: HEAD_ADDRESS decides, the reasons say so."""
    probe = FakeProbe(["h:7000"])
    d = decide(config("node-a", HEAD_ADDRESS="h:7000", SWE_FLEET_HEAD_HOSTS="node-a"), probe)
    assert d.action is NodeAction.WORKER and d.head == "h:7000"
    assert any("ignored" in r for r in d.reasons)
    assert probe.calls == ["h:7000"]


def test_unreachable_head_address_means_wait_with_the_command_ready() -> None:
    """Nothing answers on HEAD_ADDRESS yet: wait, naming the address, with the worker argv ready."""
    d = decide(config(HEAD_ADDRESS="10.0.0.9:6380"), FakeProbe())
    assert d.action is NodeAction.WAIT
    assert "--address" in d.argv and "10.0.0.9:6380" in d.argv
    assert "10.0.0.9:6380" in d.reasons[-1] and "Connection refused" in d.reasons[-1]


def test_listed_host_without_a_live_head_becomes_head_on_the_configured_ports() -> None:
    """First in SWE_FLEET_HEAD_HOSTS, no head anywhere: head with GCS, dashboard on 0.0.0.0 and
    the client server port from RAY_PORT / RAY_DASHBOARD_PORT / RAY_CLIENT_PORT."""
    probe = FakeProbe()
    d = decide(
        config(
            "head-0",
            SWE_FLEET_HEAD_HOSTS="head-0,head-1",
            RAY_PORT="7379",
            RAY_DASHBOARD_PORT="9265",
            RAY_CLIENT_PORT="11001",
        ),
        probe,
    )
    assert d.action is NodeAction.HEAD
    argv = list(d.argv)
    assert argv[:4] == ["ray", "start", "--head", "--block"]
    for flag, value in [
        ("--port", "7379"),
        ("--dashboard-host", "0.0.0.0"),
        ("--dashboard-port", "9265"),
        ("--ray-client-server-port", "11001"),
    ]:
        assert argv[argv.index(flag) + 1] == value
    assert probe.calls == ["head-1:7379"]  # never itself
    assert d.env == {"SWE_FLEET_ROLE": "head", "RAY_ADDRESS": None}
    assert d.clients is not None and d.clients.client_url == "ray://head-0:11001"


def test_listed_host_joins_a_live_head_on_another_listed_host() -> None:
    """Listed, but another listed host already runs a head: this one joins it as a worker."""
    d = decide(config("head-0", SWE_FLEET_HEAD_HOSTS="head-0,head-1"), FakeProbe(["head-1:6379"]))
    assert d.action is NodeAction.WORKER and d.head == "head-1:6379"


def test_unlisted_host_joins_the_first_live_head_in_list_order() -> None:
    """Not listed: probes the listed hosts in order and joins the first that answers."""
    probe = FakeProbe(["b:6379", "c:6379"])
    d = decide(config("w-1", SWE_FLEET_HEAD_HOSTS="a,b,c"), probe)
    assert d.action is NodeAction.WORKER and d.head == "b:6379"
    assert probe.calls == ["a:6379", "b:6379"]


def test_unlisted_host_without_a_live_head_waits_naming_the_hosts_probed() -> None:
    """Not listed and no head: wait; the reasons name every host probed and why it is not one."""
    d = decide(config("w-1", SWE_FLEET_HEAD_HOSTS="a,b:7000"), FakeProbe())
    assert d.action is NodeAction.WAIT and d.argv == ()
    text = " ".join(d.reasons)
    assert "a:6379 (Connection refused)" in text and "b:7000" in text
    assert "not in SWE_FLEET_HEAD_HOSTS" in text


def test_second_listed_host_claims_the_head_only_after_its_delay() -> None:
    """Position 1 in the list: waits one claim delay without a head before becoming head."""
    cfg = config("head-1", SWE_FLEET_HEAD_HOSTS="head-0,head-1", SWE_FLEET_HEAD_CLAIM_DELAY_S="30")
    assert decide(cfg, FakeProbe(), waited_s=29).action is NodeAction.WAIT
    assert decide(cfg, FakeProbe(), waited_s=30).action is NodeAction.HEAD


def test_short_and_fully_qualified_names_match_but_ips_must_be_equal() -> None:
    """ray-head matches ray-head.ns.svc.cluster.local; 10.0.0.1 does not match 10.0.0.12."""
    assert same_host("ray-head", "ray-head.swe.svc.cluster.local")
    assert same_host("RAY-HEAD.", "ray-head")
    assert not same_host("ray-head.a", "ray-head.b")
    assert not same_host("10.0.0.1", "10.0.0.12") and not same_host("10.0.0.1", "10")
    cfg = config("ray-head", SWE_FLEET_HEAD_HOSTS="ray-head.swe.svc.cluster.local")
    assert decide(cfg, FakeProbe()).action is NodeAction.HEAD


def test_hostname_variable_overrides_the_machine_name() -> None:
    """SWE_FLEET_HOSTNAME is the name looked up in the list (containers sharing a hostname)."""
    cfg = config("machine", SWE_FLEET_HEAD_HOSTS="10.1.0.1", SWE_FLEET_HOSTNAME="10.1.0.1")
    assert decide(cfg, FakeProbe()).action is NodeAction.HEAD


def test_resources_memory_ip_and_temp_dir_reach_ray_start_only_when_set() -> None:
    """SWE_FLEET_NUM_CPUS/GPUS/MEMORY/OBJECT_STORE_MEMORY/RESOURCES/NODE_IP/TEMP_DIR become flags;
    unset, Ray detects them (no flag)."""
    bare = decide(config(HEAD_ADDRESS="h"), FakeProbe(["h:6379"]))
    assert not {"--num-cpus", "--num-gpus", "--memory", "--resources", "--node-ip-address"} & set(bare.argv)
    d = decide(
        config(
            HEAD_ADDRESS="h",
            SWE_FLEET_NUM_CPUS="4",
            SWE_FLEET_NUM_GPUS="1",
            SWE_FLEET_MEMORY="1000",
            SWE_FLEET_OBJECT_STORE_MEMORY="500",
            SWE_FLEET_RESOURCES='{"engine": 2}',
            SWE_FLEET_NODE_IP="10.0.0.5",
            SWE_FLEET_TEMP_DIR="/tmp/r",
        ),
        FakeProbe(["h:6379"]),
    )
    argv = list(d.argv)
    expected = {
        "--num-cpus": "4", "--num-gpus": "1", "--memory": "1000", "--object-store-memory": "500",
        "--resources": '{"engine": 2.0}', "--node-ip-address": "10.0.0.5", "--temp-dir": "/tmp/r",
    }  # fmt: skip
    assert {flag: argv[argv.index(flag) + 1] for flag in expected} == expected


def test_ray_host_sets_the_address_clients_are_told() -> None:
    """RAY_HOST is the head's host for clients (e.g. a load balancer's name)."""
    d = decide(config("head-0", SWE_FLEET_HEAD_HOSTS="head-0", RAY_HOST="ray.example"), FakeProbe())
    assert d.clients is not None and d.clients.dashboard_url == "http://ray.example:8265"
    assert any("never head-0:6379" in line for line in d.describe())


def test_token_values_are_masked_in_what_is_shown() -> None:
    """The auth token never appears in logs or dry runs; other values do."""
    assert masked_env({"RAY_AUTH_TOKEN": "s3cret", "SWE_FLEET_ROLE": "head"}) == {
        "RAY_AUTH_TOKEN": "(set)",
        "SWE_FLEET_ROLE": "head",
    }
    d = decide(config(HEAD_ADDRESS="h", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="s3cret"), FakeProbe())
    assert "s3cret" not in str(d.as_dict()) and "token auth on" in d.auth


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_waiting_worker_joins_the_head_once_it_answers() -> None:
    """No head at first, one after two polls: the wait returns the worker decision."""
    clock = FakeClock()
    probe = FakeProbe()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 2:
            probe.live.add("a:6379")

    d = wait_for_decision(config("w", SWE_FLEET_HEAD_HOSTS="a"), probe, clock=clock, sleep=sleep, poll_s=2)
    assert d.action is NodeAction.WORKER and clock.sleeps == [2, 2]


def test_waiting_is_bounded_and_the_error_names_the_hosts_probed() -> None:
    """No head within SWE_FLEET_HEAD_WAIT_S: NoHeadFound with the hosts; no sleep past the bound."""
    clock = FakeClock()
    cfg = config("w", SWE_FLEET_HEAD_HOSTS="a,b", SWE_FLEET_HEAD_WAIT_S="5")
    with pytest.raises(NoHeadFound) as info:
        wait_for_decision(cfg, FakeProbe(), clock=clock, sleep=clock.sleep, poll_s=2)
    assert info.value.hosts == ("a:6379", "b:6379")
    assert "a:6379" in str(info.value) and "SWE_FLEET_HEAD_WAIT_S" in str(info.value)
    assert clock.sleeps == [2, 2, 1] and info.value.waited_s == 5


def test_second_listed_host_becomes_head_after_its_claim_delay_while_waiting() -> None:
    """Position 1, claim delay 4 s, no head appears: the wait ends with a head decision at 4 s."""
    clock = FakeClock()
    cfg = config("h1", SWE_FLEET_HEAD_HOSTS="h0,h1", SWE_FLEET_HEAD_CLAIM_DELAY_S="4")
    d = wait_for_decision(cfg, FakeProbe(), clock=clock, sleep=clock.sleep, poll_s=2)
    assert d.action is NodeAction.HEAD and clock.now == 4
