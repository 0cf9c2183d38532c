"""The loop API that asyncio added or changed since 3.11, as the running version has it:
Server.close_clients/abort_clients and create_server(keep_alive=) (3.13), what create_task does
with its keywords (3.12-3.14) and eager tasks (3.12), the _ThreadSafeHandle of
call_soon_threadsafe (3.14), the call-graph tools (3.14), and smaller changes to what the loop's
own methods do (callback reprs, the exception handler's context, transports on a used fd, the
sendfile fallback, buffered data before StreamWriter.start_tls).

Each test states what asyncio does on the running interpreter, so the asyncio run checks the
statement and the ferroloop run checks ferroloop against it; where an expectation depends on the
version, it is derived from what the running asyncio shows (a parameter, an attribute, a name its
code uses), not from a version number.
"""

import asyncio
import contextvars
import inspect
import io
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from asyncio import base_events, format_helpers, selector_events

import pytest
from helpers_net import (
    Accepted,
    Recorder,
    client_context,
    connected_pair,
    iterations,
    recv_until_eof,
    server_context,
    small_sndbuf,
)

HAS_CLOSE_CLIENTS = hasattr(asyncio.Server, "close_clients")
needs_close_clients = pytest.mark.skipif(
    not HAS_CLOSE_CLIENTS, reason="asyncio has no Server.close_clients before 3.13"
)
ThreadSafeHandle = getattr(asyncio.events, "_ThreadSafeHandle", None)
needs_threadsafe_handle = pytest.mark.skipif(
    ThreadSafeHandle is None,
    reason="asyncio has no _ThreadSafeHandle before 3.14 (call_soon_threadsafe returns a Handle)",
)
needs_call_graph = pytest.mark.skipif(
    not hasattr(asyncio, "capture_call_graph"), reason="asyncio has no call graphs before 3.14"
)
needs_eager_tasks = pytest.mark.skipif(
    not hasattr(asyncio, "eager_task_factory"), reason="asyncio has no eager tasks before 3.12"
)

var = contextvars.ContextVar("var", default="default")


def on_asyncio(call):
    """What ``call(loop)`` gives on a fresh asyncio loop, for comparing messages that differ
    from version to version (even between patch releases): ``(exception type, message)``, or
    ``("ok", value)``."""
    oracle = asyncio.SelectorEventLoop()
    try:
        return ("ok", call(oracle))
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return (type(exc), str(exc))
    finally:
        oracle.close()


def outcome(call, loop):
    try:
        return ("ok", call(loop))
    except Exception as exc:  # noqa: BLE001
        return (type(exc), str(exc))


# --- Server.close_clients / abort_clients, create_server(keep_alive=) (3.13) ----------------------

SERVER_KINDS = ["tcp", "unix", "tls"]


async def serve(loop, kind, tmp_path, factory, **kwargs):
    """(server, connect): a server of ``kind`` and a coroutine function making a client
    connection to it (``(transport, Recorder)``)."""
    if kind == "unix":
        path = str(tmp_path / "server.sock")
        server = await loop.create_unix_server(factory, path, **kwargs)
        return server, lambda: loop.create_unix_connection(Recorder, path)
    tls = {"ssl": server_context()} if kind == "tls" else {}
    server = await loop.create_server(factory, "127.0.0.1", 0, **tls, **kwargs)
    address = server.sockets[0].getsockname()
    if kind == "tls":
        return server, lambda: loop.create_connection(
            Recorder, *address, ssl=client_context(), server_hostname="localhost"
        )
    return server, lambda: loop.create_connection(Recorder, *address)


