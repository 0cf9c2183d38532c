"""File-descriptor watching: add_reader/remove_reader/add_writer/remove_writer on
socketpairs, pipes, ptys and file-like objects."""

import contextlib
import errno
import os
import socket
import tempfile

import pytest
from conftest import BACKEND


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):  # some tests close an end themselves
            os.close(fd)


class FileLike:
    """Anything with a fileno() method is accepted where an fd is."""

    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


def wait_for(loop, fut, timeout=5):
    guard = loop.call_later(timeout, lambda: fut.done() or fut.set_exception(TimeoutError()))
    try:
        return loop.run_until_complete(fut)
    finally:
        guard.cancel()


@pytest.mark.parametrize("as_object", [False, True], ids=["fd", "socket-object"])
def test_reader_fires_on_socketpair_data(loop, sockpair, as_object):
    a, b = sockpair
    fut = loop.create_future()
    target = a if as_object else a.fileno()
    loop.add_reader(target, lambda: fut.done() or fut.set_result(a.recv(100)))
    loop.call_later(0.01, b.send, b"hello")
    assert wait_for(loop, fut) == b"hello"
    assert loop.remove_reader(target) is True


def test_writer_fires_when_writable(loop, sockpair):
    a, _ = sockpair
    fut = loop.create_future()
    loop.add_writer(a.fileno(), lambda x, y: fut.done() or fut.set_result((x, y)), 1, "two")
    assert wait_for(loop, fut) == (1, "two")
    assert loop.remove_writer(a.fileno()) is True


def test_reader_and_writer_on_a_pipe(loop, pipe):
    r, w = pipe
    fut = loop.create_future()

    def on_writable():
        loop.remove_writer(w)
        os.write(w, b"through the pipe")

    loop.add_reader(r, lambda: fut.done() or fut.set_result(os.read(r, 100)))
    loop.add_writer(w, on_writable)
    assert wait_for(loop, fut) == b"through the pipe"
    assert loop.remove_reader(r) is True
    assert loop.remove_writer(w) is False


def test_reader_on_a_pty(loop):
    master, slave = os.openpty()
    try:
        fut = loop.create_future()
        loop.add_reader(master, lambda: fut.done() or fut.set_result(os.read(master, 100)))
        loop.call_later(0.01, os.write, slave, b"ping\n")
        assert b"ping" in wait_for(loop, fut)
        assert loop.remove_reader(master) is True
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize(
    "wrap",
    [FileLike, lambda fd: os.fdopen(fd, "rb", buffering=0, closefd=False)],
    ids=["fileno-method", "fdopen"],
)
def test_reader_accepts_objects_with_fileno(loop, pipe, wrap):
    r, w = pipe
    obj = wrap(r)
    fut = loop.create_future()
    loop.add_reader(obj, lambda: fut.done() or fut.set_result(os.read(r, 100)))
    os.write(w, b"x")
    assert wait_for(loop, fut) == b"x"
    assert loop.remove_reader(obj) is True
    assert loop.remove_reader(r) is False


def test_remove_returns_whether_something_was_registered(loop, sockpair):
    fd = sockpair[0].fileno()
    assert loop.remove_reader(fd) is False
    assert loop.remove_writer(fd) is False
    loop.add_reader(fd, print)
    assert loop.remove_writer(fd) is False  # a reader is not a writer
    assert loop.remove_reader(fd) is True
    assert loop.remove_reader(fd) is False
    loop.add_writer(fd, print)
    assert loop.remove_reader(fd) is False
    assert loop.remove_writer(fd) is True
    assert loop.remove_writer(fd) is False


def test_removing_the_reader_keeps_the_writer(loop, sockpair):
    a, b = sockpair
    fired = []
    fut = loop.create_future()
    loop.add_reader(a, lambda: fired.append("reader"))
    loop.add_writer(a, lambda: fut.done() or fut.set_result("writer"))
    assert loop.remove_reader(a) is True
    b.send(b"data")  # would make the (removed) reader fire
    assert wait_for(loop, fut) == "writer"
    assert fired == []
    assert loop.remove_writer(a) is True


def test_reader_is_level_triggered(loop, sockpair):
    a, b = sockpair
    got = []
    fut = loop.create_future()

    def read_one_byte():
        got.append(a.recv(1))
        if len(got) == 3:
            loop.remove_reader(a)
            fut.set_result(None)

    loop.add_reader(a, read_one_byte)
    b.send(b"abc")
    wait_for(loop, fut)
    assert got == [b"a", b"b", b"c"]


