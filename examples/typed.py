"""ferroloop's public API as typed code sees it; `make lint` runs `mypy --strict` on this file.

python examples/typed.py
"""

import asyncio

import ferroloop


async def add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def callbacks() -> list[str]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ferroloop.Loop)
    order: list[str] = []
    done: asyncio.Future[None] = loop.create_future()
    handle: asyncio.Handle = loop.call_soon(order.append, "call_soon")
    timer: asyncio.TimerHandle = loop.call_later(0.01, order.append, "call_later")
    loop.call_at(timer.when() + 0.01, done.set_result, None)
    assert not handle.cancelled()
    await done
    task: asyncio.Task[int] = loop.create_task(add(1, 2))
    order.append(f"task: {await task}, backend: {loop.backend}")
    return order


def main() -> None:
    names: list[str] = ferroloop.backends()
    print("backends:", ", ".join(names))

    print("run:", ferroloop.run(callbacks()))

    loop: ferroloop.Loop = ferroloop.new_event_loop(backend=names[0])
    try:
        print("run_until_complete:", loop.run_until_complete(add(2, 3)), "at", loop.time() > 0)
        stats: ferroloop.LoopStats = loop.stats()
        iterations: int = stats["iterations"]
        print("stats:", iterations, "iterations,", stats["callbacks"], "callbacks")
    finally:
        loop.close()

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        print("Runner:", runner.run(add(3, 4)))


if __name__ == "__main__":
    main()
