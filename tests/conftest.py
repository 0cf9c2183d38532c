"""Shared fixtures: every behaviour test runs once per event loop implementation.

The "asyncio" parametrisation is the oracle (CPython's own selector loop); the
"ferroloop" parametrisation must behave the same.  ferroloop is imported lazily so
that, when the extension is missing or broken, the ferroloop tests fail (with the
import error) while the asyncio ones still run.
"""

import asyncio
import faulthandler
import os
import selectors
import subprocess
import sys

import pytest
from helpers_net import nonblocking_pair

# Source run at the top of every child interpreter made by `child_command`: it binds
# `new_loop` to the factory of the loop under test.
_CHILD_PREAMBLE = {
    "asyncio": "import asyncio\nnew_loop = asyncio.SelectorEventLoop\n",
    "ferroloop": "import asyncio\nimport ferroloop\nnew_loop = ferroloop.new_event_loop\n",
}

# A test that hangs (e.g. a loop that never wakes up) aborts the run with a traceback
# instead of stalling CI forever.
HANG_TIMEOUT = 120


@pytest.fixture(autouse=True)
def _hang_watchdog():
    faulthandler.dump_traceback_later(HANG_TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# FERROLOOP_BACKEND picks ferroloop's I/O backend for the whole run; the asyncio oracle then
# uses the matching selector, so that both loops watch fds through the same OS API.
BACKEND = os.environ.get("FERROLOOP_BACKEND") or "epoll"
_ORACLE_SELECTORS = {
    "epoll": selectors.EpollSelector,
    "poll": selectors.PollSelector,
    "select": selectors.SelectSelector,
    # io_uring's POLL_ADD, like poll(), takes regular files (always ready).
    "io_uring": selectors.PollSelector,
}


def _asyncio_loop():
    return asyncio.SelectorEventLoop(_ORACLE_SELECTORS[BACKEND]())


@pytest.fixture(params=["asyncio", "ferroloop"])
def loop_factory(request):
    """A zero-argument callable returning a new, not yet running event loop."""
    if request.param == "asyncio":
        # What asyncio.new_event_loop() returns on Linux (for the default epoll backend),
        # without going through the (possibly replaced) event loop policy.
        return _asyncio_loop
    import ferroloop  # a failed import must fail the ferroloop tests, never skip them

    return ferroloop.new_event_loop


@pytest.fixture
def loop_name(request, loop_factory):
    """The loop id, "asyncio" or "ferroloop": for child interpreters and documented xfails."""
    return request.node.callspec.params["loop_factory"]


@pytest.fixture
def loop(loop_factory):
    """A fresh loop, closed (after finalising async generators) at teardown."""
    new_loop = loop_factory()
    yield new_loop
    if not new_loop.is_closed():
        new_loop.run_until_complete(new_loop.shutdown_asyncgens())
        new_loop.close()


@pytest.fixture
def run(loop):
    """run(coro, timeout=10): run a coroutine to completion on `loop`, with a hang guard."""

    def run_coro(coro, timeout=10):
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))

    return run_coro


@pytest.fixture
def sockpair():
    """A connected pair of non-blocking sockets, closed at teardown."""
    a, b = nonblocking_pair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def child_command(loop_name, tmp_path):
    """child_command(code, args=(), flags=(), env=None) -> (argv, env) of a child interpreter.

    The child runs `code` after a preamble binding `new_loop` to the factory of the loop
    under test.  `args` follow the script on the command line, `flags` (e.g.
    ["-X", "dev"]) precede it, `env` is added to a copy of this process's environment.
    """
    counter = iter(range(1_000_000))

    def make(code, args=(), flags=(), env=None):
        script = tmp_path / f"child_{next(counter)}.py"
        script.write_text(_CHILD_PREAMBLE[loop_name] + code)
        child_env = dict(os.environ)
        for name in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE"):
            child_env.pop(name, None)
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        child_env.update(env or {})
        return [sys.executable, *flags, str(script), *args], child_env

    return make


@pytest.fixture
def run_python(child_command):
    """run_python(code, env=None, args=(), flags=(), timeout=60) runs a child to completion.

    Returns the CompletedProcess (text mode, output captured); a non-zero exit does not
    raise, so that tests can assert on the output.
    """

    def run_child(code, env=None, args=(), flags=(), timeout=60):
        argv, child_env = child_command(code, args=args, flags=flags, env=env)
        return subprocess.run(
            argv, env=child_env, capture_output=True, text=True, timeout=timeout, check=False
        )

    return run_child
