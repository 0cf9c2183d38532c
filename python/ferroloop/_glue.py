"""Helpers that the Rust code calls on rare paths: reprs, error reports and debug mode.

They are Python so that what users read (handle reprs, exception-handler messages, slow-callback
warnings) is formatted by asyncio's own helpers, word for word.
"""

import sys
from asyncio import base_events, format_helpers
from asyncio.log import logger

from . import _ferroloop


def extract_stack():
    """The stack of the code that created a handle (debug mode's ``_source_traceback``)."""
    # Frame 0 is this function; frame 1 is the Python code that called call_soon/call_at/...
    # (the Rust frames in between are invisible to Python).
    return format_helpers.extract_stack(sys._getframe(1))


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
        info.append(format_helpers._format_callback_source(callback, handle._args))
    tb = handle._source_traceback
    if tb:
        frame = tb[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def report_callback_error(handle, callback, args, exc):
    """Reports an exception raised by a handle's callback, as ``asyncio.Handle._run`` does."""
    cb = format_helpers._format_callback_source(callback, args)
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
            logger.warning(
                "Executing %s took %.3f seconds", base_events._format_handle(handle), dt
            )
    finally:
        loop._current_handle = None
