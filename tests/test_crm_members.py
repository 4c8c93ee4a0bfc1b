"""Members, attributes, groups and CSV import/export on the real database."""

from __future__ import annotations

import csv
import io

import pytest

from crm_lite.csvio import export_members, import_members
from crm_lite.errors import Conflict, CsvFileError, InvalidInput
from crm_lite.members import (
    add_to_group,
    attribute_definitions,
    create_group,
    create_member,
    define_attribute,
    join,
    list_members,
    member_by_phone,
    member_by_ref,
    update_group,
)
from crm_lite.points import record
from crm_lite.profile import MAX_ATTRIBUTES, AttributeDef, clean_profile


async def _merchant(store, name="mall", number="10658888001"):
    acct = await store.ensure_account(name)
    return await store.ensure_merchant(name, acct.id, number, "【演示商场】")


async def test_join_numbers_members_per_merchant_and_is_idempotent(store):
    mall = await _merchant(store)
    cafe = await _merchant(store, "cafe", "10658888002")
    first, created = await join(store, mall.id, "13900000001", mo_id=7)
    assert created and first.member_no == "M000001" and first.source == "sms"
    again, created = await join(store, mall.id, "13900000001", mo_id=7)   # the same MO re-dispatched
    assert created and again.id == first.id
    later, created = await join(store, mall.id, "13900000001", mo_id=8)   # the consumer texts 1 again
    assert not created and later.id == first.id
    second, _ = await join(store, mall.id, "13900000002", mo_id=9)
    other, _ = await join(store, cafe.id, "13900000001", mo_id=10)
    assert second.member_no == "M000002" and other.member_no == "M000001" and other.id != first.id
    assert (await member_by_ref(store, mall.id, "M000002")).id == second.id
    assert (await member_by_ref(store, mall.id, str(second.id))).phone == "13900000002"
    assert await store.fetchval("SELECT count(*) FROM crm_members") == 3


async def test_at_most_thirty_attributes_and_unique_names(store):
    mall = await _merchant(store)
    await define_attribute(store, mall.id, AttributeDef(name="level", type="choice", choices=("银卡", "金卡")))
    with pytest.raises(Conflict) as info:
        await define_attribute(store, mall.id, AttributeDef(name="level", type="text"))
    assert info.value.code == "attribute_exists"
    for i in range(MAX_ATTRIBUTES - 1):
        await define_attribute(store, mall.id, AttributeDef(name=f"a{i}", type="text"))
    with pytest.raises(Conflict) as info:
        await define_attribute(store, mall.id, AttributeDef(name="one_more", type="text"))
    assert info.value.code == "too_many_attributes"
    assert len(await attribute_definitions(store, mall.id)) == MAX_ATTRIBUTES


async def test_groups_nest_and_list_members_of_sub_groups(store):
    mall = await _merchant(store)
    vip = await create_group(store, mall.id, "VIP")
    gold = await create_group(store, mall.id, "金卡", vip.id)
    diamond = await create_group(store, mall.id, "钻石", gold.id)
    other = await create_group(store, mall.id, "员工")
    a, _ = await join(store, mall.id, "13900000001")
    b, _ = await join(store, mall.id, "13900000002")
    c, _ = await join(store, mall.id, "13900000003")
    await add_to_group(store, mall.id, diamond.id, [a.id])
    await add_to_group(store, mall.id, gold.id, [b.id, a.id])     # a member in several groups
    await add_to_group(store, mall.id, other.id, [c.id, a.id])
    assert [m.id for m in await list_members(store, mall.id, group_id=vip.id)] == [a.id, b.id]
    assert [m.id for m in await list_members(store, mall.id, group_id=diamond.id)] == [a.id]
    assert [m.id for m in await list_members(store, mall.id, group_id=other.id)] == [a.id, c.id]
    with pytest.raises(InvalidInput, match="under itself"):
        await update_group(store, mall.id, vip.id, parent_id=diamond.id)
    with pytest.raises(Conflict):
        await create_group(store, mall.id, "金卡", vip.id)
    moved = await update_group(store, mall.id, diamond.id, parent_id=None)
    assert moved.parent_id is None
    assert [m.id for m in await list_members(store, mall.id, group_id=vip.id)] == [a.id, b.id]


