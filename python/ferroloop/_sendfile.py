"""``loop.sendfile``'s fallback for ferroloop's transports: the file read in blocks through the
executor and written with ``transport.write``, waiting for the write buffer to drain.

asyncio's own fallback accepts only its ``_FlowControlMixin`` transports; this one needs what
ferroloop's Rust transports offer: ``set_protocol``, ``pause_reading``/``resume_reading`` and
``_protocol_paused``. While it runs, a stand-in protocol receives the transport's flow-control
calls; afterwards the application's protocol is put back as it was.
"""

import asyncio

from ._compat import SENDFILE_DRAINS_AFTER_WRITE, SENDFILE_SEEKS_ANY_OFFSET

__all__ = ("sendfile_fallback",)

#: Bytes read from the file and written per step.
BLOCK_SIZE = 16 * 1024


class _StandIn(asyncio.Protocol):
    """Holds the transport while the fallback writes; forwards ``connection_lost``."""

    def __init__(self, transport):
        self.transport = transport
        self.app_protocol = transport.get_protocol()
        # Not named resume_reading/resume_writing: an instance attribute would hide the method
        # the transport calls when its buffer drains, and the fallback would wait forever.
        self.should_resume_reading = transport.is_reading()
        self.should_resume_writing = transport._protocol_paused
        self.drained = None
        transport.pause_reading()
        transport.set_protocol(self)
        if self.should_resume_writing:
            self.drained = transport._loop.create_future()

    async def drain(self):
        if self.transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self.drained is not None:
            await self.drained

    def pause_writing(self):
        if self.drained is None:
            self.drained = self.transport._loop.create_future()

    def resume_writing(self):
        if self.drained is not None:
            self.drained.set_result(False)
            self.drained = None

    def data_received(self, data):
        raise RuntimeError("Invalid state: connection should have been established already.")

    def eof_received(self):
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc):
        if self.drained is not None:
            self.drained.set_exception(
                ConnectionError("Connection is closed by peer") if exc is None else exc
            )
        self.app_protocol.connection_lost(exc)

    def give_back(self):
        self.transport.set_protocol(self.app_protocol)
        if self.should_resume_reading:
            self.transport.resume_reading()
        if self.drained is not None:
            self.drained.cancel()
        if self.should_resume_writing:
            self.app_protocol.resume_writing()


async def sendfile_fallback(loop, transport, file, offset, count):
    """Sends ``count`` bytes (all, if None) of ``file`` from ``offset``; returns the bytes sent
    and leaves the file positioned after them, as asyncio does."""
    if SENDFILE_SEEKS_ANY_OFFSET:
        if hasattr(file, "seek"):
            file.seek(offset)
    elif offset:
        file.seek(offset)
    block = min(count, BLOCK_SIZE) if count else BLOCK_SIZE
    buf = bytearray(block)
    sent = 0
    stand_in = _StandIn(transport)
    try:
        while not count or sent < count:
            size = min(block, count - sent) if count else block
            view = memoryview(buf)[:size]
            read = await loop.run_in_executor(None, file.readinto, view)
            if not read:
                break
            if SENDFILE_DRAINS_AFTER_WRITE:
                transport.write(view[:read])
                await stand_in.drain()
            else:
                await stand_in.drain()
                transport.write(view[:read])
            sent += read
        return sent
    finally:
        if sent > 0 and hasattr(file, "seek"):
            file.seek(offset + sent)
        stand_in.give_back()
