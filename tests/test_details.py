"""Details where ferroloop follows asyncio closely (issue 14): the tracebacks of the exceptions it
reports, which iteration a timer runs in, and where it finds the Task and Future classes."""

import asyncio
import socket
import time
from asyncio import futures, tasks

import pytest

GUARD = 5.0  # seconds before a hung run_forever() is stopped by a guard timer


def last_frame_name(exc):
    """The name of the function where `exc` was raised: the last frame of its traceback."""
    tb = exc.__traceback__
    assert tb is not None, f"{exc!r} has no traceback"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name


def collect_contexts(loop):
    contexts = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    return contexts


def run_until(loop, predicate):
    """Runs the loop until `predicate()` is true (checked after each callback it schedules)."""

    async def wait():
        deadline = loop.time() + GUARD
        while not predicate() and loop.time() < deadline:
            await asyncio.sleep(0.001)

    loop.run_until_complete(wait())
    assert predicate(), "the loop never got there"


# --- tracebacks -----------------------------------------------------------------------------


def failing_callback():
    raise ValueError("from the callback")


def test_a_call_soon_callback_error_keeps_its_traceback(loop):
    contexts = collect_contexts(loop)
    loop.call_soon(failing_callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    [context] = contexts
    assert isinstance(context["exception"], ValueError)
    assert last_frame_name(context["exception"]) == "failing_callback"


def test_a_call_later_callback_error_keeps_its_traceback(loop):
    contexts = collect_contexts(loop)
    loop.call_later(0, failing_callback)
    run_until(loop, lambda: contexts)
    [context] = contexts
    assert isinstance(context["exception"], ValueError)
    assert last_frame_name(context["exception"]) == "failing_callback"


class FailingProtocol(asyncio.Protocol):
    """Raises from the method named `failing`; records connection_lost's argument."""

    def __init__(self, failing):
        self.failing = failing
        self.lost = []

    def connection_made(self, transport):
        self.transport = transport
        if self.failing == "connection_made":
            raise ValueError("from connection_made")

    def data_received(self, data):
        if self.failing == "data_received":
            raise ValueError("from data_received")

    def connection_lost(self, exc):
        self.lost.append(exc)


def socket_protocol_error(loop, failing):
    """(the exception handler's contexts, the protocol) once the protocol's method `failing`
    raised on a connected socket transport that was sent some bytes."""
    contexts = collect_contexts(loop)
    a, b = socket.socketpair()
    try:
        protocol = FailingProtocol(failing)
        loop.run_until_complete(loop.create_connection(lambda: protocol, sock=a))
        b.sendall(b"data")
        run_until(loop, lambda: contexts)
        protocol.transport.close()
        run_until(loop, lambda: protocol.lost or failing == "connection_made")
    finally:
        b.close()
    return contexts, protocol


def test_a_data_received_error_keeps_its_traceback(loop):
    contexts, protocol = socket_protocol_error(loop, "data_received")
    [context] = contexts
    assert isinstance(context["exception"], ValueError)
    assert last_frame_name(context["exception"]) == "data_received"
    # The same exception object reaches connection_lost(), traceback and all.
    assert protocol.lost == [context["exception"]]


def test_a_connection_made_error_keeps_its_traceback(loop):
    contexts, _ = socket_protocol_error(loop, "connection_made")
    assert contexts, "no error reported"
    assert isinstance(contexts[0]["exception"], ValueError)
    assert last_frame_name(contexts[0]["exception"]) == "connection_made"


# --- timers ---------------------------------------------------------------------------------


def test_a_timer_due_within_the_clock_resolution_runs_in_the_same_iteration(loop):
    """asyncio's _run_once runs the timers due before time() + _clock_resolution: a timer set
    half a resolution ahead joins the callbacks of the next iteration, after them."""
    resolution = time.get_clock_info("monotonic").resolution
    out = []

    def start():
        loop.call_at(loop.time() + resolution / 2, out.append, "timer")
        loop.call_soon(second_iteration)

    def second_iteration():
        out.append("soon")
        loop.call_soon(third_iteration)

    def third_iteration():
        out.append("next")
        loop.stop()

    guard = loop.call_later(GUARD, loop.stop)
    loop.call_soon(start)
    loop.run_forever()
    guard.cancel()
    assert out == ["soon", "timer", "next"]


# --- where the classes are found -------------------------------------------------------------


async def answer():
    return 42


def test_create_task_makes_the_task_class_of_the_tasks_module(loop, monkeypatch):
    """asyncio's create_task calls tasks.Task, read at each call."""
    task = loop.create_task(answer())
    assert type(task) is tasks._CTask
    loop.run_until_complete(task)
    monkeypatch.setattr(tasks, "Task", tasks._PyTask)
    task = loop.create_task(answer())
    assert type(task) is tasks._PyTask
    assert loop.run_until_complete(task) == 42


def test_create_task_ignores_the_task_name_of_the_asyncio_package(loop, monkeypatch):
    """`asyncio.Task` is a copy of the name made at import: asyncio's create_task does not
    read it."""
    monkeypatch.setattr(asyncio, "Task", tasks._PyTask)
    task = loop.create_task(answer())
    assert type(task) is tasks._CTask
    assert loop.run_until_complete(task) == 42


def test_create_future_makes_the_future_class_of_the_futures_module(loop, monkeypatch):
    """asyncio's create_future calls futures.Future, read at each call."""
    assert type(loop.create_future()) is futures._CFuture
    monkeypatch.setattr(futures, "Future", futures._PyFuture)
    future = loop.create_future()
    assert type(future) is futures._PyFuture
    loop.call_soon(future.set_result, 7)
    assert loop.run_until_complete(future) == 7
    monkeypatch.setattr(asyncio, "Future", futures._PyFuture)
    monkeypatch.setattr(futures, "Future", futures._CFuture)
    assert type(loop.create_future()) is futures._CFuture


def test_create_task_without_a_task_class_raises_attribute_error(loop, monkeypatch):
    loop.create_task(answer())  # the class is found (and may be remembered) first
    loop.run_until_complete(asyncio.sleep(0))
    monkeypatch.delattr(tasks, "Task")
    coro = answer()
    with pytest.raises(AttributeError, match="Task"):
        loop.create_task(coro)
    coro.close()
    monkeypatch.undo()
    assert type(loop.create_task(answer())) is tasks._CTask
    loop.run_until_complete(asyncio.sleep(0))


# --- timer handles --------------------------------------------------------------------------


@pytest.mark.parametrize("when", [1, 2.5, 10**6])
def test_call_at_keeps_the_time_it_was_given(loop, when):
    """asyncio's TimerHandle keeps ``when`` as given: ``call_at(1, f)`` says ``when=1``."""
    handle = loop.call_at(when, print)
    assert handle.when() == when
    assert type(handle.when()) is type(when)
    assert f"when={when} " in repr(handle)
    handle.cancel()


def test_call_later_gives_a_float_time_and_timers_compare_by_time(loop):
    at_int = loop.call_at(1, print)
    later = loop.call_later(10, print)
    assert type(later.when()) is float
    assert at_int < later and later > at_int and at_int != later
    assert sorted([later, at_int]) == [at_int, later]
    assert hash(at_int) == hash(1.0)
    at_int.cancel()
    later.cancel()