@needs_close_clients
@pytest.mark.parametrize("kind", SERVER_KINDS)
@pytest.mark.parametrize("method", ["close_clients", "abort_clients"])
def test_close_or_abort_clients_ends_every_connection_and_wait_closed_returns(
    run, loop, kind, method, tmp_path
):
    async def main():
        accepted = Accepted()
        server, connect = await serve(loop, kind, tmp_path, accepted)
        clients = [await connect() for _ in range(2)]
        peers = [await accepted.get() for _ in range(2)]
        server.close()
        waiting = asyncio.ensure_future(server.wait_closed())
        await iterations()
        # Closed, but connections remain: wait_closed waits for them (3.12.1+).
        assert not waiting.done()
        getattr(server, method)()
        await waiting
        server_side = [(await p.lost, p.calls) for p in peers]
        client_side = [(await protocol.lost, protocol.calls) for _, protocol in clients]
        return server_side, client_side

    server_side, client_side = run(main())
    assert server_side == [(None, ["made", "lost"])] * 2
    assert client_side == [(None, ["made", "eof", "lost"])] * 2


@needs_close_clients
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_abort_clients_drops_what_the_server_still_had_to_send(run, loop, kind, tmp_path):
    async def main():
        accepted = Accepted()
        server, connect = await serve(loop, kind, tmp_path, accepted)
        transport, _ = await connect()
        transport.pause_reading()  # the client reads nothing: the server's writes back up
        peer = await accepted.get()
        small_sndbuf(peer.transport)
        peer.transport.write(b"x" * (4 << 20))
        await iterations()
        server.close()
        server.abort_clients()  # close_clients would wait for the buffer to drain
        await server.wait_closed()
        exc = await peer.lost
        transport.close()
        return exc, peer.calls[0], peer.calls[-1]

    assert run(main()) == (None, "made", "lost")


@pytest.mark.skipif(
    "close_clients" not in asyncio.Server.serve_forever.__code__.co_names,
    reason="this asyncio's serve_forever does not close the clients when cancelled (3.14 does; "
    "3.13.0 then waits for them in wait_closed, 3.11/3.12 leave them open)",
)
def test_cancelling_serve_forever_closes_the_clients(run, loop):
    async def main():
        accepted = Accepted()
        server = await loop.create_server(accepted, "127.0.0.1", 0, start_serving=False)
        serving = asyncio.ensure_future(server.serve_forever())
        await iterations()
        transport, protocol = await loop.create_connection(
            Recorder, *server.sockets[0].getsockname()
        )
        peer = await accepted.get()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        return server.is_serving(), await peer.lost, await protocol.lost, protocol.calls

    assert run(main()) == (False, None, None, ["made", "eof", "lost"])


@pytest.mark.skipif(
    "keep_alive" not in inspect.signature(base_events.BaseEventLoop.create_server).parameters,
    reason="asyncio's create_server has no keep_alive before 3.13",
)
@pytest.mark.parametrize("keep_alive", [True, False, None])
def test_create_server_keep_alive_sets_so_keepalive_on_the_listening_socket(run, loop, keep_alive):
    def keepalive(sock):
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    async def main():
        accepted = Accepted()
        server = await loop.create_server(accepted, "127.0.0.1", 0, keep_alive=keep_alive)
        transport, _ = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
        peer = await accepted.get()
        found = (
            [keepalive(s) for s in server.sockets],
            # Linux: an accepted socket inherits the option from the listening one.
            keepalive(peer.transport.get_extra_info("socket")),
            keepalive(transport.get_extra_info("socket")),
        )
        transport.close()
        server.close()
        await server.wait_closed()
        return found

    on = bool(keep_alive)
    assert run(main()) == ([on], on, False)


# --- create_task: keywords, names, eager tasks (3.12-3.14) ----------------------------------------


async def seven():
    return 7


def create_task_outcome(args=(), kwargs=None):
    """A function of a loop: ``loop.create_task(seven(), *args, **kwargs)``, the task run to
    completion; its value is ``(type(task).__name__, result)``."""

    def call(loop):
        coro = seven()
        try:
            task = loop.create_task(coro, *args, **(kwargs or {}))
        except BaseException:
            coro.close()
            raise
        return type(task).__name__, loop.run_until_complete(task)

    return call


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {"unknown": 1}),
        ((), {"eager_start": False}),  # a Task keyword: 3.14 passes it on, 3.11-3.13 refuse it
        ((), {"name": "n", "eager_start": False}),
        ((), {"loop": None}),  # create_task passes its own loop= to Task
        (("positional",), {}),
        ((), {"name": "n", "context": None}),
    ],
    ids=["unknown", "eager_start", "name-and-eager_start", "loop", "positional", "name-context"],
)
def test_create_task_takes_and_refuses_keywords_as_asyncio_does(loop, args, kwargs):
    call = create_task_outcome(args, kwargs)
    expected = on_asyncio(call)
    assert outcome(call, loop) == expected
    assert expected[0] in ("ok", TypeError)