CSV_IN = (
    "\ufeffphone,name,gender,birthday,email,note,level,shoe_size\r\n"
    "13900000001,张三,男,1990-05-04,zs@example.com,老客户,金卡,42\r\n"
    "139000000,李四,,,,,,\r\n"                                  # line 3: bad phone
    "13900000002,李四,女,,,,白金卡,\r\n"                          # line 4: bad choice
    "13900000003,王五,,1988-02-30,,,,\r\n"                       # line 5: bad date
    "13900000004,赵六,,,,\"说 \"\"你好\"\"\",银卡,38.5\r\n"
)


async def test_csv_import_keeps_good_rows_reports_bad_ones_and_updates_by_phone(store):
    mall = await _merchant(store)
    await define_attribute(store, mall.id, AttributeDef(name="level", type="choice", choices=("银卡", "金卡")))
    await define_attribute(store, mall.id, AttributeDef(name="shoe_size", type="number"))
    existing = await create_member(store, mall.id, clean_profile({"phone": "13900000004", "email": "z@x.cn"}, {}, {}))
    report = await import_members(store, mall.id, CSV_IN.encode())
    assert (report.rows, report.created, report.updated, report.bad_rows) == (5, 1, 1, 3)
    assert [(e.line, e.field) for e in report.errors] == [(3, "phone"), (4, "attributes.level"), (5, "birthday")]
    zs = await member_by_phone(store, mall.id, "13900000001")
    assert (zs.name, zs.gender, str(zs.birthday), zs.attributes, zs.source) == (
        "张三", "male", "1990-05-04", {"level": "金卡", "shoe_size": 42}, "import")
    zl = await member_by_phone(store, mall.id, "13900000004")
    assert zl.id == existing.id and zl.member_no == existing.member_no
    assert (zl.name, zl.note, zl.email, zl.attributes) == ("赵六", '说 "你好"', "z@x.cn", {"level": "银卡", "shoe_size": 38.5})
    again = await import_members(store, mall.id, CSV_IN.encode())   # idempotent by phone
    assert (again.created, again.updated) == (0, 2)
    assert await store.fetchval("SELECT count(*) FROM crm_members WHERE merchant_id = $1", mall.id) == 2
    with pytest.raises(CsvFileError):
        await import_members(store, mall.id, b"phone,unknown\n13900000001,x\n")


async def test_csv_export_imports_back_unchanged(store):
    mall = await _merchant(store)
    await define_attribute(store, mall.id, AttributeDef(name="level", type="choice", choices=("银卡", "金卡")))
    await define_attribute(store, mall.id, AttributeDef(name="since", type="date"))
    await import_members(store, mall.id, CSV_IN.encode().replace(b",level,shoe_size", b",level,since")
                         .replace(b",42\r", b",2020-01-01\r").replace(b",38.5\r", b",\r"))
    a, _ = await join(store, mall.id, "13900000009")
    await record(store, mall.id, a.id, "earn", 25, "pos-1")
    exported = await export_members(store, mall.id)
    assert exported.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(exported.decode("utf-8-sig"))))
    assert [r["phone"] for r in rows] == ["13900000001", "13900000004", "13900000009"]
    assert rows[0]["since"] == "2020-01-01" and rows[0]["level"] == "金卡" and rows[2]["points"] == "25"
    assert rows[2]["member_no"] == a.member_no and rows[1]["note"] == '说 "你好"'
    before = [m for m in await list_members(store, mall.id)]
    report = await import_members(store, mall.id, exported)
    assert (report.bad_rows, report.created, report.updated) == (0, 0, 3)
    assert await list_members(store, mall.id) == before
    assert await export_members(store, mall.id) == exported


async def test_seed_demo_is_repeatable_and_hands_out_working_tokens(store):
    from crm_lite.demo import seed_demo
    from crm_lite.staff import Role, staff_by_token

    mall = await _merchant(store)
    first = await seed_demo(store, mall)
    second = await seed_demo(store, mall)
    staff = second["staff"]
    assert {k: (v["phone"], v["role"]) for k, v in staff.items()} == {
        "owner": ("13900000009", "owner"), "manager": ("13900000008", "manager"), "cashier": ("13900000007", "cashier")}
    assert await store.fetchval("SELECT count(*) FROM crm_staff WHERE merchant_id = $1", mall.id) == 3
    cashier = await staff_by_token(store, staff["cashier"]["token"])
    assert cashier is not None and cashier.role == Role.CASHIER and cashier.approver_id == staff["manager"]["id"]
    assert await staff_by_token(store, first["staff"]["cashier"]["token"]) is None   # rotated
    assert second["settings"]["join_keyword"] == "1" and second["settings"]["lottery_keyword"] == "CJ"
