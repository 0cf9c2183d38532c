"""Stream transports as a Protocol sees them (asyncio.Transport over TCP): callback order, write
ordering, extra info, write buffer limits, flow control both ways, BufferedProtocol and
set_protocol; then asyncio's streams (StreamReader/StreamWriter) on top. How connections end
(half-close, close, abort, faults) is in test_transport_faults.py; UNIX sockets in test_unix.py."""

import array
import asyncio
import fcntl
import hashlib
import socket
import termios

import pytest
from helpers_compat import WRITE_QUEUES_THE_CALLERS_OBJECT, write_type_error
from helpers_net import (
    Recorder,
    connected_pair,
    iterations,
    recv_until_eof,
    small_sndbuf,
    stream_to_raw_peer,
)

MIB = 1 << 20


def readable_bytes(sock):
    """How many bytes wait in the kernel receive buffer of `sock` (FIONREAD)."""
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4), "little")


class SizeRecorder(Recorder):
    """Also records the write buffer size at each pause_writing/resume_writing."""

    def pause_writing(self):
        self.calls.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self):
        self.calls.append(("resume", self.transport.get_write_buffer_size()))
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_made(self, transport):
        self.resumed = asyncio.get_running_loop().create_future()
        super().connection_made(transport)


def test_callback_order_to_eof(run, loop):
    async def main():
        transport, protocol, peer = await connected_pair()
        with peer:
            for chunk in (b"one", b"two", b"three"):
                await loop.sock_sendall(peer, chunk)
        assert await protocol.lost is None
        assert protocol.order() == ["made", "data", "eof", "lost"]
        assert protocol.data == b"onetwothree"
        assert transport.is_closing()

    run(main())


