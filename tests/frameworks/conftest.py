"""Framework smoke tests: real aiohttp, uvicorn/Starlette, websockets, anyio and httpx code
run unchanged on asyncio's loop (the oracle) and on ferroloop, over sockets on 127.0.0.1.

The `loop_factory` and `loop_name` fixtures come from tests/conftest.py.  `arun` drives a
coroutine through `asyncio.Runner(loop_factory=...)`, the way applications start a custom
loop, and first checks that the loop under test is really the one running.
"""

import asyncio

import pytest

from frameworks.framework_apps import loop_kind

#: Upper bound on one test's coroutine: a hang fails the test instead of stalling the run.
TIMEOUT = 10.0


@pytest.fixture
def arun(loop_factory, loop_name):
    """arun(coro, timeout=TIMEOUT): run `coro` in an asyncio.Runner on the loop under test."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:

        async def guarded(coro, timeout):
            if loop_kind() != loop_name:
                coro.close()
                raise AssertionError(f"{loop_name} expected, {asyncio.get_running_loop()!r} runs")
            async with asyncio.timeout(timeout):
                return await coro

        def run(coro, timeout=TIMEOUT):
            return runner.run(guarded(coro, timeout))

        yield run
