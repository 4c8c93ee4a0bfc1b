"""The lottery draw as a pure function: the documented algorithm, its limits, determinism."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_lite.lottery import Win, draw, recompute


def literal_draw(seed: bytes, entries, prizes, max_wins):
    """The module docstring's steps, written out plainly (full list, full swaps)."""
    words: list[int] = []
    counter = 0

    def word() -> int:
        nonlocal counter
        if not words:
            block = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
            counter += 1
            words.extend(int.from_bytes(block[k:k + 8], "big") for k in range(0, 32, 8))
        return words.pop(0)

    def uniform(m: int) -> int:
        limit = 2**64 - (2**64 % m)
        while True:
            w = word()
            if w < limit:
                return w % m

    units = [(pid, u) for pid, stock in prizes for u in range(1, stock + 1)]
    e = list(entries)
    out, held = [], Counter()
    for i in range(len(e)):
        if len(out) == len(units):
            break
        j = i + uniform(len(e) - i)
        e[i], e[j] = e[j], e[i]
        no, phone = e[i]
        if max_wins is not None and held[phone] >= max_wins:
            continue
        held[phone] += 1
        pid, u = units[len(out)]
        out.append(Win(prize_id=pid, unit=u, entry_no=no, phone=phone))
    return out


phones = st.sampled_from([f"1390000{i:04d}" for i in range(12)])
entry_lists = st.lists(phones, max_size=60).map(lambda ps: [(i + 1, p) for i, p in enumerate(ps)])
prize_lists = st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=4).map(
    lambda stocks: [(100 + i, s) for i, s in enumerate(stocks)])


@settings(max_examples=150, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), entries=entry_lists, prizes=prize_lists,
       max_wins=st.one_of(st.none(), st.integers(min_value=1, max_value=3)))
def test_draw_follows_the_documented_algorithm_and_limits(seed, entries, prizes, max_wins):
    result = draw(seed, entries, prizes, max_wins=max_wins)
    winners = list(result.winners)
    assert winners == literal_draw(seed, entries, prizes, max_wins)
    # deterministic, and recomputable from plain JSON-like shapes in any order
    assert recompute(seed.hex(), [{"entry_no": n, "phone": p} for n, p in reversed(entries)],
                     [{"id": i, "stock": s} for i, s in prizes], max_wins=max_wins) == winners
    per_phone = Counter(p for _, p in entries)
    eligible = sum(per_phone.values()) if max_wins is None else sum(min(c, max_wins) for c in per_phone.values())
    assert len(winners) == min(eligible, sum(s for _, s in prizes))
    won = Counter(w.phone for w in winners)
    assert max_wins is None or all(c <= max_wins for c in won.values())
    # each unit once, within stock; each entry wins at most once
    stock = dict(prizes)
    assert len({(w.prize_id, w.unit) for w in winners}) == len(winners)
    assert all(1 <= w.unit <= stock[w.prize_id] for w in winners)
    assert len({w.entry_no for w in winners}) == len(winners)
    assert set(w.entry_no for w in winners) <= set(result.drawn)


def test_another_seed_gives_another_order():
    entries = [(i, f"138{i:08d}") for i in range(1, 1001)]
    a = draw(b"\x01" * 32, entries, [(1, 5)]).winners
    b = draw(b"\x02" * 32, entries, [(1, 5)]).winners
    assert [w.entry_no for w in a] != [w.entry_no for w in b]
    assert draw(b"\x01" * 32, entries, [(1, 5)]).winners == a


def test_known_vector():
    """Pinned output: a change to the algorithm (which would break published audits) fails here."""
    seed = hashlib.sha256(b"smsgw lottery vector").digest()
    entries = [(i, f"1390000{i:04d}") for i in range(1, 11)]
    got = [(w.prize_id, w.unit, w.entry_no) for w in draw(seed, entries, [(7, 2), (8, 1)]).winners]
    assert got == [(7, 1, 4), (7, 2, 8), (8, 1, 7)]


def test_bad_seed_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        draw(b"short", [(1, "13900000001")], [(1, 1)])
