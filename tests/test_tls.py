"""TLS with ssl= on create_connection/create_server: the TLS transport (extra info, close_notify,
abort, write_eof, BufferedProtocol apps, flow control on 16 MiB), certificate verification, SNI,
ALPN, mutual TLS and handshake timeouts. Streams, start_tls and argument checks: test_start_tls.py.
The certificates are in tests/tls/ (see its README)."""

import asyncio
import hashlib
import os
import socket
import ssl

import pytest
from helpers_net import (
    CERTS,
    Accepted,
    Recorder,
    client_context,
    open_fds,
    recv_until_eof,
    server_context,
    small_sndbuf,
)


def subject_cn(peercert):
    return dict(pair[0] for pair in peercert["subject"])["commonName"]


def connect_tls(loop, address, cctx=None, hostname="localhost", factory=Recorder, **kwargs):
    """loop.create_connection over TLS to `address` (a coroutine)."""
    cctx = cctx or client_context()
    return loop.create_connection(factory, *address, ssl=cctx, server_hostname=hostname, **kwargs)


async def tls_pair(loop, sctx=None, cctx=None, hostname="localhost", factory=Recorder):
    """(server, client transport, client protocol, server protocol) over TLS on loopback."""
    accepted = Accepted(factory)
    server = await loop.create_server(accepted, "127.0.0.1", 0, ssl=sctx or server_context())
    address = server.sockets[0].getsockname()
    transport, protocol = await connect_tls(loop, address, cctx, hostname, factory)
    return server, transport, protocol, await accepted.get()


def record_errors(loop):
    """The list of contexts passed to the loop's exception handler from now on."""
    errors = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    return errors


async def settle(done):
    """Let the loop run until done() (the peer's side of a failed connection closes)."""
    for _ in range(200):
        if done():
            return
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("closer", ["client", "server"])
def test_tls_data_both_ways_and_close_notify(run, loop, closer):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop)
        async with server:
            transport.write(b"hello over tls")
            assert await peer.received(14) == b"hello over tls"
            peer.transport.write(b"and back")
            assert await protocol.received(8) == b"and back"
            closing, other = (protocol, peer) if closer == "client" else (peer, protocol)
            closing.transport.close()
            assert closing.transport.is_closing()
            assert await other.lost is None  # close_notify: an EOF, not an error
            assert await closing.lost is None
            # asyncio calls eof_received on the closing side too (the peer's close_notify).
            assert other.order() == ["made", "data", "eof", "lost"]
            assert closing.order() == ["made", "data", "eof", "lost"]

    run(main())


def test_tls_transport_extra_info_limits_and_write_eof(run, loop):
    async def main():
        cctx, sctx = client_context(), server_context()
        server, transport, _, peer = await tls_pair(loop, sctx, cctx)
        async with server:
            address = server.sockets[0].getsockname()
            sslobj = transport.get_extra_info("ssl_object")
            assert isinstance(sslobj, ssl.SSLObject)
            assert sslobj.server_side is False and sslobj.server_hostname == "localhost"
            assert transport.get_extra_info("sslcontext") is cctx
            assert peer.transport.get_extra_info("sslcontext") is sctx
            assert subject_cn(transport.get_extra_info("peercert")) == "localhost"
            assert peer.transport.get_extra_info("peercert") is None  # no client certificate
            assert transport.get_extra_info("cipher") == sslobj.cipher()
            assert transport.get_extra_info("cipher")[1] == sslobj.version()
            assert transport.get_extra_info("compression") is None
            assert transport.get_extra_info("peername") == address
            sock = transport.get_extra_info("socket")
            assert sock.family == socket.AF_INET and sock.getpeername() == address
            assert transport.get_extra_info("sockname") == sock.getsockname()
            assert peer.transport.get_extra_info("ssl_object").server_side is True
            assert transport.get_extra_info("no such key", "default") == "default"
            # asyncio's TLS write-buffer limits: 512 KiB high, a quarter of it low.
            assert transport.get_write_buffer_limits() == (128 * 1024, 512 * 1024)
            transport.set_write_buffer_limits(high=1000)
            assert transport.get_write_buffer_limits() == (250, 1000)
            assert transport.can_write_eof() is False
            with pytest.raises(NotImplementedError):
                transport.write_eof()
            transport.write(b"still open")  # the failed write_eof changed nothing
            assert await peer.received(10) == b"still open"
            transport.close()
            await peer.lost

    run(main())


