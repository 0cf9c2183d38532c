"""Executors: run_in_executor, default executor management, and the resolver helpers
getaddrinfo/getnameinfo that run in it."""

import asyncio
import concurrent.futures
import socket
import threading

import pytest


def test_run_in_executor_runs_in_another_thread(run, loop):
    async def main():
        fut = loop.run_in_executor(None, lambda a, b: (a + b, threading.get_ident()), 2, 3)
        assert isinstance(fut, asyncio.Future)
        assert fut.get_loop() is loop
        return await fut

    value, ident = run(main())
    assert value == 5
    assert ident != threading.get_ident()


def test_run_in_executor_propagates_exceptions(run, loop):
    def fail():
        raise LookupError("in worker")

    with pytest.raises(LookupError, match="in worker"):
        run(loop.run_in_executor(None, fail))


def test_run_in_executor_with_an_explicit_executor(run, loop):
    names = []
    with concurrent.futures.ThreadPoolExecutor(thread_name_prefix="explicit") as pool:
        run(loop.run_in_executor(pool, lambda: names.append(threading.current_thread().name)))
    assert names[0].startswith("explicit")


def test_set_default_executor(run, loop):
    pool = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="custom-default")
    try:
        loop.set_default_executor(pool)
        name = run(loop.run_in_executor(None, lambda: threading.current_thread().name))
        assert name.startswith("custom-default")
    finally:
        pool.shutdown(wait=True)


def test_set_default_executor_requires_a_thread_pool(loop):
    message = r"^executor must be ThreadPoolExecutor instance$"
    with (
        concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool,
        pytest.raises(TypeError, match=message),
    ):
        loop.set_default_executor(pool)
    with pytest.raises(TypeError, match=message):
        loop.set_default_executor(object())


def test_shutdown_default_executor_waits_and_blocks_further_use(run, loop):
    finished = []
    run(loop.run_in_executor(None, finished.append, 1))
    assert run(loop.shutdown_default_executor()) is None
    with pytest.raises(RuntimeError, match=r"^Executor shutdown has been called$"):
        loop.run_in_executor(None, finished.append, 2)
    assert finished == [1]


def test_shutdown_default_executor_without_executor(run, loop):
    assert run(loop.shutdown_default_executor()) is None


def test_getaddrinfo_matches_the_socket_module(run, loop):
    for host in ("127.0.0.1", "localhost"):
        expected = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
        got = run(loop.getaddrinfo(host, 80, type=socket.SOCK_STREAM))
        assert got == expected


def test_getaddrinfo_failure_raises_gaierror(run, loop):
    # AI_NUMERICHOST makes the failure immediate and independent of DNS.
    with pytest.raises(socket.gaierror):
        run(loop.getaddrinfo("not-an-address", 80, flags=socket.AI_NUMERICHOST))


def test_getnameinfo(run, loop):
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    assert run(loop.getnameinfo(("127.0.0.1", 80), flags)) == ("127.0.0.1", "80")
    assert run(loop.getnameinfo(("127.0.0.1", 80))) == socket.getnameinfo(("127.0.0.1", 80), 0)
