"""Helpers that the Rust code calls on rare paths: reprs, error reports and debug mode.

They are Python so that what users read (handle reprs, exception-handler messages, slow-callback
warnings) is formatted by asyncio's own helpers, word for word.
"""

import errno
import math
import sys
from asyncio import constants, exceptions
from asyncio.log import logger

from . import _ferroloop
from ._compat import (
    TransportSocket,
    format_callback_source,
    format_handle,
    server_attach,  # noqa: F401  (called from the Rust transports)
    server_detach,  # noqa: F401
)
from ._compat import (
    extract_stack as _extract_stack,
)
from ._tls import accept as tls_accept  # noqa: F401  (called from the Rust listener)


def extract_stack():
    """The stack of the code that created a handle (debug mode's ``_source_traceback``)."""
    # Frame 0 is this function; frame 1 is the Python code that called call_soon/call_at/...
    # (the Rust frames in between are invisible to Python).
    return _extract_stack(sys._getframe(1))


def handle_repr(handle):
    if handle._repr is not None:
        return handle._repr
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append("cancelled")
    if isinstance(handle, _ferroloop.TimerHandle):
        info.append(f"when={handle._when}")
    callback = handle._callback
    if callback is not None:
        info.append(format_callback_source(callback, handle._args, debug=handle._loop.get_debug()))
    tb = handle._source_traceback
    if tb:
        frame = tb[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def report_callback_error(handle, callback, args, exc):
    """Reports an exception raised by a handle's callback, as ``asyncio.Handle._run`` does."""
    if handle.cancelled():
        # asyncio formats the handle's callback as it is after the call: a callback that
        # cancelled its own handle is reported as "Exception in callback None()".
        callback = args = None
    cb = format_callback_source(callback, args, debug=handle._loop.get_debug())
    context = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def run_handle_debug(loop, handle):
    """Runs one handle in debug mode: tracks ``_current_handle`` and warns about slow callbacks."""
    try:
        loop._current_handle = handle
        t0 = loop.time()
        handle._run()
        dt = loop.time() - t0
        if dt >= loop.slow_callback_duration:
            logger.warning("Executing %s took %.3f seconds", format_handle(handle), dt)
    finally:
        loop._current_handle = None


def report_slow_io(transport, method, dt):
    """Debug mode's warning about a transport's slow I/O work (its protocol's ``data_received``,
    say), worded as asyncio's about the ``_read_ready`` handles of its selector transports."""
    logger.warning(
        "Executing <Handle %s.%s()> took %.3f seconds", type(transport).__name__, method, dt
    )


def report_call_error(loop, callback, args, exc):
    """Reports an exception from a callback the loop ran without a handle."""
    cb = format_callback_source(callback, args, debug=loop.get_debug())
    loop.call_exception_handler({"message": f"Exception in callback {cb}", "exception": exc})


# --- transports -----------------------------------------------------------------------------


def flow_limits(high, low, default_high):
    """asyncio's water marks from what ``set_write_buffer_limits(high, low)`` got (its arithmetic,
    its check and its message), floored to the byte counts a transport compares its buffer with
    (``size > high`` and ``size <= low`` hold for the floors exactly when for the values)."""
    if high is None:
        high = default_high if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return min(math.floor(high), sys.maxsize), min(math.floor(low), sys.maxsize)


def socket_extra(sock, extra):
    """A socket transport's ``get_extra_info`` dict, as asyncio's ``_SelectorTransport`` fills it."""
    extra = {} if extra is None else extra
    extra["socket"] = TransportSocket(sock)
    try:
        extra["sockname"] = sock.getsockname()
    except OSError:
        extra["sockname"] = None
    if "peername" not in extra:
        try:
            extra["peername"] = sock.getpeername()
        except OSError:
            extra["peername"] = None
    return extra


def _report(loop, subject, exc, message, quiet, transport, protocol):
    """The report half of asyncio's ``_fatal_error`` and of its failed-callback reports: a debug
    record when ``quiet`` (and the loop is in debug mode), else the loop's exception handler."""
    if quiet:
        if loop.get_debug():
            logger.debug("%r: %s", subject, message, exc_info=True)
    else:
        loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": transport, "protocol": protocol}
        )


def transport_fatal_error(transport, exc, message):
    """A socket transport's fatal error (an ``OSError`` is only logged); it then closes itself."""
    quiet = isinstance(exc, OSError)
    _report(transport._loop, transport, exc, message, quiet, transport, transport.get_protocol())


def pipe_fatal_error(transport, exc, message):
    """A read pipe's fatal error: only EIO (a tty hang-up) is just logged."""
    quiet = isinstance(exc, OSError) and exc.errno == errno.EIO
    _report(transport._loop, transport, exc, message, quiet, transport, transport.get_protocol())


def protocol_callback_failed(transport, message, exc):
    """A protocol's ``pause_writing``/``resume_writing`` raised."""
    _report(transport._loop, transport, exc, message, False, transport, transport.get_protocol())


def log_debug(fmt, obj):
    logger.debug(fmt, obj)


def log_info(fmt, obj):
    logger.info(fmt, obj)


def log_warning(message):
    logger.warning(message)


# --- servers --------------------------------------------------------------------------------


def accept_out_of_resources(loop, listener, sock, exc):
    """As asyncio's ``_accept_connection``: report, stop accepting, retry after a delay."""
    loop.call_exception_handler(
        {
            "message": "socket.accept() out of system resource",
            "exception": exc,
            "socket": TransportSocket(sock),
        }
    )
    loop.call_later(constants.ACCEPT_RETRY_DELAY, listener._start)


def transport_creation_failed(loop, exc):
    """As asyncio's ``_accept_connection2``: reported in debug mode only."""
    if loop.get_debug():
        loop.call_exception_handler(
            {"message": "Error on transport creation for incoming connection", "exception": exc}
        )


# --- TLS ------------------------------------------------------------------------------------


def tls_fatal_error(protocol, transport, exc, message):
    """``SSLProtocol._fatal_error``'s report (a cancellation is not reported at all)."""
    if isinstance(exc, exceptions.CancelledError):
        return
    _report(protocol._loop, protocol, exc, message, isinstance(exc, OSError), transport, protocol)


def tls_flow_failed(protocol, message, exc, app_transport):
    """The application's ``pause_writing``/``resume_writing`` raised (TLS)."""
    _report(protocol._loop, protocol, exc, message, False, app_transport, protocol)


def tls_log_handshake_time(protocol, ms):
    logger.debug("%r: SSL handshake took %.1f ms", protocol, ms)


def tls_handshake_timeout_error(timeout):
    return ConnectionAbortedError(
        f"SSL handshake is taking longer than {timeout} seconds: aborting the connection"
    )