def test_tls_abort_is_a_bare_eof_for_the_peer(run, loop):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop)
        async with server:
            # Once this is read, so is all the server sent (its session tickets too): the
            # client's close is then a FIN, not a reset.
            peer.transport.write(b"ping")
            assert await protocol.received(4) == b"ping"
            transport.abort()
            assert transport.is_closing()
            assert await protocol.lost is None
            # asyncio does not tell a truncated TLS stream from a closed one.
            assert await peer.lost is None
            assert protocol.calls == ["made", "data", "lost"]
            assert peer.calls == ["made", "eof", "lost"]

    run(main())


class Collector(asyncio.BufferedProtocol):
    """A BufferedProtocol that reads into a small buffer until EOF."""

    def __init__(self):
        self.data, self.buffer = bytearray(), bytearray(1000)
        self.made = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.made.set_result(transport)

    def get_buffer(self, sizehint):
        # A memoryview: asyncio's TLS reads into a copy of a bytearray's tail (CPython #156275).
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes):
        self.data += self.buffer[:nbytes]

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_tls_to_a_buffered_protocol(run, loop):
    async def main():
        server, transport, _, peer = await tls_pair(loop, factory=Collector)
        async with server:
            message = bytes(range(256)) * 4096  # 1 MiB, a thousand buffers' worth
            transport.write(message)
            transport.close()
            assert await peer.lost is None
            assert peer.data == message

    run(main())


@pytest.mark.parametrize(
    ("cafile", "hostname", "message"),
    [
        ("rogue-ca.pem", "localhost", "unable to get local issuer certificate"),
        ("ca.pem", "other.test", "Hostname mismatch, certificate is not valid for 'other.test'."),
    ],
)
def test_certificate_verification_failure(run, loop, cafile, hostname, message):
    async def main():
        errors = record_errors(loop)
        accepted = Accepted()
        async with await loop.create_server(
            accepted, "127.0.0.1", 0, ssl=server_context()
        ) as server:
            before = open_fds()
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await connect_tls(
                    loop, server.sockets[0].getsockname(), client_context(cafile), hostname
                )
            assert info.value.reason == "CERTIFICATE_VERIFY_FAILED"
            assert info.value.verify_message == message
            await settle(lambda: open_fds() <= before)
            assert open_fds() - before == set()  # neither side leaked its socket
            assert accepted.queue.get_nowait().calls == []  # made at accept, never connected
        assert errors == []  # a failed handshake is not reported to the exception handler

    run(main())


@pytest.mark.parametrize(
    ("hostname", "served"), [("localhost", "localhost"), ("other.test", "other.test")]
)
def test_sni_callback_picks_the_certificate(run, loop, hostname, served):
    seen = []
    other = server_context("other.pem")

    def pick(sslobj, name, _context):
        seen.append(name)
        if name == "other.test":
            sslobj.context = other

    sctx = server_context()
    sctx.sni_callback = pick

    async def main():
        server, transport, _, peer = await tls_pair(loop, sctx, hostname=hostname)
        async with server:
            assert subject_cn(transport.get_extra_info("peercert")) == served
            assert seen == [hostname]
            transport.close()
            await peer.lost

    run(main())


@pytest.mark.parametrize(
    ("offered", "selected"), [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (["x"], None)]
)
def test_alpn_negotiation(run, loop, offered, selected):
    sctx, cctx = server_context(), client_context()
    sctx.set_alpn_protocols(["h2", "http/1.1"])
    cctx.set_alpn_protocols(offered)

    async def main():
        server, transport, _, peer = await tls_pair(loop, sctx, cctx)
        async with server:
            assert transport.get_extra_info("ssl_object").selected_alpn_protocol() == selected
            assert peer.transport.get_extra_info("ssl_object").selected_alpn_protocol() == selected
            transport.close()
            await peer.lost

    run(main())


def mutual_contexts(version, client_cert):
    sctx = server_context()
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.load_verify_locations(os.path.join(CERTS, "ca.pem"))
    cctx = client_context()
    cctx.maximum_version = version
    if client_cert:
        cctx.load_cert_chain(os.path.join(CERTS, "client.pem"))
    return sctx, cctx


