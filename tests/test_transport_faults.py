"""How stream connections end, cleanly or not: half-close, close and abort with pending writes,
a peer's reset, EPIPE, a refused connection, writes to a closed transport, exceptions raised by
protocol callbacks. Each gives what asyncio gives (callbacks, exceptions, exception-handler
calls and log records) and leaves no file descriptor open."""

import asyncio
import errno
import logging
import os
import socket
import struct

import pytest
from helpers_net import (
    Accepted,
    Recorder,
    closed_port,
    connected_pair,
    iterations,
    leaked_fds,
    open_fds,
    recv_until_eof,
    small_sndbuf,
    stream_to_raw_peer,
)

if not os.path.isdir("/proc/self/fd"):
    pytest.skip("needs /proc/self/fd", allow_module_level=True)

MIB = 1 << 20


def reset(sock):
    """Close `sock` so that its peer gets a reset (RST) instead of an EOF."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def handled(loop):
    """The contexts given to the loop's exception handler."""
    contexts = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    return contexts


def test_write_eof_and_half_close(run, loop):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair()
        assert transport.can_write_eof()
        transport.write(b"request")
        transport.write_eof()
        transport.write_eof()  # a second call is a no-op
        with pytest.raises(RuntimeError, match=r"^Cannot call write\(\) after write_eof\(\)$"):
            transport.write(b"more")
        assert await recv_until_eof(peer) == b"request"
        assert not transport.is_closing()
        with peer:  # the peer keeps sending after our EOF
            await loop.sock_sendall(peer, b"reply 1;")
            await loop.sock_sendall(peer, b"reply 2")
        assert await protocol.lost is None
        assert protocol.data == b"reply 1;reply 2"
        assert protocol.order() == ["made", "data", "eof", "lost"]
        assert leaked_fds(before) == set()

    run(main())


def test_write_eof_waits_for_pending_writes(run, loop):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair()
        small_sndbuf(transport)
        payload = b"x" * MIB
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.write_eof()
        with peer:
            assert await recv_until_eof(peer) == payload
        transport.close()
        await protocol.lost
        assert leaked_fds(before) == set()

    run(main())


