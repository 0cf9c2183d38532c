"""A ``socket.socket`` subclass that overrides the methods asyncio's transport calls (issue 14,
point 2): asyncio's transport reads, writes and accepts through the socket's own methods, so the
overrides run (websockets' legacy tests count them to prove their socket was used). ferroloop's
Rust transport uses the fd directly for a plain socket and for a subclass that overrides none of
them; for one that does, it makes asyncio's transport, as the oracle does."""

import asyncio
import socket

import pytest
from helpers_net import Recorder, client_context, server_context


class Tracked(socket.socket):
    """Counts the calls of the I/O methods a transport may use."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.used = []

    def recv(self, *args):
        self.used.append("recv")
        return super().recv(*args)

    def recv_into(self, *args):
        self.used.append("recv_into")
        return super().recv_into(*args)

    def send(self, *args):
        self.used.append("send")
        return super().send(*args)

    def sendmsg(self, *args):
        self.used.append("sendmsg")
        return super().sendmsg(*args)


class TrackedListener(socket.socket):
    """A listening socket whose accept() is counted and returns Tracked sockets."""

    accepted = 0

    def accept(self):
        fd, addr = self._accept()
        type(self).accepted += 1
        return Tracked(self.family, self.type, self.proto, fileno=fd), addr


class Inert(socket.socket):
    """A subclass that overrides none of them."""


def tracked_pair():
    a, b = socket.socketpair()
    tracked = Tracked(a.family, a.type, a.proto, fileno=a.detach())
    tracked.setblocking(False)
    b.setblocking(False)
    return tracked, b


async def echo_once(transport, protocol, peer):
    """Data both ways through `transport`; `peer` is the raw socket at the other end."""
    loop = asyncio.get_running_loop()
    transport.write(b"ping")
    assert await loop.sock_recv(peer, 4) == b"ping"
    await loop.sock_sendall(peer, b"pong")
    assert await protocol.received(4) == b"pong"


def test_create_connection_with_a_subclass_socket_calls_its_methods(run, loop):
    async def main():
        sock, peer = tracked_pair()
        transport, protocol = await loop.create_connection(Recorder, sock=sock)
        await echo_once(transport, protocol, peer)
        assert {"recv", "recv_into"} & set(sock.used)
        assert {"send", "sendmsg"} & set(sock.used)
        assert isinstance(transport, asyncio.Transport)
        transport.close()
        assert await protocol.lost is None
        peer.close()

    run(main())


def test_connect_accepted_socket_with_a_subclass_socket_calls_its_methods(run, loop):
    async def main():
        sock, peer = tracked_pair()
        transport, protocol = await loop.connect_accepted_socket(Recorder, sock)
        await echo_once(transport, protocol, peer)
        assert {"recv", "recv_into"} & set(sock.used)
        assert {"send", "sendmsg"} & set(sock.used)
        transport.write_eof()
        assert await loop.sock_recv(peer, 1) == b""
        transport.close()
        peer.close()

    run(main())


def test_a_server_on_a_subclass_socket_accepts_with_its_accept(run, loop):
    async def main():
        TrackedListener.accepted = 0
        listener = TrackedListener(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        made = loop.create_future()

        def factory():
            protocol = Recorder()
            if not made.done():
                made.set_result(protocol)
            return protocol

        server = await loop.create_server(factory, sock=listener)
        client = socket.create_connection(listener.getsockname())
        client.setblocking(False)
        protocol = await made
        await protocol.made
        assert TrackedListener.accepted == 1
        await echo_once(protocol.transport, protocol, client)
        # The accepted socket is the Tracked one accept() returned, read through its methods.
        assert protocol.transport.get_extra_info("socket").fileno() != -1
        client.close()
        assert await protocol.lost is None
        server.close()
        await server.wait_closed()

    run(main())


@pytest.mark.parametrize("cls", [socket.socket, Inert])
def test_sockets_that_override_nothing_keep_the_direct_path(run, loop, loop_name, cls):
    async def main():
        a, peer = socket.socketpair()
        sock = cls(a.family, a.type, a.proto, fileno=a.detach())
        sock.setblocking(False)
        peer.setblocking(False)
        transport, protocol = await loop.create_connection(Recorder, sock=sock)
        await echo_once(transport, protocol, peer)
        if loop_name == "ferroloop":
            assert type(transport).__module__ == "ferroloop._transports"
        transport.close()
        peer.close()

    run(main())


def test_tls_over_a_subclass_socket_calls_its_methods(run, loop):
    async def main():
        received = loop.create_future()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data.upper())

        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_context())
        plain = socket.create_connection(server.sockets[0].getsockname())
        sock = Tracked(plain.family, plain.type, plain.proto, fileno=plain.detach())
        sock.setblocking(False)

        class Client(asyncio.Protocol):
            def data_received(self, data):
                received.set_result(data)

        transport, _ = await loop.create_connection(
            Client, sock=sock, ssl=client_context(), server_hostname="localhost"
        )
        transport.write(b"tls")
        assert await received == b"TLS"
        assert {"recv", "recv_into"} & set(sock.used)
        assert {"send", "sendmsg"} & set(sock.used)
        transport.close()
        server.close()
        await server.wait_closed()

    run(main())
