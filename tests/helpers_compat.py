"""What the running CPython's asyncio does where its versions differ: every version switch of the
behaviour tests, in one place.

The tests assert these on both loops: asyncio's (the oracle) must show them, and ferroloop must
do the same on that interpreter (its own switches are in ``ferroloop._compat``, which the tests do
not import, so that the asyncio half runs without ferroloop). Each switch is a feature test
where asyncio shows the feature, else a version check naming the version that changed it.
"""

import sys
from asyncio import base_events, selector_events, sslproto, unix_events

__all__ = (
    "BIND_ERROR_SHOWS_ERRNO",
    "CHILDREN_REAPED_BY_THE_LOOP",
    "CONNECTION_LOST_IN_CONNECTION_CONTEXT",
    "DATAGRAM_HEADER_SIZE",
    "DATAGRAM_IS_A_DATAGRAM_TRANSPORT",
    "DATAGRAM_SENT_RELEASES_HEADER",
    "DATAGRAM_SOCKET_EXPECTED",
    "RUN_FOREVER_CLEANS_UP_A_FAILED_SETUP",
    "SENDFILE_DRAINS_AFTER_WRITE",
    "SENDTO_SENDS_EMPTY_DATAGRAMS",
    "SOCKET_TRANSPORT_HAS_WRITELINES",
    "TLS_FORCE_CLOSE_TOLERATES_A_RELEASED_PROTOCOL",
    "TLS_IS_CLOSING_ASKS_BELOW",
    "TLS_SHUTDOWN_TIMEOUT_COVERS_CLOSE",
    "WRITE_QUEUES_THE_CALLERS_OBJECT",
    "bind_error",
    "write_type_error",
)

#: 3.12: asyncio watches children with a pidfd registered in the loop where the kernel allows
#: it, so a child is reaped only when the loop runs (and not at all once the loop is closed).
#: 3.11's default ThreadedChildWatcher reaps each child from a thread as soon as it exits.
CHILDREN_REAPED_BY_THE_LOOP = getattr(unix_events, "can_use_pidfd", lambda: False)()

#: 3.12: asyncio's datagram transport is an ``asyncio.DatagramTransport`` as well as an
#: ``asyncio.Transport``; on 3.11 only the latter (``_SelectorDatagramTransport`` had no
#: ``DatagramTransport`` base).
DATAGRAM_IS_A_DATAGRAM_TRANSPORT = sys.version_info >= (3, 12)

#: 3.12 (gh-91166, zero-copy writes): a socket transport queues the caller's object itself (a
#: memoryview of it when send() took part of it) instead of a copy, and get_write_buffer_size()
#: sums len() of what is queued: items, not bytes, for a memoryview of wider items.
WRITE_QUEUES_THE_CALLERS_OBJECT = hasattr(
    selector_events._SelectorSocketTransport, "_write_sendmsg"
)


def write_type_error(data):
    """The message of the TypeError that asyncio's socket transport raises for write(data) (3.14
    names the types it takes). The type check comes first, so no transport is needed."""
    try:
        selector_events._SelectorSocketTransport.write(None, data)
    except TypeError as exc:
        return str(exc)
    raise AssertionError(f"asyncio's write() accepts {data!r}")


#: 3.13: create_connection(local_addr=...) and create_server() report a failed bind with
#: str(exc) ("[errno 98] address already in use"); before, with its strerror only.
BIND_ERROR_SHOWS_ERRNO = sys.version_info >= (3, 13)


def bind_error(address, exc):
    """asyncio's message (the new OSError's strerror) for binding to `address` failing with `exc`."""
    reason = str(exc) if BIND_ERROR_SHOWS_ERRNO else exc.strerror
    return f"error while attempting to bind on address {address!r}: {reason.lower()}"


#: 3.13: create_datagram_endpoint(sock=...) refuses only stream sockets (before: anything but
#: SOCK_DGRAM), with this message (before: "A UDP Socket was expected, got ...").
DATAGRAM_SOCKET_EXPECTED = (
    "A datagram socket was expected, got {!r}"
    if sys.version_info >= (3, 13)
    else "A UDP Socket was expected, got {!r}"
)

