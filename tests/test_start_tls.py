"""TLS through asyncio's streams (TCP and UNIX) and connect_accepted_socket, upgrades of plain
connections with loop.start_tls and StreamWriter.start_tls, and asyncio's TLS argument checks."""

import asyncio
import os
import shutil
import socket
import ssl
import tempfile

import pytest
from helpers_net import Accepted, Recorder
from test_tls import client_context, connect_tls, server_context, subject_cn


@pytest.fixture
def sock_dir():
    """A short directory for socket files (a UNIX socket path holds at most 107 bytes)."""
    path = tempfile.mkdtemp(prefix="fl-")
    yield path
    shutil.rmtree(path)


async def upper_echo(reader, writer):
    """A stream handler: answers each line in upper case until EOF."""
    while line := await reader.readline():
        writer.write(line.upper())
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_tls_streams(run, loop, sock_dir, family):
    path = os.path.join(sock_dir, "s")

    async def main():
        if family == "tcp":
            server = await asyncio.start_server(upper_echo, "127.0.0.1", 0, ssl=server_context())
            # server_hostname defaults to the host: the certificate names 127.0.0.1 too.
            connect = asyncio.open_connection(
                *server.sockets[0].getsockname(), ssl=client_context()
            )
        else:
            server = await asyncio.start_unix_server(upper_echo, path, ssl=server_context())
            connect = asyncio.open_unix_connection(
                path, ssl=client_context(), server_hostname="localhost"
            )
        async with server:
            reader, writer = await connect
            assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
            assert subject_cn(writer.get_extra_info("peercert")) == "localhost"
            writer.write(b"first line\nsecond")
            writer.write(b" line\n")
            assert await reader.readline() == b"FIRST LINE\n"
            assert await reader.readline() == b"SECOND LINE\n"
            writer.close()
            await writer.wait_closed()
            assert await reader.read() == b""

    run(main())


def test_connect_accepted_socket_with_ssl(run, loop):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            connect = asyncio.ensure_future(connect_tls(loop, listener.getsockname()))
            sock, _ = await loop.sock_accept(listener)
            peer_transport, peer = await loop.connect_accepted_socket(
                Recorder, sock, ssl=server_context()
            )
            transport, protocol = await connect
            assert peer_transport.get_extra_info("ssl_object").server_side is True
            assert peer_transport.get_extra_info("socket").fileno() == sock.fileno()
            transport.write(b"accepted")
            assert await peer.received(8) == b"accepted"
            peer_transport.close()
            assert await protocol.lost is None
            assert await peer.lost is None

    run(main())


class Upgrading(Recorder):
    """A server protocol that answers b"STARTTLS\\n" with b"OK\\n" and upgrades at once: `tls`
    is the protocol for the TLS connection, `upgraded` the future of start_tls."""

    tls = upgraded = None

    def data_received(self, data):
        super().data_received(data)
        if self.data.endswith(b"STARTTLS\n"):
            self.transport.pause_reading()  # what follows is TLS, for the TLS protocol
            self.transport.write(b"OK\n")
            self.tls = Recorder()
            self.upgraded = asyncio.ensure_future(
                asyncio.get_running_loop().start_tls(
                    self.transport, self.tls, server_context(), server_side=True
                )
            )


async def plain_pair(loop, factory=Upgrading):
    """(server, client transport, client protocol, server protocol): plain TCP on loopback."""
    accepted = Accepted(factory)
    server = await loop.create_server(accepted, "127.0.0.1", 0)
    transport, protocol = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
    return server, transport, protocol, await accepted.get()


def test_start_tls_upgrades_both_sides_mid_stream(run, loop):
    async def main():
        server, transport, protocol, peer = await plain_pair(loop)
        async with server:
            transport.write(b"plain text\nSTARTTLS\n")
            assert await protocol.received(3) == b"OK\n"
            tls = Recorder()
            tls_transport = await loop.start_tls(
                transport, tls, client_context(), server_hostname="localhost"
            )
            peer_tls_transport = await peer.upgraded
            assert tls_transport.get_extra_info("ssl_object").server_side is False
            assert peer_tls_transport.get_extra_info("ssl_object").server_side is True
            assert subject_cn(tls_transport.get_extra_info("peercert")) == "localhost"
            assert transport.get_extra_info("ssl_object") is None  # the plain one stays plain
            tls_transport.write(b"secret")
            assert await peer.tls.received(6) == b"secret"
            peer_tls_transport.write(b"reply")
            assert await tls.received(5) == b"reply"
            tls_transport.close()
            assert await peer.tls.lost is None
            assert await tls.lost is None
            assert transport.is_closing()  # the TLS transport closed the plain one beneath
            # start_tls does not call connection_made on the protocol it is given...
            assert tls.order() == ["data", "eof", "lost"]
            assert peer.tls.order() == ["data", "eof", "lost"]
            # ...and the protocols it replaced hear nothing more.
            assert protocol.order() == ["made", "data"]
            assert peer.order() == ["made", "data"]
            assert peer.data == b"plain text\nSTARTTLS\n"

    run(main())


