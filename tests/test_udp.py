"""Datagram endpoints: create_datagram_endpoint (local_addr, remote_addr, sock=, reuse_port,
allow_broadcast, UNIX datagram sockets) and the DatagramTransport (sendto, datagram_received,
error_received, get_write_buffer_size, close, abort), with asyncio's argument checks."""

import asyncio
import contextvars
import errno
import logging
import os
import shutil
import socket
import tempfile

import pytest
from helpers_compat import (
    DATAGRAM_HEADER_SIZE,
    DATAGRAM_SENT_RELEASES_HEADER,
    DATAGRAM_SOCKET_EXPECTED,
    SENDTO_SENDS_EMPTY_DATAGRAMS,
)
from helpers_net import iterations, leaked_fds, open_fds


class Datagrams(asyncio.DatagramProtocol):
    """Records callbacks in `calls`; datagrams and errors arrive through queues."""

    def __init__(self):
        self.calls = []
        self.datagrams = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.calls.append("made")
        self.transport = transport

    def datagram_received(self, data, addr):
        assert type(data) is bytes
        self.calls.append("datagram")
        self.datagrams.put_nowait((data, addr))

    def error_received(self, exc):
        self.calls.append("error")
        self.errors.put_nowait(exc)

    def connection_lost(self, exc):
        self.calls.append("lost")
        self.lost.set_result(exc)


def sockopt(transport, option):
    return transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, option)


