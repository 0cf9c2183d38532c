"""The TLS state machine's details, each checked against asyncio's sslproto: errors raised by the
application's callbacks, reading paused and resumed on the TLS transport, write-side flow control
call for call, writes after close, writelines, EOF during the handshake, debug records, and TLS
inside TLS (start_tls over a TLS transport)."""

import asyncio
import logging
import socket
import ssl

import pytest
from helpers_net import Accepted, Recorder, iterations
from test_tls import client_context, record_errors, server_context, settle, tls_pair


class Raising(Recorder):
    """Raises from data_received."""

    def data_received(self, data):
        super().data_received(data)
        raise ZeroDivisionError("from data_received")


def test_exception_in_data_received_is_a_fatal_error(run, loop):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop, factory=Raising)
        errors = record_errors(loop)
        async with server:
            peer.transport.write(b"boom")
            exc = await protocol.lost
            assert isinstance(exc, ZeroDivisionError)
            assert [e["message"] for e in errors] == ["Fatal error on SSL protocol"]
            assert errors[0]["exception"] is exc
            assert type(errors[0]["protocol"]).__name__ == "SSLProtocol"
            assert errors[0]["transport"] is not transport  # the socket transport below
            await settle(peer.lost.done)
            assert protocol.data == b"boom"

    run(main())


def test_pause_and_resume_reading_on_the_tls_transport(run, loop):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop)
        async with server:
            assert transport.is_reading()
            transport.pause_reading()
            assert not transport.is_reading()
            peer.transport.write(b"held back")
            await iterations(20)
            assert protocol.data == b""
            transport.resume_reading()
            assert transport.is_reading()
            assert await protocol.received(9) == b"held back"
            # EOF while paused: the close_notify waits for resume_reading too.
            transport.pause_reading()
            peer.transport.write(b"last")
            peer.transport.close()
            await iterations(20)
            assert "eof" not in protocol.calls
            transport.resume_reading()
            assert await protocol.lost is None
            assert protocol.data == b"held backlast"
            assert protocol.order() == ["made", "data", "eof", "lost"]

    run(main())


def test_write_flow_control_calls_match_asyncio(run, loop):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop)
        async with server:
            transport.set_write_buffer_limits(high=0)
            assert transport.get_write_buffer_limits() == (0, 0)
            for _ in range(3):
                transport.write(b"x" * 100)
            await peer.received(300)
            transport.set_write_buffer_limits(high=4096, low=1024)
            transport.write(b"y" * 100)
            await peer.received(400)
            assert transport.get_write_buffer_size() == 0
            transport.close()
            await protocol.lost
            return protocol.calls

    calls = run(main())
    # asyncio's sequence: at a zero high-water mark each write pauses (the record is queued)
    # and resumes (it went out); the later write stays under the new marks.
    assert calls == ["made"] + ["pause", "resume"] * 3 + ["eof", "lost"]


def test_write_checks_and_writelines(run, loop):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop)
        async with server:
            with pytest.raises(TypeError, match="data: expecting a bytes-like instance, got str"):
                transport.write("text")
            transport.write(b"")
            transport.writelines([b"one ", bytearray(b"two "), memoryview(b"three")])
            assert await peer.received(13) == b"one two three"
            transport.close()
            await protocol.lost

    run(main())


def test_writes_after_close_are_dropped_then_logged(run, loop, caplog):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop)
        async with server:
            transport.close()
            await protocol.lost
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                for _ in range(7):
                    transport.write(b"late")
            await peer.lost
            return [r.getMessage() for r in caplog.records]

    messages = run(main())
    # connection_lost counted once, so writes 5, 6 and 7 find the count at 5 or more.
    assert messages.count("SSL connection is closed") == 3


def test_eof_received_returning_true_is_ignored_with_a_warning(run, loop, caplog):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop, factory=lambda: Recorder(True))
        async with server:
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                peer.transport.close()
                assert await protocol.lost is None
            return [r.getMessage() for r in caplog.records]

    # Both sides' protocols keep the connection open: both are told (and both still close).
    assert run(main()) == ["returning true from eof_received() has no effect when using ssl"] * 2


