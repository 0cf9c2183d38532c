"""Low-level socket coroutines: sock_recv*, sock_sendall, sock_sendto, sock_connect and
sock_accept on non-blocking sockets."""

import asyncio
import hashlib
import socket

import pytest


@pytest.fixture
def udp_pair():
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    yield socks
    for s in socks:
        s.close()


@pytest.fixture
def listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


def test_sock_recv_waits_for_data(run, loop, sockpair):
    a, b = sockpair
    loop.call_later(0.01, b.send, b"late data")
    assert run(loop.sock_recv(a, 100)) == b"late data"
    b.close()
    assert run(loop.sock_recv(a, 100)) == b""  # EOF


def test_sock_recv_into(run, loop, sockpair):
    a, b = sockpair
    buf = bytearray(10)
    loop.call_later(0.01, b.send, b"abc")
    assert run(loop.sock_recv_into(a, buf)) == 3
    assert buf[:3] == b"abc"


def test_sock_sendall_large_payload(run, loop, sockpair):
    a, b = sockpair
    payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)  # 4 MiB, more than the buffers

    async def receive(n):
        digest, total = hashlib.sha256(), 0
        while total < n:
            chunk = await loop.sock_recv(b, 65536)
            assert chunk, "unexpected EOF"
            digest.update(chunk)
            total += len(chunk)
        return digest.hexdigest()

    async def main():
        receiver = asyncio.ensure_future(receive(len(payload)))
        assert await loop.sock_sendall(a, payload) is None
        return await receiver

    assert run(main(), timeout=60) == hashlib.sha256(payload).hexdigest()


def test_udp_sock_sendto_and_sock_recvfrom(run, loop, udp_pair):
    sender, receiver = udp_pair

    async def main():
        n = await loop.sock_sendto(sender, b"datagram", receiver.getsockname())
        data, addr = await loop.sock_recvfrom(receiver, 100)
        return n, data, addr

    assert run(main()) == (8, b"datagram", sender.getsockname())


def test_udp_sock_recvfrom_into(run, loop, udp_pair):
    sender, receiver = udp_pair
    buf = bytearray(100)
    loop.call_later(0.01, sender.sendto, b"into", receiver.getsockname())
    assert run(loop.sock_recvfrom_into(receiver, buf)) == (4, sender.getsockname())
    assert buf[:4] == b"into"
    loop.call_later(0.01, sender.sendto, b"truncated", receiver.getsockname())
    nbytes, _ = run(loop.sock_recvfrom_into(receiver, buf, 3))
    assert nbytes == 3
    assert buf[:3] == b"tru"


def test_sock_connect_and_sock_accept(run, loop, listener):
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setblocking(False)

    async def main():
        accepted, connected = await asyncio.gather(
            loop.sock_accept(listener), loop.sock_connect(client, listener.getsockname())
        )
        assert connected is None
        return accepted

    conn, address = run(main())
    try:
        assert isinstance(conn, socket.socket)
        assert address == client.getsockname()
        assert conn.getblocking() is False  # accepted sockets come back non-blocking
        run(loop.sock_sendall(client, b"over tcp"))
        assert run(loop.sock_recv(conn, 100)) == b"over tcp"
    finally:
        conn.close()
        client.close()


def test_sock_connect_to_a_closed_port_is_refused(run, loop):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    address = probe.getsockname()
    probe.close()  # nothing listens there any more
    client = socket.socket()
    client.setblocking(False)
    try:
        with pytest.raises(ConnectionRefusedError):
            run(loop.sock_connect(client, address))
    finally:
        client.close()


def test_blocking_sockets_are_rejected_in_debug_mode(run, loop, sockpair, udp_pair):
    # asyncio only checks this in debug mode.
    loop.set_debug(True)
    a, _ = sockpair
    udp = udp_pair[0]
    a.setblocking(True)
    udp.setblocking(True)
    calls = [
        lambda: loop.sock_recv(a, 1),
        lambda: loop.sock_recv_into(a, bytearray(1)),
        lambda: loop.sock_sendall(a, b"x"),
        lambda: loop.sock_connect(a, "unused"),
        lambda: loop.sock_accept(a),
        lambda: loop.sock_recvfrom(udp, 1),
        lambda: loop.sock_recvfrom_into(udp, bytearray(1)),
        lambda: loop.sock_sendto(udp, b"x", udp.getsockname()),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"^the socket must be non-blocking$"):
            run(call())


