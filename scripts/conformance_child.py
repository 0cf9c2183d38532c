"""Run one module of uvloop's test suite on one event loop; a child process of conformance.py.

It runs in the interpreter under test (which must import uvloop for ``uvloop._testbase`` and
the loop under test) and uses nothing else but the stdlib.  The tests are never edited:

* Only the module's ``AIOTestCase`` classes run (``Test_AIO_*``, ``TestAIO*``, ``TestBaseAIO``),
  the variants that uvloop's suite points at asyncio's own loop.
* ``AIOTestCase`` is patched in place so that those classes get the loop under test:
  ``new_loop()`` calls the factory, and the policy class that ``new_policy()`` returns makes
  its loops with the factory too.  That policy class is asyncio's default one, whose
  ``_loop_factory`` is replaced, so ``asyncio.new_event_loop()``, ``asyncio.run()`` and a fresh
  default policy inside a test also give the loop under test.  ``implementation`` stays
  ``'asyncio'`` and ``is_asyncio_loop()`` answers true, so the tests take their asyncio
  branches.  (``is_asyncio_loop`` looks at the loop's module name; test_base's
  ``test_set_task_name`` uses it to make up for asyncio 3.14's ``create_task`` no longer calling
  ``set_name`` on what a task factory returns, which a loop that behaves as asyncio's needs too.)
* Before 3.12, ``AIOTestCase.setUp`` attaches a ``SafeChildWatcher``; it is kept for asyncio's
  own loops only, the loops it was written for.
* ``NEW_LOOP``, the code that test_signals runs in its own subprocesses, calls the factory.

Per-test outcomes are appended to ``--results`` as JSON lines, flushed one by one so that they
survive a crash::

    {"event": "collected", "ids": [...]}          once, before the first test
    {"event": "start", "id": ...}
    {"event": "end", "id": ..., "outcome": ..., "reason": ..., "seconds": ...}
    {"event": "finished"}

``outcome`` is passed, failed, error, skipped, xfail or xpass.  An error outside any test (a
class or module fixture) is an ``end`` with ``"fixture": true``.  A watchdog, re-armed at each
test boundary, kills the process after ``--test-timeout`` seconds without one, and writes the
stacks to ``--timeout-file``: the parent then knows that it was a timeout, not a crash.

``--probe`` only checks the interpreter: it prints a JSON line with the Python and uvloop
versions and the loop's type, or exits with 3 when the loop cannot be made (2 when uvloop or
the suite's base classes cannot be imported).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import importlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
import unittest
import warnings

EXIT_NO_UVLOOP = 2
EXIT_NOT_IMPORTABLE = 3
# When a test records more than one outcome (a failing tearDown after a failure, subtests),
# the worst one wins.
RANK = {"passed": 0, "skipped": 1, "xfail": 1, "xpass": 2, "failed": 3, "error": 4}


def resolve_factory(spec: str):
    """``module:attr.path`` -> the callable it names."""
    modname, _, attr = spec.partition(":")
    if not modname or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", attr):
        raise ValueError(f"--loop wants module:factory, got {spec!r}")
    obj = importlib.import_module(modname)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def default_policy_class() -> type:
    """asyncio's default policy class (deprecated as a public name since 3.14, still there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return asyncio.DefaultEventLoopPolicy


def point_aio_tests_at(factory) -> None:
    """Make uvloop's AIOTestCase, and asyncio's default policy, use ``factory``'s loops."""
    from uvloop import _testbase as tb

    policy_cls = default_policy_class()
    stock_loop = policy_cls._loop_factory
    inside = threading.local()

    def new_loop():
        # A factory that itself goes through the policy (asyncio.new_event_loop does)
        # comes back here: give it the stock loop instead of recursing.
        if getattr(inside, "busy", False):
            return stock_loop()
        inside.busy = True
        try:
            return factory()
        finally:
            inside.busy = False

    policy_cls._loop_factory = staticmethod(new_loop)

    def set_up(self):
        tb.BaseTestCase.setUp(self)
        self._conformance_watcher = sys.version_info < (3, 12) and self.is_asyncio_loop()
        if self._conformance_watcher:
            watcher = asyncio.SafeChildWatcher()
            watcher.attach_loop(self.loop)
            asyncio.set_child_watcher(watcher)

    def tear_down(self):
        if getattr(self, "_conformance_watcher", False):
            asyncio.set_child_watcher(None)
        tb.BaseTestCase.tearDown(self)

    tb.AIOTestCase.new_loop = lambda self: new_loop()
    tb.AIOTestCase.is_asyncio_loop = lambda self: True
    tb.AIOTestCase.new_policy = lambda self: policy_cls()
    tb.AIOTestCase.setUp = set_up
    tb.AIOTestCase.tearDown = tear_down


def load_aio_tests(module: str, spec: str) -> list[unittest.TestCase]:
    """The tests of ``tests.<module>``'s AIOTestCase subclasses, in a stable order."""
    from uvloop import _testbase as tb

    modname, _, attr = spec.partition(":")
    new_loop_code = f"__import__('importlib').import_module({modname!r}).{attr}()"
    mod = importlib.import_module(f"tests.{module}")
    loader = unittest.TestLoader()
    tests: list[unittest.TestCase] = []
    for _, obj in sorted(vars(mod).items()):
        if (
            isinstance(obj, type)
            and issubclass(obj, tb.AIOTestCase)
            and obj is not tb.AIOTestCase
            and obj.__module__ == mod.__name__
        ):
            if hasattr(obj, "NEW_LOOP"):  # test_signals: what its subprocesses run
                obj.NEW_LOOP = new_loop_code
            tests.extend(loader.loadTestsFromTestCase(obj))
    return tests