def test_close_flushes_pending_writes_before_connection_lost(run, loop):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair()
        small_sndbuf(transport)
        payload = bytes(range(256)) * (MIB // 256)
        transport.write(payload)
        transport.close()
        transport.close()  # idempotent
        assert transport.is_closing()
        await iterations()
        assert not protocol.lost.done()  # the peer has not read: the data is still queued
        with peer:
            assert await recv_until_eof(peer) == payload
        assert await protocol.lost is None
        # Writing 1 MiB paused the protocol; flushing after close() still resumes it.
        assert protocol.calls == ["made", "pause", "resume", "lost"]
        assert leaked_fds(before) == set()

    run(main())


def test_abort_drops_pending_writes(run, loop):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair()
        small_sndbuf(transport)
        payload = b"y" * MIB
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        assert await protocol.lost is None
        with peer:
            assert len(await recv_until_eof(peer)) < len(payload)
        assert protocol.calls == ["made", "pause", "lost"]  # no resume_writing after abort()
        assert leaked_fds(before) == set()

    run(main())


def test_peer_reset(run, loop, handled):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair()
        await loop.sock_sendall(peer, b"data")
        await protocol.received(4)
        reset(peer)
        assert isinstance(await protocol.lost, ConnectionResetError)
        assert protocol.order() == ["made", "data", "lost"]  # no eof_received
        assert transport.is_closing()
        transport.write(b"after the reset")  # no exception
        transport.close()
        assert handled == []  # OSErrors are not reported to the exception handler
        assert leaked_fds(before) == set()

    run(main())


def test_writing_to_a_peer_that_closed(run, loop, handled):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair(lambda: Recorder(keep_open=True))
        peer.close()
        await protocol.eof
        assert not transport.is_closing()  # eof_received() returned True: still open to write
        while not protocol.lost.done():  # the peer answers with a reset, then EPIPE
            transport.write(b"w" * 1024)  # never raises
            await asyncio.sleep(0.01)
        assert isinstance(protocol.lost.result(), (BrokenPipeError, ConnectionResetError))
        assert protocol.order() == ["made", "eof", "lost"]
        assert handled == []
        assert leaked_fds(before) == set()

    run(main())


def test_connection_refused(run, loop):
    async def main():
        before = open_fds()
        address = closed_port()
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.create_connection(Recorder, *address)
        assert info.value.errno == errno.ECONNREFUSED
        assert str(info.value) == f"[Errno {errno.ECONNREFUSED}] Connect call failed {address}"
        assert leaked_fds(before) == set()

    run(main())


@pytest.mark.parametrize("how", ["close", "abort", "reset"])
def test_writes_to_a_closed_transport_are_dropped_then_logged(run, loop, caplog, how):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair()
        if how == "reset":
            reset(peer)
        else:
            getattr(transport, how)()
            peer.close()
        await protocol.lost
        counts = []
        for data in (b"1", b"2", b"", b"3", b"4", b"5", b"6", b"7"):
            transport.write(data)  # never raises
            counts.append(caplog.text.count("socket.send() raised exception."))
        assert counts == [0, 0, 0, 0, 0, 1, 2, 3]  # from the 5th lost write, empty ones aside
        records = [r for r in caplog.records if r.getMessage().startswith("socket.send()")]
        assert {(r.name, r.levelno) for r in records} == {("asyncio", logging.WARNING)}
        assert leaked_fds(before) == set()

    caplog.set_level(logging.WARNING, logger="asyncio")
    run(main())


class Failing(Recorder):
    """Raises from the callback named `where`."""

    def __init__(self, where):
        super().__init__()
        self.where = where

    def data_received(self, data):
        super().data_received(data)
        if self.where == "data_received":
            raise ZeroDivisionError("boom")

    def eof_received(self):
        super().eof_received()
        if self.where == "eof_received":
            raise ZeroDivisionError("boom")


@pytest.mark.parametrize("where", ["data_received", "eof_received"])
def test_exception_in_a_protocol_callback(run, loop, handled, where):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair(lambda: Failing(where))
        with peer:
            await loop.sock_sendall(peer, b"trigger")
            if where == "eof_received":
                peer.shutdown(socket.SHUT_WR)
            exc = await protocol.lost
            assert type(exc) is ZeroDivisionError
            assert transport.is_closing()
            assert await recv_until_eof(peer) == b""  # the transport closed its socket
        assert [(c["message"], c["exception"]) for c in handled] == [
            (f"Fatal error: protocol.{where}() call failed.", exc)
        ]
        assert handled[0]["transport"] is transport and handled[0]["protocol"] is protocol
        assert protocol.calls[-1] == "lost" and protocol.calls.count("lost") == 1
        assert leaked_fds(before) == set()

    run(main())


class BadBuffer(asyncio.BufferedProtocol):
    """A BufferedProtocol failing as `fault` says."""

    def __init__(self, fault):
        self.fault = fault
        self.lost = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint):
        if self.fault == "raises":
            raise ZeroDivisionError("no buffer")
        return bytearray(0 if self.fault == "empty" else 16)

    def buffer_updated(self, nbytes):
        raise ZeroDivisionError("cannot update")

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@pytest.mark.parametrize(
    ("fault", "message", "error"),
    [("empty", "get_buffer", "get_buffer() returned an empty buffer"),
     ("raises", "get_buffer", "no buffer"),
     ("updated", "buffer_updated", "cannot update")],
)  # fmt: skip
def test_buffered_protocol_faults(run, loop, handled, fault, message, error):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair(lambda: BadBuffer(fault))
        with peer:
            await loop.sock_sendall(peer, b"data")
            exc = await protocol.lost
        assert type(exc) is (RuntimeError if fault == "empty" else ZeroDivisionError)
        assert str(exc) == error
        assert [(c["message"], c["exception"]) for c in handled] == [
            (f"Fatal error: protocol.{message}() call failed.", exc)
        ]
        assert leaked_fds(before) == set()

    run(main())


def test_a_server_leaks_no_fd(run, loop):
    async def main():
        before = open_fds()
        accepted = Accepted()
        server = await loop.create_server(accepted, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        for i in range(12):
            transport, protocol = await loop.create_connection(Recorder, *address)
            peer = await accepted.get()
            if i % 3 == 0:
                transport.close()
            elif i % 3 == 1:
                peer.transport.abort()
            else:
                linger = struct.pack("ii", 1, 0)  # abort() then sends a reset
                transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, linger
                )
                transport.abort()
            results = {type(await peer.lost), type(await protocol.lost)}
            assert results == ({type(None), ConnectionResetError} if i % 3 == 2 else {type(None)})
        server.close()
        await server.wait_closed()
        await iterations()
        assert leaked_fds(before) == set()

    run(main())


def test_writer_close_and_wait_closed(run, loop):
    async def main():
        reader, writer, peer = await stream_to_raw_peer()
        writer.write(b"last words")
        writer.close()
        assert writer.is_closing()
        await writer.wait_closed()
        writer.write(b"ignored")  # after close: dropped, no exception
        with peer:
            assert await recv_until_eof(peer) == b"last words"
        assert reader.at_eof()  # connection_lost() fed the reader an EOF

    run(main())


def test_writer_wait_closed_raises_the_connection_error(run, loop):
    async def main():
        reader, writer, peer = await stream_to_raw_peer()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        peer.close()  # sends a reset
        with pytest.raises(ConnectionResetError):
            await reader.read()
        writer.close()
        with pytest.raises(ConnectionResetError):
            await writer.wait_closed()

    run(main())


