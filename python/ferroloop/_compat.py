"""Every private asyncio name ferroloop relies on, in one place, with its version switches.

ferroloop is asyncio's own Unix selector loop with a Rust core under it (see ``_loop.py``). That
reaches into asyncio's private parts in three ways, each listed here:

1. **Helpers it calls**: imported below under public names; the rest of the package imports
   them from this module, never from asyncio directly.
2. **Hooks it overrides**: asyncio's Python code calls ``_make_socket_transport``,
   ``_start_serving``, ``_add_reader``, ... on the loop; ferroloop answers them. ``HOOKS`` names
   them all. Each must accept every argument the running asyncio passes (3.15 added
   ``context=`` to several).
3. **Names the Rust code reads** on asyncio's objects (``RUST_NAMES``).

``tests/test_compat.py`` checks all three against the running interpreter, so a CPython that
moves one fails that test by name instead of dropping connections at run time.

Version switches are feature tests where a feature can be seen (a parameter, an attribute),
so that a patch release that backports a change is followed too; ``VERSION`` otherwise.
"""

import inspect
import sys
from asyncio import (
    base_events,
    constants,
    events,
    format_helpers,
    futures,
    selector_events,
    sslproto,
    trsock,
    unix_events,
)

__all__ = (
    "CALLED",
    "HOOKS",
    "RUST_NAMES",
    "VERSION",
    "BaseSelectorEventLoop",
    "SendfileMode",
    "SelectorEventLoop",
    "TransportSocket",
    "UnixSubprocessTransport",
    "check_ssl_socket",
    "create_transport_context",
    "extract_stack",
    "format_callback_source",
    "format_handle",
    "policy_base",
    "server_attach",
    "server_detach",
    "set_nodelay",
    "set_running_loop",
)

VERSION = sys.version_info[:2]

# --- 1. helpers ferroloop calls -----------------------------------------------------------------

check_ssl_socket = base_events._check_ssl_socket
format_handle = base_events._format_handle
set_nodelay = base_events._set_nodelay
format_callback_source = format_helpers._format_callback_source
extract_stack = format_helpers.extract_stack
SendfileMode = constants._SendfileMode
set_running_loop = events._set_running_loop
create_transport_context = sslproto._create_transport_context
TransportSocket = trsock.TransportSocket
#: The loop class ``ferroloop.Loop`` derives from, and the one whose ``sock_*`` it falls back on.
SelectorEventLoop = unix_events._UnixSelectorEventLoop
BaseSelectorEventLoop = selector_events.BaseSelectorEventLoop
#: asyncio's subprocess transport, used as it is (its pipes are ferroloop's).
UnixSubprocessTransport = unix_events._UnixSubprocessTransport


def _parameters(func):
    return list(inspect.signature(func).parameters)


# --- version switches ---------------------------------------------------------------------------

#: 3.13 (``Server.close_clients``): ``Server._attach``/``_detach`` take the transport, which the
#: server keeps; before, they only counted connections.
SERVER_TRACKS_TRANSPORTS = len(_parameters(base_events.Server._attach)) == 2

#: 3.13: ``run_forever`` is split into ``_run_forever_setup``/``_run_forever_cleanup`` for
#: subclasses that drive the loop themselves; ferroloop's ``run_forever`` calls them where they are.
HAS_RUN_FOREVER_SETUP = hasattr(base_events.BaseEventLoop, "_run_forever_setup")

#: 3.14: ``call_soon_threadsafe`` returns an ``events._ThreadSafeHandle`` (whose ``cancel`` from
#: another thread waits for a callback already running); ``None`` before.
ThreadSafeHandle = getattr(events, "_ThreadSafeHandle", None)

#: 3.15: the transport hooks and ``_start_serving`` take ``context=``, the context the
#: connection's protocol callbacks run in (a copy of the server's for each accepted connection).
HOOKS_TAKE_CONTEXT = "context" in _parameters(selector_events.BaseSelectorEventLoop._start_serving)


def server_attach(server, transport):
    """A connection of ``server`` starts (asyncio's ``Server._attach``)."""
    if SERVER_TRACKS_TRANSPORTS:
        server._attach(transport)
    else:
        server._attach()


def server_detach(server, transport):
    """A connection of ``server`` ended (asyncio's ``Server._detach``)."""
    if SERVER_TRACKS_TRANSPORTS:
        server._detach(transport)
    else:
        server._detach()


def policy_base():
    """asyncio's Unix default policy class, which ``ferroloop.EventLoopPolicy`` extends.

    Looked up only when ``ferroloop.EventLoopPolicy`` is first used: the policy classes are
    deprecated since 3.14 and go away in 3.16, where ``import ferroloop`` must still work.
    """
    try:
        return unix_events._UnixDefaultEventLoopPolicy
    except AttributeError:
        raise AttributeError(
            f"asyncio {VERSION[0]}.{VERSION[1]} has no event loop policies: use "
            "asyncio.run(main(), loop_factory=ferroloop.new_event_loop) or ferroloop.run(main())"
        ) from None


# --- 2. hooks ferroloop overrides ---------------------------------------------------------------

#: Methods of asyncio's loop classes that ``ferroloop.Loop`` (or its Rust base ``LoopCore``)
#: replaces and that asyncio's own code calls: what each must accept is what the running
#: asyncio's definition accepts. Public methods are checked by asyncio's and uvloop's suites.
HOOKS = (
    "_add_callback",
    "_add_callback_signalsafe",
    "_add_reader",
    "_add_writer",
    "_make_datagram_transport",
    "_make_read_pipe_transport",
    "_make_socket_transport",
    "_make_ssl_transport",
    "_make_subprocess_transport",
    "_make_write_pipe_transport",
    "_remove_reader",
    "_remove_writer",
    "_run_once",
    "_sendfile_fallback",
    "_start_serving",
    "_stop_serving",
    "_timer_handle_cancelled",
    "_write_to_self",
)

#: Attributes of asyncio's loop state that ferroloop keeps in Rust and asyncio's code reads or
#: writes by name (``BaseEventLoop.__init__`` sets them; ``LoopCore`` provides them).
LOOP_STATE = ("_closed", "_debug", "_stopping", "_task_factory", "_selector")

# --- 3. names the Rust code reads on asyncio's objects --------------------------------------------

#: ``(object, attribute)`` pairs the Rust code of ``ferroloop._ferroloop`` looks up by name.
RUST_NAMES = (
    (base_events.BaseEventLoop, "create_task"),  # event_loop.rs: with a task factory set
    (base_events.BaseEventLoop, "_check_thread"),  # event_loop.rs: debug-mode checks
    (base_events.BaseEventLoop, "_check_callback"),
    (events.Handle, "_run"),  # event_loop.rs: handles made by asyncio's code (signals)
    (events.Handle, "_cancelled"),
    (events.TimerHandle, "_scheduled"),
    (futures.Future, "_loop"),
    (sslproto, "SSLProtocol"),  # the TLS state machine ported to tls/ (3.11's, checked per version)
)

#: ``(object, attribute)`` pairs of asyncio's private methods the Python package calls on itself.
CALLED = (
    # _loop.py: reports a child's exit as the running version does (how many iterations late).
    (unix_events._UnixSelectorEventLoop, "_child_watcher_callback"),
    (unix_events._UnixSubprocessTransport, "_process_exited"),
)
