"""anyio on its asyncio backend: task groups, memory object streams, worker threads, TCP,
cancel scopes and subprocesses, driven by asyncio.Runner(loop_factory=...) or anyio.run."""

import subprocess
import sys
import threading
import time

import anyio
import anyio.abc
import pytest

from frameworks.framework_apps import loop_kind


def test_anyio_run_with_the_loop_factory(loop_factory, loop_name):
    async def main(value):
        await anyio.sleep(0)
        return value, loop_kind()

    options = {"loop_factory": loop_factory}
    assert anyio.run(main, 42, backend="asyncio", backend_options=options) == (42, loop_name)


def test_task_group_start_results_and_failure(arun):
    async def main():
        results = {}

        async def worker(i):
            await anyio.sleep(0.001 * (5 - i))
            results[i] = i * i

        async def service(*, task_status=anyio.TASK_STATUS_IGNORED):
            task_status.started("ready")
            await anyio.sleep_forever()

        async with anyio.create_task_group() as outer:
            assert await outer.start(service) == "ready"
            async with anyio.create_task_group() as inner:
                for i in range(5):
                    inner.start_soon(worker, i)
            assert results == {i: i * i for i in range(5)}
            outer.cancel_scope.cancel()  # ends the service
        assert outer.cancel_scope.cancel_called

        # One child fails: its siblings are cancelled, the error comes out in a group.
        cancelled = []

        async def sleeper():
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append("sleeper")
                raise

        async def failer():
            await anyio.sleep(0.01)
            raise ValueError("boom")

        with pytest.raises(ExceptionGroup) as info:
            async with anyio.create_task_group() as group:
                group.start_soon(sleeper)
                group.start_soon(failer)
        assert [repr(e) for e in info.value.exceptions] == ["ValueError('boom')"]
        assert cancelled == ["sleeper"]

    arun(main())


def test_memory_object_streams(arun):
    async def main():
        send, receive = anyio.create_memory_object_stream[int](max_buffer_size=0)

        async def producer():
            async with send:
                for i in range(200):
                    await send.send(i)

        received = []
        async with anyio.create_task_group() as group:
            group.start_soon(producer)
            async with receive:
                async for item in receive:
                    received.append(item)
        assert received == list(range(200))

        # Two consumers on clones of one receive stream share the items between them.
        send, receive = anyio.create_memory_object_stream[int](max_buffer_size=5)
        shared = []

        async def consumer(stream):
            async with stream:
                async for item in stream:
                    shared.append(item)
                    await anyio.sleep(0)

        async with anyio.create_task_group() as group:
            async with receive:
                group.start_soon(consumer, receive.clone())
                group.start_soon(consumer, receive.clone())
            async with send:
                for i in range(100):
                    await send.send(i)
        assert sorted(shared) == list(range(100))

        send, receive = anyio.create_memory_object_stream[str](max_buffer_size=1)
        send.send_nowait("one")
        with pytest.raises(anyio.WouldBlock):
            send.send_nowait("two")
        assert receive.statistics().current_buffer_used == 1
        assert receive.receive_nowait() == "one"
        receive.close()
        with pytest.raises(anyio.BrokenResourceError):
            await send.send("nobody listens")
        send.close()

    arun(main())


def test_to_thread_and_back(arun):
    async def main():
        loop_thread = threading.get_ident()
        assert await anyio.to_thread.run_sync(threading.get_ident) != loop_thread

        async def double(value):
            assert threading.get_ident() == loop_thread
            await anyio.sleep(0)
            return value * 2

        def in_worker():
            assert threading.get_ident() != loop_thread
            return anyio.from_thread.run(double, 21)

        assert await anyio.to_thread.run_sync(in_worker) == 42

        with pytest.raises(ZeroDivisionError):
            await anyio.to_thread.run_sync(lambda: 1 / 0)

        # A CapacityLimiter of 2 bounds how many of the 6 calls run at once.
        lock, running, peak = threading.Lock(), [0], [0]

        def busy(i):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.01)
            with lock:
                running[0] -= 1
            return i

        limiter = anyio.CapacityLimiter(2)
        results = []

        async def call(i):
            results.append(await anyio.to_thread.run_sync(busy, i, limiter=limiter))

        async with anyio.create_task_group() as group:
            for i in range(6):
                group.start_soon(call, i)
        assert sorted(results) == list(range(6))
        assert 1 <= peak[0] <= 2

    arun(main())


def test_tcp_listener_and_connect(arun):
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def handle(stream):
        async with stream:
            async for chunk in stream:  # until the client's EOF
                await stream.send(chunk)

    async def main():
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, handle)

            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(b"hello anyio")
                await stream.send_eof()
                reply = b"".join([chunk async for chunk in stream])
            assert reply == b"hello anyio"

            async def round_trip(n):
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    assert stream.extra(anyio.abc.SocketAttribute.remote_port) == port
                    async with anyio.create_task_group() as inner:

                        async def send_all():
                            await stream.send(payload)
                            await stream.send_eof()

                        inner.start_soon(send_all)
                        received = b"".join([chunk async for chunk in stream])
                    assert received == payload, n

            async with anyio.create_task_group() as clients:
                for n in range(5):
                    clients.start_soon(round_trip, n)
            group.cancel_scope.cancel()
        await listener.aclose()

        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", port)

    arun(main())


def test_cancel_scopes_and_timeouts(arun):
    async def main():
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.05):
                await anyio.sleep(10)

        with anyio.fail_after(5):  # not reached: no error
            await anyio.sleep(0)

        with anyio.move_on_after(0.02) as scope:
            await anyio.Event().wait()
        assert scope.cancelled_caught

        # A shielded scope finishes its work inside a cancelled one.
        steps = []
        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)
                steps.append("shielded work done")
            await anyio.sleep(10)
            steps.append("not reached")
        assert steps == ["shielded work done"] and outer.cancelled_caught

        # Cancelled from another task, while waiting on an Event.
        started, event = anyio.Event(), anyio.Event()
        scopes = []

        async def waiter():
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                started.set()
                await event.wait()
            scopes.append("left")

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await started.wait()
            scopes[0].cancel()
        assert scopes[1] == "left" and scopes[0].cancelled_caught and not event.is_set()

    arun(main())


def test_run_process(arun):
    async def main():
        code = "import sys; data = sys.stdin.read(); print(data.upper()); sys.exit(3)"
        result = await anyio.run_process([sys.executable, "-c", code], input=b"ferro", check=False)
        assert (result.returncode, result.stdout) == (3, b"FERRO\n")
        with pytest.raises(subprocess.CalledProcessError) as info:
            await anyio.run_process([sys.executable, "-c", "raise SystemExit(2)"])
        assert info.value.returncode == 2

    arun(main())
