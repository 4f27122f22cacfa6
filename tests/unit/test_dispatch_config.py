"""The dispatcher's configuration: the request consumer it creates, its outage policy, its bounds."""

from __future__ import annotations

import nats.errors
import pytest

from swe_fleet.dispatch.config import DispatcherConfig
from swe_fleet.errors import ConfigError


def test_the_request_consumer_never_drops_a_request_itself() -> None:
    """max_deliver is unlimited (the dispatcher dead-letters, with the payload); acks are explicit."""
    cfg = DispatcherConfig(nats_url="nats://x:1", dashboard_url="http://x:2", ack_wait_s=7)
    c = cfg.consumer_config()
    assert c.max_deliver == -1 and c.ack_wait == 7 and c.filter_subject == "council.request"
    with pytest.raises(ConfigError, match="max_in_flight"):
        DispatcherConfig(nats_url="nats://x:1", dashboard_url="http://x:2", max_in_flight=0)


def test_the_dispatcher_rides_out_any_nats_refusal_for_its_budget_and_never_rebinds_its_durable() -> None:
    """A fetch a second for outage_budget_s, whatever NATS answers; a closed connection ends it;
    the durable is never bound anew (a new one would deliver the stream's whole history)."""
    policy = DispatcherConfig(
        nats_url="nats://x:1", dashboard_url="http://x:2", outage_budget_s=30
    ).outage_policy()
    assert policy.budget_s == 30 and {policy.wait_s(n) for n in range(5)} == {1.0}
    assert nats.errors.Error in policy.errors
    assert not policy.reopen_when_closed and policy.reopen_after is None
    assert policy.gives_up(0, closed=True) == "closed"
