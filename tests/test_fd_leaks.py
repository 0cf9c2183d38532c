"""File-descriptor hygiene: creating, using and closing loops must not leak fds."""

import gc
import os
import socket

import pytest

if not os.path.isdir("/proc/self/fd"):
    pytest.skip("needs /proc/self/fd", allow_module_level=True)


def open_fds():
    """The set of file descriptors currently open in this process."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def test_creating_and_closing_loops_leaks_no_fd(loop_factory):
    before = open_fds()
    for _ in range(50):
        loop = loop_factory()
        loop.close()
    del loop
    gc.collect()
    assert open_fds() - before == set()


def test_running_and_closing_loops_leaks_no_fd(loop_factory):
    before = open_fds()
    for _ in range(10):
        loop = loop_factory()
        loop.run_until_complete(loop.run_in_executor(None, lambda: None))
        loop.call_soon_threadsafe(lambda: None)
        loop.close()
    del loop
    gc.collect()
    assert open_fds() - before == set()


def test_closing_a_loop_with_a_registered_reader_leaks_no_fd(loop_factory):
    a, b = socket.socketpair()
    try:
        before = open_fds()
        loop = loop_factory()
        loop.add_reader(a.fileno(), lambda: None)
        loop.add_writer(b.fileno(), lambda: None)
        loop.close()
        del loop
        gc.collect()
        assert open_fds() - before == set()
        # The watched fds themselves belong to the caller and stay open.
        assert {a.fileno(), b.fileno()} <= open_fds()
    finally:
        a.close()
        b.close()
