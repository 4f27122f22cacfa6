"""Fair admission to an engine's running batch: turns between councils, bounds per council."""

from __future__ import annotations

import pytest

from swe_fleet.llm.admission import FairAdmission


def test_alone_a_council_fills_the_engine_up_to_its_capacity() -> None:
    adm: FairAdmission[int] = FairAdmission(capacity=4)
    adm.add("a", range(6))
    assert adm.admit() == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]
    assert adm.admit() == [] and adm.waiting_by_client() == {"a": 2}
    adm.finished("a", 2)
    assert adm.admit() == [("a", 4), ("a", 5)] and adm.running == 4


def test_a_latecomer_takes_every_other_free_place_from_a_council_that_came_first() -> None:
    """Council a fills the engine with 100 requests; b comes with 3: as places free up, b and a
    alternate, so b is not served after a's whole backlog."""
    adm: FairAdmission[int] = FairAdmission(capacity=2)
    adm.add("a", range(100))
    assert [c for c, _ in adm.admit()] == ["a", "a"]
    adm.add("b", [10, 11, 12])
    adm.finished("a", 2)
    assert adm.admit() == [("a", 2), ("b", 10)]
    adm.finished("a")
    adm.finished("b")
    assert adm.admit() == [("a", 3), ("b", 11)]


def test_a_council_at_its_bound_waits_while_the_others_go_on() -> None:
    adm: FairAdmission[str] = FairAdmission(capacity=10)
    adm.add("big", [f"x{i}" for i in range(8)], limit=3)
    adm.add("small", ["y0", "y1"], limit=3)
    admitted = adm.admit()
    assert sorted(admitted) == sorted(
        [("big", "x0"), ("big", "x1"), ("big", "x2"), ("small", "y0"), ("small", "y1")]
    )
    assert adm.running_by_client() == {"big": 3, "small": 2} and adm.admit() == []
    adm.finished("big")
    assert adm.admit() == [("big", "x3")]
    adm.finished("small", 2)  # done: its bound is forgotten, not kept for ever
    assert "small" not in adm._limits and adm._limits == {"big": 3}


def test_withdrawn_and_drained_items_never_run() -> None:
    adm: FairAdmission[tuple[str, int]] = FairAdmission(capacity=1)
    adm.add("a", [("call1", 0), ("call2", 0), ("call1", 1)])
    assert adm.admit() == [("a", ("call1", 0))]
    assert adm.withdraw("a", lambda item: item[0] == "call1") == 1
    assert adm.waiting_by_client() == {"a": 1}
    adm.add("b", [("call3", 0)])
    assert sorted(adm.drain()) == [("call2", 0), ("call3", 0)] and adm.waiting_by_client() == {}


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        FairAdmission(capacity=0)
