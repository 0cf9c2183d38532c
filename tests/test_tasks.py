"""Futures and tasks on the loop: create_future, create_task, task factories, cancellation,
and asyncio.Runner driving the loop."""

import asyncio
import contextvars

import pytest

var = contextvars.ContextVar("var", default="default")


async def return_after_sleep(value, delay=0.001):
    await asyncio.sleep(delay)
    return value


def test_create_future_returns_a_plain_future_of_this_loop(loop):
    fut = loop.create_future()
    assert type(fut) is asyncio.Future
    assert fut.get_loop() is loop
    assert not fut.done()


def test_future_done_callbacks_run_on_a_later_iteration(loop):
    fut = loop.create_future()
    seen = []
    fut.add_done_callback(lambda f: seen.append(f.result()))
    fut.set_result("ok")
    assert seen == []  # scheduled with call_soon, not called synchronously
    loop.run_until_complete(fut)
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == ["ok"]


def test_create_task_returns_a_named_task_of_this_loop(run, loop):
    async def main():
        task = loop.create_task(return_after_sleep(7), name="my-task")
        assert isinstance(task, asyncio.Task)
        assert task.get_loop() is loop
        assert task.get_name() == "my-task"
        default = loop.create_task(return_after_sleep(8))
        assert default.get_name().startswith("Task-")
        return await task, await default

    assert run(main()) == (7, 8)


def test_create_task_runs_the_coroutine_in_the_given_context(run, loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")

    async def child():
        seen = var.get()
        var.set("set-by-task")
        return seen

    async def main():
        return await loop.create_task(child(), context=ctx)

    assert run(main()) == "in-ctx"
    assert ctx[var] == "set-by-task"
    assert var.get() == "default"


def test_current_task_and_all_tasks(run, loop):
    async def main():
        me = asyncio.current_task()
        other = loop.create_task(asyncio.sleep(1))
        tasks = asyncio.all_tasks()
        other.cancel()
        return me, other, tasks

    me, other, tasks = run(main())
    assert isinstance(me, asyncio.Task)
    assert me.get_loop() is loop
    assert me in tasks
    assert other in tasks


def test_task_factory(run, loop):
    calls = []

    def factory(factory_loop, coro, **kwargs):
        calls.append((factory_loop, kwargs.get("context")))
        return asyncio.Task(coro, loop=factory_loop, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    ctx = contextvars.copy_context()

    async def main():
        a = loop.create_task(return_after_sleep("a"), name="named")
        b = asyncio.create_task(return_after_sleep("b"))
        c = loop.create_task(return_after_sleep("c"), context=ctx)
        assert a.get_name() == "named"
        return [await a, await b, await c]

    assert run(main()) == ["a", "b", "c"]
    # run() itself wraps its coroutine in a task through the factory too.
    assert [c for c in calls if c[1] is ctx] == [(loop, ctx)]
    assert len(calls) >= 3
    assert all(c[0] is loop for c in calls)
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_set_task_factory_rejects_non_callables(loop):
    with pytest.raises(TypeError, match=r"^task factory must be a callable or None$"):
        loop.set_task_factory(42)
    assert loop.get_task_factory() is None


def test_cancelling_a_sleeping_task(loop):
    async def sleeper():
        await asyncio.sleep(10)

    task = loop.create_task(sleeper())
    loop.call_later(0.01, task.cancel, "stop now")
    with pytest.raises(asyncio.CancelledError) as info:
        loop.run_until_complete(asyncio.wait_for(task, 5))
    assert task.cancelled()
    assert "stop now" in info.value.args


def test_task_can_catch_its_cancellation(run, loop):
    async def stubborn():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "cleaned up"

    async def main():
        task = loop.create_task(stubborn())
        await asyncio.sleep(0.01)
        task.cancel()
        return await task

    assert run(main()) == "cleaned up"


def test_cancelling_a_task_waiting_on_a_future_cancels_the_future(run, loop):
    fut = loop.create_future()

    async def main():
        task = loop.create_task(_await(fut))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled(), fut.cancelled()

    assert run(main()) == (True, True)


async def _await(awaitable):
    return await awaitable


def test_wait_for_and_timeout(run):
    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        return await asyncio.gather(*(return_after_sleep(i, 0.001 * i) for i in range(20)))

    assert run(main()) == list(range(20))


def test_runner_with_loop_factory(loop_factory):
    finalised = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalised.append(True)

    async def main():
        running = asyncio.get_running_loop()
        gen = agen()
        assert await gen.__anext__() == 1
        main.gen = gen  # keep it alive and suspended until the runner closes
        await running.run_in_executor(None, lambda: None)
        return running

    with asyncio.Runner(loop_factory=loop_factory, debug=True) as runner:
        running = runner.run(main())
        assert running is runner.get_loop()
        assert running.get_debug()
        assert runner.run(return_after_sleep("second")) == "second"
    assert running.is_closed()
    assert finalised == [True]  # Runner.close() ran shutdown_asyncgens() on this loop
    reference = loop_factory()
    reference.close()
    assert type(running) is type(reference)