class Replying(Recorder):
    """Answers the peer's EOF with a last message, then lets the transport close."""

    def eof_received(self):
        super().eof_received()
        self.transport.write(b"goodbye" * 100000)


def test_reply_in_eof_received_is_flushed_before_closing(run, loop):
    async def main():
        transport, protocol, peer = await connected_pair(Replying)
        small_sndbuf(transport)
        await loop.sock_sendall(peer, b"request")
        peer.shutdown(socket.SHUT_WR)
        with peer:
            assert await recv_until_eof(peer) == b"goodbye" * 100000
        assert await protocol.lost is None
        assert protocol.order()[:3] == ["made", "data", "eof"] and protocol.calls[-1] == "lost"

    run(main())


class ClosingOnData(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.close()


def test_no_callback_after_close_in_data_received(run, loop):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair(ClosingOnData)
        with peer:
            await loop.sock_sendall(peer, b"a" * 1000)
            sending = asyncio.ensure_future(loop.sock_sendall(peer, b"b" * MIB))
            assert await protocol.lost is None
            assert protocol.calls == ["made", "data", "lost"]
            await asyncio.gather(sending, return_exceptions=True)  # maybe reset: data unread
        assert leaked_fds(before) == set()

    run(main())


class FailingFlowControl(Recorder):
    def pause_writing(self):
        super().pause_writing()
        raise ZeroDivisionError("pause")

    def resume_writing(self):
        super().resume_writing()
        raise ZeroDivisionError("resume")


def test_exceptions_in_pause_and_resume_writing(run, loop, handled):
    async def main():
        transport, protocol, peer = await connected_pair(FailingFlowControl)
        small_sndbuf(transport)
        transport.write(b"f" * MIB)
        assert [c["message"] for c in handled] == ["protocol.pause_writing() failed"]
        assert not transport.is_closing()  # not fatal
        with peer:
            receiving = asyncio.ensure_future(recv_until_eof(peer))
            while len(handled) < 2:
                await asyncio.sleep(0.001)
            transport.close()
            assert len(await receiving) == MIB
        assert await protocol.lost is None
        assert [(c["message"], str(c["exception"])) for c in handled] == [
            ("protocol.pause_writing() failed", "pause"),
            ("protocol.resume_writing() failed", "resume"),
        ]
        assert handled[1]["transport"] is transport and handled[1]["protocol"] is protocol

    run(main())


class FailingLost(Recorder):
    def connection_lost(self, exc):
        super().connection_lost(exc)
        raise ZeroDivisionError("lost")


@pytest.mark.parametrize("how", ["close", "close with pending writes", "abort", "peer EOF"])
def test_exception_in_connection_lost(run, loop, handled, how):
    async def main():
        before = open_fds()
        transport, protocol, peer = await connected_pair(FailingLost)
        with peer:
            if how == "close with pending writes":
                small_sndbuf(transport)
                transport.write(b"f" * MIB)
                receiving = asyncio.ensure_future(recv_until_eof(peer))
                transport.close()
                assert len(await receiving) == MIB
            elif how == "peer EOF":
                peer.shutdown(socket.SHUT_WR)
            else:
                getattr(transport, how)()
            assert await protocol.lost is None
        await iterations()
        assert [str(c["exception"]) for c in handled] == ["lost"]
        assert handled[0]["message"].startswith("Exception in callback")
        assert leaked_fds(before) == set()  # the socket is closed all the same

    run(main())


def test_a_write_right_after_the_peers_reset_is_a_connection_reset(run, loop, handled):
    """The first send after a reset reports it (ECONNRESET), on every backend: with io_uring the
    receive in flight takes the socket's pending error first, and its send sees EPIPE."""

    async def main():
        transport, protocol, peer = await connected_pair()
        reset(peer)
        transport.write(b"into the reset")
        assert isinstance(await protocol.lost, ConnectionResetError)
        assert handled == []

    run(main())


def _send_then_read(address, nbytes):
    """A blocking client: sends `nbytes`, then reads to the end. What ended it: "eof", "reset"."""
    with socket.create_connection(address) as sock:
        try:
            sock.sendall(b"s" * nbytes)
            while sock.recv(1 << 16):
                pass
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        return "eof"


def test_closing_with_unread_data_resets_the_peer(run, loop):
    """A transport closed while the peer's data is still unread: the kernel answers with a reset,
    which the peer sees. (With io_uring the data was already taken out of the kernel into the
    receive's buffers, so ferroloop resets the connection itself.)"""

    class CloseAtFirstData(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.close()

    async def main():
        server = await loop.create_server(CloseAtFirstData, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        ended = await loop.run_in_executor(None, _send_then_read, address, 2 * MIB)
        assert ended == "reset"
        server.close()
        await server.wait_closed()

    run(main(), timeout=30)
