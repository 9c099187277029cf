"""Causal scopes and tokens (SPEC section 4), without servers: encoding, merging, trust."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from multidb import Registry, causal
from multidb.causal import CausalScope, Position, covers, decode, encode, parse_gtids, parse_lsn


def lsn(value: int, written_at: float | None = None) -> Position:
    return Position("lsn", value, time.time() if written_at is None else written_at)


def gtid(text: str, written_at: float | None = None) -> Position:
    parsed = parse_gtids(text)
    assert parsed is not None
    return Position("gtid", parsed, time.time() if written_at is None else written_at)


def test_wal_positions_parse_and_print_as_postgresql_writes_them() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert causal.format_lsn((0x16 << 32) | 0xB374D848) == "16/B374D848"
    assert parse_lsn("not/an lsn") is None
    assert parse_lsn("1/2/3") is None


def test_gtid_lists_keep_the_highest_sequence_per_domain() -> None:
    assert parse_gtids("0-1-5,1-2-7,0-3-9") == ((0, 3, 9), (1, 2, 7))
    assert parse_gtids("") == ()
    assert parse_gtids("0-1") is None


def test_a_replica_covers_a_position_only_when_it_has_applied_every_domain() -> None:
    assert covers(lsn(100), lsn(100))
    assert not covers(lsn(99), lsn(100))
    assert covers(gtid("0-1-9,1-1-3"), gtid("0-1-9"))
    assert not covers(gtid("0-1-8,1-1-3"), gtid("0-1-9"))
    assert not covers(gtid("0-1-9"), gtid("0-1-9,1-1-1"))
    assert not covers(None, lsn(1))
    assert not covers(lsn(10**9), Position("primary", None, time.time()))


def test_token_round_trips_positions_and_is_cookie_safe_and_short() -> None:
    now = time.time()
    positions = {
        "main": lsn(0x16B374D848, now),
        "orders": gtid("0-1-42,1-2-7", now),
        "reports": Position("primary", None, now),
        "billing-eu": lsn(2**63, now),
    }
    token = encode(positions)
    assert len(token) <= 200, token
    assert all(c.isalnum() or c in "._~-" for c in token), token
    back = decode(token)
    assert {db: (p.kind, p.value) for db, p in back.items()} == {
        db: (p.kind, p.value) for db, p in positions.items()
    }
    assert all(0 <= p.written_at - now <= 1 for p in back.values())


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "2.main~l~10~1",
        "1.",
        "1.main~l~zz~1",
        "1.main~x~10~1",
        "1.main~g~0-1~1",
        "1.ma in~l~10~1",
        "1.main~l~10~1.",
        "1.main~l~10~1" + ".x~l~1~1" * 1000,
        "1.mäin~l~10~1",
        "1.main~l~10~1\x00",
        "1.main~l~10~" + "9" * 40,
        "1.main~g~0-1-" + "9" * 30 + "~1",
        b"\xff\xfe",
    ],
)
def test_malformed_huge_or_non_ascii_tokens_name_nothing_and_warn(
    token: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="multidb.causal"):
        assert decode(token) == {}
    assert "ignored a malformed token" in caplog.text


def test_a_write_time_ahead_of_this_clock_counts_from_now_so_a_forged_token_expires() -> None:
    forged = "1.main~l~ffffffffffffffff~99999999999"
    (position,) = decode(forged).values()
    assert position.written_at <= time.time()
    scope = CausalScope(decode(forged))
    assert scope.position("main", ttl=60) is not None
    assert scope.position("main", ttl=60, now=time.time() + 61) is None


def test_nested_scopes_merge_the_later_position_and_give_writes_back_on_exit() -> None:
    outer_token = encode({"main": lsn(200), "orders": gtid("0-1-5")})
    inner_token = encode({"main": lsn(100), "orders": gtid("0-1-9,1-1-1")})
    with causal.open_scope(outer_token) as outer:
        with causal.open_scope(inner_token) as inner:
            assert inner.positions()["main"].value == 200
            assert inner.positions()["orders"].value == ((0, 1, 9), (1, 1, 1))
            inner.record("reports", lsn(7))
            assert causal.current() is inner
        assert causal.current() is outer
        assert outer.positions()["reports"].value == 7
        assert outer.wrote
    assert causal.current() is None


def test_each_thread_has_its_own_scope() -> None:
    causal.ensure().record("main", lsn(5))
    seen: list[CausalScope | None] = []
    thread = threading.Thread(target=lambda: seen.append(causal.current()))
    thread.start()
    thread.join()
    assert seen == [None]


def test_each_asyncio_task_has_its_own_scope_and_a_child_task_shares_its_parents() -> None:
    async def request(n: int) -> tuple[CausalScope, CausalScope]:
        with causal.open_scope() as scope:
            scope.record("main", lsn(n))

            async def child() -> CausalScope:
                current = causal.current()
                assert current is not None
                return current

            return scope, await asyncio.create_task(child())

    async def main() -> list[tuple[CausalScope, CausalScope]]:
        return list(await asyncio.gather(request(1), request(2)))

    (a, a_child), (b, b_child) = asyncio.run(main())
    assert a is a_child and b is b_child and a is not b
    assert a.positions()["main"].value == 1 and b.positions()["main"].value == 2


def test_use_role_sets_the_role_of_sessions_that_name_none(tmp_path: Path) -> None:
    config = {
        "databases": {
            "main": {
                "primary": f"sqlite:///{tmp_path}/main.db",
                "replicas": {"a": f"sqlite:///file:{tmp_path}/main.db?mode=ro&uri=true"},
            }
        }
    }
    with Registry.from_dict(config) as dbs:
        with dbs.session("main") as s:
            s.execute(text("CREATE TABLE t (id int)"))
        with causal.use_role("read"), dbs.session("main") as s:
            assert type(s).__name__ == "ReadSession"
        with causal.use_role("read"), dbs.session("main", role="write") as s:
            assert type(s).__name__ == "Session"  # an explicit role wins
        with dbs.session("main") as s:
            assert type(s).__name__ == "Session"


def test_sqlite_writes_mark_the_scope_as_written_but_record_no_position(tmp_path: Path) -> None:
    config = {
        "databases": {
            "main": {
                "primary": f"sqlite:///{tmp_path}/main.db",
                "replicas": {"a": f"sqlite:///file:{tmp_path}/main.db?mode=ro&uri=true"},
            }
        }
    }
    with Registry.from_dict(config) as dbs, dbs.causal() as scope:
        with dbs.session("main", role="write") as s:
            s.execute(text("SELECT 1"))
        assert not scope.wrote
        with dbs.session("main", role="write") as s:
            s.execute(text("CREATE TABLE t (id int)"))
        assert scope.wrote
        assert dbs.causal_token() is None


def test_causal_token_leaves_out_expired_positions(tmp_path: Path) -> None:
    config = {
        "databases": {
            "main": {"url": f"sqlite:///{tmp_path}/m.db", "routing": {"causal_ttl_seconds": 5}}
        }
    }
    with Registry.from_dict(config) as dbs:
        fresh = encode({"main": lsn(1)})
        stale = encode({"main": lsn(1, time.time() - 10)})
        with dbs.causal(fresh):
            assert dbs.causal_token() is not None
        with dbs.causal(stale):
            assert dbs.causal_token() is None
        with dbs.causal(encode({"elsewhere": lsn(1)})):
            assert dbs.causal_token() is None  # not a database of this registry
