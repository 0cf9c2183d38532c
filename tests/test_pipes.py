"""Pipe transports: connect_read_pipe and connect_write_pipe on pipes, FIFOs, ptys and socket
pairs (callback order, pause/resume reading, write buffering and flow control, write_eof, close
and abort, a reader that goes away), asyncio's rejection of regular files, and the pipe's fd,
closed exactly once by the transport that owns it."""

import asyncio
import errno
import gc
import logging
import os
import socket
import tty
import warnings

import pytest
from helpers_net import Recorder, iterations, leaked_fds, open_fds

#: More than a Linux pipe holds (64 KiB) and than the default high-water mark (64 KiB).
MIB = 1 << 20


@pytest.fixture
def pipe_files():
    """(reader, writer): the two ends of an os.pipe() as unbuffered file objects."""
    r, w = os.pipe()
    reader, writer = open(r, "rb", buffering=0), open(w, "wb", buffering=0)
    yield reader, writer
    reader.close()  # a no-op for an end a transport has closed
    writer.close()


def test_read_pipe_delivers_data_then_eof_then_connection_lost(run, loop, pipe_files):
    reader, writer = pipe_files
    before = open_fds()

    async def main():
        transport, protocol = await loop.connect_read_pipe(Recorder, reader)
        assert protocol.calls == ["made"]  # connection_made has run when the coroutine returns
        assert transport.get_extra_info("pipe") is reader
        assert transport.get_extra_info("no such key", "default") == "default"
        assert transport.is_reading() and not transport.is_closing()
        writer.write(b"first ")
        assert await protocol.received(6) == b"first "
        writer.write(b"second")
        writer.close()
        assert await protocol.lost is None
        assert protocol.order() == ["made", "data", "eof", "lost"]
        assert protocol.data == b"first second"
        assert transport.is_closing() and not transport.is_reading()
        assert reader.closed  # the transport closed the pipe object it was given

    run(main())
    assert leaked_fds(before) == set()


def test_read_pipe_pause_and_resume_reading(run, loop, pipe_files):
    reader, writer = pipe_files

    async def main():
        transport, protocol = await loop.connect_read_pipe(Recorder, reader)
        transport.pause_reading()
        transport.pause_reading()  # pausing twice is allowed
        assert not transport.is_reading()
        writer.write(b"held back")
        writer.close()
        await iterations()
        assert protocol.calls == ["made"]  # neither the data nor the EOF is read while paused
        transport.resume_reading()
        transport.resume_reading()
        assert transport.is_reading()
        assert await protocol.lost is None
        assert protocol.order() == ["made", "data", "eof", "lost"]
        assert protocol.data == b"held back"
        transport.resume_reading()  # a no-op once closed
        assert not transport.is_reading()

    run(main())


def test_read_pipe_close_drops_unread_data(run, loop, pipe_files):
    reader, writer = pipe_files

    async def main():
        transport, protocol = await loop.connect_read_pipe(Recorder, reader)
        writer.write(b"never read")
        transport.close()
        transport.close()  # idempotent
        assert transport.is_closing() and not transport.is_reading()
        assert await protocol.lost is None
        await iterations()
        assert protocol.calls == ["made", "lost"]

    run(main())
    assert reader.closed


def test_pipe_transports_have_the_asyncio_transport_api(run, loop, pipe_files):
    reader, writer = pipe_files

    async def main():
        rtransport, rprotocol = await loop.connect_read_pipe(Recorder, reader)
        transport, protocol = await loop.connect_write_pipe(Recorder, writer)
        with pytest.raises(NotImplementedError):
            transport.is_reading()
        transport.close()
        rtransport.close()
        assert await protocol.lost is None
        assert await rprotocol.lost is None
        # The classes themselves: test_transport_classes.py. Here: every method is there.
        for name in public_methods(asyncio.ReadTransport):
            assert callable(getattr(rtransport, name)), name
        # asyncio's write pipe transport is a whole asyncio.Transport, whose read side raises.
        for name in public_methods(asyncio.Transport):
            assert callable(getattr(transport, name)), name

    run(main())


def public_methods(cls):
    return [name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))]


