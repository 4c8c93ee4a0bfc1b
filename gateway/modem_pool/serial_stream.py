"""A Trio stream over a serial device opened with pyserial.

pyserial opens the device non-blocking and sets it up (raw mode, baud rate); the stream
then reads and writes the file descriptor directly, parking in
``trio.lowlevel.wait_readable``/``wait_writable`` instead of blocking a thread. Serial and
OS errors become :class:`ModemUnavailable` here, where they enter the package.
"""

from __future__ import annotations

import errno
import os
import termios

import serial
import trio

from gateway.modem_pool.errors import ModemUnavailable

__all__ = ["DEFAULT_BAUDRATE", "RECEIVE_SIZE", "SerialStream"]

DEFAULT_BAUDRATE = 115200
#: Bytes asked of the device per read when the caller names no size.
RECEIVE_SIZE = 4096


class SerialStream(trio.abc.Stream):
    """A :class:`trio.abc.Stream` over a pyserial port; ``await stream.aclose()`` closes it."""

    def __init__(self, port: serial.Serial) -> None:
        self._port = port
        self._fd = port.fileno()
        self._closed = False
        self._receiving = False
        self._sending = False

    @classmethod
    def open(cls, device: str, *, baudrate: int = DEFAULT_BAUDRATE) -> SerialStream:
        """Open ``device`` (``/dev/ttyUSB0``, a pty path); raises :class:`ModemUnavailable`."""
        try:
            port = serial.Serial(device, baudrate=baudrate, timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ModemUnavailable(f"cannot open {device}: {exc}") from None
        try:
            # pyserial leaves VMIN=0, where an empty read returns 0 instead of EAGAIN and
            # looks like end of file; with VMIN=1 the non-blocking fd reports EAGAIN.
            attrs = termios.tcgetattr(port.fileno())
            attrs[6][termios.VMIN] = 1
            attrs[6][termios.VTIME] = 0
            termios.tcsetattr(port.fileno(), termios.TCSANOW, attrs)
        except termios.error as exc:
            port.close()
            raise ModemUnavailable(f"cannot set up {device}: {exc}") from None
        return cls(port)

    @property
    def device(self) -> str:
        return str(self._port.port)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving from this port")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            size = RECEIVE_SIZE if max_bytes is None else max_bytes
            if size < 1:
                raise ValueError("max_bytes must be positive")
            while True:
                self._check_open()
                try:
                    data = os.read(self._fd, size)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self._fd)
                    continue
                except OSError as exc:
                    raise self._lost(exc) from None
                if not data:
                    raise ModemUnavailable(f"{self.device}: end of file (device gone)")
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending to this port")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data)
            while view:
                self._check_open()
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._fd)
                    continue
                except OSError as exc:
                    raise self._lost(exc) from None
                view = view[written:]
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_writable(self._fd)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            self._port.close()
        await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the serial port is closed")

    def _lost(self, exc: OSError) -> ModemUnavailable:
        if exc.errno == errno.EBADF and self._closed:
            return ModemUnavailable(f"{self.device}: closed")
        return ModemUnavailable(f"{self.device}: {os.strerror(exc.errno or 0)}")
