"""Unix signals: add_signal_handler/remove_signal_handler, coexistence with handlers
installed through the signal module, and SIGINT interrupting run_forever()."""

import os
import signal
import subprocess
import threading
import time

import pytest

GUARD = 5.0


@pytest.fixture(autouse=True)
def restore_signal_state():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    signal.set_wakeup_fd(-1)


def kill_from_thread(sig, delay=0.05, main_thread_only=False):
    """Send `sig` to this process from another thread while the loop is (probably) idle."""
    target = threading.main_thread().ident

    def send():
        time.sleep(delay)
        if main_thread_only:
            signal.pthread_kill(target, sig)
        else:
            os.kill(os.getpid(), sig)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_signal_handler_fires_and_wakes_the_loop(loop):
    seen = []

    def on_signal(*args):
        seen.append(args)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, on_signal, "arg", 2)
    guard = loop.call_later(GUARD, lambda: (seen.append("guard"), loop.stop()))
    thread = kill_from_thread(signal.SIGUSR1)
    loop.run_forever()
    thread.join()
    guard.cancel()
    assert seen == [("arg", 2)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True


def test_signal_sent_from_a_callback(loop):
    fut = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, lambda: fut.done() or fut.set_result("got it"))
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR2)
    loop.call_later(GUARD, lambda: fut.done() or fut.set_result("guard"))
    assert loop.run_until_complete(fut) == "got it"


def test_two_signals_have_independent_handlers(loop):
    seen = []
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(sig, seen.append, sig)

    def check():
        if len(seen) == 2:
            loop.stop()
        else:
            loop.call_later(0.005, check)

    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR2)
    loop.call_soon(check)
    loop.call_later(GUARD, loop.stop)
    loop.run_forever()
    assert sorted(seen) == sorted([signal.SIGUSR1, signal.SIGUSR2])


def test_remove_signal_handler_returns_true_then_false(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert loop.remove_signal_handler(signal.SIGUSR2) is False
    # Removal restores the default disposition (not whatever was installed before).
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_removing_the_sigint_handler_restores_keyboard_interrupt(loop):
    loop.add_signal_handler(signal.SIGINT, print)
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1  # no wakeup fd left behind


def test_invalid_signals_are_rejected(loop):
    with pytest.raises(RuntimeError, match=rf"^sig {int(signal.SIGKILL)} cannot be caught$"):
        loop.add_signal_handler(signal.SIGKILL, print)
    with pytest.raises(ValueError, match=r"^invalid signal number 0$"):
        loop.add_signal_handler(0, print)
    with pytest.raises(ValueError, match=r"^invalid signal number 4096$"):
        loop.add_signal_handler(4096, print)
    with pytest.raises(ValueError, match=r"^invalid signal number 4096$"):
        loop.remove_signal_handler(4096)
    with pytest.raises(TypeError, match=r"^sig must be an int, not 'USR1'$"):
        loop.add_signal_handler("USR1", print)
    assert loop.remove_signal_handler(signal.SIGKILL) is False


def test_coroutine_functions_are_rejected_as_handlers(loop):
    async def handler():
        pass

    with pytest.raises(TypeError, match=r"^coroutines cannot be used with add_signal_handler\(\)$"):
        loop.add_signal_handler(signal.SIGUSR1, handler)
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_add_signal_handler_outside_the_main_thread_raises(loop):
    errors = []

    def worker():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_closed_loop_rejects_signal_handlers(loop):
    loop.close()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.add_signal_handler(signal.SIGUSR1, print)


def test_python_signal_handlers_run_while_the_loop_waits(loop):
    seen = []

    def python_handler(signum, frame):
        seen.append(signum)
        loop.call_soon_threadsafe(loop.stop)

    signal.signal(signal.SIGUSR2, python_handler)
    guard = loop.call_later(GUARD, lambda: (seen.append("guard"), loop.stop()))
    # Directed at the main thread, which sits in the loop's blocking wait.
    thread = kill_from_thread(signal.SIGUSR2, main_thread_only=True)
    loop.run_forever()
    thread.join()
    guard.cancel()
    assert seen == [signal.SIGUSR2]


SIGINT_CHILD = """
import os, signal, sys
# A shell's background job starts with SIGINT ignored, and Python then installs no
# KeyboardInterrupt handler: give the child Python's default as an interactive run has it.
signal.signal(signal.SIGINT, signal.default_int_handler)
loop = new_loop()
loop.call_soon(lambda: print("ready", flush=True))
loop.call_later(30, loop.stop)
try:
    loop.run_forever()
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
else:
    print("not interrupted", flush=True)
print(loop.is_running(), loop.run_until_complete(asyncio.sleep(0, "usable")), flush=True)
loop.close()
"""


def test_sigint_interrupts_run_forever(child_command):
    argv, env = child_command(SIGINT_CHILD)
    child = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline().strip()
        if line != "ready":
            child.kill()
            pytest.fail(f"child did not start ({line!r}): {child.communicate()[1]}")
        time.sleep(0.1)  # let it settle into its blocking wait (not needed for correctness)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, err
    assert out.splitlines() == ["KeyboardInterrupt", "False usable"]
