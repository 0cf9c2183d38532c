"""The cyclic GC and the handles a loop holds: what is alive stays alive, what is garbage goes.

ferroloop keeps the handles it queues out of the GC's sight and reports what they hold from the
loop itself (``Handle::park`` in ``handle.rs``). asyncio's own loop, whose handles the GC walks
like any object, is the oracle: the same objects must survive and be collected on both.
"""

import asyncio
import contextvars
import gc
import threading
import warnings
import weakref

import pytest


class Holder:
    """An object in a cycle with a handle: it holds the handle, the handle holds its method."""

    def __init__(self):
        self.calls = 0
        self.handle = None

    def method(self, *args):
        self.calls += 1
        if args and callable(args[0]):
            args[0](*args[1:])


def _collect():
    for _ in range(3):
        gc.collect()


def _crowd(loop, n=20):
    """Queues ``n`` no-op callbacks: ferroloop parks a call_soon handle queued behind others."""
    for _ in range(n):
        loop.call_soon(int)


def _from_thread(fn, *args):
    """``fn(*args)``, called in another thread (as ``call_soon_threadsafe`` is meant to be)."""
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    thread.join()
    return out[0]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_a_queued_callback_in_a_cycle_outlives_a_collection_and_runs(loop, method):
    _crowd(loop)
    holder = Holder()
    holder.handle = getattr(loop, method)(holder.method, [object()])
    later = Holder()
    later.handle = loop.call_later(0, later.method)
    alive = weakref.ref(holder), weakref.ref(later)
    del holder, later
    _collect()
    assert all(ref() is not None for ref in alive)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert [ref().calls for ref in alive] == [1, 1]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_a_cycle_through_a_handle_that_ran_is_collected(loop, method):
    _crowd(loop)
    holder = Holder()
    holder.handle = getattr(loop, method)(holder.method)
    timer = Holder()
    timer.handle = loop.call_later(0, timer.method)
    loop.run_until_complete(asyncio.sleep(0.01))
    gone = weakref.ref(holder), weakref.ref(timer)
    del holder, timer
    _collect()
    assert [ref() for ref in gone] == [None, None]


def test_a_pending_timer_keeps_its_cycle_until_the_loop_closes(loop):
    holders = []
    for _ in range(3):
        holder = Holder()
        holder.handle = loop.call_later(3600, holder.method)
        holders.append(holder)
    refs = [weakref.ref(h) for h in holders]
    del holders, holder
    _collect()
    assert all(ref() is not None for ref in refs)  # held by the loop's timer queue
    loop.close()
    _collect()
    assert [ref() for ref in refs] == [None, None, None]


def test_cancelling_a_timer_frees_its_cycle_while_the_loop_still_holds_the_timer(loop):
    holder = Holder()
    holder.handle = loop.call_later(3600, holder.method)
    holder.handle.cancel()  # drops the callback, and with it the cycle
    ref = weakref.ref(holder)
    del holder
    _collect()
    assert ref() is None


def test_handles_given_back_to_add_callback_run_once_each_and_survive_a_collection(loop):
    _crowd(loop)
    holder = Holder()
    holder.handle = loop.call_soon(holder.method)
    loop._add_callback(holder.handle)  # queued twice now, as asyncio's signal code may do
    ref = weakref.ref(holder)
    del holder
    _collect()
    loop.run_until_complete(asyncio.sleep(0))
    assert ref() is not None
    assert ref().calls == 2
    ref().handle = None


def test_many_queued_callbacks_survive_collections_between_them(loop):
    seen = []
    for i in range(2000):
        loop.call_soon(seen.append, [i])
        if i % 500 == 0:
            loop.call_soon(gc.collect)
    loop.call_later(0, gc.collect)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert [x[0] for x in seen] == list(range(2000))


@pytest.mark.parametrize("queued", ["call_soon", "call_later"])
def test_a_loop_dropped_unclosed_with_handles_queued_is_collected(loop_factory, queued):
    new = loop_factory()
    _crowd(new)
    holder = Holder()
    schedule = getattr(new, queued)
    holder.handle = (
        schedule(holder.method) if queued == "call_soon" else schedule(60, holder.method)
    )
    refs = weakref.ref(new), weakref.ref(holder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del new, schedule, holder
        _collect()
    assert [ref() for ref in refs] == [None, None]


def test_a_burst_from_another_thread_survives_collections_and_runs_in_order(loop):
    seen = []
    holders = []

    def produce():
        for i in range(2000):
            holder = Holder()
            holder.handle = loop.call_soon_threadsafe(holder.method, seen.append, i)
            holders.append(weakref.ref(holder))
            loop.call_soon_threadsafe(seen.append, -i)
            if i % 500 == 0:
                loop.call_soon_threadsafe(gc.collect)
                gc.collect()

    _from_thread(produce)
    _collect()
    assert all(ref() is not None for ref in holders)  # held by the loop's ready queue
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [x for i in range(2000) for x in (i, -i)]
    _collect()
    assert all(ref() is None for ref in holders)


def test_a_loop_dropped_unclosed_with_threadsafe_handles_queued_is_collected(loop_factory):
    new = loop_factory()
    _crowd(new)
    holder = Holder()
    holder.handle = _from_thread(new.call_soon_threadsafe, holder.method)
    refs = weakref.ref(new), weakref.ref(holder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del new, holder
        _collect()
    assert [ref() for ref in refs] == [None, None]


# --- the contexts of queued handles (ferroloop parks a context nothing else holds) -------------

VAR = contextvars.ContextVar("test_gc_handles")


@pytest.mark.parametrize("method", ["call_soon", "call_later"])
def test_queued_handles_cancelled_and_dropped_with_their_contexts(loop, method):
    """A parked context freed by cancel() (or with its handle) must be tracked again first."""
    schedule = getattr(loop, method)
    handles = [schedule(*((0,) if method == "call_later" else ()), int) for _ in range(100)]
    taken = [h._context for h in handles[::3]]  # some contexts held outside too
    _collect()
    for h in handles[::2]:
        h.cancel()
    del handles
    _collect()
    del taken
    _collect()
    loop.run_until_complete(asyncio.sleep(0.01))
    _collect()


def test_a_context_with_a_variable_set_keeps_a_dropped_loop_collectable(loop_factory):
    """A queued context whose variable refers to the loop: the loop, dropped unclosed, is still
    found by the GC (its __del__ warns that it was not closed)."""
    loop = loop_factory()
    token = VAR.set(loop)
    try:
        _crowd(loop, 40)
        loop.call_later(3600, int)
    finally:
        VAR.reset(token)
    gone = weakref.ref(loop)
    del loop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        _collect()
    assert gone() is None


def test_a_variable_set_in_a_parked_context_while_it_runs_stays_collectable(loop):
    """A callback sets a variable in its own (empty, so parked) context to an object in a cycle
    with the handle: once the loop lets go, the cycle is garbage and is collected."""
    _crowd(loop)
    holder = Holder()
    holder.handle = loop.call_soon(VAR.set, holder)
    gone = weakref.ref(holder)
    del holder
    loop.run_until_complete(asyncio.sleep(0))
    _collect()
    assert gone() is None
