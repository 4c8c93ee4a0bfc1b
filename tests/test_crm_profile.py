"""Member profile validation, keywords and CSV parsing: the pure parts of crm_lite."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_lite.csvio import RowError, decode_csv, parse_csv
from crm_lite.errors import CsvFileError, InvalidInput
from crm_lite.points import points_for_purchase
from crm_lite.profile import (
    AttributeDef,
    clean_attribute,
    clean_field,
    clean_profile,
    member_no_text,
    parse_member_no,
    validate_definition,
)
from crm_lite.settings import normalize_keyword

LEVEL = AttributeDef(name="level", type="choice", choices=("银卡", "金卡"))
SIZE = AttributeDef(name="shoe_size", type="number")
VISIT = AttributeDef(name="first_visit", type="date")
CITY = AttributeDef(name="city", type="text")
DEFS = {d.name: d for d in (LEVEL, SIZE, VISIT, CITY)}


@pytest.mark.parametrize(("defn", "raw", "stored"), [
    (LEVEL, "金卡", "金卡"), (LEVEL, " 银卡 ", "银卡"),
    (SIZE, 42, 42), (SIZE, "42", 42), (SIZE, "41.5", 41.5), (SIZE, 40.0, 40),
    (VISIT, "2024-03-01", "2024-03-01"), (VISIT, "2024/3/1".replace("3/1", "03/01"), "2024-03-01"),
    (CITY, "杭州", "杭州"), (CITY, "", None), (SIZE, None, None),
])
def test_attribute_values_are_stored_typed(defn, raw, stored):
    assert clean_attribute(defn, raw) == stored


@pytest.mark.parametrize(("defn", "raw"), [
    (LEVEL, "钻石卡"), (SIZE, "forty"), (SIZE, True), (SIZE, float("nan")), (SIZE, "1e20"),
    (VISIT, "2024-02-30"), (VISIT, "yesterday"), (CITY, "x" * 201), (CITY, 12),
])
def test_bad_attribute_values_name_the_attribute(defn, raw):
    with pytest.raises(InvalidInput) as info:
        clean_attribute(defn, raw)
    assert info.value.field == f"attributes.{defn.name}"
    assert defn.name in info.value.message


def test_undefined_attribute_and_bad_standard_fields_are_refused():
    with pytest.raises(InvalidInput, match="no attribute named 'hobby'") as info:
        clean_profile({}, {"hobby": "x"}, DEFS)
    assert info.value.field == "attributes.hobby"
    for field, raw in (("phone", "12345"), ("email", "not-mail"), ("gender", "maybe"), ("birthday", "1990-13-01"),
                       ("name", "x" * 65)):
        with pytest.raises(InvalidInput) as info:
            clean_field(field, raw)
        assert info.value.field == field
    profile = clean_profile({"phone": "+86 139-0000-0001", "gender": "女", "birthday": "1990-05-04"}, {}, DEFS)
    assert (profile.phone, profile.gender, profile.birthday) == ("13900000001", "female", date(1990, 5, 4))


def test_attribute_definitions_are_checked():
    assert validate_definition(AttributeDef(name="level", type="choice", choices=(" a ", "b"))).choices == ("a", "b")
    for bad, field in ((AttributeDef(name="Level", type="text"), "name"),
                       (AttributeDef(name="phone", type="text"), "name"),
                       (AttributeDef(name="level", type="choice"), "choices"),
                       (AttributeDef(name="level", type="choice", choices=("a", "a")), "choices"),
                       (AttributeDef(name="size", type="number", choices=("1",)), "choices")):
        with pytest.raises(InvalidInput) as info:
            validate_definition(bad)
        assert info.value.field == field


def test_member_numbers_and_purchase_points():
    assert member_no_text(123) == "M000123" and member_no_text(1234567) == "M1234567"
    assert parse_member_no("m000123") == 123 and parse_member_no("M0") is None and parse_member_no("X1") is None
    assert points_for_purchase(12_345, 1) == 123 and points_for_purchase(99, 5) == 0
    assert points_for_purchase(10_000, 2) == 200


def test_keywords_are_normalized_and_reserved_ones_refused():
    assert normalize_keyword("join_keyword", " ｊｏｉｎ ") == "JOIN"
    assert normalize_keyword("join_keyword", "代码8") == "8"
    assert normalize_keyword("lottery_keyword", "抽奖") == "抽奖"
    for bad in ("TD", "退订", "y12", "SP", "two words", "", "x" * 11):
        with pytest.raises(InvalidInput):
            normalize_keyword("join_keyword", bad)


def test_csv_bad_rows_are_reported_by_line_and_good_rows_kept():
    text = decode_csv(
        "\ufeffphone,name,level,shoe_size\r\n"
        "13900000001,张三,金卡,42\r\n"
        "12345,李四,,\r\n"                   # line 3: bad phone
        "13900000002,\"王\n五\",钻石卡,\r\n"   # lines 4-5: a quoted newline, a bad choice
        "\r\n"                                # blank line, skipped
        "13900000003,赵六\r\n"                # line 7: too few cells
        "13900000001,again,,\r\n"             # line 8: repeated phone
        ",no phone,,\r\n"                     # line 9
        "13900000004,,银卡,forty\r\n".encode())  # line 10: bad number
    items = list(parse_csv(text, DEFS))
    good = [i for i in items if not isinstance(i, RowError)]
    bad = {i.line: i for i in items if isinstance(i, RowError)}
    assert [(line, p.phone, p.attributes) for line, p in good] == [(2, "13900000001", {"level": "金卡", "shoe_size": 42})]
    assert sorted(bad) == [3, 4, 7, 8, 9, 10]
    assert bad[3].field == "phone" and bad[4].field == "attributes.level" and "钻石卡" in bad[4].reason
    assert "expected 4 cells" in bad[7].reason and "line 2" in bad[8].reason and bad[10].field == "attributes.shoe_size"


def test_csv_file_errors():
    with pytest.raises(CsvFileError, match="not UTF-8"):
        decode_csv("phone\n13900000001\n".encode("gbk") + "张".encode("gbk"))
    with pytest.raises(CsvFileError, match="unknown column 'hobby'"):
        list(parse_csv("phone,hobby\n", DEFS))
    with pytest.raises(CsvFileError, match="no phone column"):
        list(parse_csv("name\n张三\n", DEFS))
    with pytest.raises(CsvFileError, match="empty"):
        list(parse_csv("", DEFS))
    # Chinese headers and the export's read-only columns are understood
    items = list(parse_csv("会员号,手机号,姓名,积分\nM000001,13900000001,张三,100\n", DEFS))
    assert items[0][1].phone == "13900000001" and items[0][1].name == "张三"


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_csv_parser_never_crashes_on_garbage(body):
    try:
        for item in parse_csv("phone,name,city\n" + body, DEFS):
            assert isinstance(item, RowError) or item[1].phone
    except CsvFileError:
        pass