def test_writes_keep_their_order(run, loop):
    async def main():
        transport, protocol, peer = await connected_pair()
        small = [b"%d," % i for i in range(3000)]
        big = bytes(range(256)) * (8 * MIB // 256)
        expected = b"".join(small) + b"AB" + b"CD" + big + b"".join(small)
        reader = asyncio.ensure_future(recv_until_eof(peer))
        for chunk in small:
            transport.write(chunk)
        transport.writelines([b"AB", bytearray(b"CD")])
        transport.write(memoryview(big))
        for chunk in small:
            transport.write(chunk)
        transport.close()
        received = await reader
        peer.close()
        assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()
        assert await protocol.lost is None

    run(main(), timeout=30)


def test_write_of_a_buffer_changed_afterwards(run, loop):
    # asyncio 3.11 queues a copy of what send() did not take: changing the buffer after write()
    # changes nothing that is sent. 3.12+ (zero-copy writes) queues the caller's object itself,
    # so what is sent of it is its content at send time: asyncio guarantees no more than that
    # each byte is from one version or the other, which is all that is asserted then (ferroloop
    # still sends a copy).
    async def main():
        transport, protocol, peer = await connected_pair()
        small_sndbuf(transport)
        data = bytearray(b"a" * MIB)
        transport.write(data)  # mostly queued: the peer is not reading yet
        data[:] = b"b" * MIB
        transport.write(b"end")
        transport.close()
        with peer:
            received = await recv_until_eof(peer)
        assert await protocol.lost is None
        if WRITE_QUEUES_THE_CALLERS_OBJECT:
            assert len(received) == MIB + 3 and received.endswith(b"end")
            assert set(received[:MIB]) <= set(b"ab")
        else:
            assert received == b"a" * MIB + b"end"

    run(main())


QUEUED_VIEWS = {
    "bytes": lambda: memoryview(b"12345"),
    "array-of-int": lambda: memoryview(array.array("i", range(1000))),
    "rows": lambda: memoryview(bytes(12)).cast("B", (3, 4)),
}


@pytest.mark.parametrize("make_view", QUEUED_VIEWS.values(), ids=QUEUED_VIEWS.keys())
def test_write_buffer_size_counts_a_queued_memoryview(run, loop, make_view):
    # asyncio 3.11 counts the bytes of what is queued. 3.12+ sums len() of what is queued, so a
    # memoryview counts its items (its rows), not its bytes. (asyncio 3.12+ then takes sendmsg()'s
    # byte count for items and mis-sends such a view: the transport is aborted here, before any
    # of it goes.)
    async def main():
        transport, protocol, peer = await connected_pair()
        with peer:
            small_sndbuf(transport)
            transport.write(b"a" * MIB)  # mostly queued: the peer is not reading
            size = transport.get_write_buffer_size()
            view = make_view()
            transport.write(view)
            counted = len(view) if WRITE_QUEUES_THE_CALLERS_OBJECT else view.nbytes
            assert transport.get_write_buffer_size() == size + counted
            transport.abort()
            assert await protocol.lost is None

    run(main())


def test_get_extra_info(run, loop):
    async def main():
        transport, _, peer = await connected_pair()
        with peer:
            sock = transport.get_extra_info("socket")
            assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert transport.get_extra_info("sockname") == sock.getsockname() == peer.getpeername()
            assert transport.get_extra_info("peername") == peer.getsockname()
            assert transport.get_extra_info("unknown") is None
            assert transport.get_extra_info("unknown", "default") == "default"
            transport.close()

    run(main())


WRITE_BUFFER_LIMITS = [
    ({}, (16384, 65536)), ({"high": 100}, (25, 100)), ({"low": 10}, (10, 40)),
    ({"high": 10, "low": 10}, (10, 10)), ({"high": 0}, (0, 0)),
    ({"high": 1, "low": 2}, "high (1) must be >= low (2) must be >= 0"),
    ({"high": 0, "low": -1}, "high (0) must be >= low (-1) must be >= 0"),
    ({"high": -1}, "high (-1) must be >= low (-1) must be >= 0"),  # low = high // 4
    ({"low": -4}, "high (-16) must be >= low (-4) must be >= 0"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "expected"), WRITE_BUFFER_LIMITS)
def test_set_write_buffer_limits(run, loop, kwargs, expected):
    async def main():
        transport, _, peer = await connected_pair()
        with peer:
            assert transport.get_write_buffer_limits() == (16384, 65536)
            if isinstance(expected, str):
                with pytest.raises(ValueError) as info:
                    transport.set_write_buffer_limits(**kwargs)
                assert str(info.value) == expected
                assert transport.get_write_buffer_limits() == (16384, 65536)  # unchanged
            else:
                transport.set_write_buffer_limits(**kwargs)
                assert transport.get_write_buffer_limits() == expected
            transport.close()

    run(main())


def test_pause_and_resume_writing_at_the_water_marks(run, loop):
    async def main():
        transport, protocol, peer = await connected_pair(SizeRecorder)
        small_sndbuf(transport)
        low, high = transport.get_write_buffer_limits()
        while not any(isinstance(c, tuple) for c in protocol.calls):
            transport.write(b"z" * 8192)
        assert protocol.calls[1][0] == "pause" and protocol.calls[1][1] > high
        await iterations()
        assert protocol.calls[2:] == []  # nobody reads: no resume_writing
        with peer:
            reader = asyncio.ensure_future(recv_until_eof(peer))
            await protocol.resumed
            assert protocol.calls[2][0] == "resume" and protocol.calls[2][1] <= low
            transport.close()
            await reader
        assert await protocol.lost is None
        assert [c if isinstance(c, str) else c[0] for c in protocol.calls] == [
            "made", "pause", "resume", "lost"
        ]  # fmt: skip

    run(main())


def test_lowering_the_high_water_mark_pauses_at_once(run, loop):
    async def main():
        transport, protocol, peer = await connected_pair(SizeRecorder)
        small_sndbuf(transport)
        transport.set_write_buffer_limits(high=4 * MIB)
        transport.write(b"q" * MIB)
        size = transport.get_write_buffer_size()
        assert size > 0 and protocol.calls == ["made"]
        transport.set_write_buffer_limits(high=size)  # pausing is for a size above the mark
        assert protocol.calls == ["made"]
        transport.set_write_buffer_limits(high=size - 1)
        assert protocol.calls == ["made", ("pause", size)]
        transport.abort()
        peer.close()
        await protocol.lost

    run(main())


def test_pause_reading_and_resume_reading(run, loop):
    async def main():
        transport, protocol, peer = await connected_pair()
        sock = transport.get_extra_info("socket")
        assert transport.is_reading()
        transport.pause_reading()
        transport.pause_reading()  # idempotent
        assert not transport.is_reading()
        await loop.sock_sendall(peer, b"held back")
        while readable_bytes(sock) < 9:
            await asyncio.sleep(0.001)
        await iterations()
        assert protocol.calls == ["made"]  # readable, but reading is paused
        transport.resume_reading()
        transport.resume_reading()
        assert transport.is_reading()
        assert await protocol.received(9) == b"held back"
        transport.close()
        assert not transport.is_reading()  # a closing transport does not read
        peer.close()
        await protocol.lost

    run(main())


class PausingRecorder(Recorder):
    """Pauses reading in every data_received."""

    def data_received(self, data):
        super().data_received(data)
        self.transport.pause_reading()


def test_pause_reading_inside_data_received(run, loop):
    async def main():
        transport, protocol, peer = await connected_pair(PausingRecorder)
        sending = asyncio.ensure_future(loop.sock_sendall(peer, b"p" * MIB))
        for calls in (1, 2, 3):  # one data_received per resume_reading, however much waits
            await protocol.received(1 + len(protocol.data))
            await iterations()
            assert protocol.calls.count("data") == calls
            assert not transport.is_reading()
            transport.resume_reading()
        transport.close()
        sending.cancel()
        peer.close()
        await protocol.lost

    run(main())


def test_the_transport_owns_its_fd(run, loop):
    async def main():
        transport, protocol, peer = await connected_pair()
        fd = transport.get_extra_info("socket").fileno()
        for method in (loop.add_reader, loop.add_writer):
            with pytest.raises(RuntimeError) as info:
                method(fd, print)
            assert str(info.value) == f"File descriptor {fd} is used by transport {transport!r}"
        with pytest.raises(RuntimeError, match=f"^File descriptor {fd} is used by transport"):
            loop.remove_reader(fd)
        transport.close()
        peer.close()
        await protocol.lost

    run(main())


class ChunkedBuffered(asyncio.BufferedProtocol):
    """A BufferedProtocol that lends a `size`-byte buffer and records what it is told."""

    def __init__(self, size):
        self.buffer = bytearray(size)
        self.data = bytearray()
        self.calls = []
        self.hints = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.calls.append("made")

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buffer)
        self.calls.append("updated")
        self.data += self.buffer[:nbytes]

    def eof_received(self):
        self.calls.append("eof")

    def connection_lost(self, exc):
        self.calls.append("lost")
        self.lost.set_result(exc)


