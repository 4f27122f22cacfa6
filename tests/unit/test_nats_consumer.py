"""The consumer's options as pure logic: redelivery backoff, the JetStream consumer config, and
how it rides out an outage."""

from __future__ import annotations

import pytest
from nats.js import api

from swe_fleet.errors import ConfigError
from swe_fleet.nats.consumer import ConsumerOptions, redelivery_backoff


def test_redelivery_backoff_doubles_from_ack_wait_up_to_the_cap() -> None:
    """One wait per delivery, starting at ack_wait, doubling, capped."""
    assert redelivery_backoff(30, 5) == [30, 60, 120, 240, 480]
    assert redelivery_backoff(1, 4, cap_s=3) == [1, 2, 3, 3]


def test_consumer_config_carries_backoff_and_max_deliver() -> None:
    """JetStream gets explicit acks, the backoff list (first = ack wait) and max_deliver."""
    cfg = ConsumerOptions(nats_url="nats://x:1", ack_wait_s=2, max_deliver=3).consumer_config()
    assert cfg.ack_policy == api.AckPolicy.EXPLICIT
    assert cfg.backoff == [2, 4, 8] and cfg.ack_wait == 2 and cfg.max_deliver == 3


def test_backoff_longer_than_max_deliver_is_refused() -> None:
    """JetStream rejects more backoff steps than deliveries; so do the options, up front."""
    with pytest.raises(ConfigError, match="max_deliver=2") as info:
        ConsumerOptions(nats_url="nats://x:1", max_deliver=2, backoff_s=(1, 5, 15))
    assert info.value.setting == "backoff_s"
    assert ConsumerOptions(nats_url="nats://x:1", max_deliver=3, backoff_s=(1, 5, 15)).redelivery_waits() == [
        1,
        5,
        15,
    ]


def test_the_consumer_reopens_what_nats_closed_and_binds_a_refusing_consumer_anew() -> None:
    """Its outage policy: growing waits up to 2 s within outage_budget_s; a closed connection is
    opened again and a consumer refusing three times in a row is bound anew (which creates it)."""
    policy = ConsumerOptions(nats_url="nats://x:1", outage_budget_s=42).outage_policy()
    assert policy.budget_s == 42 and policy.reopen_when_closed and policy.reopen_after == 3
    assert [policy.wait_s(n) for n in (0, 1, 5)] == [0.1, 0.2, 2.0]
