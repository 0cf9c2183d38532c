"""Bad input, as asyncio takes it (issue 15, point 4): the same exception type and message, or
the same acceptance, on asyncio's loop and on ferroloop."""

import asyncio
import os
import socket
import sys

import pytest
from helpers_compat import SOCKET_TRANSPORT_HAS_WRITELINES, WRITE_QUEUES_THE_CALLERS_OBJECT

BACKEND = os.environ.get("FERROLOOP_BACKEND") or "epoll"


def test_create_server_takes_a_negative_backlog(run, loop):
    """``socket.listen()`` takes a negative backlog (as 0), so asyncio's create_server does."""

    async def main():
        server = await loop.create_server(lambda: None, "127.0.0.1", 0, backlog=-1)
        assert server.is_serving()
        server.close()
        await server.wait_closed()

    run(main())


def test_create_server_refuses_a_backlog_beyond_a_c_int(run, loop):
    async def main():
        with pytest.raises(OverflowError, match="signed integer is greater than maximum"):
            await loop.create_server(lambda: None, "127.0.0.1", 0, backlog=2**31)

    run(main())


@pytest.mark.parametrize(
    ("fd", "exc", "message"),
    [
        (2**70, OverflowError, "Python int too large to convert to C int"),
        (2**31, OverflowError, "Python int too large to convert to C int"),
        (-(2**70), ValueError, f"Invalid file descriptor: {-(2**70)}"),
        (-1, ValueError, "Invalid file descriptor: -1"),
        ("x", ValueError, "Invalid file object: 'x'"),
        (3.0, ValueError, "Invalid file object: 3.0"),
    ],
)
@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_reader_and_writer_refuse_what_is_no_fd(loop, method, fd, exc, message):
    if BACKEND == "select" and exc is OverflowError and type(loop).__module__.startswith("asyncio"):
        pytest.skip(
            "asyncio's SelectSelector takes an fd past a C int and fails every select() after it "
            "(the loop is broken); ferroloop's select backend refuses it as epoll does"
        )
    with pytest.raises(exc) as info:
        getattr(loop, method)(fd, print)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("args", "exc", "message"),
    [
        (("x",), TypeError, "unsupported operand type(s) for //: 'str' and 'int'"),
        ((None, "y"), TypeError, "'>=' not supported between instances of 'str' and 'int'"),
        ((10, 20), ValueError, "high (10) must be >= low (20) must be >= 0"),
        ((-1,), ValueError, "high (-1) must be >= low (-1) must be >= 0"),
        ((1.5, -0.5), ValueError, "high (1.5) must be >= low (-0.5) must be >= 0"),
    ],
)
def test_set_write_buffer_limits_refuses_as_asyncio_computes(run, loop, args, exc, message):
    async def main():
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        with pytest.raises(exc) as info:
            transport.set_write_buffer_limits(*args)
        assert str(info.value) == message
        assert transport.get_write_buffer_limits() == (16384, 65536)  # unchanged
        transport.close()
        b.close()

    run(main())


def test_set_write_buffer_limits_takes_any_number(run, loop, loop_name):
    """asyncio computes with what it is given. A difference kept on purpose: ferroloop keeps the
    floors of the marks, the byte counts its buffer is compared with (the comparisons come out
    the same), so its get_write_buffer_limits() answers ints where asyncio's echoes the floats."""

    async def main():
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        transport.set_write_buffer_limits(1000.5)
        floats = loop_name == "asyncio"
        assert transport.get_write_buffer_limits() == ((250.0, 1000.5) if floats else (250, 1000))
        transport.set_write_buffer_limits(high=2**70)
        low, high = transport.get_write_buffer_limits()
        assert high >= sys.maxsize and low >= 2**62
        transport.close()
        b.close()

    run(main())


def test_a_callback_that_cancels_its_handle_then_raises(loop):
    """asyncio formats the handle's callback after the call, when cancel() has cleared it."""
    contexts = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    handle = None

    def callback():
        handle.cancel()
        raise ValueError("after cancel")

    handle = loop.call_soon(callback)
    loop.run_until_complete(asyncio.sleep(0))
    [context] = contexts
    assert context["message"] == "Exception in callback None()"
    assert context["handle"] is handle
    assert repr(handle) == "<Handle cancelled>"
    assert str(context["exception"]) == "after cancel"


NOT_CONTIGUOUS = "memoryview: underlying buffer is not C-contiguous"


