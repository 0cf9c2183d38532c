"""The loops a benchmark can run on, by name: ``asyncio``, ``uvloop``, ``rloop``, ``zuvloop``
(CPython 3.14+), ``ferroloop`` or any ``module:factory`` whose zero-argument factory returns a
new event loop."""

import asyncio
import importlib
import importlib.metadata
import platform

#: name -> "module:factory". asyncio's own selector loop is what ``asyncio.run`` uses on Linux.
KNOWN = {
    "asyncio": "asyncio:SelectorEventLoop",
    "uvloop": "uvloop:new_event_loop",
    "rloop": "rloop:new_event_loop",
    # libuv under a Zig engine; CPython 3.14+ only (a run on an older one notes it as skipped).
    "zuvloop": "zuvloop:new_event_loop",
    "ferroloop": "ferroloop:new_event_loop",
    # ferroloop on each of its backends (``ferroloop`` alone is the default, epoll).
    "ferroloop-poll": "ferroloop.bench.loops:ferroloop_poll",
    "ferroloop-select": "ferroloop.bench.loops:ferroloop_select",
    "ferroloop-io_uring": "ferroloop.bench.loops:ferroloop_io_uring",
}


def _ferroloop_on(backend):
    def make():
        import ferroloop

        return ferroloop.new_event_loop(backend=backend)

    make.__name__ = f"ferroloop_{backend}"
    return make


ferroloop_poll = _ferroloop_on("poll")
ferroloop_select = _ferroloop_on("select")
ferroloop_io_uring = _ferroloop_on("io_uring")

#: The loop every ratio is taken against.
BASELINE = "asyncio"


def spec(name):
    """The ``module:factory`` string for a loop name."""
    return KNOWN.get(name, name)


def factory(name):
    """The zero-argument callable that makes a new loop; raises ImportError when unavailable."""
    module, _, attr = spec(name).partition(":")
    if not attr:
        raise ValueError(f"unknown loop {name!r}: use one of {sorted(KNOWN)} or module:factory")
    return getattr(importlib.import_module(module), attr)


def version(name):
    """The version of the library that provides the loop (Python's own for asyncio)."""
    module = spec(name).partition(":")[0]
    if module == "asyncio":
        return platform.python_version()
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return getattr(importlib.import_module(module), "__version__", "unknown")


def run(name, coro):
    """Run a coroutine to completion on a new loop of the given kind, as ``asyncio.run``."""
    with asyncio.Runner(loop_factory=factory(name)) as runner:
        return runner.run(coro)
