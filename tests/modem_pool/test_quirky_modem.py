"""Modem and ModemPool against a quirky modem on a real pty (tests/modem_pool/quirky_modem.py)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import datetime

import pytest
import trio

from gateway.modem_pool.at import QueryRegistration, SetIndications
from gateway.modem_pool.errors import ModemError
from gateway.modem_pool.modem import Modem
from gateway.modem_pool.pdu import StatusClass
from gateway.modem_pool.pool import (
    MAX_CONSECUTIVE_ERRORS,
    ModemDown,
    ModemMo,
    ModemPool,
    ModemReport,
    ModemSpec,
    ModemUp,
    PartSent,
    SendFailed,
)
from gateway.modem_pool.serial_stream import SerialStream
from tests.modem_pool.sends import HANDSET, request
from tests.modem_pool.quirky_modem import CST, QuirkyModem, Quirks, deliver_pdu

DEADLINE = 30.0
LONG_CHINESE = "尊敬的会员您好，本店周末全场八折，凭短信到店领取小礼品一份，详询客服热线。" * 3


async def start_quirky(nursery, tmp_path, name="q1", number="+8618600000099", **quirks):
    modem = QuirkyModem(tmp_path / name, number, Quirks(**quirks))
    await nursery.start(modem.run)
    return modem


@asynccontextmanager
async def open_modem(device):
    stream = SerialStream.open(str(device))
    try:
        modem = Modem(stream, name="q")
        async with trio.open_nursery() as nursery:
            await nursery.start(modem.run)
            yield modem
            nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


@asynccontextmanager
async def running_pool(quirky_modems, operators=("cucc",), health_interval=3600.0):
    specs = [
        ModemSpec(name=q.link.name, device=str(q.link), operators=frozenset(operators),
                  rate_per_minute=600.0)
        for q in quirky_modems
    ]
    pool = ModemPool(specs, health_interval=health_interval, command_timeout=5.0,
                     send_timeout=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        up = set()
        while len(up) < len(specs):
            event = await pool.events.receive()
            assert isinstance(event, ModemUp), event
            up.add(event.modem)
        yield pool
        nursery.cancel_scope.cancel()


async def next_event(pool, *kinds):
    async for event in pool.events:
        if isinstance(event, kinds):
            return event
    raise AssertionError("pool events closed")


# --------------------------------------------------------------------------- the driver


async def test_initialize_through_echo_noise_and_slow_split_answers(nursery, tmp_path):
    quirky = await start_quirky(nursery, tmp_path, delay=0.4, chunk=1)  # byte by byte
    with trio.fail_after(DEADLINE):
        async with open_modem(quirky.link) as modem:
            status = await modem.initialize()
            assert status.own_number == "+8618600000099"
            assert status.signal.rssi == 21
            assert status.registration.registered
            stats = modem.statistics()
            assert stats.commands_failed == 0 and stats.responses_malformed == 0
    assert quirky.commands[:2] == ["AT", "ATE0"]
    assert not any(c.upper().startswith("AT+CSCS") for c in quirky.commands)


async def test_sim_busy_at_start_is_waited_out(nursery, tmp_path):
    quirky = await start_quirky(
        nursery, tmp_path, errors={"AT+CPIN?": [b"+CME ERROR: SIM busy", b"+CME ERROR: 14"]}
    )
    with trio.fail_after(DEADLINE):
        async with open_modem(quirky.link) as modem:
            status = await modem.initialize()
    assert status.registration.registered
    assert quirky.commands.count("AT+CPIN?") == 3


async def test_rejected_cmee_does_not_stop_start_up(nursery, tmp_path, caplog):
    quirky = await start_quirky(nursery, tmp_path, reject=("AT+CSCS", "AT+CMEE"))
    with caplog.at_level(logging.WARNING), trio.fail_after(DEADLINE):
        async with open_modem(quirky.link) as modem:
            status = await modem.initialize()
    assert status.own_number == "+8618600000099"
    assert any("AT+CMEE=1" in r.getMessage() for r in caplog.records)


async def test_rejected_cpms_arguments_fall_back_to_the_modems_own_storage(nursery, tmp_path):
    quirky = await start_quirky(nursery, tmp_path, reject=("AT+CSCS", "AT+CPMS="))
    quirky.store(deliver_pdu("+8613900000001", "hi", datetime(2025, 5, 1, tzinfo=CST)))
    with trio.fail_after(DEADLINE):
        async with open_modem(quirky.link) as modem:
            status = await modem.initialize()
    assert [(a.name, a.used, a.total) for a in status.storage.areas] == [("SM", 1, 30)] * 3
    assert "AT+CPMS?" in quirky.commands


async def test_cnmi_settings_rejected_falls_back_to_cdsi(nursery, tmp_path):
    preferred = SetIndications().text
    quirky = await start_quirky(nursery, tmp_path, reject=("AT+CSCS", preferred))
    with trio.fail_after(DEADLINE):
        async with open_modem(quirky.link) as modem:
            await modem.initialize()
    cnmi = [c for c in quirky.commands if c.startswith("AT+CNMI")]
    assert cnmi[0] == preferred and len(cnmi) == 2
    assert cnmi[1] == SetIndications(ds=2).text


async def test_cnmi_rejected_altogether_fails_with_a_clear_reason(nursery, tmp_path):
    quirky = await start_quirky(nursery, tmp_path, reject=("AT+CSCS", "AT+CNMI"))
    with trio.fail_after(DEADLINE):
        async with open_modem(quirky.link) as modem:
            with pytest.raises(ModemError, match=r"AT\+CNMI.*rejected"):
                await modem.initialize()


async def test_stored_message_read_with_noise_inside_the_answer(nursery, tmp_path):
    quirky = await start_quirky(nursery, tmp_path)
    index = quirky.store(deliver_pdu("+8613900000001", "查积分", datetime(2025, 5, 1, tzinfo=CST)))
    with trio.fail_after(DEADLINE):
        async with open_modem(quirky.link) as modem:
            await modem.initialize()
            stored = await modem.read_message(index)
            listing = await modem.list_messages()
    assert stored.index is None or stored.index == index
    assert [m.index for m in listing.messages] == [index]
    assert listing.messages[0].pdu == stored.pdu


async def test_registration_query_with_unsolicited_creg_alongside(nursery, tmp_path):
    """``+CREG: 1`` (unsolicited, one field) comes among the lines of ``AT+CREG?``."""
    quirky = await start_quirky(nursery, tmp_path)
    with trio.fail_after(DEADLINE):
        async with open_modem(quirky.link) as modem:
            await modem.initialize()
            registration = await modem.command(QueryRegistration())
    assert (registration.n, registration.stat) == (0, 1)


# --------------------------------------------------------------------------- the pool


async def test_pool_sends_receives_and_closes_reports(nursery, tmp_path):
    quirky = await start_quirky(
        nursery, tmp_path,
        mo_during_send=[deliver_pdu("+8613900000002", "TD", datetime(2025, 5, 1, tzinfo=CST))],
    )
    waiting = quirky.store(
        deliver_pdu("+8613900000001", "代码1 我要入会", datetime(2025, 5, 1, 9, tzinfo=CST))
    )
    with trio.fail_after(DEADLINE):
        async with running_pool([quirky]) as pool:
            mo = await next_event(pool, ModemMo)
            assert (mo.sender, mo.text) == ("+8613900000001", "代码1 我要入会")
            mo.ack()

            await pool.send(request(1, "Your code is 1234"))
            long = request(2, LONG_CHINESE)
            assert len(long.parts) > 1
            await pool.send(long)
            parts, reports, mos = [], [], []
            while len(parts) < 1 + len(long.parts) or len(reports) < len(parts) or not mos:
                event = await next_event(pool, PartSent, ModemReport, ModemMo)
                if isinstance(event, PartSent):
                    parts.append(event)
                elif isinstance(event, ModemReport):
                    reports.append(event)
                else:
                    mos.append(event)
                    event.ack()
            assert [(p.ref, p.part) for p in parts] == [(1, 1)] + [
                (2, i) for i in range(1, len(long.parts) + 1)
            ]
            assert sorted(r.tp_mr for r in reports) == sorted(p.tp_mr for p in parts)
            assert all(r.status is StatusClass.DELIVERED for r in reports)
            assert all(r.recipient == HANDSET or r.recipient.endswith(HANDSET) for r in reports)
            assert [m.text for m in mos] == ["TD"]
            while quirky.storage:  # acked MOs and taken reports are deleted from the SIM
                await trio.sleep(0.05)
    assert waiting in quirky.deleted
    assert quirky.sent[0].text == "Your code is 1234"
    assert "".join(s.text for s in quirky.sent[1:]) == LONG_CHINESE
    assert {s.concat[0] for s in quirky.sent[1:]} == {2}


async def test_cms_errors_numeric_and_verbose_reach_the_caller(nursery, tmp_path):
    quirky = await start_quirky(
        nursery, tmp_path,
        send_errors=[b"+CMS ERROR: 500", b"+CMS ERROR: Invalid PDU mode parameter"],
    )
    with trio.fail_after(DEADLINE):
        async with running_pool([quirky]) as pool:
            await pool.send(request(1, "one"))
            failed = await next_event(pool, SendFailed)
            assert (failed.ref, failed.cms_code, failed.transient) == (1, 500, True)
            await pool.send(request(2, "two"))
            failed = await next_event(pool, SendFailed)
            assert (failed.ref, failed.cms_code, failed.transient) == (2, 304, False)
            await pool.send(request(3, "three"))
            sent = await next_event(pool, PartSent)
            assert sent.ref == 3
    assert [s.text for s in quirky.sent] == ["three"]


async def test_vanishing_mid_send_fails_over_and_rejoins(nursery, tmp_path):
    first = await start_quirky(nursery, tmp_path, "q1", "+8618600000091", vanish_on_send=1)
    second = await start_quirky(nursery, tmp_path, "q2", "+8618600000092")
    with trio.fail_after(DEADLINE):
        async with running_pool([first, second]) as pool:
            await pool.send(request(7, "failover please"))
            down = await next_event(pool, ModemDown)
            assert down.modem == "q1"
            sent = await next_event(pool, PartSent)
            assert (sent.ref, sent.modem) == (7, "q2")
            first.replug()
            up = await next_event(pool, ModemUp)
            assert up.modem == "q1"
    assert [s.text for s in second.sent] == ["failover please"]
    assert first.sent == [] and first.sends_seen == 1


async def test_consecutive_errors_bench_a_modem_until_a_health_poll_succeeds(nursery, tmp_path):
    quirky = await start_quirky(
        nursery, tmp_path, send_errors=[b"+CMS ERROR: 500"] * MAX_CONSECUTIVE_ERRORS
    )
    with trio.fail_after(DEADLINE):
        async with running_pool([quirky], health_interval=8.0) as pool:
            for ref in range(MAX_CONSECUTIVE_ERRORS):
                await pool.send(request(ref, f"attempt {ref}"))
                failed = await next_event(pool, SendFailed)
                assert (failed.ref, failed.cms_code) == (ref, 500)
            assert pool.usable == 0
            assert pool.statistics()[0].consecutive_errors == MAX_CONSECUTIVE_ERRORS
            await pool.send(request(100, "while benched"))
            failed = await next_event(pool, SendFailed)
            assert failed.ref == 100 and failed.transient and failed.cms_code is None
            while pool.usable == 0:  # the next AT+CSQ / AT+CREG? poll puts it back
                await trio.sleep(0.1)
            await pool.send(request(101, "after the poll"))
            sent = await next_event(pool, PartSent)
            assert sent.ref == 101
    assert [s.text for s in quirky.sent] == ["after the poll"]


async def test_vanishing_while_listing_the_sim_at_start_loses_no_message(nursery, tmp_path):
    quirky = await start_quirky(nursery, tmp_path, vanish_on_command="AT+CMGL")
    index = quirky.store(deliver_pdu("+8613900000003", "2", datetime(2025, 5, 1, tzinfo=CST)))
    spec = ModemSpec(name="q1", device=str(quirky.link), operators=frozenset({"cucc"}),
                     rate_per_minute=600.0)
    pool = ModemPool([spec], health_interval=3600.0, command_timeout=5.0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as inner:
            await inner.start(pool.run)
            assert isinstance(await pool.events.receive(), ModemUp)
            down = await next_event(pool, ModemDown)
            assert down.modem == "q1" and "unavailable" in down.reason
            quirky.replug()
            mo = await next_event(pool, ModemMo)
            assert (mo.sender, mo.text) == ("+8613900000003", "2")
            mo.ack()
            while index in quirky.storage:
                await trio.sleep(0.05)
            inner.cancel_scope.cancel()
    assert quirky.deleted == [index]


async def test_status_reports_announced_in_the_sr_storage_are_read_there(nursery, tmp_path):
    quirky = await start_quirky(nursery, tmp_path, report_storage="SR")
    with trio.fail_after(DEADLINE):
        async with running_pool([quirky]) as pool:
            await pool.send(request(1, "report from SR"))
            sent = await next_event(pool, PartSent)
            report = await next_event(pool, ModemReport)
            assert (report.tp_mr, report.status) == (sent.tp_mr, StatusClass.DELIVERED)
            while quirky.report_store or quirky.mem1 != "SM":
                await trio.sleep(0.05)
            await pool.send(request(2, "and the SIM is read again after"))
            assert (await next_event(pool, PartSent)).ref == 2
    assert ("SR", 1) in quirky.deleted
    assert [s.text for s in quirky.sent] == ["report from SR", "and the SIM is read again after"]


async def test_pool_logs_why_a_modem_refusing_every_cnmi_stays_out(nursery, tmp_path, caplog):
    quirky = await start_quirky(nursery, tmp_path, reject=("AT+CSCS", "AT+CNMI"))
    spec = ModemSpec(name="q1", device=str(quirky.link), operators=frozenset({"cucc"}))
    pool = ModemPool([spec], command_timeout=5.0)
    with caplog.at_level(logging.WARNING, logger="gateway.modem_pool"), trio.fail_after(DEADLINE):
        async with trio.open_nursery() as inner:
            await inner.start(pool.run)
            while not any("AT+CNMI rejected" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.1)
            assert pool.usable == 0
            inner.cancel_scope.cancel()
    (record,) = [r for r in caplog.records if "AT+CNMI rejected" in r.getMessage()]
    assert record.levelno == logging.WARNING and "modem=q1" in record.getMessage()