def closed_udp_port():
    with socket.socket(type=socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()


@pytest.fixture
def sock_dir():
    path = tempfile.mkdtemp(prefix="fl-")
    yield path
    shutil.rmtree(path)


def test_sendto_and_datagram_received(run, loop):
    async def main():
        a, pa = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        b, pb = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        a_addr, b_addr = a.get_extra_info("sockname"), b.get_extra_info("sockname")
        assert a.get_extra_info("peername") is None
        assert a.get_extra_info("socket").type == socket.SOCK_DGRAM
        a.sendto(b"ping", b_addr)
        a.sendto(bytearray(b"ping 2"), b_addr)
        assert await pb.datagrams.get() == (b"ping", a_addr)
        assert await pb.datagrams.get() == (b"ping 2", a_addr)
        b.sendto(memoryview(b"pong"), a_addr)
        assert await pa.datagrams.get() == (b"pong", b_addr)
        big = bytes(range(256)) * 255  # 65280 bytes in one datagram
        a.sendto(big, b_addr)
        assert await pb.datagrams.get() == (big, a_addr)
        assert a.get_write_buffer_size() == 0
        for transport, protocol in ((a, pa), (b, pb)):
            transport.close()
            assert transport.is_closing()
            assert await protocol.lost is None
        assert pa.calls == ["made", "datagram", "lost"]

    run(main())


def test_remote_addr_connects_the_socket(run, loop):
    async def main():
        server, ps = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        address = server.get_extra_info("sockname")
        client, pc = await loop.create_datagram_endpoint(Datagrams, remote_addr=address)
        assert client.get_extra_info("peername") == address
        client.sendto(b"to the peer")
        client.sendto(b"named", address)
        with pytest.raises(ValueError) as info:
            client.sendto(b"elsewhere", ("127.0.0.1", 9))
        assert str(info.value) == f"Invalid address: must be None or {address}"
        assert await ps.datagrams.get() == (b"to the peer", client.get_extra_info("sockname"))
        assert (await ps.datagrams.get())[0] == b"named"
        server.sendto(b"reply", client.get_extra_info("sockname"))
        assert await pc.datagrams.get() == (b"reply", address)
        client.close()
        server.close()
        await pc.lost
        await ps.lost

    run(main())


def test_error_received_for_a_port_unreachable(run, loop):
    async def main():
        transport, protocol = await loop.create_datagram_endpoint(
            Datagrams, remote_addr=closed_udp_port()
        )
        transport.sendto(b"anyone?")  # the ICMP reply makes the next socket call fail
        assert isinstance(await protocol.errors.get(), ConnectionRefusedError)
        assert not transport.is_closing()  # errors on a datagram transport are not fatal
        assert protocol.calls == ["made", "error"]
        transport.close()
        assert await protocol.lost is None

    run(main())


def test_error_received_for_an_oversized_datagram(run, loop):
    async def main():
        transport, protocol = await loop.create_datagram_endpoint(
            Datagrams, local_addr=("127.0.0.1", 0)
        )
        transport.sendto(b"x" * 70000, transport.get_extra_info("sockname"))
        exc = await protocol.errors.get()
        assert type(exc) is OSError and exc.errno == errno.EMSGSIZE
        assert not transport.is_closing()
        transport.abort()
        assert await protocol.lost is None
        assert protocol.calls == ["made", "error", "lost"]

    run(main())


def test_endpoint_with_sock(run, loop):
    async def main():
        sock = socket.socket(type=socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        transport, protocol = await loop.create_datagram_endpoint(Datagrams, sock=sock)
        assert sock.getblocking() is False
        assert transport.get_extra_info("socket").fileno() == sock.fileno()
        assert transport.get_extra_info("sockname") == sock.getsockname()
        transport.sendto(b"self", sock.getsockname())
        assert await protocol.datagrams.get() == (b"self", sock.getsockname())
        transport.close()
        await protocol.lost
        assert sock.fileno() == -1

    run(main())


def test_endpoint_bad_arguments(run, loop):
    with socket.socket(type=socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        cases = [
            ({"sock": tcp}, ValueError, DATAGRAM_SOCKET_EXPECTED.format(tcp)),
            ({"sock": udp, "local_addr": ("127.0.0.1", 0), "reuse_port": True}, ValueError,
             "socket modifier keyword arguments can not be used when sock is specified. "
             "(local_addr=('127.0.0.1', 0), reuse_port=True)"),
            ({}, ValueError, "unexpected address family"),
            ({"local_addr": ("127.0.0.1",)}, TypeError, "2-tuple is expected"),
            ({"remote_addr": "127.0.0.1:9"}, TypeError, "2-tuple is expected"),
            ({"family": socket.AF_UNIX, "local_addr": ("127.0.0.1", 0)}, TypeError, "string is expected"),
        ]  # fmt: skip
        for kwargs, exc_type, message in cases:
            with pytest.raises(exc_type) as info:
                run(loop.create_datagram_endpoint(Datagrams, **kwargs))
            assert str(info.value) == message
        assert udp.fileno() >= 0 and tcp.fileno() >= 0


def test_sendto_argument_types(run, loop):
    async def main():
        transport, protocol = await loop.create_datagram_endpoint(
            Datagrams, local_addr=("127.0.0.1", 0)
        )
        for bad in ("text", 3, None):
            with pytest.raises(TypeError) as info:
                transport.sendto(bad, ("127.0.0.1", 9))
            assert str(info.value) == (
                f"data argument must be a bytes-like object, not {type(bad).__name__!r}"
            )
        transport.sendto(b"", transport.get_extra_info("sockname"))  # ignored before 3.13
        transport.sendto(b"after", transport.get_extra_info("sockname"))
        if SENDTO_SENDS_EMPTY_DATAGRAMS:
            assert (await protocol.datagrams.get())[0] == b""
        assert (await protocol.datagrams.get())[0] == b"after"
        transport.close()
        await protocol.lost

    run(main())


@pytest.mark.parametrize(
    ("addr", "exc_type"), [(None, TypeError), (("127.0.0.1", 70000), OverflowError)]
)
def test_sendto_an_invalid_address_is_fatal(run, loop, addr, exc_type):
    # socket.sendto() raises something other than an OSError: asyncio reports it as a fatal
    # error and closes the transport, where an OSError would go to error_received().
    async def main():
        handled = []
        loop.set_exception_handler(lambda _loop, context: handled.append(context))
        transport, protocol = await loop.create_datagram_endpoint(
            Datagrams, local_addr=("127.0.0.1", 0)
        )
        transport.sendto(b"where to?", addr)  # unconnected, so an address is needed
        await iterations()
        assert protocol.lost.done()
        exc = protocol.lost.result()
        assert type(exc) is exc_type
        assert [(c["message"], c["exception"]) for c in handled] == [
            ("Fatal write error on datagram transport", exc)
        ]
        assert handled[0]["transport"] is transport and handled[0]["protocol"] is protocol
        assert protocol.calls == ["made", "lost"] and transport.is_closing()

    run(main())


def test_reuse_port(run, loop):
    async def main():
        first, p1 = await loop.create_datagram_endpoint(
            Datagrams, local_addr=("127.0.0.1", 0), reuse_port=True
        )
        address = first.get_extra_info("sockname")
        second, p2 = await loop.create_datagram_endpoint(
            Datagrams, local_addr=address, reuse_port=True
        )
        assert second.get_extra_info("sockname") == address
        assert sockopt(first, socket.SO_REUSEPORT) == sockopt(second, socket.SO_REUSEPORT) == 1
        with pytest.raises(OSError) as info:  # without reuse_port, the address is taken
            await loop.create_datagram_endpoint(Datagrams, local_addr=address)
        assert info.value.errno == errno.EADDRINUSE
        for transport, protocol in ((first, p1), (second, p2)):
            transport.close()
            await protocol.lost

    run(main())


def test_allow_broadcast(run, loop):
    async def main():
        server, ps = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        assert sockopt(server, socket.SO_BROADCAST) == 0
        address = server.get_extra_info("sockname")
        client, pc = await loop.create_datagram_endpoint(
            Datagrams, remote_addr=address, allow_broadcast=True
        )
        assert sockopt(client, socket.SO_BROADCAST) != 0
        assert client.get_extra_info("peername") is None  # with allow_broadcast: not connected
        client.sendto(b"to the remote address")
        assert (await ps.datagrams.get())[0] == b"to the remote address"
        for transport, protocol in ((client, pc), (server, ps)):
            transport.close()
            await protocol.lost

    run(main())


def test_writes_to_a_closed_connected_endpoint_are_logged(run, loop, caplog):
    async def main():
        transport, protocol = await loop.create_datagram_endpoint(
            Datagrams, remote_addr=closed_udp_port()
        )
        transport.close()
        await protocol.lost
        counts = []
        for _ in range(7):
            transport.sendto(b"lost")  # never raises
            counts.append(caplog.text.count("socket.send() raised exception."))
        assert counts == [0, 0, 0, 0, 1, 2, 3]

    caplog.set_level(logging.WARNING, logger="asyncio")
    run(main())


VAR = contextvars.ContextVar("VAR", default="unset")


class ContextDatagrams(Datagrams):
    """Also records (callback, value of VAR) for every callback in `seen`."""

    def connection_made(self, transport):
        self.seen = [("made", VAR.get())]
        super().connection_made(transport)

    def datagram_received(self, data, addr):
        self.seen.append(("datagram", VAR.get()))
        super().datagram_received(data, addr)

    def connection_lost(self, exc):
        self.seen.append(("lost", VAR.get()))
        super().connection_lost(exc)


def test_callback_contexts(run, loop):
    # Callbacks run in the context the endpoint was created in, except connection_lost(),
    # which close() schedules with call_soon() from its caller's context.
    async def main():
        VAR.set("creator")
        transport, protocol = await loop.create_datagram_endpoint(
            ContextDatagrams, local_addr=("127.0.0.1", 0)
        )
        VAR.set("sender")
        transport.sendto(b"self", transport.get_extra_info("sockname"))
        await protocol.datagrams.get()
        VAR.set("closer")
        transport.close()
        VAR.set("after")
        await protocol.lost
        assert protocol.seen == [("made", "creator"), ("datagram", "creator"), ("lost", "closer")]

    run(main())


def test_unix_datagram_endpoints(run, loop, sock_dir):
    a_path, b_path = os.path.join(sock_dir, "a"), os.path.join(sock_dir, "b")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stale:
        stale.bind(a_path)  # left behind, and removed by create_datagram_endpoint

    async def main():
        unix = socket.AF_UNIX
        a, pa = await loop.create_datagram_endpoint(Datagrams, local_addr=a_path, family=unix)
        b, pb = await loop.create_datagram_endpoint(Datagrams, local_addr=b_path, family=unix)
        assert a.get_extra_info("sockname") == a_path
        a.sendto(b"hello b", b_path)
        assert await pb.datagrams.get() == (b"hello b", a_path)
        c, pc = await loop.create_datagram_endpoint(Datagrams, remote_addr=a_path, family=unix)
        assert c.get_extra_info("peername") == a_path
        c.sendto(b"from an unbound socket")
        data, addr = await pa.datagrams.get()
        assert data == b"from an unbound socket" and not addr  # None or "": no name
        for transport, protocol in ((a, pa), (b, pb), (c, pc)):
            transport.close()
            assert await protocol.lost is None

    run(main())


def test_get_write_buffer_size_of_queued_datagrams(run, loop, sock_dir):
    # A datagram the socket does not take at once is queued, and counted in
    # get_write_buffer_size(): its bytes and, since 3.13, DATAGRAM_HEADER_SIZE more, which the
    # datagram takes off again when it is sent (except on 3.13.0, where the header stays counted).
    # An AF_UNIX peer that does not read makes the sender's socket refuse datagrams.
    path = os.path.join(sock_dir, "peer")
    unix = socket.AF_UNIX
    with socket.socket(unix, socket.SOCK_DGRAM) as peer:
        peer.bind(path)
        peer.setblocking(False)

        async def main():
            transport, protocol = await loop.create_datagram_endpoint(
                Datagrams, remote_addr=path, family=unix
            )
            taken = 0
            while transport.get_write_buffer_size() == 0:  # until one is queued
                transport.sendto(b"x" * 100)
                taken += 1
                assert taken < 100_000, "the socket never refused a datagram"
            for data in (b"y" * 10, bytearray(b"z" * 20), b""):
                transport.sendto(data)  # queued behind it (b"" before 3.13: ignored)
            queued = [100, 10, 20] + ([0] if SENDTO_SENDS_EMPTY_DATAGRAMS else [])
            header = DATAGRAM_HEADER_SIZE
            assert transport.get_write_buffer_size() == sum(queued) + header * len(queued)
            received = [await loop.sock_recv(peer, 1024) for _ in range(taken + len(queued) - 1)]
            assert (
                received[-len(queued) :] == [b"x" * 100, b"y" * 10, b"z" * 20, b""][: len(queued)]
            )
            left = 0 if DATAGRAM_SENT_RELEASES_HEADER else header * len(queued)
            assert transport.get_write_buffer_size() == left
            transport.close()
            assert await protocol.lost is None

        run(main())


def test_datagram_endpoints_leak_no_fd(run, loop):
    async def main():
        before = open_fds()
        target = closed_udp_port()
        for i in range(10):
            kwargs = {"remote_addr": target} if i % 2 else {"local_addr": ("127.0.0.1", 0)}
            transport, protocol = await loop.create_datagram_endpoint(Datagrams, **kwargs)
            transport.sendto(b"x", target)
            if i % 3:
                transport.abort()
            else:
                transport.close()
            await protocol.lost
        with pytest.raises(OSError):
            await loop.create_datagram_endpoint(Datagrams, local_addr=("192.0.2.1", 0))
        assert leaked_fds(before) == set()

    run(main())


# -- several datagrams waiting at once ------------------------------------------------------------
# ferroloop reads up to a batch of datagrams per readable event where asyncio reads one; these
# tests pin what must not change: every datagram once, in order, and pause_reading(), close() or
# set_protocol() inside datagram_received() taking effect from the next datagram on.


async def queued_endpoint(loop, protocol_factory, count):
    """A server endpoint with `count` datagrams already waiting in its socket (sent from a plain
    socket before the loop looks at it again), and that socket's address."""
    server, protocol = await loop.create_datagram_endpoint(
        protocol_factory, local_addr=("127.0.0.1", 0)
    )
    address = server.get_extra_info("sockname")
    with socket.socket(type=socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        for i in range(count):
            sender.sendto(b"%d" % i, address)
        return server, protocol, sender.getsockname()


def test_queued_datagrams_all_delivered_in_order(run, loop):
    async def main():
        server, protocol, sender = await queued_endpoint(loop, Datagrams, 100)
        got = [await protocol.datagrams.get() for _ in range(100)]
        assert got == [(b"%d" % i, sender) for i in range(100)]
        server.close()
        await protocol.lost
        assert protocol.calls == ["made"] + ["datagram"] * 100 + ["lost"]

    run(main())


class PausesAfterFirst(Datagrams):
    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        if len(self.calls) == 2:
            self.transport.pause_reading()


def test_pause_reading_inside_datagram_received_stops_delivery(run, loop):
    async def main():
        server, protocol, sender = await queued_endpoint(loop, PausesAfterFirst, 5)
        assert await protocol.datagrams.get() == (b"0", sender)
        await iterations()
        assert protocol.datagrams.empty() and not server.is_reading()
        server.resume_reading()
        got = [await protocol.datagrams.get() for _ in range(4)]
        assert got == [(b"%d" % i, sender) for i in range(1, 5)]
        server.close()
        await protocol.lost

    run(main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_inside_datagram_received_stops_delivery(run, loop, how):
    class Closes(Datagrams):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            getattr(self.transport, how)()

    async def main():
        server, protocol, sender = await queued_endpoint(loop, Closes, 5)
        assert await protocol.lost is None
        await iterations()
        assert protocol.calls == ["made", "datagram", "lost"]
        assert protocol.datagrams.get_nowait() == (b"0", sender)

    run(main())


def test_set_protocol_inside_datagram_received(run, loop):
    async def main():
        second = Datagrams()

        class Hands(Datagrams):
            def datagram_received(self, data, addr):
                super().datagram_received(data, addr)
                self.transport.set_protocol(second)

        server, first, sender = await queued_endpoint(loop, Hands, 4)
        got = [await second.datagrams.get() for _ in range(3)]
        assert got == [(b"%d" % i, sender) for i in range(1, 4)]
        assert first.calls == ["made", "datagram"]
        assert server.get_protocol() is second
        server.close()
        await iterations()
        assert second.calls == ["datagram"] * 3 + ["lost"]

    run(main())


def test_datagram_received_errors_reported_and_reading_goes_on(run, loop):
    class Fails(Datagrams):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data in (b"1", b"2"):
                raise ZeroDivisionError(data)

    async def main():
        handled = []
        loop.set_exception_handler(lambda _loop, context: handled.append(context))
        server, protocol, sender = await queued_endpoint(loop, Fails, 4)
        got = [await protocol.datagrams.get() for _ in range(4)]
        assert got == [(b"%d" % i, sender) for i in range(4)]
        assert [c["exception"].args for c in handled] == [(b"1",), (b"2",)]
        assert not server.is_closing()
        server.close()
        await protocol.lost

    run(main())


def test_addresses_of_many_peers(run, loop):
    # More peers than ferroloop caches addresses of, each sending twice: every datagram carries
    # its own sender's address.
    async def main():
        server, protocol = await loop.create_datagram_endpoint(
            Datagrams, local_addr=("127.0.0.1", 0)
        )
        address = server.get_extra_info("sockname")
        senders = [socket.socket(type=socket.SOCK_DGRAM) for _ in range(150)]
        try:
            for s in senders:
                s.bind(("127.0.0.1", 0))
            for _ in range(2):
                for i, s in enumerate(senders):
                    s.sendto(b"%d" % i, address)
                    if i % 10 == 9:
                        await iterations(1)
                for i, s in enumerate(senders):
                    assert await protocol.datagrams.get() == (b"%d" % i, s.getsockname())
        finally:
            for s in senders:
                s.close()
        server.close()
        await protocol.lost

    run(main())


def test_sendto_reuses_no_stale_destination(run, loop):
    # The same tuple object, an equal new one and other destinations interleaved: each datagram
    # goes where its own address says, including replies to a received address.
    async def main():
        a, pa = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        b, pb = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        c, pc = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        b_addr, c_addr = b.get_extra_info("sockname"), c.get_extra_info("sockname")
        a_addr = a.get_extra_info("sockname")
        for dest in (b_addr, c_addr, b_addr, tuple(list(b_addr)), c_addr, ("127.0.0.1", b_addr[1])):
            a.sendto(b"to %d" % dest[1], dest)
        expected_b = [(b"to %d" % b_addr[1], a_addr)] * 4
        expected_c = [(b"to %d" % c_addr[1], a_addr)] * 2
        assert [await pb.datagrams.get() for _ in range(4)] == expected_b
        assert [await pc.datagrams.get() for _ in range(2)] == expected_c
        _, from_b = expected_b[0]
        b.sendto(b"reply", from_b)
        c.sendto(b"reply", from_b)
        assert [await pa.datagrams.get() for _ in range(2)] == [
            (b"reply", b_addr),
            (b"reply", c_addr),
        ]
        for transport, protocol in ((a, pa), (b, pb), (c, pc)):
            transport.close()
            await protocol.lost

    run(main())


def test_ipv6_addresses(run, loop):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main():
        try:
            a, pa = await loop.create_datagram_endpoint(Datagrams, local_addr=("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        b, pb = await loop.create_datagram_endpoint(Datagrams, local_addr=("::1", 0))
        a_addr, b_addr = a.get_extra_info("sockname"), b.get_extra_info("sockname")
        assert len(a_addr) == 4
        for i in range(3):
            a.sendto(b"%d" % i, b_addr)
            a.sendto(b"short %d" % i, b_addr[:2])
        got = [await pb.datagrams.get() for _ in range(6)]
        assert got == [(d, a_addr) for i in range(3) for d in (b"%d" % i, b"short %d" % i)]
        b.sendto(b"back", got[0][1])
        assert await pa.datagrams.get() == (b"back", b_addr)
        for transport, protocol in ((a, pa), (b, pb)):
            transport.close()
            await protocol.lost

    run(main())