def test_cancelled_sock_recv_leaves_the_loop_usable(run, loop, sockpair):
    a, b = sockpair

    async def main():
        pending = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        b.send(b"after cancel")
        return await loop.sock_recv(a, 100)

    assert run(main()) == b"after cancel"
    assert loop.remove_reader(a) is False  # the cancelled wait unregistered its reader


def _raised(call):
    try:
        call()
    except Exception as exc:
        return type(exc), str(exc)
    raise AssertionError("no exception")


def test_bad_arguments_raise_what_the_socket_call_raises(run, loop, sockpair):
    # asyncio's sock_* begin with the socket's own recv/recv_into/send, so a bad argument is
    # refused with that call's exception and message.
    a, _ = sockpair
    cases = [
        (lambda: loop.sock_recv(a, "x"), lambda: a.recv("x")),
        (lambda: loop.sock_recv(a, 1.5), lambda: a.recv(1.5)),
        (lambda: loop.sock_recv(3, 10), lambda: (3).recv(10)),
        (lambda: loop.sock_recv_into(a, "x"), lambda: a.recv_into("x")),
        (lambda: loop.sock_recv_into(3, bytearray(1)), lambda: (3).recv_into(bytearray(1))),
        (lambda: loop.sock_sendall(a, "x"), lambda: a.send("x")),
        (lambda: loop.sock_sendall(3, b"x"), lambda: (3).send(b"x")),
    ]
    for coro, plain in cases:
        assert _raised(lambda coro=coro: run(coro())) == _raised(plain)


class _TrackedSocket(socket.socket):
    """A socket subclass that records the calls asyncio makes (websockets' tests do this)."""

    calls = []

    def recv(self, *args):
        self.calls.append("recv")
        return super().recv(*args)

    def recv_into(self, *args):
        self.calls.append("recv_into")
        return super().recv_into(*args)

    def send(self, *args):
        self.calls.append("send")
        return super().send(*args)


def test_a_socket_subclass_gets_its_own_methods_called(run, loop):
    a, b = socket.socketpair()
    tracked = _TrackedSocket(a.family, a.type, fileno=a.detach())
    _TrackedSocket.calls = []
    with tracked, b:
        tracked.setblocking(False)
        b.setblocking(False)
        b.send(b"one")
        assert run(loop.sock_recv(tracked, 10)) == b"one"
        b.send(b"two")
        buf = bytearray(10)
        assert run(loop.sock_recv_into(tracked, buf)) == 3 and buf[:3] == b"two"
        run(loop.sock_sendall(tracked, b"three"))
        assert b.recv(10) == b"three"
    assert _TrackedSocket.calls == ["recv", "recv_into", "send"]


def test_first_tries_that_succeed_at_once(run, loop, sockpair):
    # The one-call first try of sock_recv/sock_sendall: what is ready is returned as asyncio's
    # `sock.recv(n)`/`sock.send(data)` would return it.
    a, b = sockpair
    b.send(b"ready")
    assert run(loop.sock_recv(a, 0)) == b""
    assert run(loop.sock_recv(a, 2)) == b"re"
    assert run(loop.sock_recv(a, 100)) == b"ady"
    run(loop.sock_sendall(a, b""))
    run(loop.sock_sendall(a, memoryview(b"mv")))
    run(loop.sock_sendall(a, bytearray(b"ba")))
    assert b.recv(10) == b"mvba"


def test_first_tries_refused_as_the_socket_refuses(run, loop, sockpair):
    a, _ = sockpair
    closed = socket.socket()
    closed.close()
    cases = [
        (lambda: loop.sock_recv(a, -1), lambda: a.recv(-1)),
        (lambda: loop.sock_recv(closed, 1), lambda: closed.recv(1)),
        (lambda: loop.sock_sendall(closed, b"x"), lambda: closed.send(b"x")),
    ]
    for coro, plain in cases:
        assert _raised(lambda coro=coro: run(coro())) == _raised(plain)


def test_a_socket_of_a_transport_is_refused_only_when_it_must_wait(run, loop, sockpair):
    # asyncio tries `sock.recv` first and checks for a transport only before it waits.
    a, b = sockpair

    async def main():
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        transport.pause_reading()
        b.send(b"x")
        await asyncio.sleep(0.01)
        first = await loop.sock_recv(a, 10)
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.sock_recv(a, 10)
        transport.abort()
        return first

    assert run(main()) == b"x"