def test_stream_writer_start_tls(run, loop):
    async def upgrade(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.start_tls(server_context())  # server side: the writer knows it
        await upper_echo(reader, writer)

    async def main():
        async with await asyncio.start_server(upgrade, "127.0.0.1", 0) as server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"OK\n"
            assert writer.get_extra_info("ssl_object") is None
            await writer.start_tls(client_context(), server_hostname="localhost")
            assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
            writer.write(b"over tls\n")
            assert await reader.readline() == b"OVER TLS\n"
            writer.close()
            await writer.wait_closed()
            assert await reader.read() == b""

    run(main())


def test_start_tls_verification_failure_closes_the_transport(run, loop):
    async def main():
        server, transport, protocol, peer = await plain_pair(loop)
        async with server:
            transport.write(b"STARTTLS\n")
            await protocol.received(3)
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.start_tls(
                    transport,
                    Recorder(),
                    client_context("rogue-ca.pem"),
                    server_hostname="localhost",
                )
            assert transport.is_closing()
            with pytest.raises(ConnectionResetError):  # the server's handshake meets an EOF
                await peer.upgraded
            # asyncio tells the server's TLS protocol of the loss, though never of a connection.
            assert isinstance(await peer.tls.lost, ConnectionResetError)
            assert peer.tls.calls == ["lost"]
            assert protocol.order() == ["made", "data"]  # replaced: not told of the close

    run(main())


def test_start_tls_handshake_timeout(run, loop):
    async def main():
        server, transport, protocol, peer = await plain_pair(loop, Recorder)  # never upgrades
        async with server:
            with pytest.raises(ConnectionAbortedError) as info:
                await loop.start_tls(
                    transport,
                    Recorder(),
                    client_context(),
                    server_hostname="localhost",
                    ssl_handshake_timeout=0.2,
                )
            assert str(info.value) == (
                "SSL handshake is taking longer than 0.2 seconds: aborting the connection"
            )
            assert transport.is_closing()
            assert await peer.lost is None
            assert peer.data[:2] == b"\x16\x03"  # the ClientHello reached the server
            assert protocol.calls == ["made"]

    run(main())


def test_start_tls_argument_checks(run, loop):
    async def main():
        server, transport, protocol, peer = await plain_pair(loop, Recorder)
        udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 0))
        async with server:
            with pytest.raises(TypeError) as info:
                await loop.start_tls(transport, Recorder(), True)
            assert str(info.value) == (
                "sslcontext is expected to be an instance of ssl.SSLContext, got True"
            )
            with pytest.raises(TypeError) as info:
                await loop.start_tls(udp, Recorder(), client_context())
            assert str(info.value) == f"transport {udp!r} is not supported by start_tls()"
            for name in ("ssl_handshake_timeout", "ssl_shutdown_timeout"):
                with pytest.raises(ValueError) as info:
                    await loop.start_tls(transport, Recorder(), client_context(), **{name: 0})
                assert str(info.value) == f"{name} should be a positive number, got 0"
            # None of these touched the plain connection.
            assert transport.is_reading() and not transport.is_closing()
            transport.write(b"still plain")
            assert await peer.received(11) == b"still plain"
            assert protocol.calls == ["made"]
            udp.close()
            transport.close()

    run(main())


CONTEXT = client_context()
CONNECT = ["create_connection", "create_unix_connection"]
LISTEN = ["create_server", "create_unix_server", "connect_accepted_socket"]
ONLY_WITH_SSL = [
    (method, name)
    for method in CONNECT + LISTEN
    for name in ["ssl_handshake_timeout", "ssl_shutdown_timeout", "server_hostname"]
    if name != "server_hostname" or method in CONNECT
]


async def call(loop, method, **kwargs):
    """loop.<method>(Recorder, ...) with a valid address (or connected socket) and `kwargs`."""
    if method == "connect_accepted_socket":
        with socket.socket() as sock:
            return await loop.connect_accepted_socket(Recorder, sock, **kwargs)
    where = ["/nonexistent/s"] if "unix" in method else ["127.0.0.1", 0]
    return await getattr(loop, method)(Recorder, *where, **kwargs)


@pytest.mark.parametrize(("method", "name"), ONLY_WITH_SSL)
def test_tls_arguments_without_ssl(run, loop, method, name):
    with pytest.raises(ValueError) as info:
        run(call(loop, method, **{name: "localhost" if name == "server_hostname" else 1}))
    assert str(info.value) == f"{name} is only meaningful with ssl"


@pytest.mark.parametrize("method", ["create_server", "create_unix_server"])
def test_servers_reject_ssl_true(run, loop, method):
    with pytest.raises(TypeError) as info:
        run(call(loop, method, ssl=True))
    assert str(info.value) == "ssl argument must be an SSLContext or None"


def test_connections_without_a_host_need_server_hostname(run, loop):
    with pytest.raises(ValueError) as info, socket.socket() as sock:
        run(loop.create_connection(Recorder, sock=sock, ssl=CONTEXT))
    assert str(info.value) == "You must set server_hostname when using ssl without a host"
    with pytest.raises(ValueError) as info:
        run(call(loop, "create_unix_connection", ssl=CONTEXT))
    assert str(info.value) == "you have to pass server_hostname when using ssl"


@pytest.mark.parametrize("name", ["ssl_handshake_timeout", "ssl_shutdown_timeout"])
@pytest.mark.parametrize("value", [0, -1])
def test_tls_timeouts_must_be_positive(run, loop, name, value):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            with pytest.raises(ValueError) as info:
                await connect_tls(loop, listener.getsockname(), **{name: value})
            assert str(info.value) == f"{name} should be a positive number, got {value}"
            # create_server does not check them: each accepted connection fails instead.
            async with await loop.create_server(
                Recorder, "127.0.0.1", 0, ssl=server_context(), **{name: value}
            ) as server:
                with pytest.raises(ConnectionResetError):
                    await connect_tls(loop, server.sockets[0].getsockname())

    run(main())