def test_write_pipe_write_writelines_and_write_eof(run, loop, pipe_files):
    reader, writer = pipe_files

    async def main():
        rtransport, rprotocol = await loop.connect_read_pipe(Recorder, reader)
        transport, protocol = await loop.connect_write_pipe(Recorder, writer)
        assert protocol.calls == ["made"]
        assert transport.get_extra_info("pipe") is writer
        assert transport.can_write_eof() is True
        assert transport.get_write_buffer_size() == 0
        assert transport.get_write_buffer_limits() == (16384, 65536)  # asyncio's defaults
        transport.write(b"bytes ")
        transport.write(bytearray(b"bytearray "))
        transport.write(memoryview(b"memoryview "))
        transport.write(b"")
        transport.writelines([b"line1 ", bytearray(b"line2 "), memoryview(b"line3")])
        transport.write_eof()
        assert transport.is_closing()
        assert await protocol.lost is None
        assert await rprotocol.lost is None
        assert rprotocol.data == b"bytes bytearray memoryview line1 line2 line3"
        assert rprotocol.order() == ["made", "data", "eof", "lost"]
        assert protocol.calls == ["made", "lost"]
        assert writer.closed

    run(main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_write_pipe_close_flushes_and_abort_drops_the_buffer(run, loop, pipe_files, how):
    reader, writer = pipe_files
    payload = bytes(range(256)) * (MIB // 256)

    async def main():
        rtransport, rprotocol = await loop.connect_read_pipe(Recorder, reader)
        transport, protocol = await loop.connect_write_pipe(Recorder, writer)
        transport.write(payload)
        buffered = transport.get_write_buffer_size()
        assert 0 < buffered < len(payload)  # the pipe took what it holds, the rest waits
        getattr(transport, how)()
        assert transport.is_closing()
        assert await protocol.lost is None
        assert await rprotocol.lost is None
        assert transport.get_write_buffer_size() == 0
        if how == "close":
            assert rprotocol.data == payload
            assert protocol.calls == ["made", "pause", "resume", "lost"]
        else:  # only what the pipe held before abort() arrives; no resume_writing either
            assert rprotocol.data == payload[: len(payload) - buffered]
            assert protocol.calls == ["made", "pause", "lost"]

    run(main())


def test_write_pipe_flow_control_follows_the_reader(run, loop, pipe_files):
    reader, writer = pipe_files
    payload = b"f" * MIB

    async def main():
        rtransport, rprotocol = await loop.connect_read_pipe(Recorder, reader)
        rtransport.pause_reading()
        transport, protocol = await loop.connect_write_pipe(Recorder, writer)
        transport.write(payload)
        assert protocol.calls == ["made", "pause"]
        size = transport.get_write_buffer_size()
        assert size > 65536
        await iterations()
        # Nobody reads: the buffer stays as it was and the protocol stays paused.
        assert transport.get_write_buffer_size() == size
        assert protocol.calls == ["made", "pause"]
        rtransport.resume_reading()
        assert await rprotocol.received(len(payload)) == payload
        assert protocol.calls == ["made", "pause", "resume"]
        assert transport.get_write_buffer_size() == 0
        transport.close()
        assert await protocol.lost is None
        assert await rprotocol.lost is None

    run(main())


@pytest.mark.parametrize("queued", [True, False])
def test_write_pipe_whose_reader_goes_away(run, loop, pipe_files, queued):
    reader, writer = pipe_files

    async def main():
        transport, protocol = await loop.connect_write_pipe(Recorder, writer)
        if queued:
            transport.write(b"q" * MIB)
            assert transport.get_write_buffer_size() > 0
        reader.close()
        exc = await protocol.lost
        # With data queued the loss is an error; with nothing queued it is a plain close.
        if queued:
            assert isinstance(exc, BrokenPipeError)
        else:
            assert exc is None
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        assert writer.closed

    run(main())


def test_writes_to_a_closed_write_pipe_are_dropped_then_logged(run, loop, pipe_files, caplog):
    reader, writer = pipe_files
    message = "pipe closed by peer or os.write(pipe, data) raised exception."

    async def main():
        transport, protocol = await loop.connect_write_pipe(Recorder, writer)
        transport.close()
        counts = []
        for data in (b"1", b"2", b"", b"3", b"4", b"5", b"6", b"7"):
            transport.write(data)  # never raises
            counts.append(caplog.text.count(message))
        assert await protocol.lost is None
        assert counts == [0, 0, 0, 0, 0, 0, 1, 2]  # from the 6th lost write, empty ones aside
        records = [r for r in caplog.records if r.getMessage() == message]
        assert {(r.name, r.levelno) for r in records} == {("asyncio", logging.WARNING)}
        assert reader.read(10) == b""  # nothing reached the pipe

    caplog.set_level(logging.WARNING, logger="asyncio")
    run(main())


@pytest.mark.parametrize(
    "direction, message",
    [
        ("read", "Pipe transport is for pipes/sockets only."),
        ("write", "Pipe transport is only for pipes, sockets and character devices"),
    ],
)
def test_regular_files_are_rejected(run, loop, tmp_path, direction, message):
    path = tmp_path / "regular"
    path.write_bytes(b"content")
    with open(path, "rb+", buffering=0) as f:
        before = open_fds()
        connect = loop.connect_read_pipe if direction == "read" else loop.connect_write_pipe
        error = None
        gc.collect()  # warnings about earlier tests' garbage are not this test's
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                run(connect(Recorder, f))
            except ValueError as exc:
                error = str(exc)  # the traceback, and the frames it holds, go with `exc`
            gc.collect()
        assert error == message
        # The caller's file is left alone: open, blocking, unwarned about and readable.
        assert not f.closed and os.get_blocking(f.fileno())
        assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
        assert f.read() == b"content"
        assert open_fds() == before


def test_fifo_with_connect_read_pipe_and_connect_write_pipe(run, loop, tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    before = open_fds()
    reader = open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0)
    writer = open(os.open(path, os.O_WRONLY), "wb", buffering=0)

    async def main():
        rtransport, rprotocol = await loop.connect_read_pipe(Recorder, reader)
        transport, protocol = await loop.connect_write_pipe(Recorder, writer)
        transport.write(b"through a fifo")
        transport.close()
        assert await protocol.lost is None
        assert await rprotocol.lost is None
        assert rprotocol.order() == ["made", "data", "eof", "lost"]
        assert rprotocol.data == b"through a fifo"

    run(main())
    assert reader.closed and writer.closed
    assert leaked_fds(before) == set()


def test_pty_with_connect_read_pipe(run, loop):
    before = open_fds()
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo and no newline translation: bytes arrive as written
    reader = open(master, "rb", buffering=0)

    async def main():
        transport, protocol = await loop.connect_read_pipe(Recorder, reader)
        os.write(slave, b"from the tty\n")
        assert await protocol.received(13) == b"from the tty\n"
        os.close(slave)
        # A pty master reports the slave's hang-up as EIO, which asyncio turns into
        # connection_lost(OSError) with no eof_received and no call to the exception handler.
        exc = await protocol.lost
        assert isinstance(exc, OSError) and exc.errno == errno.EIO
        assert protocol.order() == ["made", "data", "lost"]

    errors = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    run(main())
    assert errors == []
    assert reader.closed
    assert leaked_fds(before) == set()


def test_tty_with_connect_write_pipe(run, loop):
    before = open_fds()
    master, slave = os.openpty()
    tty.setraw(slave)
    writer = open(slave, "wb", buffering=0)

    async def main():
        transport, protocol = await loop.connect_write_pipe(Recorder, writer)
        assert transport.get_extra_info("pipe") is writer
        transport.write(b"to the tty")
        transport.close()
        assert await protocol.lost is None

    run(main())
    assert os.read(master, 100) == b"to the tty"
    os.close(master)
    assert writer.closed
    assert leaked_fds(before) == set()


def test_socketpair_with_connect_read_pipe(run, loop):
    before = open_fds()
    a, b = socket.socketpair()

    async def main():
        transport, protocol = await loop.connect_read_pipe(Recorder, a)
        assert transport.get_extra_info("pipe") is a
        b.sendall(b"over a socket")
        b.close()
        assert await protocol.lost is None
        assert protocol.order() == ["made", "data", "eof", "lost"]
        assert protocol.data == b"over a socket"

    run(main())
    assert a.fileno() == -1  # closed, through the socket object
    assert leaked_fds(before) == set()


async def open_and_close(loop, end, pipe):
    connect = loop.connect_read_pipe if end == "read" else loop.connect_write_pipe
    transport, protocol = await connect(Recorder, pipe)
    transport.close()
    assert await protocol.lost is None
    return transport, protocol


@pytest.mark.parametrize("end", ["read", "write"])
def test_the_pipe_fd_is_closed_exactly_once(run, loop, end):
    before = open_fds()
    r, w = os.pipe()
    pipe = open(r, "rb", buffering=0) if end == "read" else open(w, "wb", buffering=0)
    fd, other_end = pipe.fileno(), (w if end == "read" else r)
    transport, protocol = run(open_and_close(loop, end, pipe))
    assert pipe.closed
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    # A new pipe takes the number at once; nothing may close it, or watch it, later.
    new_r, new_w = os.pipe()  # the lowest free numbers: normally `fd` again
    if new_r != fd:
        os.dup2(new_r, fd, inheritable=False)
    try:
        del transport, protocol, pipe
        for _ in range(3):
            run(iterations())
            gc.collect()
        assert os.path.samestat(os.fstat(fd), os.fstat(new_r))
        # The loop holds no stale registration for the number: a new reader on it works.
        ready = loop.create_future()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(os.read(fd, 100)))
        os.write(new_w, b"reused")
        assert run(ready) == b"reused"
        assert loop.remove_reader(fd)
    finally:
        for n in {fd, new_r, new_w, other_end}:
            os.close(n)
    assert leaked_fds(before) == set()
