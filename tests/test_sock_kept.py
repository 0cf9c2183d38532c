"""``sock_recv`` waits on a socket whose registration ferroloop keeps between waits.

asyncio adds a reader for each ``sock_recv`` that has to wait and removes it once the data came.
On epoll ferroloop keeps the socket registered, edge-triggered, from one wait to the next
(``IoEntry::kept_for``), and must still behave as if the reader came and went: nothing listed or
removable between waits, data that came between waits read by the next one, any other
registration on the fd (a reader, a writer, a transport) taking over, and a closed socket whose fd
number is reused never confused with the new one, also when a ``dup`` keeps the old file open (its
registration then outlives its fd in the kernel). Each test runs on asyncio's loop as the oracle.
"""

import asyncio
import os
import socket

import pytest
from helpers_net import nonblocking_pair


def _at(number, sock):
    """A socket on fd ``number`` for ``sock``'s file; ``sock`` itself is closed."""
    if sock.fileno() == number:
        return sock
    os.dup2(sock.fileno(), number)
    moved = socket.socket(fileno=number)
    moved.setblocking(False)
    sock.close()
    return moved


async def _pending_recv(loop, sock):
    """A ``sock_recv`` task, waiting (it has had an iteration to find nothing to read)."""
    pending = asyncio.ensure_future(loop.sock_recv(sock, 100))
    await asyncio.sleep(0)
    assert not pending.done()
    return pending


async def _waited_recv(loop, sock, peer, data):
    """A ``sock_recv`` that has to wait: the data is sent only once the wait began."""
    pending = await _pending_recv(loop, sock)
    peer.send(data)
    return await pending


async def _iterations(n=5):
    for _ in range(n):
        await asyncio.sleep(0)


def test_nothing_is_registered_between_waits(run, loop, sockpair):
    a, b = sockpair

    async def main():
        assert await _waited_recv(loop, a, b, b"one") == b"one"
        # As after asyncio's wait: no reader to remove, none reported.
        assert loop.remove_reader(a) is False
        assert await _waited_recv(loop, a, b, b"two") == b"two"
        pending = await _pending_recv(loop, a)
        assert loop.remove_reader(a) is True  # the wait's reader, as asyncio's
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending

    run(main())


def test_data_that_came_between_waits_is_read_by_the_next(run, loop, sockpair):
    a, b = sockpair

    async def main():
        got = [await _waited_recv(loop, a, b, b"first")]
        b.send(b"between")
        await _iterations()  # the loop sees the socket readable with no wait pending
        got.append(await loop.sock_recv(a, 100))
        got.append(await _waited_recv(loop, a, b, b"last"))
        b.send(b"0123456789")
        got.append(await loop.sock_recv(a, 4))
        await _iterations()
        got.append(await loop.sock_recv(a, 100))
        b.close()
        await _iterations()
        got.append(await loop.sock_recv(a, 100))  # EOF that came between waits
        return got

    assert run(main()) == [b"first", b"between", b"last", b"0123", b"456789", b""]


def test_eof_ends_a_wait(run, loop, sockpair):
    a, b = sockpair

    async def main():
        assert await _waited_recv(loop, a, b, b"x") == b"x"
        pending = await _pending_recv(loop, a)
        b.close()
        return await pending

    assert run(main()) == b""


def test_a_reader_added_between_waits_is_called_while_readable(run, loop, sockpair):
    a, b = sockpair

    async def main():
        assert await _waited_recv(loop, a, b, b"x") == b"x"
        calls = []
        loop.add_reader(a, calls.append, "ready")
        b.send(b"y")
        await _iterations(3)
        # Level-triggered, as asyncio's: called on each iteration while the data stays unread.
        assert len(calls) >= 2
        assert loop.remove_reader(a) is True
        assert a.recv(10) == b"y"
        assert await _waited_recv(loop, a, b, b"z") == b"z"
        return len(calls) >= 2

    assert run(main()) is True


def test_a_transport_takes_over_a_socket_that_was_waited_on(run, loop, sockpair):
    a, b = sockpair

    async def main():
        assert await _waited_recv(loop, a, b, b"before") == b"before"
        received = asyncio.Queue()

        class Proto(asyncio.Protocol):
            def data_received(self, data):
                received.put_nowait(data)

        transport, _ = await loop.create_connection(Proto, sock=a)
        b.send(b"to the transport")
        data = await received.get()
        transport.close()
        await _iterations()
        return data

    assert run(main()) == b"to the transport"


