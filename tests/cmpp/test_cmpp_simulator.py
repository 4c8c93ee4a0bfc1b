"""The ISMG simulator over real TCP on 127.0.0.1, driven by a bare CmppConnection client."""

from __future__ import annotations

import trio

from gateway.cmpp.codec import decode_status_report
from gateway.cmpp.connection import (
    CmppConnection,
    LoginAccepted,
    LoginRefused,
    ProtocolFailure,
    RequestReceived,
    ResponseReceived,
    Role,
    Terminated,
)
from gateway.cmpp.longsms import Reassembler
from gateway.cmpp.pdus import (
    ActiveTest,
    ActiveTestResp,
    Deliver,
    DeliverResp,
    MsgFmt,
    MsgId,
    Query,
    QueryResp,
    Submit,
    SubmitResp,
    Terminate,
    decode_text,
)
from gateway.cmpp.simulator import FlakyIsmg, HappyIsmg, IsmgSimulator, ThrottlingIsmg

TS = 1123092000


class RawClient:
    """A minimal SP for poking the simulator: one task, explicit reads."""

    def __init__(self, stream: trio.SocketStream, conn: CmppConnection) -> None:
        self.stream = stream
        self.conn = conn

    @classmethod
    async def connect(cls, port: int, *, version=0x30, secret="s3cret", sp_id="901234"):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = CmppConnection(Role.CLIENT, version, sp_id=sp_id, secret=secret)
        client = cls(stream, conn)
        await stream.send_all(conn.login(timestamp=TS, now=trio.current_time()))
        return client

    async def next_event(self):
        while (ev := self.conn.next_event()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.conn.receive_data(data, now=trio.current_time())
        return ev

    async def send(self, pdu, context=None):
        await self.stream.send_all(self.conn.send(pdu, now=trio.current_time(), context=context))

    async def respond(self, seq, pdu):
        await self.stream.send_all(self.conn.respond(seq, pdu, now=trio.current_time()))


def submit(dest="13800138000", reg=1, content=b"hello") -> Submit:
    return Submit(registered_delivery=reg, msg_src="901234", src_id="10658888",
                  dest_terminal_ids=(dest,), msg_content=content, service_id="MTEST")


async def start(nursery, sim: IsmgSimulator) -> int:
    return await nursery.start(sim.serve, "127.0.0.1", 0)


async def test_login_submit_and_status_report_3_0():
    sim = HappyIsmg(version=0x30, start_time=0)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        assert port > 0 and sim.port == port
        c = await RawClient.connect(port)
        assert await c.next_event() == LoginAccepted(version=0x30)
        await c.send(submit(), context="a")
        ev = await c.next_event()
        assert isinstance(ev, ResponseReceived) and ev.context == "a"
        assert ev.response.result == 0
        # Msg_Ids are a deterministic sequence from start_time 0 (1970-01-01 00:00:00).
        assert MsgId.from_int(ev.response.msg_id) == MsgId(
            month=1, day=1, hour=0, minute=0, second=0, gateway=1, sequence=0)
        report = await c.next_event()
        assert isinstance(report, RequestReceived) and isinstance(report.pdu, Deliver)
        assert report.pdu.registered_delivery == 1
        assert len(report.pdu.msg_content) == 71  # 3.0 layout
        body = decode_status_report(report.pdu.msg_content)
        assert body.msg_id == ev.response.msg_id and body.stat == "DELIVRD"
        assert body.dest_terminal_id == "13800138000" and report.pdu.dest_id == "10658888"
        await c.respond(report.sequence_id, DeliverResp(msg_id=report.pdu.msg_id))
        with trio.fail_after(5):
            while sim.reports_acked < 1:
                await trio.sleep(0.01)
        stats = sim.statistics()
        assert (stats.submits, stats.accepted, stats.reports_sent, stats.unique_msg_ids) == (1, 1, 1, 2)
        nursery.cancel_scope.cancel()


async def test_2_0_report_layout_and_active_test_and_query():
    sim = IsmgSimulator(version=0x30)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        c = await RawClient.connect(port, version=0x20)
        assert await c.next_event() == LoginAccepted(version=0x20)
        await c.send(ActiveTest())
        ev = await c.next_event()
        assert ev.response == ActiveTestResp()
        await c.send(Query(time="20261123"))
        ev = await c.next_event()
        assert isinstance(ev.response, QueryResp) and ev.response.time == "20261123"
        await c.send(submit())
        await c.next_event()
        report = await c.next_event()
        assert len(report.pdu.msg_content) == 60  # 2.0 layout
        nursery.cancel_scope.cancel()


async def test_bad_secret_refused_with_status_3_and_refuse_logins_fault():
    sim = HappyIsmg()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        c = await RawClient.connect(port, secret="nope")
        ev = await c.next_event()
        assert isinstance(ev, LoginRefused) and ev.status == 3
        assert await c.stream.receive_some(100) == b""  # closed by the ISMG
        sim.refuse_logins = True
        c = await RawClient.connect(port)
        ev = await c.next_event()
        assert isinstance(ev, LoginRefused) and ev.status == 5
        assert sim.statistics().logins_refused == 2
        nursery.cancel_scope.cancel()


async def test_flow_control_over_max_rate(autojump_clock):
    sim = ThrottlingIsmg(max_rate=5)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        c = await RawClient.connect(port)
        await c.next_event()
        for _ in range(8):
            await c.send(submit(reg=0))
        results = [(await c.next_event()).response.result for _ in range(8)]
        assert results == [0] * 5 + [8] * 3
        await trio.sleep(1.0)  # the bucket refills
        await c.send(submit(reg=0))
        assert (await c.next_event()).response.result == 0
        assert sim.statistics().throttled == 3
        nursery.cancel_scope.cancel()


async def test_fail_rate_and_outcome_mix_are_seeded():
    async def run_once():
        sim = FlakyIsmg(fail_rate=0.3, seed=7, outcomes={"DELIVRD": 1, "UNDELIV": 1})
        results, stats = [], []
        async with trio.open_nursery() as nursery:
            port = await start(nursery, sim)
            c = await RawClient.connect(port)
            await c.next_event()
            for _ in range(12):
                await c.send(submit())
                while True:
                    ev = await c.next_event()
                    if isinstance(ev, ResponseReceived):
                        results.append(ev.response.result)
                        break
                    stats.append(decode_status_report(ev.pdu.msg_content).stat)
                    await c.respond(ev.sequence_id, DeliverResp(msg_id=ev.pdu.msg_id))
            nursery.cancel_scope.cancel()
        return results, sim.failed

    first, failed = await run_once()
    second, _ = await run_once()
    assert first == second
    assert failed == first.count(9) and 0 < failed < 12


async def test_inject_long_mo_split_with_udh():
    sim = HappyIsmg()
    text = "会员积分查询" * 15  # 90 UCS2 characters: two parts
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        c = await RawClient.connect(port)
        await c.next_event()
        done = trio.Event()
        parts_sent = []

        async def inject():
            parts_sent.append(await sim.inject_mo("13900000001", "10658888001", text))
            done.set()

        nursery.start_soon(inject)
        r = Reassembler(timeout=60)
        whole = None
        while whole is None:
            ev = await c.next_event()
            assert ev.pdu.registered_delivery == 0 and ev.pdu.tp_udhi == 1
            assert ev.pdu.msg_fmt == MsgFmt.UCS2 and ev.pdu.src_terminal_id == "13900000001"
            await c.respond(ev.sequence_id, DeliverResp(msg_id=ev.pdu.msg_id))
            whole = r.add(ev.pdu.src_terminal_id, ev.pdu.msg_content, udhi=True, now=0)
        assert decode_text(whole.content, MsgFmt.UCS2) == text
        with trio.fail_after(5):
            await done.wait()
        assert parts_sent == [2] and sim.statistics().mo_acked == 2
        nursery.cancel_scope.cancel()


async def test_garbled_frame_and_drop_and_terminate():
    sim = HappyIsmg()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        c = await RawClient.connect(port)
        await c.next_event()
        sim.garble_next_frame()
        await c.send(submit(reg=0))
        ev = await c.next_event()
        assert isinstance(ev, ProtocolFailure) and "Total_Length 5" in ev.reason
        await c.stream.aclose()
        with trio.fail_after(5):
            while sim.statistics().connections:
                await trio.sleep(0.01)

        c = await RawClient.connect(port)
        await c.next_event()
        await sim.wait_logged_in()
        assert sim.drop_connections() == 1
        with trio.fail_after(5):
            assert await c.next_event() is None  # EOF

        c = await RawClient.connect(port)
        await c.next_event()
        await c.send(Terminate())
        assert await c.next_event() == Terminated()
        nursery.cancel_scope.cancel()


async def test_response_delay_fault(autojump_clock):
    sim = HappyIsmg()
    sim.response_delay = 30.0
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        c = await RawClient.connect(port)
        await c.next_event()
        t0 = trio.current_time()
        await c.send(submit(reg=0))
        ev = await c.next_event()
        assert isinstance(ev.response, SubmitResp)
        assert trio.current_time() - t0 >= 30.0
        nursery.cancel_scope.cancel()


async def test_unacked_report_is_resent_after_reconnect():
    sim = HappyIsmg()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        c = await RawClient.connect(port)
        await c.next_event()
        await c.send(submit())
        await c.next_event()
        first = await c.next_event()
        assert first.pdu.registered_delivery == 1
        await c.stream.aclose()  # never answer the report
        c = await RawClient.connect(port)
        await c.next_event()
        again = await c.next_event()
        assert again.pdu == first.pdu
        nursery.cancel_scope.cancel()


async def test_an_sp_that_leaves_its_reports_unacked_gets_flow_control_not_a_stalled_link():
    # The reports waiting for the SP are bounded: beyond the bound SUBMITs are answered with
    # Result 8 at once (the connection keeps reading, so the SP's DELIVER_RESPs can drain
    # them); once the SP takes its reports, SUBMITs are accepted again.
    sim = IsmgSimulator(max_pending_reports=20)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        c = await RawClient.connect(port)
        assert isinstance(await c.next_event(), LoginAccepted)
        unacked = []
        results = []
        with trio.fail_after(10):
            for i in range(60):
                await c.send(submit(dest=f"138{i:08d}"))
                while True:
                    ev = await c.next_event()
                    if isinstance(ev, RequestReceived):  # a report: left unanswered for now
                        unacked.append(ev)
                        continue
                    results.append(ev.response.result)
                    break
        # 16 reports in the window, 20 queued, and one the sender holds while it waits for room.
        accepted = results.index(8)
        assert accepted in (36, 37) and results[:accepted] == [0] * accepted
        assert results[accepted:] == [8] * (60 - accepted) and sim.backlogged == 60 - accepted
        assert len(unacked) == 16 and sim.statistics().pending_deliveries == 20
        received = len(unacked)
        with trio.fail_after(10):
            while unacked:  # the SP takes its reports: the rest follow as the window frees
                ev = unacked.pop()
                await c.respond(ev.sequence_id, DeliverResp(msg_id=ev.pdu.msg_id))
                if received < accepted:
                    nxt = await c.next_event()
                    assert isinstance(nxt, RequestReceived)
                    unacked.append(nxt)
                    received += 1
            await c.send(submit(dest="13900000000"))
            ev = await c.next_event()
            while isinstance(ev, RequestReceived):
                await c.respond(ev.sequence_id, DeliverResp(msg_id=ev.pdu.msg_id))
                ev = await c.next_event()
        assert ev.response.result == 0 and sim.reports_acked == accepted
        nursery.cancel_scope.cancel()


async def test_dlr_delay_and_one_report_per_destination(autojump_clock):
    sim = IsmgSimulator(dlr_delay=5.0, outcomes={"UNDELIV": 1})
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        c = await RawClient.connect(port)
        await c.next_event()
        pdu = Submit(registered_delivery=1, msg_src="901234", src_id="10658888",
                     dest_terminal_ids=("13800138000", "13800138001"), msg_content=b"x")
        await c.send(pdu)
        ack = await c.next_event()
        t_ack = trio.current_time()
        reports = []
        for _ in range(2):
            ev = await c.next_event()
            reports.append(decode_status_report(ev.pdu.msg_content))
            await c.respond(ev.sequence_id, DeliverResp(msg_id=ev.pdu.msg_id))
        assert trio.current_time() - t_ack >= 5.0
        assert {r.dest_terminal_id for r in reports} == {"13800138000", "13800138001"}
        assert all(r.msg_id == ack.response.msg_id and r.stat == "UNDELIV" for r in reports)
        nursery.cancel_scope.cancel()


async def test_2_1_client_accepted_and_spoken_as_2_0():
    sim = IsmgSimulator(version=0x30)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, sim)
        c = await RawClient.connect(port, version=0x21)
        assert await c.next_event() == LoginAccepted(version=0x21)
        await c.send(submit())
        assert (await c.next_event()).response.result == 0
        report = await c.next_event()
        assert len(report.pdu.msg_content) == 60
        nursery.cancel_scope.cancel()