class Lost(asyncio.Protocol):
    def connection_made(self, transport):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_write_of_a_strided_memoryview_is_a_fatal_write_error(run, loop):
    """``socket.send()`` refuses a non-contiguous buffer: asyncio's write reports the BufferError
    as a fatal write error and the connection is lost with it."""

    async def main():
        contexts = []
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        a, b = socket.socketpair()
        transport, protocol = await loop.create_connection(Lost, sock=a)
        transport.write(memoryview(b"abcdefgh")[::2])
        exc = await protocol.lost
        assert type(exc) is BufferError and str(exc) == NOT_CONTIGUOUS
        [context] = contexts
        assert context["message"] == "Fatal write error on socket transport"
        assert context["exception"] is exc
        b.close()

    run(main())


def test_write_of_a_strided_memoryview_behind_queued_data(run, loop):
    """With data queued, 3.11's bytearray buffer refuses the view at once (TypeError, the
    connection stays); 3.12+ queues it, and the next flush fails with BufferError."""

    async def main():
        contexts = []
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        a, b = socket.socketpair()
        transport, protocol = await loop.create_connection(Lost, sock=a)
        transport.write(b"x" * 5_000_000)
        assert transport.get_write_buffer_size() > 0
        view = memoryview(b"abcdefgh")[::2]
        if not WRITE_QUEUES_THE_CALLERS_OBJECT:
            with pytest.raises(TypeError, match="can't set bytearray slice from memoryview"):
                transport.write(view)
            assert not transport.is_closing()
            transport.abort()
            assert await protocol.lost is None
        else:
            transport.write(view)
            assert not transport.is_closing()  # nothing happens until the next flush
            b.setblocking(False)
            while not protocol.lost.done():
                try:
                    b.recv(1 << 20)
                except BlockingIOError:
                    pass
                await asyncio.sleep(0)
            exc = protocol.lost.result()
            assert type(exc) is BufferError and str(exc) == NOT_CONTIGUOUS
            assert [c["message"] for c in contexts] == ["Fatal write error on socket transport"]
        b.close()

    run(main())


def test_pipe_write_of_a_strided_memoryview(run, loop):
    """``os.write()`` refuses it: a fatal write error; behind queued data asyncio's bytearray
    buffer refuses it at once (every version)."""

    async def main():
        contexts = []
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        r, w = os.pipe()
        transport, protocol = await loop.connect_write_pipe(Lost, os.fdopen(w, "wb", 0))
        transport.write(memoryview(b"abcdefgh")[::2])
        exc = await protocol.lost
        assert type(exc) is BufferError and str(exc) == NOT_CONTIGUOUS
        assert [c["message"] for c in contexts] == ["Fatal write error on pipe transport"]
        os.close(r)

        r, w = os.pipe()
        transport, protocol = await loop.connect_write_pipe(Lost, os.fdopen(w, "wb", 0))
        transport.write(b"x" * 1_000_000)
        with pytest.raises(TypeError, match="can't concat memoryview to bytearray"):
            transport.write(memoryview(b"abcdefgh")[::2])
        assert not transport.is_closing()
        transport.abort()
        os.close(r)

    run(main())


def test_sendto_of_a_strided_memoryview_is_a_fatal_write_error(run, loop):
    class Datagrams(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.lost = asyncio.get_running_loop().create_future()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        contexts = []
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        transport, protocol = await loop.create_datagram_endpoint(
            Datagrams, local_addr=("127.0.0.1", 0)
        )
        transport.sendto(memoryview(b"abcdefgh")[::2], transport.get_extra_info("sockname"))
        exc = await protocol.lost
        assert type(exc) is BufferError and str(exc) == NOT_CONTIGUOUS
        assert [c["message"] for c in contexts] == ["Fatal write error on datagram transport"]

    run(main())


@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
def test_reader_and_writer_calls_on_a_transports_fd_are_refused(run, loop, method):
    """The message names the transport by its repr: asyncio's class name there, ferroloop's
    here (the one difference, kept: the repr is the transport's own)."""

    async def main():
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        fd = a.fileno()
        args = (fd, print) if method.startswith("add") else (fd,)
        with pytest.raises(RuntimeError) as info:
            getattr(loop, method)(*args)
        assert str(info.value) == f"File descriptor {fd} is used by transport {transport!r}"
        transport.close()
        b.close()

    run(main())


def test_writelines_refuses_as_asyncio_does(run, loop):
    """After write_eof() and for an item that is no buffer, in the words of the running version
    (the differential fuzzer found the 3.12+ ones)."""

    async def main():
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        own = SOCKET_TRANSPORT_HAS_WRITELINES
        with pytest.raises(TypeError) as info:
            transport.writelines([b"ok", "text"])
        if own:
            assert str(info.value) == "memoryview: a bytes-like object is required, not 'str'"
        transport.writelines([])  # nothing to do
        transport.write_eof()
        with pytest.raises(RuntimeError) as info:
            transport.writelines([b"after eof"])
        name = "writelines" if own else "write"
        assert str(info.value) == f"Cannot call {name}() after write_eof()"
        transport.close()
        b.close()

    run(main())