@pytest.mark.parametrize("size", [1, 7, 65536])
def test_buffered_protocol(run, loop, size):
    async def main():
        transport, protocol, peer = await connected_pair(lambda: ChunkedBuffered(size))
        payload = bytes(range(256)) * 40
        with peer:
            await loop.sock_sendall(peer, payload)
        assert await protocol.lost is None
        assert protocol.data == payload
        assert protocol.calls[0] == "made" and protocol.calls[-2:] == ["eof", "lost"]
        assert set(protocol.calls[1:-2]) == {"updated"}
        if size == 1:
            assert len(protocol.calls) == 3 + len(payload)  # one byte per buffer_updated
        assert all(isinstance(hint, int) for hint in protocol.hints)

    run(main())


def test_write_argument_types(run, loop):
    async def main():
        transport, protocol, peer = await connected_pair()
        for bad in ("text", 42, None, [b"list"]):
            with pytest.raises(TypeError) as info:
                transport.write(bad)
            assert str(info.value) == write_type_error(bad)  # reworded in 3.14
        with pytest.raises(TypeError):
            transport.writelines(["text"])
        transport.write(b"")  # nothing to send, no error
        transport.write(bytearray(b"ba"))
        transport.write(memoryview(b"mv"))
        transport.writelines(iter([b"i", b"t"]))
        transport.close()
        with peer:
            assert await recv_until_eof(peer) == b"bamvit"
        await protocol.lost

    run(main())


