"""Details of fd registration that ferroloop follows asyncio in (issue 14): removing a reader or
writer by a socket that is already closed, as anyio does, and cancelling a ``sock_*`` operation
whose socket was closed while it waited."""

import asyncio
import os
import socket
import ssl

import pytest

#: The backend of this run (conftest.py gives asyncio's oracle the matching selector).
BACKEND = os.environ.get("FERROLOOP_BACKEND") or "epoll"


def outcome(call, *args):
    try:
        return call(*args)
    except Exception as exc:  # noqa: BLE001 - the outcome compared is the exception
        return type(exc), str(exc)


def assert_usable(loop):
    a, b = socket.socketpair()
    with a, b:
        loop.add_reader(a, loop.stop)
        b.send(b"x")
        loop.run_forever()
        assert loop.remove_reader(a) is True


@pytest.mark.parametrize(
    ("registered", "expected"),
    [
        ("reader", [True, "invalid", "invalid", "invalid"]),
        ("writer", [False, True, "invalid", "invalid"]),
        ("fd", [True, False, False, False]),
    ],
)
def test_remove_by_closed_socket(loop, registered, expected):
    a, b = socket.socketpair()
    with b:
        a.setblocking(False)
        key = a.fileno() if registered == "fd" else a
        if registered == "writer":
            loop.add_writer(key, lambda: None)
        else:
            loop.add_reader(key, lambda: None)
        a.close()
        got = [
            outcome(loop.remove_reader, key),
            outcome(loop.remove_writer, key),
            outcome(loop.remove_reader, key),
            outcome(loop.remove_writer, key),
        ]
    invalid = (ValueError, "Invalid file descriptor: -1")
    assert got == [invalid if e == "invalid" else e for e in expected]
    assert_usable(loop)


@pytest.mark.skipif(
    BACKEND != "epoll",
    reason="asyncio's PollSelector/SelectSelector modify() a closed fd without a syscall, so "
    "nothing fails there; ferroloop's poll, select and io_uring backends follow epoll's rule "
    "(not matched yet)",
)
def test_remove_reader_of_closed_socket_with_writer(loop):
    # The epoll selector's modify() fails on the closed fd and forgets the key.
    a, b = socket.socketpair()
    with b:
        loop.add_reader(a, lambda: None)
        loop.add_writer(a, lambda: None)
        a.close()
        first = outcome(loop.remove_reader, a)
        assert first[0] is OSError
        assert outcome(loop.remove_writer, a) == (ValueError, "Invalid file descriptor: -1")
    assert_usable(loop)


@pytest.mark.parametrize("op", ["recv", "recvfrom", "recv_into", "sendall"])
def test_sock_op_cancelled_after_close(loop, op):
    if BACKEND == "select" and type(loop).__module__.startswith("asyncio"):
        pytest.skip(
            "asyncio's SelectSelector fails select() with EBADF once a socket it waits "
            "for is closed, so its loop stops there"
        )
    contexts = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))

    async def main():
        a, b = socket.socketpair()
        with b:
            a.setblocking(False)
            if op == "sendall":
                a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
                coro = loop.sock_sendall(a, b"x" * 10_000_000)
            elif op == "recv_into":
                coro = loop.sock_recv_into(a, bytearray(10))
            else:
                coro = getattr(loop, "sock_" + op)(a, 10)
            task = loop.create_task(coro)
            for _ in range(5):
                await asyncio.sleep(0)
            assert not task.done()
            a.close()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(3):
                await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert contexts == []
    assert_usable(loop)


def test_tls_transport_ssl_protocol_sslcontext(run, loop):
    # aiohttp's connector reads transport._ssl_protocol._sslcontext.
    certs = os.path.join(os.path.dirname(__file__), "tls")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(os.path.join(certs, "server.pem"))
    cctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))

    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=sctx)
        async with server:
            address = server.sockets[0].getsockname()
            transport, _ = await loop.create_connection(
                asyncio.Protocol, *address, ssl=cctx, server_hostname="localhost"
            )
            try:
                assert transport._ssl_protocol._sslcontext is cctx
            finally:
                transport.close()
                await asyncio.sleep(0.01)

    run(main())


def test_call_soon_with_a_context_that_is_not_one(loop):
    # asyncio's Handle calls `context.run(callback, *args)`.
    contexts = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))

    class Runner:
        def run(self, callback, *args):
            calls.append(args)
            return callback(*args)

    calls = []
    loop.call_soon(lambda: None, context=1)
    loop.call_soon(calls.append, "x", context=Runner())
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert [type(c["exception"]) for c in contexts] == [AttributeError]
    assert str(contexts[0]["exception"]) == "'int' object has no attribute 'run'"
    assert calls == [("x",), "x"]
