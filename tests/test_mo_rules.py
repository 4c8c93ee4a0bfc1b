"""MO dispatch decisions and compliance rules: pure, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.router.commands import parse_command
from gateway.router.compliance import Refusal, has_signature, refusal, with_signature
from gateway.router.mo_dispatch import (
    OTHER,
    FirstStep,
    command_label,
    default_help,
    first_step,
    is_unsubscribe,
    matching_subscriptions,
    normalize_keyword,
    reply_ref,
    sender_extension,
)
from gateway.store import Merchant, MoSubscription
from gateway.text import plan

MALL = Merchant(id=1, name="mall", account_id=10, service_number="10658888001", signature="【某某商场】")


def sub(id: int, number: str, keyword: str = "", account_id: int = 10, url: str = "http://a/mo") -> MoSubscription:
    return MoSubscription(id=id, account_id=account_id, service_number=number, keyword=keyword, url=url)


@pytest.mark.parametrize("text", ["TD", "td", " Td ", "ＴＤ", "t", "Ｔ", "退订", " 退订 ", "退订。", "TD!", "td 谢谢"])
def test_unsubscribe_commands_in_any_width_and_case(text):
    keyword, _ = parse_command(text)
    assert is_unsubscribe(keyword)
    assert first_step(MALL, keyword) is FirstStep.UNSUBSCRIBE


@pytest.mark.parametrize("text", ["1", "2", "CJ", "TDX", "退", "订阅", "STOP", "", "Y12", "代码1"])
def test_other_texts_are_not_unsubscribes(text):
    keyword, _ = parse_command(text)
    assert not is_unsubscribe(keyword)
    assert first_step(MALL, keyword) is FirstStep.HANDLERS


def test_no_merchant_means_callbacks_only_even_for_td():
    assert first_step(None, "TD") is FirstStep.CALLBACKS_ONLY
    assert first_step(None, "1") is FirstStep.CALLBACKS_ONLY


@given(st.sampled_from(["TD", "T", "退订"]), st.lists(st.sampled_from([" ", "\u3000", "\t"]), max_size=3),
       st.booleans(), st.booleans())
@settings(max_examples=60)
def test_unsubscribe_survives_width_case_and_spacing(word, spaces, lower, wide):
    text = word.lower() if lower else word
    if wide:  # full-width forms of ASCII letters
        text = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)
    padded = "".join(spaces) + text + "".join(reversed(spaces))
    keyword, _ = parse_command(padded)
    assert is_unsubscribe(keyword)
    assert command_label(keyword) == word


@given(st.text(max_size=30))
@settings(max_examples=200)
def test_command_label_is_bounded(text):
    keyword, _ = parse_command(text)
    label = command_label(keyword)
    assert label in {"1", "2", "CJ", "TD", "T", "退订", "Y", "N", OTHER}


@pytest.mark.parametrize(("keyword", "label"), [("1", "1"), ("CJ", "CJ"), ("Y12", "Y"), ("N3", "N"),
                                                ("YES", OTHER), ("退订。", "退订"), ("积分", OTHER), ("", OTHER)])
def test_command_labels(keyword, label):
    assert command_label(keyword) == label


def test_keywords_are_normalized_like_commands():
    assert normalize_keyword(" ｃｊ ") == "CJ"
    assert normalize_keyword("代码1") == "1"
    assert normalize_keyword("") == "" and normalize_keyword("  ") == ""
    with pytest.raises(ValueError, match="one word"):
        normalize_keyword("two words")
    with pytest.raises(ValueError, match="at most"):
        normalize_keyword("X" * 21)


def test_subscriptions_match_by_number_prefix_and_keyword():
    subs = [sub(1, "10658888001"), sub(2, "10658888001", "CJ", url="http://b/mo"),
            sub(3, "10658888002", url="http://c/mo"), sub(4, "1065888800199", url="http://d/mo")]
    got = matching_subscriptions(subs, service_number="1065888800123", keyword="CJ", merchant=MALL)
    assert [s.id for s in got] == [1, 2]
    got = matching_subscriptions(subs, service_number="10658888001", keyword="1", merchant=MALL)
    assert [s.id for s in got] == [1]
    assert matching_subscriptions(subs, service_number="10658888009", keyword="1", merchant=None) == []


def test_one_callback_per_account_and_url_the_most_specific():
    subs = [sub(1, "10658888"), sub(2, "10658888001", "CJ"), sub(3, "10658888001")]
    (only,) = matching_subscriptions(subs, service_number="10658888001", keyword="CJ", merchant=MALL)
    assert only.id == 2


def test_another_accounts_subscription_never_reads_a_merchants_mos():
    subs = [sub(1, "10658888", account_id=99), sub(2, "10658888001", account_id=10)]
    got = matching_subscriptions(subs, service_number="10658888001", keyword="1", merchant=MALL)
    assert [s.id for s in got] == [2]
    # For a number no merchant owns, any subscriber of it gets it.
    got = matching_subscriptions(subs, service_number="10658888777", keyword="1", merchant=None)
    assert [s.id for s in got] == [1]


@given(st.lists(st.tuples(st.sampled_from(["106", "10658888", "10658888001", "10658888002"]),
                          st.sampled_from(["", "CJ", "1"]), st.sampled_from([10, 11]),
                          st.sampled_from(["http://a/", "http://b/"])), max_size=12),
       st.sampled_from(["10658888001", "1065888800155", "10658888002"]), st.sampled_from(["CJ", "1", "X"]),
       st.booleans())
@settings(max_examples=150)
def test_matching_subscriptions_properties(rows, number, keyword, known):
    subs = [sub(i, n, k, a, u) for i, (n, k, a, u) in enumerate(rows, start=1)]
    merchant = MALL if known else None
    got = matching_subscriptions(subs, service_number=number, keyword=keyword, merchant=merchant)
    assert len({(s.account_id, s.url) for s in got}) == len(got)  # one callback per (account, URL)
    for s in got:
        assert number.startswith(s.service_number) and s.keyword in ("", keyword)
        if known:
            assert s.account_id == MALL.account_id
    # every eligible (account, url) pair is served
    eligible = {(s.account_id, s.url) for s in subs if number.startswith(s.service_number)
                and s.keyword in ("", keyword) and (not known or s.account_id == MALL.account_id)}
    assert {(s.account_id, s.url) for s in got} == eligible


def test_sender_extension_makes_replies_come_from_the_merchants_number():
    assert sender_extension("10658888001", ["10658888"]) == "001"
    assert sender_extension("10658888001", ["1065", "10658888"]) == "001"  # the longest base
    assert sender_extension("10658888", ["10658888"]) == ""
    assert sender_extension("10659999001", ["10658888"]) == ""  # under no link: the link's own number
    assert sender_extension("10658888001", []) == ""


def test_reply_refs_are_stable_per_mo_and_reply():
    assert reply_ref(42, 1) == "mo-42-1" and reply_ref(42, 2) != reply_ref(43, 1)


def test_default_help_names_the_unsubscribe_command_and_is_short():
    text = default_help(MALL)
    assert text.startswith("【某某商场】") and "TD" in text
    assert len(plan(text).parts) == 1


# --- compliance -----------------------------------------------------------------------------


@pytest.mark.parametrize(("msg_class", "blocked", "unsub", "expected"), [
    ("marketing", False, False, None),
    ("marketing", False, True, Refusal.UNSUBSCRIBED),
    ("transactional", False, True, None),
    ("transactional", True, False, Refusal.BLOCKLISTED),
    ("marketing", True, True, Refusal.BLOCKLISTED),
])
def test_refusal(msg_class, blocked, unsub, expected):
    assert refusal(msg_class=msg_class, blocklisted=blocked, unsubscribed=unsub) == expected


def test_signature_is_prefixed_to_marketing_only_when_missing():
    sig = "【某某商场】"
    assert with_signature("周末全场八折", sig, "marketing") == "【某某商场】周末全场八折"
    assert with_signature("【某某商场】周末全场八折", sig, "marketing") == "【某某商场】周末全场八折"
    assert with_signature("周末全场八折【某某商场】", sig, "marketing") == "周末全场八折【某某商场】"
    assert with_signature("您的验证码是1234", sig, "transactional") == "您的验证码是1234"
    assert with_signature("周末全场八折", "", "marketing") == "周末全场八折"


def test_a_full_single_part_becomes_two_parts_with_the_signature():
    text = "优" * 70  # exactly one UCS2 part
    assert len(plan(text).parts) == 1
    assert len(plan(with_signature(text, "【某某商场】", "marketing")).parts) == 2


@given(st.text(min_size=1, max_size=200), st.sampled_from(["【某某商场】", "【演示商场】", "[Shop]"]),
       st.sampled_from(["marketing", "transactional"]))
@settings(max_examples=200)
def test_with_signature_properties(text, sig, msg_class):
    out = with_signature(text, sig, msg_class)
    assert with_signature(out, sig, msg_class) == out  # idempotent
    if msg_class == "transactional":
        assert out == text
    else:
        assert has_signature(out, sig) and out.endswith(text)
        assert out == text or out == sig + text
