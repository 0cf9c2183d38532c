"""The misuse ops of the fuzz program interpreter (``MisuseOps``, a mixin of Runner).

Owns ``BAD_CALLS`` (calls on the running loop, and on its futures and handles, that must fail
or be refused the same way on both loops: the ``bad`` op) and ``CLOSED_CALLS`` (calls made
after the loop is closed: the ``closed_*`` ops), with the helpers they use.  Their names must
be gen.BAD_CALLS and gen.CLOSED_CALLS (runner.py checks).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING

from runner_core import TIMEOUT
from tracenorm import exc_repr, norm, outcome

if TYPE_CHECKING:
    from runner_core import RunnerCore


class MisuseOps:
    """The ``bad`` op and the closed-loop calls (a mixin of runner.Runner)."""

    # -- calls that must fail ------------------------------------------------------------
    async def op_bad(self, op):
        name = op["call"]
        src = f"bad:{name}"
        try:
            res = BAD_CALLS[name](self)
            if asyncio.iscoroutine(res):
                res = await asyncio.wait_for(res, TIMEOUT)
            self.rec("main", "ev", src, "ok", norm(repr(res)))
        except Exception as exc:  # noqa: BLE001
            self.rec("main", "exc", src, *exc_repr(exc))

    def closed_call(self, op):
        name = op["call"]
        src = f"closed:{name}"
        try:
            res = CLOSED_CALLS[name](self)
            if asyncio.iscoroutine(res):
                try:
                    res.send(None)
                    res.close()
                    res = "<suspended>"
                except StopIteration as stop:
                    res = stop.value
            self.rec("closed", "ev", src, "ok", type(res).__name__)
        except Exception as exc:  # noqa: BLE001
            self.rec("closed", "exc", src, *exc_repr(exc))


async def _coro():
    return 1


def _cb():
    pass


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _with_data(r: RunnerCore, blocking_reader: bool):
    a, b = socket.socketpair()
    r.socks += [a, b]
    b.sendall(b"hello")
    time.sleep(0.001)
    return a


def _bad_connect(r: RunnerCore):
    s = r.sock()
    s.setblocking(False)
    port = _closed_port()

    async def go():
        try:
            await r.loop.sock_connect(s, ("127.0.0.1", port))
        except OSError as exc:
            raise type(exc)(exc.errno, str(exc).replace(str(port), "PORT")) from None

    return go()


def _coro_closed(r: RunnerCore, make):
    c = _coro()
    try:
        return make(c)
    finally:
        c.close()


BAD_CALLS = {
    "call_soon_noncallable": lambda r: r.loop.call_soon(1),
    "call_soon_coroutine": lambda r: r.loop.call_soon(_coro),
    "call_later_noncallable": lambda r: r.loop.call_later(0.1, "x"),
    "call_later_bad_delay": lambda r: r.loop.call_later("x", _cb),
    "call_at_bad_when": lambda r: r.loop.call_at(None, _cb),
    "call_soon_threadsafe_noncallable": lambda r: r.loop.call_soon_threadsafe(None),
    "create_task_noncoro": lambda r: r.loop.create_task(1),
    "run_in_executor_coroutine": lambda r: _coro_closed(
        r, lambda c: r.loop.run_in_executor(None, c)
    ),
    "run_in_executor_coroutine_function": lambda r: r.loop.run_in_executor(None, _coro),
    "add_reader_bad_fd": lambda r: r.loop.add_reader("x", _cb),
    "add_reader_negative_fd": lambda r: r.loop.add_reader(-1, _cb),
    "add_writer_bad_fd": lambda r: r.loop.add_writer(None, _cb),
    "remove_reader_unknown": lambda r: r.loop.remove_reader(r.pair()[0]),
    "remove_writer_unknown": lambda r: r.loop.remove_writer(r.pair()[0]),
    "remove_reader_bad_fd": lambda r: r.loop.remove_reader("x"),
    "set_default_executor_bad": lambda r: r.loop.set_default_executor(object()),
    "run_until_complete_running": lambda r: r.loop.run_until_complete(r.loop.create_future()),
    "run_forever_running": lambda r: r.loop.run_forever(),
    "close_running": lambda r: r.loop.close(),
    "add_signal_handler_not_int": lambda r: r.loop.add_signal_handler("x", _cb),
    "add_signal_handler_invalid": lambda r: r.loop.add_signal_handler(1000, _cb),
    "add_signal_handler_sigkill": lambda r: r.loop.add_signal_handler(signal.SIGKILL, _cb),
    "add_signal_handler_coroutine": lambda r: r.loop.add_signal_handler(signal.SIGUSR1, _coro),
    "remove_signal_handler_unset": lambda r: r.loop.remove_signal_handler(signal.SIGUSR2),
    "sock_recv_blocking": lambda r: r.loop.sock_recv(_with_data(r, True), 10),
    "sock_sendall_blocking": lambda r: r.loop.sock_sendall(_with_data(r, True), b"x"),
    "create_connection_host_and_sock": lambda r: r.loop.create_connection(
        asyncio.Protocol, "127.0.0.1", 1, sock=r.pair()[0]
    ),
    "create_connection_no_host": lambda r: r.loop.create_connection(asyncio.Protocol),
    "create_server_sock_and_host": lambda r: r.loop.create_server(
        asyncio.Protocol, "127.0.0.1", 0, sock=r.sock()
    ),
    "create_connection_udp_sock": lambda r: r.loop.create_connection(
        asyncio.Protocol, sock=r.sock(socket.AF_INET, socket.SOCK_DGRAM)
    ),
    "subprocess_exec_text": lambda r: r.loop.subprocess_exec(
        asyncio.SubprocessProtocol, sys.executable, "-c", "pass", text=True
    ),
    "subprocess_shell_not_str": lambda r: r.loop.subprocess_shell(
        asyncio.SubprocessProtocol, ["true"]
    ),
    "future_result_pending": lambda r: r.loop.create_future().result(),
    "future_exception_pending": lambda r: r.loop.create_future().exception(),
    "future_set_result_twice": lambda r: _twice(r),
    "future_set_exception_stopiteration": lambda r: r.loop.create_future().set_exception(
        StopIteration()
    ),
    "future_set_exception_class": lambda r: _set_exc_class(r),
    "task_result_pending": lambda r: _task_result_pending(r),
    "handle_cancel_twice": lambda r: _cancel_twice(r),
    "set_exception_handler_noncallable": lambda r: r.loop.set_exception_handler(1),
    "call_later_none": lambda r: r.loop.call_later(None, _cb),
    "sock_connect_bad_address": _bad_connect,
    "getaddrinfo_bad_port": lambda r: r.loop.getaddrinfo("127.0.0.1", "no-such-service"),
}


def _twice(r: RunnerCore):
    f = r.loop.create_future()
    f.set_result(1)
    f.set_result(2)


def _set_exc_class(r: RunnerCore):
    f = r.loop.create_future()
    f.set_exception(ValueError)
    return outcome(f)


def _task_result_pending(r: RunnerCore):
    t = r.loop.create_task(asyncio.sleep(0))
    t._fuzz_src = "bad-task"
    r.tasks.append(t)
    return t.result()


def _cancel_twice(r: RunnerCore):
    h = r.loop.call_soon(_cb)
    h.cancel()
    h.cancel()
    return h.cancelled()


CLOSED_CALLS = {
    "call_soon": lambda r: r.loop.call_soon(_cb),
    "call_later": lambda r: r.loop.call_later(0.1, _cb),
    "call_at": lambda r: r.loop.call_at(r.loop.time() + 1, _cb),
    "call_soon_threadsafe": lambda r: r.loop.call_soon_threadsafe(_cb),
    "run_until_complete": lambda r: r.loop.run_until_complete(r.loop.create_future()),
    "run_forever": lambda r: r.loop.run_forever(),
    "create_task": lambda r: _coro_closed(r, r.loop.create_task),
    "create_future": lambda r: r.loop.create_future(),
    "run_in_executor": lambda r: r.loop.run_in_executor(None, _cb),
    "add_reader": lambda r: r.loop.add_reader(r.pair()[0], _cb),
    "add_writer": lambda r: r.loop.add_writer(r.pair()[0], _cb),
    "remove_reader": lambda r: r.loop.remove_reader(r.pair()[0]),
    "add_signal_handler": lambda r: r.loop.add_signal_handler(signal.SIGUSR1, _cb),
    "remove_signal_handler": lambda r: r.loop.remove_signal_handler(signal.SIGUSR1),
    "close_again": lambda r: r.loop.close(),
    "is_closed": lambda r: r.loop.is_closed(),
    "is_running": lambda r: r.loop.is_running(),
    "stop": lambda r: r.loop.stop(),
    "time": lambda r: r.loop.time(),
    "shutdown_asyncgens": lambda r: r.loop.shutdown_asyncgens(),
    "shutdown_default_executor": lambda r: r.loop.shutdown_default_executor(),
    "sock_recv": lambda r: r.loop.sock_recv(r.pair()[0], 10),
    "create_connection": lambda r: r.loop.create_connection(asyncio.Protocol, sock=r.pair()[0]),
    "getaddrinfo": lambda r: r.loop.getaddrinfo("127.0.0.1", 80),
}
