"""The loop API that asyncio added or changed since 3.11, as the running version has it: what
create_task does with its keywords (3.12-3.14) and eager tasks (3.12), the _ThreadSafeHandle of
call_soon_threadsafe (3.14) and the call-graph tools (3.14).  Servers (close_clients,
abort_clients, keep_alive) and smaller changes to the loop's own methods are in
test_versions_api_loop.py.

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
import subprocess
import sys
import threading
import time
from asyncio import base_events

import pytest
from helpers_net import iterations
from helpers_versions import on_asyncio, outcome, var

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