class Events:
    """The JSON-lines stream that the parent reads, one flushed line per event."""

    def __init__(self, path: str):
        self.file = open(path, "a", encoding="utf-8")  # open until os._exit

    def emit(self, **fields) -> None:
        self.file.write(json.dumps(fields, default=str) + "\n")
        self.file.flush()


def one_line(err) -> str:
    """The last line of a formatted exception: usually ``Type: message``."""
    lines = "".join(traceback.format_exception_only(err[0], err[1])).strip().splitlines()
    return (lines[-1] if lines else err[0].__name__)[:300]


class StreamingResult(unittest.TestResult):
    """Streams each test's outcome as it ends; arms the watchdog at every test boundary."""

    def __init__(self, events: Events, test_timeout: float, timeout_file):
        super().__init__()
        self.events = events
        self.test_timeout = test_timeout
        self.timeout_file = timeout_file
        self.current: dict | None = None

    def arm_watchdog(self) -> None:
        if self.test_timeout > 0:
            faulthandler.dump_traceback_later(self.test_timeout, exit=True, file=self.timeout_file)

    def startTest(self, test):
        super().startTest(test)
        self.current = {"id": test.id(), "outcome": "passed", "reason": "", "t0": time.monotonic()}
        self.events.emit(event="start", id=test.id())
        self.arm_watchdog()

    def stopTest(self, test):
        super().stopTest(test)
        cur, self.current = self.current, None
        if cur is not None:
            seconds = round(time.monotonic() - cur.pop("t0"), 3)
            self.events.emit(event="end", seconds=seconds, **cur)
        self.arm_watchdog()

    def record(self, test, outcome: str, reason: str = "") -> None:
        cur = self.current
        if cur is None or getattr(test, "id", None) is None or test.id() != cur["id"]:
            # Not inside a started test: setUpClass, setUpModule, tearDownClass...
            self.events.emit(
                event="end", id=str(test), outcome=outcome, reason=reason, fixture=True
            )
        elif RANK[outcome] > RANK[cur["outcome"]]:
            cur["outcome"], cur["reason"] = outcome, reason

    def addError(self, test, err):
        super().addError(test, err)
        self.record(test, "error", one_line(err))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.record(test, "failed", one_line(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.record(test, "skipped", str(reason)[:300])

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.record(test, "xfail", one_line(err))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.record(test, "xpass", "unexpected success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self.record(test, "failed" if failed else "error", f"[{subtest.id()}] {one_line(err)}")


def reset_signals() -> None:
    """Undo dispositions inherited from whoever started us (nohup, a background job).

    Ignored signals stay ignored across exec, so the tests' own subprocesses would inherit
    them too; the tests that send SIGHUP or expect KeyboardInterrupt need the defaults.
    """
    for name in ("SIGHUP", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def probe(spec: str) -> int:
    """Print what the parent needs to know about this interpreter, as one JSON line."""
    info = {"python": sys.version.split()[0]}
    try:
        import uvloop
        from uvloop import _testbase  # noqa: F401 - the suite's base classes

        info["uvloop"] = uvloop.__version__
    except Exception as e:
        print(json.dumps({**info, "error": f"cannot import uvloop._testbase: {e!r}"}))
        return EXIT_NO_UVLOOP
    try:
        loop = resolve_factory(spec)()
        info["loop_type"] = f"{type(loop).__module__}.{type(loop).__qualname__}"
        loop.close()
    except BaseException as e:  # noqa: B036 - whatever the loop raises, it is not usable
        print(json.dumps({**info, "error": f"{type(e).__name__}: {e}"}))
        return EXIT_NOT_IMPORTABLE
    print(json.dumps(info))
    return 0


def run_module(args: argparse.Namespace) -> None:
    events = Events(args.results)
    sys.path.insert(0, args.suite)  # holds tests/ but no uvloop/: uvloop is the installed one
    try:
        point_aio_tests_at(resolve_factory(args.loop))
        tests = load_aio_tests(args.module, args.loop)
    except Exception as e:
        events.emit(event="collected", ids=[])
        events.emit(
            event="end", id=f"tests.{args.module}", outcome="error", reason=repr(e), fixture=True
        )
        traceback.print_exc()
        events.emit(event="finished")
        return
    events.emit(event="collected", ids=[t.id() for t in tests])
    skip = set(args.skip)
    with open(args.timeout_file, "w") as timeout_file:
        result = StreamingResult(events, args.test_timeout, timeout_file)
        result.arm_watchdog()  # covers the module's and classes' fixtures too
        unittest.TestSuite([t for t in tests if t.id() not in skip]).run(result)
        faulthandler.cancel_dump_traceback_later()
    events.emit(event="finished")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", required=True, help="module:factory of the loop under test")
    ap.add_argument("--probe", action="store_true", help="only check the interpreter and loop")
    ap.add_argument("--suite", help="folder that holds uvloop's tests/")
    ap.add_argument("--module", help="test module, e.g. test_tcp")
    ap.add_argument("--results", help="JSON-lines file to append the events to")
    ap.add_argument("--timeout-file", help="where the watchdog writes the stacks")
    ap.add_argument("--test-timeout", type=float, default=30)
    ap.add_argument("--skip", nargs="*", default=[], help="test ids already run")
    args = ap.parse_args()
    if args.probe:
        sys.exit(probe(args.loop))
    reset_signals()
    faulthandler.enable(all_threads=True)  # a segfault's stacks go to the log
    run_module(args)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a loop's finalizers must not turn a finished module into
    # a crash (the parent checks the exit status).
    os._exit(0)


if __name__ == "__main__":
    main()
