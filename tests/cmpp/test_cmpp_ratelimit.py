"""The sans-IO token bucket used for link rates and the simulator's flow control."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cmpp.errors import LocalProtocolError
from gateway.cmpp.ratelimit import TokenBucket


def test_burst_then_steady_rate():
    b = TokenBucket(10, now=0.0)
    assert sum(b.try_take(0.0) for _ in range(15)) == 10
    assert b.delay(0.0) == pytest.approx(0.1)
    assert not b.try_take(0.05)
    assert b.try_take(0.1)
    assert b.tokens(100.0) == 10  # capped at the burst


def test_custom_burst_and_bad_arguments():
    b = TokenBucket(2, burst=1, now=0.0)
    assert b.try_take(0.0) and not b.try_take(0.0)
    assert b.delay(0.0) == pytest.approx(0.5)
    with pytest.raises(LocalProtocolError):
        TokenBucket(0)
    with pytest.raises(LocalProtocolError):
        TokenBucket(5, burst=0.5)


@settings(max_examples=200)
@given(rate=st.floats(0.1, 10_000), start=st.floats(0, 1e6), takes=st.integers(1, 50))
def test_sleeping_delay_always_yields_a_token(rate, start, takes):
    """After sleeping exactly delay(), a token is there despite float rounding, so a
    driver loop ``sleep(delay)`` always makes progress."""
    b = TokenBucket(rate, now=start)
    now = start
    for _ in range(takes):
        d = b.delay(now)
        now += d
        assert b.try_take(now)