def test_set_protocol_mid_connection(run, loop):
    async def main():
        transport, first, peer = await connected_pair()
        assert transport.get_protocol() is first
        await loop.sock_sendall(peer, b"first")
        await first.received(5)
        second = ChunkedBuffered(3)  # switching to a BufferedProtocol, as start_tls() does
        transport.set_protocol(second)
        assert transport.get_protocol() is second
        with peer:
            await loop.sock_sendall(peer, b"second")
        assert await second.lost is None
        assert (first.data, second.data) == (b"first", b"second")
        assert first.calls == ["made", "data"]
        assert second.calls[-2:] == ["eof", "lost"] and "made" not in second.calls

    run(main())


# asyncio streams: StreamReader/StreamWriter over the transports above.


def test_open_connection_and_start_server(run, loop):
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        assert reader.at_eof()
        writer.write(b"bye\n")
        writer.close()
        await writer.wait_closed()

    async def main():
        async with await asyncio.start_server(handle, "127.0.0.1", 0) as server:
            address = server.sockets[0].getsockname()
            reader, writer = await asyncio.open_connection(*address)
            assert writer.get_extra_info("peername") == address
            for line in (b"one\n", b"two\n"):
                writer.write(line)
                assert await reader.readline() == line.upper()
            assert writer.can_write_eof()
            writer.write_eof()  # the server still answers after our EOF
            assert await reader.read() == b"bye\n"
            assert reader.at_eof() and await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            await writer.wait_closed()

    run(main())


def test_readexactly_readuntil_readline(run, loop):
    async def main():
        reader, writer, peer = await stream_to_raw_peer()
        with peer:
            await loop.sock_sendall(peer, b"abcdef|line\nlast")
        assert await reader.readexactly(3) == b"abc"
        assert await reader.readuntil(b"|") == b"def|"
        assert await reader.readline() == b"line\n"
        assert not reader.at_eof()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await reader.readexactly(10)
        assert (info.value.partial, info.value.expected) == (b"last", 10)
        assert reader.at_eof()
        assert await reader.readline() == b""
        writer.close()
        await writer.wait_closed()

    run(main())


def test_stream_limits(run, loop):
    async def main():
        reader, writer, peer = await stream_to_raw_peer(limit=8)
        message = "Separator is not found, and chunk exceed the limit"
        await loop.sock_sendall(peer, b"0123456789abcdef")
        with pytest.raises(asyncio.LimitOverrunError) as info:
            await reader.readuntil(b"\n")
        assert str(info.value) == message and info.value.consumed > 8
        with pytest.raises(ValueError) as info:
            await reader.readline()  # drops what it has read
        assert str(info.value) == message
        with peer:
            await loop.sock_sendall(peer, b"short\nend")
        assert await reader.readline() == b"short\n"
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await reader.readuntil(b"!")
        assert info.value.partial == b"end"
        writer.close()
        await writer.wait_closed()

    run(main())


def test_drain_waits_for_a_slow_reader(run, loop):
    async def main():
        reader, writer, peer = await stream_to_raw_peer()
        small_sndbuf(writer.transport)
        payload = bytes(range(256)) * (MIB // 256)
        writer.write(payload)
        drained = asyncio.ensure_future(writer.drain())
        await iterations()
        assert not drained.done()  # the peer reads nothing: drain() waits
        receiving = asyncio.ensure_future(recv_until_eof(peer, limit=len(payload)))
        await drained
        assert (
            writer.transport.get_write_buffer_size()
            <= writer.transport.get_write_buffer_limits()[0]
        )
        assert await receiving == payload
        writer.close()
        await writer.wait_closed()
        assert await recv_until_eof(peer) == b""
        peer.close()

    run(main())