def test_create_task_without_a_coroutine_fails_as_on_asyncio(loop):
    def call(loop):
        return loop.create_task()

    expected = on_asyncio(call)
    assert expected[0] is TypeError
    assert outcome(call, loop) == expected


def test_create_task_on_a_closed_loop(loop):
    loop.close()
    coro = seven()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        loop.create_task(coro, name="n")
    coro.close()


class NamedTask(asyncio.Task):
    """A task that records the names set on it after it was made."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_after_init = []

    def set_name(self, value):
        self.set_after_init.append(value)
        super().set_name(value)


@pytest.mark.parametrize("name", ["given", None])
@pytest.mark.parametrize("with_context", [False, True])
def test_create_task_names_tasks_of_a_factory_as_asyncio_does(loop, name, with_context):
    # 3.11/3.12 call the factory with (loop, coro[, context=]) and then set a name that is not
    # None; 3.13.0 sets it even when None ("None"); 3.14 passes name= to the factory.
    def call(loop):
        seen = []

        def factory(loop, coro, **kwargs):
            seen.append(sorted(kwargs))
            return NamedTask(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)
        kwargs = {"name": name}
        if with_context:
            kwargs["context"] = contextvars.copy_context()
        task = loop.create_task(seven(), **kwargs)
        loop.run_until_complete(task)
        got = task.get_name()
        return seen, task.set_after_init, re.sub(r"^Task-\d+$", "Task-N", got)

    expected = on_asyncio(call)
    assert expected[0] == "ok"
    assert outcome(call, loop) == expected
    if name is not None:
        assert expected[1][2] == name


def test_create_task_names_and_contexts_without_a_factory(run, loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")

    async def report():
        return var.get()

    async def main():
        named = loop.create_task(report(), name="named")
        in_ctx = loop.create_task(report(), context=ctx, name=None)
        return named.get_name(), await named, in_ctx.get_name().startswith("Task-"), await in_ctx

    assert run(main()) == ("named", "default", True, "in-ctx")


@needs_eager_tasks
@pytest.mark.parametrize("how", ["eager_task_factory", "create_eager_task_factory"])
def test_eager_tasks_run_their_first_step_at_once(run, loop, how):
    events = []

    class Recording(asyncio.Task):
        pass

    async def child(n):
        events.append(f"child {n} starts")
        await asyncio.sleep(0)
        events.append(f"child {n} resumes")
        return n

    async def done_at_once():
        events.append("done at once")
        return "early"

    async def main():
        if how == "eager_task_factory":
            loop.set_task_factory(asyncio.eager_task_factory)
        else:
            loop.set_task_factory(asyncio.create_eager_task_factory(Recording))
        loop.call_soon(events.append, "callback")
        events.append("before")
        first = loop.create_task(child(1))
        events.append("after")
        second = asyncio.create_task(child(2), name="second")
        early = loop.create_task(done_at_once())
        events.append(("early done", early.done(), early.result()))
        results = await asyncio.gather(first, second)
        loop.set_task_factory(None)
        return results, type(first).__name__, second.get_name()

    results, cls, name = run(main())
    assert results == [1, 2]
    assert cls == ("Task" if how == "eager_task_factory" else "Recording")
    assert name == "second"
    assert events == [
        "before",
        "child 1 starts",
        "after",
        "child 2 starts",
        "done at once",
        ("early done", True, "early"),
        "callback",
        "child 1 resumes",
        "child 2 resumes",
    ]


@pytest.mark.skipif(
    not any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        for p in inspect.signature(base_events.BaseEventLoop.create_task).parameters.values()
    ),
    reason="asyncio's create_task takes only name and context before 3.14",
)
def test_create_task_eager_start_without_a_factory(run, loop):
    events = []

    async def child():
        events.append("child starts")
        await asyncio.sleep(0)
        events.append("child resumes")

    async def main():
        loop.call_soon(events.append, "callback")
        task = loop.create_task(child(), eager_start=True, name="eager")
        events.append("created")
        lazy = loop.create_task(child(), eager_start=False)
        events.append("lazy created")
        await asyncio.gather(task, lazy)
        return task.get_name()

    assert run(main()) == "eager"
    assert events == [
        "child starts",
        "created",
        "lazy created",
        "callback",
        "child resumes",
        "child starts",
        "child resumes",
    ]


# --- call_soon_threadsafe's handle (3.14: _ThreadSafeHandle) --------------------------------------


def test_handles_are_asyncios_classes(loop):
    soon = loop.call_soon(print)
    later = loop.call_later(10, print)
    threadsafe = loop.call_soon_threadsafe(print)
    assert isinstance(soon, asyncio.Handle) and not isinstance(soon, asyncio.TimerHandle)
    assert isinstance(later, asyncio.TimerHandle) and isinstance(later, asyncio.Handle)
    assert isinstance(threadsafe, asyncio.Handle)
    assert not isinstance(threadsafe, asyncio.TimerHandle)
    assert repr(soon).startswith("<Handle print()")
    assert repr(later).startswith("<TimerHandle when=")
    if ThreadSafeHandle is None:
        assert repr(threadsafe).startswith("<Handle print()")
    else:
        assert isinstance(threadsafe, ThreadSafeHandle)
        assert not isinstance(soon, ThreadSafeHandle)
        assert repr(threadsafe).startswith("<_ThreadSafeHandle print()")
    for handle in (soon, later, threadsafe):
        handle.cancel()
        assert handle.cancelled()


def test_threadsafe_handle_cancelled_from_another_thread_before_it_runs(loop):
    ran = []
    handle = loop.call_soon_threadsafe(ran.append, "ran")
    thread = threading.Thread(target=handle.cancel)
    thread.start()
    thread.join()
    loop.run_until_complete(iterations())
    assert ran == []
    assert handle.cancelled()


def test_threadsafe_handle_cancelled_by_its_own_callback(loop):
    # asyncio's lock is re-entrant: the callback may cancel the handle that runs it.
    def callback():
        handle.cancel()
        seen.append(handle.cancelled())

    seen = []
    handle = loop.call_soon_threadsafe(callback)
    loop.run_until_complete(iterations())
    assert seen == [True]
    assert handle.cancelled()


@needs_threadsafe_handle
def test_threadsafe_handle_cancel_waits_for_the_running_callback(loop):
    events = []
    running = threading.Event()
    cancelling = threading.Event()

    def callback():
        running.set()
        cancelling.wait(10)
        # Give the other thread time to get into cancel(): it must wait for this callback.
        # (Only a loop whose cancel() does not wait can fail, and then only if it got there.)
        time.sleep(0.05)
        events.append("callback ends")

    def cancel():
        running.wait(10)
        cancelling.set()
        handle.cancel()
        events.append(("cancel returns", handle.cancelled()))

    handle = loop.call_soon_threadsafe(callback)
    thread = threading.Thread(target=cancel)
    thread.start()
    loop.run_until_complete(iterations())
    thread.join(10)
    assert events == ["callback ends", ("cancel returns", True)]


def test_threadsafe_handle_callbacks_from_many_threads_all_run(run, loop):
    n_threads, per_thread = 4, 500
    count = 0
    done = loop.create_future()

    def arrive():
        nonlocal count
        count += 1
        if count == n_threads * per_thread:
            done.set_result(None)

    def produce():
        handles = [loop.call_soon_threadsafe(arrive) for _ in range(per_thread)]
        # Cancelling after the fact races with the loop running them: never twice, never lost.
        for h in handles[::50]:
            h.cancel()

    async def main():
        threads = [threading.Thread(target=produce) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        await asyncio.sleep(0)
        await iterations()
        return count

    ran = run(main())
    assert n_threads * (per_thread - per_thread // 50) <= ran <= n_threads * per_thread


def test_threadsafe_handle_source_traceback_ends_at_the_caller(loop):
    loop.set_debug(True)

    def schedule():
        return loop.call_soon_threadsafe(print)

    handle = schedule()
    assert handle._source_traceback[-1].name == "schedule"
    handle.cancel()


# --- the call-graph tools (3.14) ------------------------------------------------------------------


def normalized_graph(text):
    text = re.sub(r"id=0x[0-9a-f]+", "id=ID", text)
    text = re.sub(r"File '[^']*[/\\]([^/\\']+)', line \d+", r"File '\1', line N", text)
    return re.sub(r"Task-\d+", "Task-N", text)


@needs_call_graph
def test_print_call_graph_of_a_task_awaiting_a_gather_of_two_tasks(run, loop):
    async def leaf(release, graph):
        if graph is not None:
            out = io.StringIO()
            asyncio.print_call_graph(file=out)
            graph.append(out.getvalue())
        await release.wait()

    async def main():
        release = asyncio.Event()
        graph = []
        first = asyncio.create_task(leaf(release, graph), name="first")
        second = asyncio.create_task(leaf(release, None), name="second")

        async def gatherer():
            await asyncio.gather(first, second)

        outer = asyncio.create_task(gatherer(), name="gatherer")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # Now from the outside: what the first leaf waits in, and who waits for it.
        out = io.StringIO()
        asyncio.print_call_graph(first, file=out)
        release.set()
        await outer
        return graph[0], out.getvalue()

    inside, outside = run(main())
    # Printed from inside the first leaf, before anything waited for it.
    assert normalized_graph(inside).splitlines() == [
        "* Task(name='first', id=ID)",
        "  + Call stack:",
        "  |   File 'graph.py', line N, in print_call_graph()",
        "  |   File 'test_versions_api.py', line N, in async "
        "test_print_call_graph_of_a_task_awaiting_a_gather_of_two_tasks.<locals>.leaf()",
    ]
    assert normalized_graph(outside).splitlines() == [
        "* Task(name='first', id=ID)",
        "  + Call stack:",
        "  |   File 'locks.py', line N, in async Event.wait()",
        "  |   File 'test_versions_api.py', line N, in async "
        "test_print_call_graph_of_a_task_awaiting_a_gather_of_two_tasks.<locals>.leaf()",
        "  + Awaited by:",
        "    * Task(name='gatherer', id=ID)",
        "      + Call stack:",
        "      |   File 'test_versions_api.py', line N, in async "
        "test_print_call_graph_of_a_task_awaiting_a_gather_of_two_tasks.<locals>.main."
        "<locals>.gatherer()",
    ]


@needs_call_graph
def test_capture_call_graph_and_future_add_to_awaited_by(run, loop):
    async def main():
        me = asyncio.current_task()
        fut = loop.create_future()
        asyncio.future_add_to_awaited_by(fut, me)
        graph = asyncio.capture_call_graph(fut)
        awaited_by = [g.future for g in graph.awaited_by]
        mine = asyncio.capture_call_graph()
        asyncio.future_discard_from_awaited_by(fut, me)
        after = asyncio.capture_call_graph(fut).awaited_by
        fut.cancel()
        return (
            graph.future is fut,
            graph.call_stack,
            awaited_by == [me],
            mine.future is me,
            mine.call_stack[0].frame.f_code.co_name,
            after,
        )

    assert run(main()) == (True, (), True, True, "main", ())


PS_CHILD = """
import sys

