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
    streams,
    transports,
    trsock,
    unix_events,
)

__all__ = (
    "CALLED",
    "HOOKS",
    "LOOP_ATTRIBUTES_READ",
    "RUST_NAMES",
    "TRANSPORT_BASES",
    "VERSION",
    "BaseSelectorEventLoop",
    "SOCKET_ACCEPT_METHODS",
    "SOCKET_IO_METHODS",
    "SelectorSocketTransport",
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
#: asyncio's own socket transport: ferroloop makes it for a socket whose class overrides a method
#: it calls (``SOCKET_IO_METHODS``), so that the overrides run as on asyncio's loop.
SelectorSocketTransport = selector_events._SelectorSocketTransport
#: The socket methods asyncio's socket transport calls (``sendmsg`` from 3.12, for writelines
#: and queued writes; ``shutdown`` for write_eof).
SOCKET_IO_METHODS = ("recv", "recv_into", "send", "sendmsg", "shutdown")
#: The socket methods asyncio's accept loop calls on a listening socket.
SOCKET_ACCEPT_METHODS = ("accept", "_accept")
#: What ferroloop's Rust ``Handle``/``TimerHandle`` report as their ``__class__`` (handle.rs), so
#: that ``isinstance(handle, asyncio.Handle)`` holds as on asyncio's loop.
Handle = events.Handle
TimerHandle = events.TimerHandle


def _parameters(func):
    return list(inspect.signature(func).parameters)


# --- version switches ---------------------------------------------------------------------------


def _public_transport_bases(cls):
    """The public asyncio transport classes an instance of ``cls`` (one of asyncio's own
    transports) is an instance of, as few as cover them all, in ``cls``'s MRO order."""
    public = [
        k
        for k in cls.__mro__
        if k.__module__ == "asyncio.transports"
        and not k.__name__.startswith("_")
        and k is not transports.BaseTransport
    ]
    return tuple(k for k in public if not any(o is not k and issubclass(o, k) for o in public))


#: The asyncio classes each kind of ferroloop transport derives from (beside its Rust class,
#: whose native root is ``asyncio.BaseTransport``, see transport_root.rs), read off asyncio's own
#: transport of that kind, so that ``isinstance`` answers as there on every version: 3.12 made the
#: datagram transport a ``DatagramTransport`` too; a write pipe is a ``Transport`` (asyncio's is
#: a ``_FlowControlMixin``), a read pipe only a ``ReadTransport``. asyncio's private
#: ``_FlowControlMixin`` itself is left out: its ``__slots__`` conflict with the Rust layout.
TRANSPORT_BASES = {
    "socket": _public_transport_bases(selector_events._SelectorSocketTransport),
    "datagram": _public_transport_bases(selector_events._SelectorDatagramTransport),
    "read_pipe": _public_transport_bases(unix_events._UnixReadPipeTransport),
    "write_pipe": _public_transport_bases(unix_events._UnixWritePipeTransport),
    "tls": _public_transport_bases(sslproto._SSLProtocolTransport),
}


#: 3.13 (``Server.close_clients``): ``Server._attach``/``_detach`` take the transport, which the
#: server keeps; before, they only counted connections.
SERVER_TRACKS_TRANSPORTS = len(_parameters(base_events.Server._attach)) == 2

#: 3.13: ``run_forever`` is split into ``_run_forever_setup``/``_run_forever_cleanup`` for
#: subclasses that drive the loop themselves; ferroloop's ``run_forever`` calls them where they are.
HAS_RUN_FOREVER_SETUP = hasattr(base_events.BaseEventLoop, "_run_forever_setup")

#: 3.14: ``call_soon_threadsafe`` returns an ``events._ThreadSafeHandle`` (whose ``cancel`` from
#: another thread waits for a callback already running); ``None`` before.
ThreadSafeHandle = getattr(events, "_ThreadSafeHandle", None)

#: 3.12: a socket or datagram transport is refused (``RuntimeError``) on an fd that an open
#: transport still uses (``_ensure_fd_no_transport``); before, asyncio made a second transport.
TRANSPORT_REFUSES_USED_FD = (
    "_ensure_fd_no_transport" in BaseSelectorEventLoop._make_socket_transport.__code__.co_names
)

#: The names asyncio's transport ``sendfile`` fallback uses, in the order it first uses them.
_SENDFILE_NAMES = base_events.BaseEventLoop._sendfile_fallback.__code__.co_names

#: gh-150107 (3.14.x, 3.15): the transport ``sendfile`` fallback seeks to ``offset`` whenever the
#: file can seek, 0 included; before, only to a non-zero offset (offset 0 sent from wherever the
#: file was). Seen in the first name asyncio's fallback uses (``hasattr`` instead of ``seek``).
SENDFILE_SEEKS_ANY_OFFSET = _SENDFILE_NAMES[0] == "hasattr"

#: 3.14: the transport ``sendfile`` fallback writes each block, then waits for the transport to
#: drain; before, it waited first and then wrote (so the last block was not waited for). Seen in
#: the order in which asyncio's fallback first names ``write`` and ``drain``.
SENDFILE_DRAINS_AFTER_WRITE = _SENDFILE_NAMES.index("write") < _SENDFILE_NAMES.index("drain")

#: 3.14 (gh-142352): a server-side ``start_tls`` moves what the ``StreamReader`` of an
#: ``asyncio.streams`` connection had buffered (a TLS handshake that arrived together with the
#: plaintext asking for it) into the TLS protocol; before, those bytes stayed in the reader.
START_TLS_TAKES_STREAM_BUFFER = (
    "StreamReaderProtocol" in base_events.BaseEventLoop.start_tls.__code__.co_names
)

#: 3.14: after a TLS shutdown completes, ``ssl_shutdown_timeout`` keeps running (it starts then
#: when the peer initiated the shutdown) until the transport below is lost: its ``close()``
#: flushes first, which a peer that does not read delays forever, and the timeout then forces it
#: closed (``TimeoutError('SSL shutdown timed out')``). Before, the timer was cancelled there.
#: Read by the Rust TLS protocol (tls/machine.rs).
SHUTDOWN_TIMEOUT_COVERS_CLOSE = (
    "call_later" in sslproto.SSLProtocol._on_shutdown_complete.__code__.co_names
)

#: 3.14: a TLS transport's ``is_closing()`` is also true when the transport below is closing
#: (``SSLProtocol._is_transport_closing``). Read by the Rust TLS transport (tls/transport.rs).
TLS_IS_CLOSING_ASKS_BELOW = hasattr(sslproto.SSLProtocol, "_is_transport_closing")

#: 3.13: a TLS transport's ``_force_close`` after a second ``close()`` (which releases the SSL
#: protocol) does nothing; before, it raised ``AttributeError`` on the released protocol. (3.11 and
#: 3.12's ``_force_close`` also passes ``exc`` to an ``_abort()`` that takes none, a TypeError
#: ferroloop does not copy: its ``_force_close`` works.) Read by tls/transport.rs.
TLS_FORCE_CLOSE_TOLERATES_A_RELEASED_PROTOCOL = VERSION >= (3, 13)

#: 3.12: asyncio's socket transport has a ``writelines`` of its own (writes with sendmsg), with
#: its own messages ("Cannot call writelines() after write_eof()", "unable to writelines; ...")
#: and a ``memoryview()`` of each item; before, ``WriteTransport.writelines`` joined and wrote.
#: Read by stream/mod.rs.
SOCKET_TRANSPORT_HAS_WRITELINES = "writelines" in vars(selector_events._SelectorSocketTransport)

#: 3.13: handle reprs and "Exception in callback" messages show the callback's arguments only in
#: debug mode (they may hold secrets): ``_format_callback_source`` takes ``debug=``.
CALLBACK_SOURCE_TAKES_DEBUG = "debug" in _parameters(format_helpers._format_callback_source)

#: 3.15: the transport hooks and ``_start_serving`` take ``context=``, the context the
#: connection's protocol callbacks run in (a copy of the server's for each accepted connection).
HOOKS_TAKE_CONTEXT = "context" in _parameters(selector_events.BaseSelectorEventLoop._start_serving)

#: 3.15: a socket transport schedules its protocol's callbacks, ``connection_lost`` included, in
#: the connection's context (``_SelectorTransport._call_soon``); before, ``close()``/``abort()``
#: scheduled ``connection_lost`` in a copy of their caller's context. (Datagram transports are
#: given no context, so theirs still runs in the caller's.)
CONNECTION_LOST_IN_CONNECTION_CONTEXT = hasattr(selector_events._SelectorTransport, "_call_soon")

#: 3.12 (gh-91166, zero-copy writes): a socket transport queues what ``write()`` is given as it
#: is, and ``get_write_buffer_size()`` sums the ``len()`` of what is queued: a memoryview counts
#: its items (its rows), not its bytes. ferroloop still queues a copy, counted the same way.
WRITE_BUFFER_COUNTS_LEN = hasattr(selector_events._SelectorSocketTransport, "_write_sendmsg")

#: 3.14: the socket transport's ``write()`` names the types it takes in its ``TypeError``.
WRITE_TYPE_ERROR = (
    "data argument must be a bytes, bytearray, or memoryview object"
    if VERSION >= (3, 14)
    else "data argument must be a bytes-like object"
)

#: 3.13 (gh-113812): a datagram transport's ``sendto(b"")`` sends an empty datagram (it did
#: nothing before), and a queued datagram counts ``_header_size`` (8) bytes more in
#: ``get_write_buffer_size()``. Until gh-135444 (fixed in 3.14 and a later 3.13, where
#: ``_header_size`` appeared) those 8 bytes were not taken off again when the datagram was sent.
SENDTO_SENDS_EMPTY_DATAGRAMS = VERSION >= (3, 13)
DATAGRAM_HEADER_SIZE = 8 if VERSION >= (3, 13) else 0
DATAGRAM_SENT_RELEASES_HEADER = hasattr(selector_events._SelectorDatagramTransport, "_header_size")

#: 3.12: asyncio watches children with pidfds in the loop where the kernel allows them
#: (``unix_events.can_use_pidfd()``), not from a thread per child: a child that ``Popen`` reaped
#: first (``transport.close()`` polls it) is reported with returncode 255 and a warning. 3.11's
#: watcher thread reaps a child as soon as it exits, so there ferroloop (which reaps from the loop
#: on every version) reports the status ``Popen`` saw, as that thread would have read it.
CHILDREN_REAPED_BY_THE_LOOP = hasattr(unix_events, "can_use_pidfd")


def _run_forever_cleans_up_a_failed_setup():
    """3.13.0 (until gh-130145, fixed in 3.14 and a later 3.13) calls ``_run_forever_setup``
    inside ``run_forever``'s ``try``: when it fails (``run_forever`` on a running loop),
    ``_run_forever_cleanup`` still runs and resets the running loop (``is_running()`` turns
    false, no running loop is set)."""
    if not HAS_RUN_FOREVER_SETUP:
        return False
    cleaned = []

    class Probe:
        def _run_forever_setup(self):
            raise RuntimeError

        def _run_forever_cleanup(self):
            cleaned.append(True)

    try:
        SelectorEventLoop.run_forever(Probe())
    except RuntimeError:
        pass
    return bool(cleaned)


RUN_FOREVER_CLEANS_UP_A_FAILED_SETUP = _run_forever_cleans_up_a_failed_setup()


def format_callback_source(callback, args, *, debug):
    """``callback(args) at file:line`` as asyncio's handles show it (``debug``: the loop's)."""
    if CALLBACK_SOURCE_TAKES_DEBUG:
        return format_helpers._format_callback_source(callback, args, debug=debug)
    return format_helpers._format_callback_source(callback, args)


def take_stream_buffer(protocol):
    """What the ``StreamReader`` of ``protocol`` (if a ``StreamReaderProtocol``) has buffered,
    which it then no longer holds (``START_TLS_TAKES_STREAM_BUFFER``)."""
    if not isinstance(protocol, streams.StreamReaderProtocol):
        return b""
    reader = getattr(protocol, "_stream_reader", None)
    if reader is None or not reader._buffer:
        return b""
    data = bytes(reader._buffer)
    reader._buffer.clear()
    return data


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

#: Attributes that asyncio's Unix loop sets on itself and ``ferroloop.Loop`` reads: the self-pipe's
#: reading end and the installed signal handlers (whether the self-pipe is watched).
LOOP_ATTRIBUTES_READ = ("_ssock", "_signal_handlers")

#: Attributes of asyncio's loop state that ferroloop keeps in Rust and asyncio's code reads or
#: writes by name (``BaseEventLoop.__init__`` sets them; ``LoopCore`` provides them).
LOOP_STATE = ("_closed", "_debug", "_stopping", "_task_factory", "_selector")

# --- 3. names the Rust code reads on asyncio's objects --------------------------------------------

#: ``(object, attribute)`` pairs the Rust code of ``ferroloop._ferroloop`` looks up by name.
RUST_NAMES = (
    # event_loop/mod.rs, fastcall.rs: with a task factory set, with keywords other than name and
    # context (3.14 passes any keyword on; 3.13.3 and 3.13.4 each did in their own way; before,
    # only those two were taken) and with arguments it refuses, for asyncio's own messages.
    (base_events.BaseEventLoop, "create_task"),
    (base_events.BaseEventLoop, "_check_thread"),  # event_loop/callbacks.rs: debug-mode checks
    (base_events.BaseEventLoop, "_check_callback"),
    (events.Handle, "_run"),  # event_loop/run.rs: handles made by asyncio's code (signals)
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
    # _loop.py: the self-pipe's reader, registered only while a signal handler is installed.
    (selector_events.BaseSelectorEventLoop, "_read_from_self"),
    # _loop.py: the transport factories refuse an fd in use where asyncio's do (3.12+).
    (selector_events.BaseSelectorEventLoop, "_ensure_fd_no_transport"),
)
