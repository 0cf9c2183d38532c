"""Where I/O, signals and other threads' callbacks land in a chain of callbacks.

A loop whose ready queue is never empty does not block, but asyncio still looks for I/O on every
iteration (``select(timeout=0)``). ferroloop leaves that look out while it watches nothing that
could be ready (no fd but asyncio's self-pipe, and no signal handler that could write to it).
These tests pin down, against asyncio's loop, that leaving it out never moves a callback: each
records where in a chain of ``call_soon`` callbacks the event's callback runs.
"""

import os
import signal
import socket
import threading

import pytest

STEPS = 12
EVENT_AT = 3


@pytest.fixture(autouse=True)
def restore_signal_state():
    saved = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, saved)
    signal.set_wakeup_fd(-1)


def run_chain(loop, record, at_event):
    """Runs ``STEPS`` chained callbacks (each schedules the next), calling ``at_event()`` in
    step ``EVENT_AT``; ``record`` is the list the event's callback appends to."""

    def step(i):
        record.append(i)
        if i == EVENT_AT:
            at_event()
        if i + 1 < STEPS:
            loop.call_soon(step, i + 1)
        else:
            loop.stop()

    loop.call_soon(step, 0)
    loop.run_forever()
    return record


def test_a_signal_handler_runs_where_asyncio_runs_it_in_a_busy_chain(loop):
    record = []
    loop.add_signal_handler(signal.SIGUSR1, record.append, "signal")
    run_chain(loop, record, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    loop.remove_signal_handler(signal.SIGUSR1)
    # The signal's byte makes the self-pipe readable: the next iteration's look queues the
    # self-pipe's reader, which queues the handler for the iteration after.
    assert record.index("signal") == EVENT_AT + 3


def test_a_signal_handler_added_while_the_chain_runs_is_watched_at_once(loop):
    record = []

    def add_then_kill():
        loop.add_signal_handler(signal.SIGUSR1, record.append, "signal")
        os.kill(os.getpid(), signal.SIGUSR1)

    run_chain(loop, record, add_then_kill)
    loop.remove_signal_handler(signal.SIGUSR1)
    assert record.index("signal") == EVENT_AT + 3


@pytest.mark.parametrize("added", ["before_the_chain", "in_the_chain"])
@pytest.mark.parametrize("handlers_before", [False, True], ids=["no_handler", "handler_removed"])
def test_a_reader_runs_where_asyncio_runs_it_in_a_busy_chain(loop, handlers_before, added):
    if handlers_before:
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        loop.remove_signal_handler(signal.SIGUSR1)
    a, b = socket.socketpair()
    record = []

    def add_reader():
        loop.add_reader(b, lambda: (b.recv(1), record.append("read")))

    def event():
        if added == "in_the_chain":
            add_reader()
        a.send(b"x")

    try:
        if added == "before_the_chain":
            add_reader()
        run_chain(loop, record, event)
        loop.remove_reader(b)
    finally:
        a.close()
        b.close()
    # Data sent in a step is seen by the next iteration's look; its reader runs after the
    # callback the step queued.
    assert record.index("read") == EVENT_AT + 2


def test_call_soon_threadsafe_reaches_a_loop_busy_with_a_chain(loop):
    """The chain goes on until the other thread's callback has run: a loop that never blocks
    must still run what another thread sends it."""
    arrived = []
    started = threading.Event()

    def step(i):
        if i == 0:
            started.set()
        if arrived:
            loop.stop()
        else:
            loop.call_soon(step, i + 1)

    def send():
        started.wait()
        loop.call_soon_threadsafe(arrived.append, "from thread")

    thread = threading.Thread(target=send)
    thread.start()
    loop.call_soon(step, 0)
    loop.run_forever()
    thread.join()
    assert arrived == ["from thread"]


def test_the_loop_blocks_and_wakes_after_a_chain_with_a_wake_left_pending(loop):
    """A wake-up sent while the loop was busy and never looked at: the next blocking wait must
    return for a callback sent from another thread, not sleep on."""
    done = []

    def finish():
        done.append(True)
        loop.stop()

    # A wake while busy (the loop never looks), then a run that must block until the thread
    # sends its callback.
    loop.call_soon(loop.call_soon_threadsafe, lambda: None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    thread = threading.Timer(0.05, loop.call_soon_threadsafe, (finish,))
    thread.start()
    guard = loop.call_later(10, loop.stop)
    loop.run_forever()
    guard.cancel()
    thread.join()
    assert done == [True]