def test_mutual_tls_with_a_client_certificate(run, loop):
    async def main():
        server, transport, _, peer = await tls_pair(
            loop, *mutual_contexts(ssl.TLSVersion.TLSv1_3, True)
        )
        async with server:
            assert subject_cn(peer.transport.get_extra_info("peercert")) == "ferroloop test client"
            transport.write(b"authenticated")
            assert await peer.received(13) == b"authenticated"
            transport.close()
            assert await peer.lost is None

    run(main())


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"]
)
def test_mutual_tls_without_a_client_certificate(run, loop, version):
    sctx, cctx = mutual_contexts(version, False)

    async def main():
        errors = record_errors(loop)
        accepted = Accepted()
        async with await loop.create_server(accepted, "127.0.0.1", 0, ssl=sctx) as server:
            before = open_fds()
            connect = connect_tls(loop, server.sockets[0].getsockname(), cctx)
            # asyncio closes without flushing the server's alert when its handshake fails, so
            # the client sees an EOF: during its handshake in TLS 1.2, after it in TLS 1.3.
            if version == ssl.TLSVersion.TLSv1_2:
                with pytest.raises(ConnectionResetError):
                    await connect
            else:
                _, protocol = await connect
                assert await protocol.lost is None
                assert protocol.calls == ["made", "eof", "lost"]
            await settle(lambda: open_fds() <= before)
            assert open_fds() - before == set()
            assert accepted.queue.get_nowait().calls == []  # the server never connected it
        assert errors == []

    run(main())


PAYLOAD = hashlib.sha256(b"ferroloop").digest() * (16 * 1024 * 1024 // 32)  # 16 MiB
CHUNK = 64 * 1024


class Pump(Recorder):
    """A Recorder that writes PAYLOAD in chunks whenever its transport is not paused."""

    sent = 0
    paused = False
    pause_sizes = ()

    def pump(self):
        while not self.paused and self.sent < len(PAYLOAD):
            self.transport.write(PAYLOAD[self.sent : self.sent + CHUNK])
            self.sent += CHUNK
        return self.sent

    def pause_writing(self):
        super().pause_writing()
        self.paused = True
        self.pause_sizes += (self.transport.get_write_buffer_size(),)

    def resume_writing(self):
        super().resume_writing()
        self.paused = False
        self.pump()


@pytest.mark.parametrize("direction", ["client-to-server", "server-to-client"])
def test_large_transfer_with_flow_control(run, loop, direction):
    async def main():
        server, transport, protocol, peer = await tls_pair(loop, factory=Pump)
        async with server:
            writer, reader = (
                (protocol, peer) if direction == "client-to-server" else (peer, protocol)
            )
            # Small kernel buffers, so that they cannot absorb the payload while paused.
            small_sndbuf(writer.transport)
            reader_sock = reader.transport.get_extra_info("socket")
            reader_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            reader.transport.pause_reading()
            assert writer.pump() < len(PAYLOAD)  # paused before writing it all
            assert writer.calls == ["made", "pause"]
            await asyncio.sleep(0.05)
            assert reader.data == b""  # a paused reader is given nothing
            # The kernel may have taken some more, but the writer is paused again.
            assert writer.paused and writer.sent < len(PAYLOAD)
            reader.transport.resume_reading()
            received = await reader.received(len(PAYLOAD))
            assert hashlib.sha256(received).digest() == hashlib.sha256(PAYLOAD).digest()
            assert writer.sent == len(PAYLOAD)
            assert writer.calls.count("pause") == writer.calls.count("resume") >= 1
            # asyncio pauses the writer once its TLS buffer reaches the high-water mark.
            high = writer.transport.get_write_buffer_limits()[1]
            assert min(writer.pause_sizes) >= high
            transport.close()
            assert await peer.lost is None

    run(main(), timeout=30)


def test_client_handshake_timeout(run, loop):
    async def main():
        errors = record_errors(loop)
        with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never speaks TLS
            listener.setblocking(False)
            before = open_fds()
            address = listener.getsockname()
            connect = asyncio.ensure_future(connect_tls(loop, address, ssl_handshake_timeout=0.2))
            peer, _ = await loop.sock_accept(listener)
            with peer:
                with pytest.raises(ConnectionAbortedError) as info:
                    await connect
                assert str(info.value) == (
                    "SSL handshake is taking longer than 0.2 seconds: aborting the connection"
                )
                hello = await recv_until_eof(peer)  # the ClientHello, then the close
                assert hello[:2] == b"\x16\x03"  # a TLS handshake record
            assert open_fds() - before == set()
        assert errors == []

    run(main())


def test_server_handshake_timeout(run, loop):
    async def main():
        accepted = Accepted()
        async with await loop.create_server(
            accepted, "127.0.0.1", 0, ssl=server_context(), ssl_handshake_timeout=0.2
        ) as server:
            with socket.socket() as client:  # connects, never speaks TLS
                client.setblocking(False)
                await loop.sock_connect(client, server.sockets[0].getsockname())
                assert await recv_until_eof(client) == b""  # the server gives up and closes
            assert accepted.queue.get_nowait().calls == []

    run(main())
