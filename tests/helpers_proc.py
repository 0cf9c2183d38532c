"""Helpers for the subprocess tests: a SubprocessProtocol that records its callbacks, child
programs, inheritable fds, and the state of child processes read from /proc."""

import asyncio
import contextlib
import os
import time

from helpers_net import open_fds

#: A child that prints its pid, process group and session, as a Python list.
IDS = "import os; print([os.getpid(), os.getpgrp(), os.getsid(0)])"
#: A child that writes argv[1] to fd argv[2] if given, then prints its open fds as a Python
#: list (one of them is listdir's own directory fd).
FDS = (
    "import os, sys\n"
    "if len(sys.argv) > 2: os.write(int(sys.argv[2]), sys.argv[1].encode())\n"
    "print(sorted(int(n) for n in os.listdir('/proc/self/fd')))\n"
)


class ProcRecorder(asyncio.SubprocessProtocol):
    """Records callbacks, in order, in `calls`: "made", ("data", fd), ("pipe_lost", fd, exc),
    "exited" and "lost"; the bytes read from fds 1 and 2 in `data`; futures `exited` (the
    transport's returncode when process_exited ran) and `lost` (connection_lost's argument)."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.calls = []
        self.data = {1: bytearray(), 2: bytearray()}
        self.transport = None
        self.exited = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.calls.append("made")
        self.transport = transport

    def pipe_data_received(self, fd, data):
        assert type(data) is bytes
        self.calls.append(("data", fd))
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.calls.append(("pipe_lost", fd, exc))

    def process_exited(self):
        self.calls.append("exited")
        self.exited.set_result(self.transport.get_returncode())

    def connection_lost(self, exc):
        self.calls.append("lost")
        self.lost.set_result(exc)


class ByteCounter(ProcRecorder):
    """A ProcRecorder that counts the bytes read from each fd instead of keeping them."""

    def __init__(self):
        super().__init__()
        self.counts = {1: 0, 2: 0}

    def pipe_data_received(self, fd, data):
        self.counts[fd] += len(data)


def check_callback_order(calls, fds):
    """Asserts asyncio's SubprocessProtocol contract on `calls` for pipes on `fds`:
    connection_made first, connection_lost last, process_exited once, and for each pipe its
    data before its one pipe_connection_lost (which may come before or after process_exited)."""
    assert calls[0] == "made"
    assert calls[-1] == "lost"
    assert calls.count("made") == calls.count("lost") == calls.count("exited") == 1
    events = [c for c in calls if isinstance(c, tuple)]
    pipe_lost = [c for c in events if c[0] == "pipe_lost"]
    assert sorted(c[1] for c in pipe_lost) == sorted(fds)
    for fd in fds:
        lost_at = calls.index(next(c for c in pipe_lost if c[1] == fd))
        assert ("data", fd) not in calls[lost_at:]
    assert {c[1] for c in events if c[0] == "data"} <= set(fds) - {0}


def inheritable_fds():
    """The fds of this process that a child spawned with close_fds=False would inherit."""
    fds = set()
    for fd in open_fds():
        with contextlib.suppress(OSError):  # listdir's own fd, closed by now
            if os.get_inheritable(fd):
                fds.add(fd)
    return fds


def proc_state(pid):
    """The state letter of process `pid` ("R", "S", "Z", ...), or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return stat.rpartition(b")")[2].split()[0].decode()


def zombie_children():
    """The pids of this process's children that have exited and are not reaped."""
    me, zombies = os.getpid(), set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] == b"Z" and int(fields[1]) == me:
            zombies.add(int(name))
    return zombies


def wait_for(predicate, what, timeout=10.0):
    """Blocks (the event loop too) until `predicate()` is true; `what` names it on timeout.
    Only for waiting on other processes and threads, never to assert how long things take."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.002)
