"""The router's rotation rules that need no server: the lag bound, unanswered probes, positions.

A fake clock drives the router, so the bound is checked at exact instants.
"""

from __future__ import annotations

import logging

import pytest

from multidb.config import from_dict
from multidb.probes import covers
from multidb.router import Router


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def router(clock: Clock, **routing: object) -> Router:
    config = from_dict(
        {
            "databases": {
                "db": {
                    "primary": "sqlite:///p.db",
                    "replicas": {"a": "sqlite:///a.db"},
                    "routing": routing,
                }
            }
        }
    )
    return Router(config.databases["db"], clock=clock)


def test_max_lag_is_last_measured_lag_plus_its_age(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    r = router(clock, max_lag_seconds=1)
    assert r.choose() is None  # not trusted before its first probe
    r.report_lag("db.a", 0.3, measured_at=clock.now)
    clock.now += 0.7  # 0.3 + 0.7 = 1.0: still within
    assert r.choose() == "db.a"
    caplog.set_level(logging.INFO, logger="multidb.routing")
    clock.now += 0.01  # past the bound between two probes
    assert r.choose() is None
    assert r.lag_bound("db.a") == pytest.approx(1.01)
    assert r.stats()[1].lag_ejections == 1
    assert any(
        rec.levelno == logging.WARNING and "db.a left out" in rec.getMessage()
        for rec in caplog.records
    )
    r.report_lag("db.a", 0.0, measured_at=clock.now)
    assert r.choose() == "db.a"
    assert r.stats()[1].lag_ejections == 1


def test_unknown_lag_leaves_a_replica_out_only_with_max_lag() -> None:
    clock = Clock()
    checked, unchecked = router(clock, max_lag_seconds=5), router(clock)
    for r in (checked, unchecked):
        r.report_lag("db.a", None)
    assert checked.choose() is None
    assert unchecked.choose() == "db.a"


def test_a_replica_that_does_not_answer_is_out_until_a_probe_gets_an_answer() -> None:
    clock = Clock()
    r = router(clock, cooldown_seconds=0)
    r.report_unreachable("db.a", "no answer within 1.0s")
    clock.now += 3600
    assert r.choose() is None
    assert "does not answer" in r.why_none()
    r.report_lag("db.a", 0.0, "0/3000120")
    assert r.choose() == "db.a"
    assert r.applied("db.a") == "0/3000120"
    assert r.stats()[1].error_ejections == 1


def test_write_and_pinned_sessions_are_counted_with_routed_ones() -> None:
    r = router(Clock())
    r.note_session("db.primary")
    r.note_session("db.a")
    r.choose()
    rows = {row.name: row.sessions for row in r.stats()}
    assert rows == {"db.primary": 1, "db.a": 2}


@pytest.mark.parametrize(
    ("dialect", "applied", "position", "expected"),
    [
        ("postgresql", "0/3000120", "0/3000120", True),
        ("postgresql", "0/3000120", "0/3000121", False),
        ("postgresql", "1/0", "0/FFFFFFFF", True),
        ("mariadb", "0-1-57", "0-1-57", True),
        ("mariadb", "0-1-56", "0-1-57", False),
        ("mariadb", "0-1-57,1-2-9", "1-2-9", True),
        ("mariadb", "0-1-57", "0-1-57,1-2-9", False),
        ("mariadb", "0-1-57", "", True),
        ("postgresql", "garbage", "0/1", None),
        ("sqlite", "x", "y", None),
    ],
)
def test_covers_compares_positions_per_backend(
    dialect: str, applied: str, position: str, expected: bool | None
) -> None:
    assert covers(dialect, applied, position) is expected
