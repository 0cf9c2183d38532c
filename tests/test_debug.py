"""Debug mode: get_debug/set_debug, PYTHONASYNCIODEBUG, slow-callback warnings, handle
source tracebacks, thread checks, and the ResourceWarning for an unclosed loop."""

import gc
import logging
import re
import sys
import threading
import time
import warnings

import pytest


def slow_callback():
    time.sleep(0.05)


def named_callback():
    pass


def test_set_debug_toggles_get_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [({}, [], "False"), ({"PYTHONASYNCIODEBUG": "1"}, [], "True"), ({}, ["-X", "dev"], "True")],
    ids=["default", "env-var", "dev-mode"],
)
def test_debug_default_comes_from_the_environment(run_python, env, flags, expected):
    result = run_python("print(new_loop().get_debug())\n", env=env, flags=flags)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_slow_callback_is_logged_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    assert loop.slow_callback_duration == pytest.approx(0.1)
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(messages) == 1, messages
    assert re.fullmatch(
        r"Executing <Handle slow_callback\(\).*> took \d+\.\d{3} seconds", messages[0]
    )


def test_slow_callback_is_not_logged_outside_debug_mode(loop, caplog):
    loop.set_debug(False)  # explicit: -X dev or PYTHONASYNCIODEBUG would turn it on
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.call_soon(slow_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert not [r for r in caplog.records if "Executing" in r.getMessage()]


def test_handles_record_their_source_traceback_in_debug_mode(loop):
    loop.set_debug(False)
    assert loop.call_soon(named_callback)._source_traceback is None
    loop.set_debug(True)
    here = sys._getframe().f_lineno
    handle = loop.call_soon(named_callback)
    timer = loop.call_later(10, named_callback)
    for h, line in ((handle, here + 1), (timer, here + 2)):
        frame = h._source_traceback[-1]  # the caller, not the loop's internals
        assert (frame[0], frame[1]) == (__file__, line)
        assert f"created at {__file__}:{line}" in repr(h)


def test_callback_error_context_has_source_traceback_in_debug_mode(loop):
    loop.set_debug(True)
    contexts = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert contexts[0]["source_traceback"][-1][0] == __file__


def test_non_threadsafe_call_from_another_thread_raises_in_debug_mode(loop):
    loop.set_debug(True)
    errors = []

    def from_thread():
        try:
            loop.call_soon(named_callback)
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(lambda: threading.Thread(target=from_thread).start())
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert errors == [
        "Non-thread-safe operation invoked on an event loop other than the current one"
    ]


def test_coroutine_origin_tracking_follows_debug_mode(loop):
    loop.set_debug(True)
    before = sys.get_coroutine_origin_tracking_depth()
    seen = []
    loop.call_soon(lambda: (seen.append(sys.get_coroutine_origin_tracking_depth()), loop.stop()))
    loop.run_forever()
    assert seen
    assert seen[0] > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_unclosed_loop_emits_resource_warning(loop_factory):
    unclosed = loop_factory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del unclosed
        gc.collect()
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(m.startswith("unclosed event loop") for m in messages), messages


def test_closed_loop_emits_no_resource_warning(loop_factory):
    closed = loop_factory()
    closed.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del closed
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