async def leaf(release):
    await release.wait()

async def main():
    release = asyncio.Event()
    first = asyncio.create_task(leaf(release), name="first")
    second = asyncio.create_task(leaf(release), name="second")

    async def gatherer():
        await asyncio.gather(first, second)

    outer = asyncio.create_task(gatherer(), name="gatherer")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    release.set()
    await outer

loop = new_loop()
loop.run_until_complete(main())
loop.close()
"""


@needs_call_graph
def test_python_m_asyncio_pstree_reads_a_process_running_the_loop(child_command):
    argv, env = child_command(PS_CHILD)
    with subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout.readline() == "ready\n"
            tool = subprocess.run(
                [sys.executable, "-m", "asyncio", "pstree", str(child.pid)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            child.stdin.write("\n")
            child.stdin.close()
            child.wait(30)
    if tool.returncode != 0 and re.search("[Pp]ermission|not permitted", tool.stderr):
        pytest.skip(f"cannot read the child's memory: {tool.stderr.strip().splitlines()[-1]}")
    assert tool.returncode == 0, tool.stderr
    lines = [re.sub(r" \S+:\d+$", "", line.rstrip()) for line in tool.stdout.splitlines()]
    assert [re.sub(r"Task-\d+", "Task-N", line) for line in lines] == [
        "└── (T) Task-N",
        "    └──  main",
        "└── (T) gatherer",
        "    └──  main.<locals>.gatherer",
        "        ├── (T) first",
        "        │   └──  leaf",
        "        │       └──  Event.wait",
        "        └── (T) second",
        "            └──  leaf",
        "                └──  Event.wait",
    ]


# --- smaller changes to the loop's own methods (3.12-3.15) ----------------------------------------

#: 3.13: callback reprs and "Exception in callback" messages show arguments only in debug mode.
ARGUMENTS_ONLY_IN_DEBUG = (
    "debug" in inspect.signature(format_helpers._format_callback_source).parameters
)


def callback_with_secret(secret):
    raise ValueError("boom")


@pytest.mark.parametrize("debug", [False, True])
def test_handle_repr_shows_arguments_as_asyncio_does(loop, debug):
    loop.set_debug(debug)
    handle = loop.call_soon(callback_with_secret, "s3cret")
    timer = loop.call_later(10, callback_with_secret, "s3cret")
    # asyncio's own Handle on the same loop formats as the running version does.
    expected = repr(asyncio.Handle(callback_with_secret, ("s3cret",), loop))

    def strip(text):
        return re.sub(r" created at \S+", "", re.sub(r" when=\S+", "", text))

    assert strip(repr(handle)) == strip(expected)
    assert strip(repr(timer)) == strip(expected).replace("<Handle", "<TimerHandle")
    assert ("s3cret" in repr(handle)) == (debug or not ARGUMENTS_ONLY_IN_DEBUG)
    handle.cancel()
    timer.cancel()


@pytest.mark.parametrize("debug", [False, True])
def test_exception_in_callback_message_shows_arguments_as_asyncio_does(loop, debug):
    loop.set_debug(debug)
    contexts = []
    loop.set_exception_handler(lambda _, context: contexts.append(context))
    handle = loop.call_soon(callback_with_secret, "s3cret")
    loop.run_until_complete(iterations())
    (context,) = contexts
    source = format_helpers._format_callback_source
    kwargs = {"debug": debug} if ARGUMENTS_ONLY_IN_DEBUG else {}
    expected = source(callback_with_secret, ("s3cret",), **kwargs)
    assert context["message"] == f"Exception in callback {expected}"
    assert context["handle"] is handle


def test_exception_handler_runs_in_the_context_of_the_failing_callback(loop):
    # 3.14: call_exception_handler runs the handler in the handle's (or task's) context.
    in_context = "get_context" in base_events.BaseEventLoop.call_exception_handler.__code__.co_names
    ctx = contextvars.copy_context()
    ctx.run(var.set, "callback's")
    seen = []
    loop.set_exception_handler(lambda _, context: seen.append(var.get()))
    loop.call_soon(callback_with_secret, "x", context=ctx)
    loop.run_until_complete(iterations())
    assert seen == ["callback's" if in_context else "default"]


@pytest.mark.skipif(
    "_ensure_fd_no_transport"
    not in selector_events.BaseSelectorEventLoop._make_socket_transport.__code__.co_names,
    reason="asyncio 3.11 makes a second transport on a socket that already has one",
)
def test_a_second_transport_on_a_socket_in_use_is_refused(run, loop):
    async def main():
        stream, stream_peer = socket.socketpair()
        dgram, dgram_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        first, _ = await loop.connect_accepted_socket(asyncio.Protocol, stream)
        expected = [f"File descriptor {stream!r} is used by transport {first!r}"]
        with pytest.raises(RuntimeError) as stream_error:
            await loop.connect_accepted_socket(asyncio.Protocol, stream)
        first_dgram, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=dgram)
        expected.append(f"File descriptor {dgram!r} is used by transport {first_dgram!r}")
        with pytest.raises(RuntimeError) as dgram_error:
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=dgram)
        messages = [str(stream_error.value), str(dgram_error.value)]
        first.close()
        first_dgram.close()
        await iterations()
        stream_peer.close()
        dgram_peer.close()
        return messages, expected

    messages, expected = run(main())
    assert messages == expected


def test_sendfile_fallback_from_offset_zero_of_a_file_read_halfway(run, loop):
    # gh-150107 (3.14.x): the fallback (a file without fileno) seeks to offset 0 too; before,
    # offset 0 meant "from where the file is".
    seeks_any_offset = (
        base_events.BaseEventLoop._sendfile_fallback.__code__.co_names[0] == "hasattr"
    )
    content = bytes(range(256)) * 64

    async def main():
        transport, _, peer = await connected_pair()
        receiving = asyncio.ensure_future(recv_until_eof(peer))
        file = io.BytesIO(content)
        file.seek(1000)
        sent = await loop.sendfile(transport, file, 0)
        transport.close()
        received = await receiving
        peer.close()
        return sent, file.tell(), received

    expected = content if seeks_any_offset else content[1000:]
    assert run(main()) == (len(expected), len(expected), expected)


class StartTlsServer:
    """A streams server that reads a plaintext line, upgrades to TLS with StreamWriter.start_tls
    and echoes one line upper-cased."""

    def __init__(self):
        self.result = asyncio.get_running_loop().create_future()

    async def __call__(self, reader, writer):
        try:
            line = await reader.readline()
            await writer.start_tls(server_context())
            data = await reader.readline()
            writer.write(data.upper())
            await writer.drain()
            writer.close()
            self.result.set_result((line, data))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.result.set_exception(exc)


async def tls_over_raw_socket(sock, first, send_line):
    """Client side of a TLS handshake over a non-blocking socket, by hand: the plaintext
    ``first`` goes out in the same send as the ClientHello; then ``send_line`` is sent over TLS
    and the reply line returned."""
    loop = asyncio.get_running_loop()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    pending = first
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending += outgoing.read()
            if pending:
                await loop.sock_sendall(sock, pending)
                pending = b""
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise ConnectionError("EOF during the handshake") from None
            incoming.write(data)
    tls.write(send_line)
    await loop.sock_sendall(sock, outgoing.read())
    reply = b""
    while not reply.endswith(b"\n"):
        try:
            reply += tls.read(65536)
        except ssl.SSLWantReadError:
            data = await loop.sock_recv(sock, 65536)
            if not data:
                break
            incoming.write(data)
    return reply


@pytest.mark.skipif(
    "StreamReaderProtocol" not in base_events.BaseEventLoop.start_tls.__code__.co_names,
    reason="asyncio before 3.14 (gh-142352) leaves a handshake that came with the plaintext in "
    "the StreamReader, where start_tls never sees it",
)
def test_stream_start_tls_takes_a_handshake_that_came_with_the_plaintext(run, loop):
    async def main():
        handler = StartTlsServer()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, server.sockets[0].getsockname())
        reply = await tls_over_raw_socket(sock, b"STARTTLS\n", b"hello over tls\n")
        got = await handler.result
        sock.close()
        server.close()
        await server.wait_closed()
        return reply, got

    assert run(main()) == (b"HELLO OVER TLS\n", (b"STARTTLS\n", b"hello over tls\n"))