def test_reader_keeps_firing_while_data_is_unread(loop, pipe):
    r, w = pipe
    calls = []
    fut = loop.create_future()

    def never_reads():
        calls.append(None)
        if len(calls) == 5:
            loop.remove_reader(r)
            fut.set_result(None)

    loop.add_reader(r, never_reads)
    os.write(w, b"x")
    wait_for(loop, fut)
    assert len(calls) == 5
    assert os.read(r, 10) == b"x"


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "non-blocking"])
def test_add_reader_does_not_change_the_blocking_mode(loop, pipe, blocking):
    r, w = pipe
    for fd in (r, w):
        os.set_blocking(fd, blocking)
    fut = loop.create_future()
    loop.add_reader(r, lambda: fut.done() or fut.set_result(os.read(r, 10)))
    loop.add_writer(w, lambda: None)
    assert os.get_blocking(r) is blocking
    assert os.get_blocking(w) is blocking
    os.write(w, b"x")
    wait_for(loop, fut)
    assert loop.remove_reader(r)
    assert loop.remove_writer(w)
    assert os.get_blocking(r) is blocking
    assert os.get_blocking(w) is blocking


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_invalid_file_descriptors_are_rejected(loop, loop_name, pipe, method):
    add = getattr(loop, method)
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        add(-1, print)
    with pytest.raises(ValueError, match=r"^Invalid file object: 'x'$"):
        add("x", print)
    closed = pipe[0]
    os.close(closed)
    if BACKEND != "epoll" and loop_name == "asyncio":
        # asyncio's PollSelector and SelectSelector accept a closed fd and fail later, in the
        # wait; ferroloop rejects it at registration on every backend, as epoll does.
        return
    with pytest.raises(OSError) as info:  # noqa: PT011 -- what epoll_ctl reports; errno below
        add(closed, print)
    assert info.value.errno == errno.EBADF
    assert loop.remove_reader(closed) is False
    assert loop.remove_writer(closed) is False


@pytest.mark.skipif(BACKEND != "epoll", reason="only epoll refuses regular files")
def test_regular_files_cannot_be_watched(loop):
    # epoll refuses regular files with EPERM; asyncio surfaces that as PermissionError.
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f.fileno(), print)
        with pytest.raises(PermissionError):
            loop.add_writer(f, print)
        assert loop.remove_reader(f) is False


@pytest.mark.skipif(BACKEND == "epoll", reason="epoll refuses regular files")
def test_regular_files_are_always_ready(loop):
    # poll() and select() report a regular file as always readable and writable.
    with tempfile.TemporaryFile() as f:
        fut = loop.create_future()
        loop.add_reader(f, lambda: fut.done() or fut.set_result("read"))
        assert wait_for(loop, fut) == "read"
        assert loop.remove_reader(f) is True


def test_add_reader_replaces_the_previous_callback(loop, pipe):
    r, w = pipe
    fired = []
    fut = loop.create_future()
    loop.add_reader(r, lambda: fired.append("old"))
    loop.add_reader(r, lambda: (fired.append("new"), fut.done() or fut.set_result(None)))
    os.write(w, b"x")
    wait_for(loop, fut)
    assert set(fired) == {"new"}
    assert loop.remove_reader(r) is True
    assert loop.remove_reader(r) is False


def test_removing_a_reader_cancels_its_pending_callback(loop, sockpair):
    a, b = sockpair
    c, d = socket.socketpair()
    try:
        fired = []

        def reader(sock, other):
            fired.append(sock.recv(10))
            loop.remove_reader(sock)
            loop.remove_reader(other)

        loop.add_reader(a, reader, a, c)
        loop.add_reader(c, reader, c, a)
        b.send(b"x")
        d.send(b"x")
        # Both fds are ready in the same poll: whichever callback runs first removes
        # the other reader, whose already-queued callback must then not run.
        loop.call_later(0.02, loop.stop)
        loop.run_forever()
        assert len(fired) == 1
    finally:
        c.close()
        d.close()


def test_raising_reader_callback_does_not_break_the_loop(loop, pipe):
    r, w = pipe
    contexts = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    calls = []
    fut = loop.create_future()

    def flaky():
        calls.append(None)
        if len(calls) == 1:
            raise OSError("first call fails")
        fut.set_result(os.read(r, 10))
        loop.remove_reader(r)

    loop.add_reader(r, flaky)
    os.write(w, b"x")
    assert wait_for(loop, fut) == b"x"
    assert len(calls) == 2
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], OSError)
    assert "flaky" in contexts[0]["message"]


def test_closed_loop(loop, pipe):
    r, w = pipe
    loop.close()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.add_reader(r, print)
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.add_writer(w, print)
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(w) is False


@pytest.mark.parametrize("method", ["reader", "writer"])
def test_fds_past_a_c_int(loop, loop_name, method):
    # The selectors say so with OverflowError; removing such an fd finds nothing to remove.
    if BACKEND == "select" and loop_name == "asyncio":
        # asyncio's SelectSelector takes any int and fails later, in select(); ferroloop
        # refuses it at registration on every backend.
        return
    with pytest.raises(OverflowError):
        getattr(loop, f"add_{method}")(2**40, print)
    assert getattr(loop, f"remove_{method}")(2**40) is False
