"""The dispatcher service's pure parts: how long a failed request waits before it comes back."""

from __future__ import annotations

from swe_fleet.dispatch.service import retry_delay_s


def test_retry_delays_grow_and_are_capped() -> None:
    """A request that keeps failing to submit comes back less and less often, at most every minute."""
    delays = [retry_delay_s(n) for n in range(1, 10)]
    assert delays == sorted(delays) and delays[0] == 2.0 and delays[-1] == 60.0


def test_a_request_whose_council_cannot_fit_its_model_is_invalid() -> None:
    """The dispatcher applies submit's token budget check: such a request is dead-lettered with
    the field and the limit, never started as a job that can only fail."""
    import pytest

    from swe_fleet.dispatch.service import fits_its_model
    from swe_fleet.errors import InvalidRequest
    from swe_fleet.spec import CouncilSpec

    doc = {
        "tasks": [{"id": "t", "prompt": "x"}],
        "agents": [{"id": "a", "role": "a"}, {"id": "b", "role": "b"}],
    }
    with pytest.raises(InvalidRequest) as info:
        fits_its_model(
            CouncilSpec.from_dict({**doc, "model": {"max_tokens": 4096, "max_model_len": 2048}}), "r1"
        )
    assert info.value.request_id == "r1"
    assert "request r1: model.max_tokens: 4096 output tokens" in info.value.reason
    fits_its_model(CouncilSpec.from_dict(doc), "r2")  # the defaults fit
