"""SerialStream over a bare pseudo-terminal: reads, writes, closing, concurrent use."""

from __future__ import annotations

import os
import tty

import pytest
import trio

from gateway.modem_pool.errors import ModemUnavailable
from gateway.modem_pool.serial_stream import SerialStream


class Pty:
    """The master side of a pty whose slave a SerialStream opens by path."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.device = os.ttyname(self._slave)
        self._master_open = True

    def unplug(self) -> None:
        os.close(self.master)
        self._master_open = False

    def close(self) -> None:
        os.close(self._slave)
        if self._master_open:
            os.close(self.master)


@pytest.fixture
def pty_pair():
    pty = Pty()
    yield pty
    pty.close()


async def read_master(master: int, size: int) -> bytes:
    out = b""
    while len(out) < size:
        await trio.lowlevel.wait_readable(master)
        out += os.read(master, size - len(out))
    return out


async def test_round_trip_bytes(pty_pair):
    master, device = pty_pair.master, pty_pair.device
    stream = SerialStream.open(device)
    with trio.fail_after(5):
        await stream.send_all(b"AT\r")
        assert await read_master(master, 3) == b"AT\r"
        os.write(master, b"\r\nOK\r\n")
        received = b""
        while len(received) < 6:
            received += await stream.receive_some()
        assert received == b"\r\nOK\r\n"
        big = bytes(range(256)) * 64  # more than the pty buffer holds at once
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, big)
            assert await read_master(master, len(big)) == big
    assert stream.device == device
    await stream.aclose()


async def test_receive_waits_without_spinning(pty_pair):
    device = pty_pair.device
    stream = SerialStream.open(device)
    with trio.move_on_after(0.2) as scope:
        await stream.receive_some()
    assert scope.cancelled_caught
    await stream.aclose()


async def test_concurrent_receivers_are_refused(pty_pair):
    device = pty_pair.device
    stream = SerialStream.open(device)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.receive_some)
        await trio.sleep(0.05)
        with pytest.raises(trio.BusyResourceError):
            await stream.receive_some()
        nursery.cancel_scope.cancel()
    await stream.aclose()


async def test_close_wakes_a_blocked_reader(pty_pair):
    device = pty_pair.device
    stream = SerialStream.open(device)
    with trio.fail_after(5):
        with pytest.RaisesGroup(trio.ClosedResourceError):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.receive_some)
                await trio.sleep(0.05)
                await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"AT\r")
    await stream.aclose()  # idempotent


async def test_device_gone_is_modem_unavailable(pty_pair):
    master, device = pty_pair.master, pty_pair.device
    stream = SerialStream.open(device)
    pty_pair.unplug()
    with trio.fail_after(5), pytest.raises(ModemUnavailable):
        await stream.receive_some()
    await stream.aclose()


async def test_exclusive_open(pty_pair):
    first = SerialStream.open(pty_pair.device)
    with pytest.raises(ModemUnavailable):
        SerialStream.open(pty_pair.device)
    await first.aclose()
    second = SerialStream.open(pty_pair.device)  # free again once closed
    await second.aclose()