def test_a_receive_and_a_send_waiting_on_one_socket(run, loop, sockpair):
    a, b = sockpair
    payload = b"p" * (8 << 20)

    async def main():
        assert await _waited_recv(loop, a, b, b"warm") == b"warm"
        receiving = asyncio.ensure_future(loop.sock_recv(a, 100))
        sending = asyncio.ensure_future(loop.sock_sendall(a, payload))
        await _iterations()
        assert not receiving.done() and not sending.done()  # the peer reads nothing yet
        b.send(b"reply")
        got = await receiving
        drained = 0
        while drained < len(payload):
            chunk = await loop.sock_recv(b, 1 << 20)
            drained += len(chunk)
        await sending
        after = await _waited_recv(loop, a, b, b"after")
        return got, drained, after

    assert run(main()) == (b"reply", len(payload), b"after")


def test_a_cancelled_wait_and_then_a_reader(run, loop, sockpair):
    a, b = sockpair

    async def main():
        assert await _waited_recv(loop, a, b, b"x") == b"x"
        pending = await _pending_recv(loop, a)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert loop.remove_reader(a) is False
        ready = loop.create_future()
        loop.add_reader(a, lambda: ready.done() or ready.set_result(a.recv(100)))
        b.send(b"to the reader")
        data = await ready
        assert loop.remove_reader(a) is True
        return data

    assert run(main()) == b"to the reader"


def test_a_new_socket_on_the_number_of_a_closed_one(run, loop):
    a, a_peer = nonblocking_pair()
    number = a.fileno()

    async def main():
        assert await _waited_recv(loop, a, a_peer, b"old") == b"old"
        a.close()  # no other fd has its file: the kernel forgets its registration
        b, b_peer = nonblocking_pair()
        b = _at(number, b)
        try:
            # The loop must register the new socket although the number is the old one's.
            return await _waited_recv(loop, b, b_peer, b"new")
        finally:
            b.close()
            b_peer.close()

    try:
        assert run(main()) == b"new"
    finally:
        a_peer.close()


@pytest.mark.parametrize("new_wait", ["add_reader", "sock_recv"])
def test_a_closed_socket_whose_file_a_dup_keeps_open(run, loop, new_wait):
    # epoll drops a registration only when its file is closed: with a dup open, the old socket's
    # registration outlives its fd and reports under the token the new socket on its number gets.
    a, a_peer = nonblocking_pair()
    number = a.fileno()
    a_dup = a.dup()

    async def main():
        assert await _waited_recv(loop, a, a_peer, b"old") == b"old"
        a.close()
        b, b_peer = nonblocking_pair()
        b = _at(number, b)
        try:
            if new_wait == "add_reader":
                calls = []
                loop.add_reader(b, calls.append, "ready")
                a_peer.send(b"to the old file")
                await _iterations()
                spurious = list(calls)
                b_peer.send(b"to the new one")
                await _iterations()
                loop.remove_reader(b)
                return spurious, bool(calls), b.recv(100)
            pending = await _pending_recv(loop, b)
            a_peer.send(b"to the old file")
            await _iterations()
            early = pending.done()
            b_peer.send(b"to the new one")
            return early, await pending
        finally:
            b.close()
            b_peer.close()

    try:
        got = run(main())
        if new_wait == "add_reader":
            assert got == ([], True, b"to the new one")
        else:
            assert got == (False, b"to the new one")
        assert a_dup.recv(100) == b"to the old file"
    finally:
        a_dup.close()
        a_peer.close()


def test_a_socket_waited_on_by_a_closed_loop_works_on_the_next(loop_factory, sockpair):
    a, b = sockpair
    for data in (b"first loop", b"second loop"):
        loop = loop_factory()
        try:
            got = loop.run_until_complete(asyncio.wait_for(_waited_recv(loop, a, b, data), 10))
        finally:
            loop.close()
        assert got == data


def test_sock_recv_into_keeps_the_same_behaviour(run, loop, sockpair):
    a, b = sockpair
    buf = bytearray(16)

    async def main():
        got = []
        for data in (b"one", b"two"):
            pending = asyncio.ensure_future(loop.sock_recv_into(a, buf))
            await asyncio.sleep(0)
            b.send(data)
            n = await pending
            got.append(bytes(buf[:n]))
        assert loop.remove_reader(a) is False
        return got

    assert run(main()) == [b"one", b"two"]