#: 3.13 (gh-113812): sendto(b"") sends an empty datagram (before, it did nothing), and a queued
#: datagram counts DATAGRAM_HEADER_SIZE bytes more in get_write_buffer_size(). Until gh-135444
#: (3.14 and a later 3.13, where the class got _header_size) those bytes stayed counted after the
#: datagram was sent.
#: 3.14: the transport ``sendfile`` fallback waits for the write buffer to drain after each
#: block it writes, not before. Before, the last block could pause the transport as the fallback
#: ended, and the application's protocol then got a resume_writing() it had no pause for.
_SENDFILE_NAMES = base_events.BaseEventLoop._sendfile_fallback.__code__.co_names
SENDFILE_DRAINS_AFTER_WRITE = _SENDFILE_NAMES.index("write") < _SENDFILE_NAMES.index("drain")

SENDTO_SENDS_EMPTY_DATAGRAMS = sys.version_info >= (3, 13)
DATAGRAM_HEADER_SIZE = 8 if sys.version_info >= (3, 13) else 0
DATAGRAM_SENT_RELEASES_HEADER = hasattr(selector_events._SelectorDatagramTransport, "_header_size")

#: 3.15: a socket transport schedules its protocol's callbacks in the connection's context
#: (_SelectorTransport._call_soon), connection_lost() after close() or abort() included; before,
#: call_soon() copied the context of whoever called close() or abort().
CONNECTION_LOST_IN_CONNECTION_CONTEXT = hasattr(selector_events._SelectorTransport, "_call_soon")


def _run_forever_cleans_up_a_failed_setup():
    cleaned = []

    class Probe:
        def _run_forever_setup(self):
            raise RuntimeError

        def _run_forever_cleanup(self):
            cleaned.append(True)

    try:
        base_events.BaseEventLoop.run_forever(Probe())
    except RuntimeError:
        pass
    return bool(cleaned)


#: 3.13.0 (until gh-130145, fixed in 3.14 and a later 3.13): run_forever() calls
#: _run_forever_setup() inside its try, so when the set-up fails (run_forever() on a running loop:
#: "This event loop is already running"), _run_forever_cleanup() still runs and resets the loop
#: that is running: is_running() turns false and no running loop is set.
RUN_FOREVER_CLEANS_UP_A_FAILED_SETUP = (
    hasattr(base_events.BaseEventLoop, "_run_forever_setup")
    and _run_forever_cleans_up_a_failed_setup()
)

#: 3.14: once a TLS shutdown completes, ssl_shutdown_timeout keeps running (it starts then when
#: the peer initiated the shutdown) until the socket transport is lost, so a close() that cannot
#: flush to a peer that does not read is forced after it: the application's connection_lost()
#: gets TimeoutError('SSL shutdown timed out'). Before, the timer was cancelled and close() waited.
TLS_SHUTDOWN_TIMEOUT_COVERS_CLOSE = (
    "call_later" in sslproto.SSLProtocol._on_shutdown_complete.__code__.co_names
)

#: 3.14: a TLS transport's is_closing() is also true while the socket transport under it closes
#: (after the peer ended the TLS session, before connection_lost()).
TLS_IS_CLOSING_ASKS_BELOW = hasattr(sslproto.SSLProtocol, "_is_transport_closing")


#: 3.13: a TLS transport's ``_force_close`` after a second ``close()`` (which releases its SSL
#: protocol) does nothing; before, ``AttributeError`` on the released protocol.
TLS_FORCE_CLOSE_TOLERATES_A_RELEASED_PROTOCOL = sys.version_info >= (3, 13)


#: 3.12: the socket transport has a writelines of its own, with its own messages; before,
#: WriteTransport.writelines joined the items and called write().
SOCKET_TRANSPORT_HAS_WRITELINES = "writelines" in vars(selector_events._SelectorSocketTransport)
