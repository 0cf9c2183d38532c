"""TCP connections and servers: create_connection, create_server, the Server object and
connect_accepted_socket, with asyncio's argument checks and error messages, and the context
protocol callbacks run in."""

import asyncio
import contextvars
import errno
import os
import socket
import struct

import pytest
from helpers_compat import CONNECTION_LOST_IN_CONNECTION_CONTEXT, bind_error
from helpers_net import Accepted, Recorder, connected_pair, iterations

#: What bind() raises for an address in use, which asyncio's bind error messages quote.
EADDRINUSE_ERROR = OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


def listen_backlog(sock):
    """The backlog a listening TCP socket was given (TCP_INFO's tcpi_sacked, on Linux)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 28)[0]


def is_listening(sock):
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


async def served(loop, accepted, address):
    """Connect a client to `address`; return (client transport, client protocol, server protocol)."""
    transport, protocol = await loop.create_connection(Recorder, *address[:2])
    return transport, protocol, await accepted.get()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_create_connection_to_host_and_port(run, loop, host):
    async def main():
        accepted = Accepted()
        async with await loop.create_server(accepted, host, 0) as server:
            address = server.sockets[0].getsockname()
            transport, protocol, peer = await served(loop, accepted, address)
            assert protocol.calls == ["made"] and protocol.transport is transport
            assert transport.get_extra_info("peername") == address
            assert peer.transport.get_extra_info("peername") == transport.get_extra_info("sockname")
            assert transport.get_extra_info("socket").family == server.sockets[0].family
            transport.write(b"hello")
            assert await peer.received(5) == b"hello"
            transport.close()
            assert await peer.lost is None
            assert await protocol.lost is None
            assert protocol.calls == ["made", "lost"]

    run(main())


def test_create_connection_with_a_connected_sock(run, loop):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            sock = socket.create_connection(listener.getsockname())
            transport, protocol = await loop.create_connection(Recorder, sock=sock)
            peer, _ = listener.accept()
        with peer:
            assert sock.getblocking() is False
            assert transport.get_extra_info("socket").fileno() == sock.fileno()
            assert transport.get_extra_info("peername") == peer.getsockname()
            peer.sendall(b"via sock")
            assert await protocol.received(8) == b"via sock"
        assert await protocol.lost is None  # the peer's close is an EOF, then connection_lost

    run(main())


def test_create_connection_local_addr(run, loop):
    async def main():
        accepted = Accepted()
        async with await loop.create_server(accepted, "127.0.0.1", 0) as server:
            address = server.sockets[0].getsockname()
            transport, _ = await loop.create_connection(
                Recorder, *address, local_addr=("127.0.0.2", 0)
            )
            peer = await accepted.get()
            assert transport.get_extra_info("sockname")[0] == "127.0.0.2"
            assert peer.transport.get_extra_info("peername") == transport.get_extra_info("sockname")
            transport.close()
            await peer.lost

    run(main())


def test_create_connection_local_addr_in_use(run, loop):
    async def main():
        with (
            socket.create_server(("127.0.0.1", 0)) as target,
            socket.create_server(("127.0.0.1", 0)) as busy,
        ):
            laddr = busy.getsockname()
            with pytest.raises(OSError) as info:
                await loop.create_connection(Recorder, *target.getsockname(), local_addr=laddr)
        assert info.value.errno == errno.EADDRINUSE
        assert info.value.strerror == bind_error(laddr, EADDRINUSE_ERROR)

    run(main())


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_UNSPEC])
def test_create_connection_family_and_happy_eyeballs(run, loop, family):
    async def main():
        accepted = Accepted()
        async with await loop.create_server(accepted, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            for kwargs in ({}, {"happy_eyeballs_delay": 0.25}, {"interleave": 2}):
                transport, _ = await loop.create_connection(
                    Recorder, "localhost", port, family=family, **kwargs
                )
                peer = await accepted.get()
                assert transport.get_extra_info("socket").family == socket.AF_INET
                transport.close()
                await peer.lost

    run(main())


BAD_CONNECTION_ARGS = [
    ({"host": "127.0.0.1", "port": 1, "sock": True}, "host/port and sock can not be specified at the same time"),
    ({"port": 1, "sock": True}, "host/port and sock can not be specified at the same time"),
    ({}, "host and port was not specified and no sock specified"),
    ({"host": "127.0.0.1", "port": 1, "server_hostname": "example.com"}, "server_hostname is only meaningful with ssl"),
    ({"sock": True, "ssl": None, "server_hostname": "example.com"}, "server_hostname is only meaningful with ssl"),
    ({"host": "127.0.0.1", "port": 1, "ssl_handshake_timeout": 1.0}, "ssl_handshake_timeout is only meaningful with ssl"),
    ({"host": "127.0.0.1", "port": 1, "ssl_shutdown_timeout": 1.0}, "ssl_shutdown_timeout is only meaningful with ssl"),
    ({"sock": socket.SOCK_DGRAM}, "A Stream Socket was expected, got {sock!r}"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), BAD_CONNECTION_ARGS)
def test_create_connection_bad_arguments(run, loop, kwargs, message):
    kwargs = dict(kwargs)
    kind = kwargs.pop("sock", None)
    with socket.socket(
        type=socket.SOCK_DGRAM if kind == socket.SOCK_DGRAM else socket.SOCK_STREAM
    ) as sock:
        if kind is not None:
            kwargs["sock"] = sock
        with pytest.raises(ValueError) as info:
            run(loop.create_connection(Recorder, **kwargs))
        assert str(info.value) == message.format(sock=sock)
        assert sock.fileno() >= 0  # a socket the caller gave stays open


def test_create_server_on_every_interface_with_port_0(run, loop):
    async def main():
        accepted = Accepted()
        async with await loop.create_server(accepted, None, 0) as server:
            passive = socket.getaddrinfo(None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            assert sorted(s.family for s in server.sockets) == sorted({i[0] for i in passive})
            for sock in server.sockets:
                assert is_listening(sock) and sock.getsockname()[1] != 0
                if sock.family == socket.AF_INET6:
                    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
                    host = "::1"
                else:
                    host = "127.0.0.1"
                transport, _, peer = await served(loop, accepted, (host, sock.getsockname()[1]))
                transport.close()
                await peer.lost

    run(main())


def test_create_server_on_a_list_of_hosts(run, loop):
    async def main():
        accepted = Accepted()
        hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.1"]  # a repeated host is bound once
        async with await loop.create_server(accepted, hosts, 0) as server:
            addresses = sorted(s.getsockname() for s in server.sockets)
            assert [host for host, _ in addresses] == ["127.0.0.1", "127.0.0.2"]
            for address in addresses:
                transport, _, peer = await served(loop, accepted, address)
                assert peer.transport.get_extra_info("sockname") == address
                transport.close()
                await peer.lost

    run(main())


@pytest.mark.parametrize(("reuse_address", "expected"), [(None, 1), (True, 1), (False, 0)])
def test_create_server_reuse_address(run, loop, reuse_address, expected):
    async def main():
        server = await loop.create_server(Recorder, "127.0.0.1", 0, reuse_address=reuse_address)
        async with server:
            sock = server.sockets[0]
            assert bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)) == expected

    run(main())


def test_create_server_reuse_port_and_address_in_use(run, loop):
    async def main():
        first = await loop.create_server(Recorder, "127.0.0.1", 0, reuse_port=True)
        address = first.sockets[0].getsockname()
        assert first.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        second = await loop.create_server(Recorder, *address, reuse_port=True)
        assert second.sockets[0].getsockname() == address
        with pytest.raises(OSError) as info:
            await loop.create_server(Recorder, *address)
        assert info.value.errno == errno.EADDRINUSE
        assert info.value.strerror == bind_error(address, EADDRINUSE_ERROR)
        for server in (first, second):
            server.close()
            await server.wait_closed()

    run(main())


def test_create_server_start_serving_false_then_start_serving(run, loop):
    async def main():
        accepted = Accepted()
        server = await loop.create_server(accepted, "127.0.0.1", 0, start_serving=False)
        async with server:
            address = server.sockets[0].getsockname()
            assert not server.is_serving()
            assert not is_listening(server.sockets[0])  # asyncio calls listen() when serving
            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(Recorder, *address)
            await server.start_serving()
            assert server.is_serving() and is_listening(server.sockets[0])
            transport, _, peer = await served(loop, accepted, address)
            transport.close()
            await peer.lost

    run(main())


@pytest.mark.parametrize("backlog", [None, 7])
def test_create_server_backlog(run, loop, backlog):
    async def main():
        kwargs = {} if backlog is None else {"backlog": backlog}
        async with await loop.create_server(Recorder, "127.0.0.1", 0, **kwargs) as server:
            assert listen_backlog(server.sockets[0]) == (backlog or 100)  # asyncio's default

    run(main())


def test_create_server_with_sock(run, loop):
    async def main():
        accepted = Accepted()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        async with await loop.create_server(accepted, sock=sock) as server:
            assert [s.fileno() for s in server.sockets] == [sock.fileno()]
            assert sock.getblocking() is False and is_listening(sock)
            transport, _, peer = await served(loop, accepted, sock.getsockname())
            transport.close()
            await peer.lost
        assert sock.fileno() == -1  # the server owned the socket and closed it

    run(main())


def test_create_server_bad_arguments(run, loop):
    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        cases = [
            ({"host": "127.0.0.1", "port": 0, "sock": tcp}, ValueError, "host/port and sock can not be specified at the same time"),
            ({}, ValueError, "Neither host/port nor sock were specified"),
            ({"sock": udp}, ValueError, f"A Stream Socket was expected, got {udp!r}"),
            ({"port": 0, "ssl": True}, TypeError, "ssl argument must be an SSLContext or None"),
            ({"port": 0, "ssl_handshake_timeout": 1}, ValueError, "ssl_handshake_timeout is only meaningful with ssl"),
        ]  # fmt: skip
        for kwargs, exc_type, message in cases:
            with pytest.raises(exc_type) as info:
                run(loop.create_server(Recorder, **kwargs))
            assert str(info.value) == message


def test_server_close_and_wait_closed(run, loop):
    async def main():
        server = await loop.create_server(Recorder, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        assert server.get_loop() is loop
        assert server.is_serving()
        server.close()
        assert not server.is_serving()
        assert server.sockets == ()
        await server.wait_closed()
        server.close()  # a second close is a no-op
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, *address)

    run(main())


def test_server_wait_closed_waits_for_open_connections(run, loop):
    async def main():
        accepted = Accepted()
        server = await loop.create_server(accepted, "127.0.0.1", 0)
        transport, _, peer = await served(loop, accepted, server.sockets[0].getsockname())
        closed = asyncio.ensure_future(server.wait_closed())
        # In 3.11 a wait_closed() begun after close() returns at once, even with connections
        # open; one already waiting when close() is called waits for them to end.
        await asyncio.sleep(0)
        server.close()
        await iterations()
        assert not closed.done()  # the accepted connection is still open ...
        transport.write(b"still served")  # ... and still works
        assert await peer.received(12) == b"still served"
        transport.close()
        await peer.lost
        await closed

    run(main())


def test_server_serve_forever_cancelled(run, loop):
    async def main():
        server = await loop.create_server(Recorder, "127.0.0.1", 0, start_serving=False)
        forever = asyncio.ensure_future(server.serve_forever())
        await iterations(2)
        assert server.is_serving()
        with pytest.raises(RuntimeError) as info:
            await server.serve_forever()
        assert str(info.value) == f"server {server!r} is already being awaited on serve_forever()"
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        assert not server.is_serving() and server.sockets == ()  # cancelling closed it
        with pytest.raises(RuntimeError) as info:
            await server.serve_forever()
        assert str(info.value) == f"server {server!r} is closed"

    run(main())


def test_server_serve_forever_ends_when_closed(run, loop):
    async def main():
        server = await loop.create_server(Recorder, "127.0.0.1", 0)
        forever = asyncio.ensure_future(server.serve_forever())
        loop.call_soon(server.close)
        with pytest.raises(asyncio.CancelledError):
            await forever

    run(main())


def test_server_async_with(run, loop):
    async def main():
        async with await loop.create_server(Recorder, "127.0.0.1", 0) as server:
            assert server.is_serving()
            sock = server.sockets[0]
        assert not server.is_serving() and server.sockets == ()
        assert sock.fileno() == -1

    run(main())


def test_connect_accepted_socket(run, loop):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            conn, _ = listener.accept()
        client.setblocking(False)
        with client:
            transport, protocol = await loop.connect_accepted_socket(Recorder, conn)
            assert conn.getblocking() is False
            assert transport.get_extra_info("peername") == client.getsockname()
            await loop.sock_sendall(client, b"ping")
            assert await protocol.received(4) == b"ping"
            transport.write(b"pong")
            assert await loop.sock_recv(client, 100) == b"pong"
            transport.close()
            assert await loop.sock_recv(client, 100) == b""
        assert await protocol.lost is None

    run(main())


def test_connect_accepted_socket_bad_arguments(run, loop):
    with socket.socket(type=socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        with pytest.raises(ValueError) as info:
            run(loop.connect_accepted_socket(Recorder, udp))
        assert str(info.value) == f"A Stream Socket was expected, got {udp!r}"
        with pytest.raises(
            ValueError, match=r"^ssl_handshake_timeout is only meaningful with ssl$"
        ):
            run(loop.connect_accepted_socket(Recorder, tcp, ssl_handshake_timeout=1))


VAR = contextvars.ContextVar("VAR", default="unset")


class ContextRecorder(Recorder):
    """Records (callback, value of VAR) for every callback in `seen`."""

    def __init__(self, reply=False):
        super().__init__()
        self.reply = reply
        self.seen = []

    def connection_made(self, transport):
        self.seen.append(("made", VAR.get()))
        super().connection_made(transport)

    def data_received(self, data):
        self.seen.append(("data", VAR.get()))
        super().data_received(data)
        if self.reply:
            self.transport.write(data)
            self.transport.close()

    def eof_received(self):
        self.seen.append(("eof", VAR.get()))
        return super().eof_received()

    def connection_lost(self, exc):
        self.seen.append(("lost", VAR.get()))
        super().connection_lost(exc)

    def values(self):
        return {value for _, value in self.seen}


def test_protocol_callbacks_run_in_the_creating_context(run, loop):
    async def main():
        servers = []

        def server_factory():
            servers.append(ContextRecorder(reply=True))
            return servers[-1]

        VAR.set("server")
        server = await loop.create_server(server_factory, "127.0.0.1", 0)
        VAR.set("client")
        transport, client = await loop.create_connection(
            ContextRecorder, *server.sockets[0].getsockname()
        )
        VAR.set("later")  # the callbacks run in a copy made when the connection was created
        transport.write(b"echo")
        assert await client.lost is None and await servers[0].lost is None
        assert client.order() == ["made", "data", "eof", "lost"]
        assert (client.values(), servers[0].values()) == ({"client"}, {"server"})
        server.close()

    run(main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_the_context_connection_lost_runs_in_after_close(run, loop, how):
    # asyncio's close() and abort() schedule connection_lost() with call_soon(), which copies
    # the context of their caller: not the one the connection was created in. Since 3.15 the
    # transport schedules it in the connection's context, as its other callbacks.
    lost_in = "creator" if CONNECTION_LOST_IN_CONNECTION_CONTEXT else "closer"

    async def main():
        VAR.set("creator")
        transport, protocol, peer = await connected_pair(ContextRecorder)
        VAR.set("closer")
        getattr(transport, how)()
        VAR.set("after")
        assert await protocol.lost is None
        peer.close()
        assert protocol.seen == [("made", "creator"), ("lost", lost_in)]

    run(main())
