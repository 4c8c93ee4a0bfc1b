"""The pool's pure choice policy: modem choice, SIM rates, local-day quotas."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.modem_pool.policy import Candidate, DailyCount, TokenBucket, choose, local_day

OPERATORS = ("cmcc", "cucc", "ctcc")
SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")

candidates = st.lists(
    st.builds(
        Candidate,
        name=st.text("abcdefgh", min_size=1, max_size=3),
        operators=st.frozensets(st.sampled_from(OPERATORS), min_size=1),
        healthy=st.booleans(),
        load=st.integers(0, 4),
        quota_room=st.integers(-2, 5),
        token_wait=st.sampled_from([0.0, 0.5, 1.0, 5.0, 10.0]),
    ),
    max_size=8,
    unique_by=lambda c: c.name,
)


def eligible(c: Candidate, operator: str, parts: int, max_load: int) -> bool:
    return c.healthy and operator in c.operators and c.load < max_load and c.quota_room >= parts


@settings(max_examples=300)
@given(candidates, st.sampled_from(OPERATORS), st.integers(1, 4), st.integers(1, 3))
def test_the_least_loaded_eligible_modem_wins(cands, operator, parts, max_load):
    chosen = choose(cands, operator, parts, max_load=max_load)
    ok = [c for c in cands if eligible(c, operator, parts, max_load)]
    if not ok:
        assert chosen is None
        return
    winner = next(c for c in cands if c.name == chosen)
    assert eligible(winner, operator, parts, max_load)  # never unhealthy, foreign, full or over quota
    assert winner.load == min(c.load for c in ok)
    same_load = [c for c in ok if c.load == winner.load]
    assert winner.token_wait == min(c.token_wait for c in same_load)
    soonest = [c for c in same_load if c.token_wait == winner.token_wait]
    assert winner.quota_room == max(c.quota_room for c in soonest)
    assert winner is next(c for c in soonest if c.quota_room == winner.quota_room)  # stable


def test_choice_examples():
    a = Candidate(name="a", operators=frozenset({"cucc"}), healthy=True, load=1, quota_room=10, token_wait=0.0)
    b = Candidate(name="b", operators=frozenset({"cucc"}), healthy=True, load=0, quota_room=10, token_wait=4.0)
    sick = Candidate(name="s", operators=frozenset({"cucc"}), healthy=False, load=0, quota_room=10, token_wait=0.0)
    spent = Candidate(name="q", operators=frozenset({"cucc"}), healthy=True, load=0, quota_room=1, token_wait=0.0)
    assert choose([a, b, sick], "cucc", 1, max_load=2) == "b"  # idle beats a sooner token
    assert choose([a, spent], "cucc", 2, max_load=2) == "a"  # a 2-part send needs 2 parts of quota
    assert choose([a, spent], "cucc", 1, max_load=2) == "q"
    assert choose([a, b], "ctcc", 1, max_load=2) is None
    assert choose([a], "cucc", 1, max_load=1) is None


arrivals = st.lists(st.floats(0.0, 600.0, allow_nan=False), min_size=1, max_size=80).map(sorted)


@settings(max_examples=200)
@given(arrivals, st.sampled_from([1.0, 2.0, 6.0, 12.0, 30.0]), st.sampled_from([1.0, 2.0, 3.0]))
def test_a_sim_rate_is_never_exceeded_over_any_window(times, rate, burst):
    bucket = TokenBucket(rate, burst=burst, now=0.0)
    taken = [t for t in times if bucket.take(t)]
    for i in range(len(taken)):
        for j in range(i, len(taken)):
            window = taken[j] - taken[i]
            assert j - i + 1 <= burst + window * rate / 60.0 + 1e-6, (taken[i], taken[j])


@settings(max_examples=200)
@given(arrivals, st.sampled_from([1.0, 6.0, 12.0]))
def test_waiting_as_told_always_gets_a_token(times, rate):
    bucket = TokenBucket(rate, now=0.0)
    clock = 0.0
    for t in times:
        clock = max(clock, t)
        wait = bucket.wait(clock)
        assert 0.0 <= wait <= 60.0 / rate + 1e-9
        if wait > 0:
            assert not bucket.take(clock)
            clock += wait
        assert bucket.take(clock)


def test_time_going_backwards_creates_no_tokens():
    bucket = TokenBucket(6.0, now=100.0)
    assert bucket.take(100.0)
    assert not bucket.take(50.0)
    assert bucket.wait(100.0) == pytest.approx(10.0)
    assert bucket.take(110.0)
    with pytest.raises(ValueError):
        TokenBucket(0.0)


def test_local_day_turns_at_local_midnight():
    before = datetime(2026, 11, 23, 15, 59, 59, tzinfo=timezone.utc)
    assert local_day(before, SHANGHAI) == "2026-11-23"
    assert local_day(before + timedelta(seconds=1), SHANGHAI) == "2026-11-24"
    assert local_day(before + timedelta(seconds=1), timezone.utc) == "2026-11-23"
    with pytest.raises(ValueError):
        local_day(datetime(2026, 11, 23), SHANGHAI)


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1),
                    timezones=st.just(timezone.utc)))
def test_local_day_is_the_date_on_a_shanghai_clock(moment):
    assert local_day(moment, SHANGHAI) == (moment + timedelta(hours=8)).date().isoformat()


def test_daily_count_rolls_and_seeds():
    count = DailyCount()
    count.seed("2026-11-23", 5)
    count.sent += 1
    count.seed("2026-11-23", 3)  # the larger count wins
    assert (count.day, count.sent) == ("2026-11-23", 6)
    count.seed("2026-11-22", 50)  # an older day changes nothing
    assert (count.day, count.sent) == ("2026-11-23", 6)
    count.roll("2026-11-24")
    assert (count.day, count.sent) == ("2026-11-24", 0)
