"""Async generator lifecycle: the loop's asyncgen hooks and shutdown_asyncgens()."""

import asyncio
import gc
import sys
import warnings


def make_agen(log):
    async def agen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)  # finalisation may itself await
            log.append("finalised")

    return agen()


async def advance(gen):
    # The loop's firstiter hook sees a generator only if it is first iterated while the
    # loop runs, so __anext__() must be called from inside a coroutine.
    return await gen.__anext__()


def test_shutdown_asyncgens_finalises_a_suspended_generator(run, loop):
    log = []
    gen = make_agen(log)
    assert run(advance(gen)) == 1
    assert log == []
    assert run(loop.shutdown_asyncgens()) is None
    assert log == ["finalised"]
    assert gen.ag_frame is None  # closed


def test_shutdown_asyncgens_without_generators(run, loop):
    assert run(loop.shutdown_asyncgens()) is None


def test_shutdown_asyncgens_reports_generators_that_fail_to_close(run, loop):
    contexts = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))

    async def stubborn():
        try:
            yield 1
        finally:
            yield 2  # ignoring GeneratorExit makes aclose() fail

    gen = stubborn()
    assert run(advance(gen)) == 1
    run(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    assert contexts[0]["message"].startswith(
        "an error occurred during closing of asynchronous generator"
    )
    assert contexts[0]["asyncgen"] is gen
    assert isinstance(contexts[0]["exception"], RuntimeError)


def test_garbage_collected_generator_is_finalised_by_the_loop(run):
    log = []

    async def main():
        gen = make_agen(log)
        assert await gen.__anext__() == 1
        del gen
        gc.collect()  # the finalizer hook schedules aclose() on the loop
        for _ in range(10):
            await asyncio.sleep(0)
        return log

    assert run(main()) == ["finalised"]


def test_run_forever_restores_the_previous_asyncgen_hooks(loop):
    before = sys.get_asyncgen_hooks()
    seen = []
    loop.call_soon(lambda: (seen.append(sys.get_asyncgen_hooks()), loop.stop()))
    loop.run_forever()
    assert seen[0] != before  # the loop installed its own hooks while running
    assert seen[0].firstiter is not None
    assert seen[0].finalizer is not None
    assert sys.get_asyncgen_hooks() == before


def test_first_iteration_after_shutdown_warns(run, loop):
    log = []
    run(loop.shutdown_asyncgens())
    gen = make_agen(log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(advance(gen)) == 1
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any("was scheduled after loop.shutdown_asyncgens() call" in m for m in messages)
    run(gen.aclose())
