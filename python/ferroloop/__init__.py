"""ferroloop: a drop-in replacement for asyncio's event loop, written in Rust.

import ferroloop
ferroloop.run(main())                                     # like asyncio.run
asyncio.Runner(loop_factory=ferroloop.new_event_loop)     # or with a Runner
"""

import asyncio as _asyncio
import importlib.metadata as _metadata
import typing as _typing
import warnings as _warnings
from collections.abc import Callable as _Callable
from collections.abc import Coroutine as _Coroutine

from ._ferroloop import Handle, TimerHandle
from ._loop import BACKEND_ENV, Loop, backends
from ._stats import LoopStats

try:
    __version__ = _metadata.version("ferroloop")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = (
    "BACKEND_ENV",
    "EventLoopPolicy",
    "Handle",
    "Loop",
    "LoopStats",
    "TimerHandle",
    "backends",
    "install",
    "new_event_loop",
    "run",
)


_T = _typing.TypeVar("_T")


def new_event_loop(*, backend: str | None = None) -> Loop:
    """A new ferroloop event loop. ``backend`` is one of ``backends()``; the default comes from
    the ``FERROLOOP_BACKEND`` environment variable, else the first of ``backends()``."""
    return Loop(backend=backend)


def run(
    main: _Coroutine[_typing.Any, _typing.Any, _T],
    *,
    debug: bool | None = None,
    loop_factory: _Callable[[], _asyncio.AbstractEventLoop] | None = new_event_loop,
) -> _T:
    """Run a coroutine on a new ferroloop loop and return its result, as ``asyncio.run``."""
    if _running():
        # asyncio.run's check and words, so that code written for it behaves the same. Unlike
        # asyncio.run, the coroutine is closed: no "was never awaited" warning on top.
        if _asyncio.iscoroutine(main):
            main.close()
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with _asyncio.Runner(debug=debug, loop_factory=loop_factory) as runner:
        return runner.run(main)


def _running() -> bool:
    try:
        _asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _make_policy_class() -> "type[EventLoopPolicy]":
    from ._compat import policy_base

    class EventLoopPolicy(policy_base()):  # type: ignore[misc]  # a base found on first use
        """An event loop policy whose loops are ferroloop loops (asyncio's policy API is
        deprecated from Python 3.14 on; prefer ``loop_factory=ferroloop.new_event_loop``)."""

        def _loop_factory(self) -> Loop:
            return new_event_loop()

        def __repr__(self) -> str:
            return f"<{type(self).__module__}.{type(self).__qualname__}>"

    EventLoopPolicy.__module__ = __name__
    EventLoopPolicy.__qualname__ = "EventLoopPolicy"
    return EventLoopPolicy


def _policy_class() -> "type[EventLoopPolicy]":
    # Built on first use: asyncio's policy classes are gone in 3.16, and `import ferroloop`
    # must not need them.
    cls = globals()["EventLoopPolicy"] = _make_policy_class()
    return cls


if _typing.TYPE_CHECKING:

    class EventLoopPolicy(_asyncio.DefaultEventLoopPolicy):
        """What type checkers see of the class ``_make_policy_class`` builds on first use."""

        def _loop_factory(self) -> Loop: ...

else:
    # Hidden from type checkers: a module __getattr__ would give every misspelt
    # `ferroloop.name` a type instead of an error.
    def __getattr__(name):
        if name == "EventLoopPolicy":
            return _policy_class()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install() -> None:
    """Make ferroloop asyncio's default loop through the (deprecated) policy API."""
    policy = _policy_class()()
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", DeprecationWarning)
        _asyncio.set_event_loop_policy(policy)