def test_read_buffer_limits(run, loop):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop)
        async with server:
            assert transport.get_read_buffer_limits() == (64 * 1024, 256 * 1024)
            transport.set_read_buffer_limits(high=1000)
            assert transport.get_read_buffer_limits() == (250, 1000)
            with pytest.raises(ValueError, match=r"high \(10\) must be >= low \(20\) must be >= 0"):
                transport.set_read_buffer_limits(high=10, low=20)
            assert transport.get_read_buffer_size() == 0
            peer.transport.write(b"z" * 50_000)
            assert len(await protocol.received(50_000)) == 50_000
            transport.close()
            await protocol.lost

    run(main())


def test_peer_closing_during_the_handshake(run, loop):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            address = listener.getsockname()
            connecting = asyncio.ensure_future(
                loop.create_connection(
                    Recorder, *address, ssl=client_context(), server_hostname="localhost"
                )
            )
            peer, _ = await loop.sock_accept(listener)
            peer.close()
            with pytest.raises(ConnectionResetError):
                await connecting

    run(main())


def test_debug_mode_logs_the_handshake(run, loop, caplog):
    async def main():
        loop.set_debug(True)
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            server, transport, protocol, peer = await tls_pair(loop)
            async with server:
                transport.close()
                await protocol.lost
        loop.set_debug(False)
        return [r.msg for r in caplog.records]

    messages = run(main())
    assert "%r starts SSL handshake" in messages
    assert "%r: SSL handshake took %.1f ms" in messages


def test_tls_inside_tls(run, loop):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop)
        async with server:
            inner_client, inner_server = Recorder(), Recorder()
            upgraded = await asyncio.gather(
                loop.start_tls(
                    transport, inner_client, client_context(), server_hostname="localhost"
                ),
                loop.start_tls(peer.transport, inner_server, server_context(), server_side=True),
            )
            client_tls, server_tls = upgraded
            assert client_tls.get_extra_info("ssl_object").server_side is False
            client_tls.write(b"inner hello")
            # The outer transport's application is the inner TLS protocol now.
            assert transport.get_protocol() is not protocol
            inner_server.transport = server_tls
            assert await inner_server.received(11) == b"inner hello"
            server_tls.write(b"inner reply")
            assert await inner_client.received(11) == b"inner reply"
            # Closing the inner layer shuts it down, then the outer one, then the socket.
            client_tls.close()
            assert await inner_client.lost is None
            assert await inner_server.lost is None
            assert inner_server.order() == ["data", "eof", "lost"]
            assert protocol.calls == ["made"]  # replaced by the inner layer, never called again

    run(main())


@pytest.mark.parametrize("size", [1, 16 * 1024 + 1, 300 * 1024])
def test_echo_sizes_round_trip(run, loop, size):
    """Records split and joined at every boundary: one byte, one record and a byte, beyond one
    read of 256 KiB."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        accepted = Accepted(Echo)
        server = await loop.create_server(accepted, "127.0.0.1", 0, ssl=server_context())
        async with server:
            address = server.sockets[0].getsockname()
            transport, protocol = await loop.create_connection(
                Recorder, *address, ssl=client_context(), server_hostname="localhost"
            )
            message = bytes(i % 251 for i in range(size))
            transport.write(message)
            assert await protocol.received(size) == message
            transport.close()
            await protocol.lost

    run(main())


@pytest.mark.parametrize("debug", [False, True])
def test_a_failed_handshake_on_a_server(run, loop, debug):
    """A client that does not trust the server: the server side fails its handshake (an SSLError,
    an OSError: not reported), closes the connection, keeps serving, and reports the failure only
    in debug mode (asyncio's 'Error on transport creation for incoming connection')."""

    async def main():
        loop.set_debug(debug)
        errors = record_errors(loop)
        accepted = Accepted(Recorder)
        server = await loop.create_server(accepted, "127.0.0.1", 0, ssl=server_context())
        async with server:
            address = server.sockets[0].getsockname()
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.create_connection(
                    Recorder,
                    *address,
                    ssl=client_context("rogue-ca.pem"),
                    server_hostname="localhost",
                )
            failed = await accepted.queue.get()  # its connection_made never comes
            await settle(lambda: failed.lost.done() or len(errors) >= debug)
            await iterations(20)
            # The server still serves a client that trusts it.
            transport, protocol = await loop.create_connection(
                Recorder, *address, ssl=client_context(), server_hostname="localhost"
            )
            peer = await accepted.get()
            transport.write(b"after")
            assert await peer.received(5) == b"after"
            transport.close()
            await protocol.lost
        loop.set_debug(False)
        assert failed.calls == []
        return [e["message"] for e in errors]

    expected = ["Error on transport creation for incoming connection"] if debug else []
    assert run(main()) == expected
