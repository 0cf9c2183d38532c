"""Exception handling: the loop's exception handler API, errors raised by callbacks, and
KeyboardInterrupt/SystemExit escaping the loop."""

import asyncio
import gc
import logging

import pytest


def failing_callback():
    raise ZeroDivisionError("from callback")


def recorder():
    calls = []

    def handler(loop, context):
        calls.append((loop, context))

    return handler, calls


def test_exception_handler_get_and_set(loop):
    assert loop.get_exception_handler() is None
    handler, _ = recorder()
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_set_exception_handler_rejects_non_callables(loop):
    with pytest.raises(TypeError) as info:
        loop.set_exception_handler(42)
    assert str(info.value) == "A callable object or None is expected, got 42"


@pytest.mark.parametrize("kind", ["call_soon", "call_later"])
def test_raising_callback_goes_to_the_handler_and_the_loop_goes_on(loop, kind):
    handler, calls = recorder()
    loop.set_exception_handler(handler)
    out = []
    if kind == "call_soon":
        handle = loop.call_soon(failing_callback)
    else:
        handle = loop.call_later(0.001, failing_callback)
    loop.call_later(0.01, out.append, "after")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert out == ["after"]
    assert len(calls) == 1
    handler_loop, context = calls[0]
    assert handler_loop is loop
    assert context["message"].startswith("Exception in callback ")
    assert "failing_callback" in context["message"]
    assert isinstance(context["exception"], ZeroDivisionError)
    assert context["handle"] is handle
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


def test_call_exception_handler_passes_the_context_to_the_handler(loop):
    handler, calls = recorder()
    loop.set_exception_handler(handler)
    context = {"message": "custom", "exception": ValueError("x"), "extra": 1}
    loop.call_exception_handler(context)
    assert len(calls) == 1
    assert calls[0][0] is loop
    assert calls[0][1] == context


def test_default_exception_handler_logs_an_error(loop, caplog):
    exc = ValueError("logged value error")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "something broke", "exception": exc})
        loop.default_exception_handler({"note": "no message"})
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 2
    assert records[0].levelno == logging.ERROR
    assert records[0].getMessage().startswith("something broke")
    assert records[0].exc_info[1] is exc
    assert records[1].getMessage().startswith("Unhandled exception in event loop")
    assert "note: 'no message'" in records[1].getMessage()


def test_raising_callback_without_handler_is_logged(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(failing_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(messages) == 1
    assert messages[0].startswith("Exception in callback ")
    assert "failing_callback" in messages[0]
    assert "handle: <Handle" in messages[0]


def test_handler_that_raises_falls_back_to_the_default_handler(loop, caplog):
    def bad_handler(loop, context):
        raise RuntimeError("handler bug")

    loop.set_exception_handler(bad_handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(failing_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(messages) == 1
    assert messages[0].startswith("Unhandled error in exception handler")
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


def test_unretrieved_task_exception_is_reported(loop):
    handler, calls = recorder()
    loop.set_exception_handler(handler)

    async def fail():
        raise KeyError("never retrieved")

    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.wait([task]))
    del task
    gc.collect()
    messages = [c["message"] for _, c in calls]
    assert messages == ["Task exception was never retrieved"]
    assert isinstance(calls[0][1]["exception"], KeyError)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_from_callbacks_escape_run_forever(loop, exc_type):
    handler, calls = recorder()
    loop.set_exception_handler(handler)
    out = []

    def interrupt():
        raise exc_type("stop!")

    loop.call_soon(out.append, "before")
    loop.call_soon(interrupt)
    loop.call_soon(out.append, "after")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert out == ["before"]
    assert calls == []  # not routed through the exception handler
    assert not loop.is_running()
    # The callbacks still queued run on the next run, and the loop is fully usable.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["before", "after"]
    assert loop.run_until_complete(asyncio.sleep(0.001, "usable")) == "usable"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_from_coroutines_escape_run_until_complete(loop, exc_type):
    async def main():
        await asyncio.sleep(0.001)
        raise exc_type("stop!")

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert not loop.is_running()
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()
    assert loop.run_until_complete(asyncio.sleep(0.001, "usable")) == "usable"
