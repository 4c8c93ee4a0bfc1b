"""CmppLink against the IsmgSimulator over real TCP on 127.0.0.1."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio

from gateway.cmpp.client import (
    CmppLink,
    CmppLinkConfig,
    LinkDown,
    LinkUp,
    MoReceived,
    StatusReport,
    SubmitAcked,
    SubmitRejected,
    SubmitRequest,
    is_transient,
    mask_number,
)
from gateway.cmpp.errors import LinkError
from gateway.cmpp.pdus import MsgFmt
from gateway.cmpp.simulator import FlakyIsmg, HappyIsmg, IsmgSimulator, ThrottlingIsmg


def config(port: int, **kw) -> CmppLinkConfig:
    base = dict(sp_id="901234", secret="s3cret", host="127.0.0.1", port=port, name="t1",
                reconnect_initial=0.05, reconnect_max=0.4, flow_control_initial=0.05,
                flow_control_max=0.2, tick_interval=0.05)
    return CmppLinkConfig(**(base | kw))


def request(ref: int, *, reg: int = 1, dest: str = "13800138000") -> SubmitRequest:
    return SubmitRequest(ref=ref, dest=dest, src_id="10658888", content=f"m{ref}".encode(),
                         msg_fmt=MsgFmt.ASCII, registered_delivery=reg, service_id="MTEST")


class Harness:
    def __init__(self, sim: IsmgSimulator, nursery: trio.Nursery) -> None:
        self.sim = sim
        self.nursery = nursery
        self.send, self.recv = trio.open_memory_channel(1000)
        self.events: list = []

    async def start_link(self, **kw) -> CmppLink:
        port = await self.nursery.start(self.sim.serve, "127.0.0.1", 0)
        self.link = CmppLink(config(port, **kw), self.send)
        await self.nursery.start(self.link.run)
        return self.link

    async def wait_for(self, predicate, *, timeout: float = 10.0):
        """Collect events until predicate(events) is true."""
        with trio.fail_after(timeout):
            while not predicate(self.events):
                self.events.append(await self.recv.receive())
        return self.events

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
async def harness_factory(nursery):
    def make(sim: IsmgSimulator) -> Harness:
        return Harness(sim, nursery)
    return make


async def test_login_submit_ack_and_status_reports(harness_factory):
    h = harness_factory(HappyIsmg(version=0x30))
    link = await h.start_link()
    await h.wait_for(lambda ev: any(isinstance(e, LinkUp) for e in ev))
    assert h.of(LinkUp)[0].version == 0x30 and link.up
    for i in range(40):
        await link.submit(request(i))
    await h.wait_for(lambda ev: len([e for e in ev if isinstance(e, StatusReport)]) == 40)
    acked = {e.ref: e.msg_id for e in h.of(SubmitAcked)}
    assert sorted(acked) == list(range(40))
    assert len(set(acked.values())) == 40
    assert {e.msg_id for e in h.of(StatusReport)} == set(acked.values())
    assert all(e.stat == "DELIVRD" and e.dest == "13800138000" for e in h.of(StatusReport))
    with trio.fail_after(5):  # every DELIVER answered (the event goes out before the RESP)
        while h.sim.statistics().reports_acked < 40:
            await trio.sleep(0.01)
    stats = link.statistics()
    assert stats.acked == 40 and stats.reports == 40 and stats.window_used == 0
    assert link.queued == 0  # every request taken from the input queue was counted out


async def test_2_0_link(harness_factory):
    h = harness_factory(HappyIsmg(version=0x30))
    link = await h.start_link(version=0x20)
    await link.submit(request(1))
    await h.wait_for(lambda ev: any(isinstance(e, StatusReport) for e in ev))
    assert h.of(LinkUp)[0].version == 0x20
    assert h.of(StatusReport)[0].msg_id == h.of(SubmitAcked)[0].msg_id


async def test_login_refused_reports_link_down_and_retries(harness_factory):
    h = harness_factory(HappyIsmg())
    link = await h.start_link(secret="wrong")
    await h.wait_for(lambda ev: len([e for e in ev if isinstance(e, LinkDown)]) >= 3)
    downs = h.of(LinkDown)
    assert "login refused" in downs[0].reason and "Status 3" in downs[0].reason
    assert not h.of(LinkUp) and not link.up
    assert h.sim.statistics().logins_refused >= 3


async def test_mo_reassembled(harness_factory):
    h = harness_factory(HappyIsmg())
    await h.start_link()
    await h.wait_for(lambda ev: any(isinstance(e, LinkUp) for e in ev))
    text = "您好，请问积分怎么兑换？" * 10  # 120 UCS2 characters: two parts
    with trio.fail_after(10):
        assert await h.sim.inject_mo("13900000001", "10658888001", text) == 2
        await h.sim.inject_mo("13900000002", "10658888001", "1")
    await h.wait_for(lambda ev: len([e for e in ev if isinstance(e, MoReceived)]) == 2)
    long_mo, short_mo = h.of(MoReceived)
    assert long_mo.text == text and long_mo.complete and long_mo.msg_fmt == MsgFmt.UCS2
    assert long_mo.src == "13900000001" and long_mo.dest == "10658888001"
    assert short_mo.text == "1" and short_mo.msg_fmt == MsgFmt.ASCII


async def test_flow_control_honored_nothing_dropped(harness_factory):
    h = harness_factory(ThrottlingIsmg(max_rate=20))
    link = await h.start_link(rate=1000)
    for i in range(60):
        await link.submit(request(i, reg=0))
    await h.wait_for(lambda ev: len([e for e in ev if isinstance(e, SubmitAcked)]) == 60,
                     timeout=20)
    assert sorted(e.ref for e in h.of(SubmitAcked)) == list(range(60))
    assert not h.of(SubmitRejected)
    assert h.sim.statistics().throttled > 0
    assert link.statistics().flow_controlled == h.sim.statistics().throttled


async def test_rate_limit_with_mock_clock(harness_factory, autojump_clock):
    h = harness_factory(HappyIsmg())
    link = await h.start_link(rate=10)
    await h.wait_for(lambda ev: any(isinstance(e, LinkUp) for e in ev))
    t0 = trio.current_time()
    for i in range(30):
        await link.submit(request(i, reg=0))
    await h.wait_for(lambda ev: len([e for e in ev if isinstance(e, SubmitAcked)]) == 30)
    # a burst of 10, then 20 more at 10 per second
    assert trio.current_time() - t0 >= 1.9


async def test_rejections_are_reported_with_transience(harness_factory):
    h = harness_factory(FlakyIsmg(fail_rate=1.0, fail_result=7))
    link = await h.start_link()
    await link.submit(request(1, reg=0))
    await h.wait_for(lambda ev: any(isinstance(e, SubmitRejected) for e in ev))
    [rej] = h.of(SubmitRejected)
    assert rej.ref == 1 and rej.result == 7 and rej.transient is False
    assert is_transient(9) and is_transient(3) and not is_transient(1) and not is_transient(0)


async def test_drop_mid_window_resubmits_everything(harness_factory):
    h = harness_factory(HappyIsmg())
    link = await h.start_link()
    await h.wait_for(lambda ev: any(isinstance(e, LinkUp) for e in ev))
    h.sim.response_delay = 0.2
    for i in range(10):
        await link.submit(request(i, reg=0))
    with trio.fail_after(10):
        while h.sim.statistics().submits < 2:
            await trio.sleep(0.01)
        while link.statistics().window_used < 5:
            await trio.sleep(0.01)
    assert h.sim.drop_connections() == 1
    h.sim.response_delay = 0.0
    await h.wait_for(lambda ev: len({e.ref for e in ev if isinstance(e, SubmitAcked)}) == 10)
    assert sorted({e.ref for e in h.of(SubmitAcked)}) == list(range(10))
    assert len(h.of(LinkUp)) == 2 and "connection" in h.of(LinkDown)[0].reason
    assert link.statistics().resubmitted >= 5


async def test_garbled_frame_closes_only_that_connection(harness_factory, caplog):
    caplog.set_level(logging.WARNING, logger="gateway.cmpp.client")
    h = harness_factory(HappyIsmg())
    link = await h.start_link()
    await h.wait_for(lambda ev: any(isinstance(e, LinkUp) for e in ev))
    h.sim.garble_next_frame()
    await link.submit(request(1, reg=0))
    await h.wait_for(lambda ev: len([e for e in ev if isinstance(e, LinkUp)]) == 2)
    [down] = h.of(LinkDown)
    assert "protocol failure" in down.reason and "Total_Length 5" in down.reason
    assert any("protocol failure" in r.getMessage() and "Total_Length" in r.getMessage()
               for r in caplog.records)
    # The SUBMIT whose answer was garbled is sent again on the new connection.
    await h.wait_for(lambda ev: any(isinstance(e, SubmitAcked) for e in ev))
    assert h.of(SubmitAcked)[0].ref == 1


async def test_unanswered_window_times_out_then_recovers(harness_factory, autojump_clock):
    h = harness_factory(HappyIsmg())
    link = await h.start_link(response_timeout=10, max_retries=2)
    await h.wait_for(lambda ev: any(isinstance(e, LinkUp) for e in ev))
    h.sim.response_delay = 1000.0  # an ISMG that stopped answering
    await link.submit(request(7, reg=0))
    await h.wait_for(lambda ev: any(isinstance(e, LinkDown) for e in ev), timeout=100)
    assert "link dead" in h.of(LinkDown)[0].reason and "SUBMIT" in h.of(LinkDown)[0].reason
    h.sim.response_delay = 0.0
    await h.wait_for(lambda ev: any(isinstance(e, SubmitAcked) for e in ev), timeout=100)
    assert h.of(SubmitAcked)[0].ref == 7


async def test_idle_link_heartbeats_and_stays_up(harness_factory, autojump_clock):
    h = harness_factory(HappyIsmg(active_test_interval=None))
    link = await h.start_link(active_test_interval=180)
    await h.wait_for(lambda ev: any(isinstance(e, LinkUp) for e in ev))
    await trio.sleep(400)
    stats = link.statistics()
    assert stats.up and not h.of(LinkDown)
    # login + two ACTIVE_TESTs (at 180 s and 360 s of silence), all answered
    assert stats.connection.requests_sent == 3
    assert stats.connection.responses_received == 3


async def test_ismg_heartbeat_answered(harness_factory, autojump_clock):
    h = harness_factory(HappyIsmg(active_test_interval=60))
    link = await h.start_link(active_test_interval=10_000)
    await h.wait_for(lambda ev: any(isinstance(e, LinkUp) for e in ev))
    await trio.sleep(300)
    assert link.up and not h.of(LinkDown)
    assert link.statistics().connection.requests_received >= 4


async def test_cancel_sends_terminate(nursery):
    sim = HappyIsmg()
    port = await nursery.start(sim.serve, "127.0.0.1", 0)
    send, recv = trio.open_memory_channel(100)
    link = CmppLink(config(port), send)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await inner.start(link.run)
            with trio.fail_after(5):
                assert isinstance(await recv.receive(), LinkUp)
            scope.cancel()
    with trio.fail_after(5):
        while sim.statistics().connections:
            await trio.sleep(0.01)
    assert not link.up


async def test_closed_event_channel_is_a_link_error(nursery):
    sim = HappyIsmg()
    port = await nursery.start(sim.serve, "127.0.0.1", 0)
    send, recv = trio.open_memory_channel(1)
    await recv.aclose()
    link = CmppLink(config(port), send)
    with pytest.raises(LinkError, match="event channel closed"):
        await link.run()


def test_mask_number():
    assert mask_number("13800138000") == "138****8000"
    assert mask_number("123") == "****"


async def test_deliver_in_the_same_read_as_connect_resp(nursery):
    """An ISMG that sends an MO right behind CONNECT_RESP, in one TCP write."""
    from gateway.cmpp.connection import CmppConnection, Role
    from gateway.cmpp.pdus import Deliver

    answered = trio.Event()

    async def handler(stream):
        conn = CmppConnection(Role.SERVER, 0x30, sp_id="901234", secret="s3cret")
        while conn.next_event() is None:
            conn.receive_data(await stream.receive_some(4096), now=trio.current_time())
        mo = Deliver(msg_id=1, dest_id="10658888", src_terminal_id="13900000001",
                     msg_content=b"2")
        now = trio.current_time()
        await stream.send_all(conn.answer_login(now=now) + conn.send(mo, now=now))
        while not answered.is_set():
            data = await stream.receive_some(4096)
            if not data:
                return
            conn.receive_data(data, now=trio.current_time())
            if conn.next_event() is not None:
                answered.set()
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    send, recv = trio.open_memory_channel(10)
    await nursery.start(CmppLink(config(port, tick_interval=60), send).run)
    with trio.fail_after(5):
        assert isinstance(await recv.receive(), LinkUp)
        mo = await recv.receive()
        await answered.wait()  # and the DELIVER_RESP went back
    assert isinstance(mo, MoReceived) and mo.text == "2" and mo.src == "13900000001"


async def test_submit_queues_without_waiting_while_there_is_room_and_waits_when_full():
    """submit() with room returns in the same step (no checkpoint); a full queue waits, and
    what was queued is all there."""
    send, _recv = trio.open_memory_channel(10)
    link = CmppLink(config(1), send, input_size=3)
    for i in range(3):
        coro = link.submit(request(i))
        with pytest.raises(StopIteration):  # finished on its first step: it never yielded
            coro.send(None)
    assert link.statistics().input_queue == 3 and link.queued == 3
    with trio.move_on_after(0.05) as scope:
        await link.submit(request(3))
    assert scope.cancelled_caught  # full: it waited
    assert link.statistics().input_queue == 3
    assert link.queued == 3  # the cancelled submit queued nothing
    with pytest.raises(trio.WouldBlock):
        link.submit_nowait(request(4))
    assert link.queued == 3


async def test_burst_of_many_windows_each_acked_once_with_its_own_report(harness_factory):
    """A burst queued in one step goes out a window at a time; every SUBMIT is acknowledged
    exactly once, with a distinct Msg_Id, and each status report matches one of them."""
    sim = HappyIsmg(version=0x30, count_duplicates=True)
    h = harness_factory(sim)
    link = await h.start_link(window=16)
    await h.wait_for(lambda ev: any(isinstance(e, LinkUp) for e in ev))
    n = 16 * 12 + 5
    for i in range(n):
        await link.submit(request(i, dest=f"138{i:08d}"))
    await h.wait_for(lambda ev: len([e for e in ev if isinstance(e, StatusReport)]) == n)
    acked = h.of(SubmitAcked)
    assert sorted(e.ref for e in acked) == list(range(n))
    by_msg_id = {e.msg_id: e.ref for e in acked}
    assert len(by_msg_id) == n
    reports = h.of(StatusReport)
    assert {r.msg_id for r in reports} == set(by_msg_id)
    assert all(r.dest == f"138{by_msg_id[r.msg_id]:08d}" and r.stat == "DELIVRD" for r in reports)
    with trio.fail_after(5):  # the DELIVER_RESPs go out after the read's events are passed on
        while sim.reports_acked < n:
            await trio.sleep(0.01)
    stats = sim.statistics()
    assert (stats.accepted, stats.duplicates, stats.reports_acked) == (n, 0, n)
    assert link.statistics().window_used == 0


async def test_queued_counts_the_input_and_the_requests_to_send_again(harness_factory):
    """``queued`` (what a channel compares per message) follows the input queue as the pump
    takes from it, and counts requests waiting to go again after flow control."""
    h = harness_factory(ThrottlingIsmg(version=0x30, max_rate=20))
    link = await h.start_link(rate=1000, window=4, flow_control_initial=0.3, flow_control_max=0.3)
    await h.wait_for(lambda ev: any(isinstance(e, LinkUp) for e in ev))
    for i in range(30):
        link.submit_nowait(request(i))
    assert link.queued == 30
    with trio.fail_after(10):
        while not link.statistics().retry_queue:  # the ISMG answered Result 8 to some
            await trio.sleep(0.005)
    stats = link.statistics()
    assert link.queued == stats.input_queue + stats.retry_queue < 30
    await h.wait_for(lambda ev: len({e.ref for e in ev if isinstance(e, SubmitAcked)}) == 30, timeout=20)
    assert link.queued == 0 and link.statistics().input_queue == 0
