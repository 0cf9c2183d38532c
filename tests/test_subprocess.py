"""Subprocesses: loop.subprocess_exec / subprocess_shell with a SubprocessProtocol (callback
order, the transport's getters, close), asyncio.create_subprocess_exec / _shell with streams
(communicate, large outputs, a child that does not read its stdin, signals), what Popen accepts
(stdio redirections, cwd, env, pass_fds, close_fds, sessions, process groups, preexec_fn),
asyncio's argument checks, and reaping: no zombie and no leaked fd, even past the loop's close."""

import ast
import asyncio
import os
import shutil
import signal
import sys
from asyncio.subprocess import DEVNULL, PIPE, STDOUT

import pytest
from helpers_compat import CHILDREN_REAPED_BY_THE_LOOP
from helpers_net import iterations, leaked_fds, open_fds
from helpers_proc import (
    FDS,
    IDS,
    ByteCounter,
    ProcRecorder,
    check_callback_order,
    inheritable_fds,
    proc_state,
    wait_for,
    zombie_children,
)

if not os.path.isdir("/proc/self/fd"):
    pytest.skip("needs /proc", allow_module_level=True)

PY = sys.executable
SH = "/bin/sh"


@pytest.fixture
def pipe_files():
    """(reader, writer): the two ends of an os.pipe() as unbuffered file objects."""
    r, w = os.pipe()
    reader, writer = open(r, "rb", buffering=0), open(w, "wb", buffering=0)
    yield reader, writer
    reader.close()  # a no-op for an end the test has closed
    writer.close()


def test_subprocess_exec_protocol_callbacks(run, loop):
    before = open_fds()

    async def main():
        transport, protocol = await loop.subprocess_exec(
            ProcRecorder, SH, "-c", "printf out; printf err >&2; exit 3"
        )
        assert protocol.transport is transport
        assert transport.get_pid() > 0
        assert await protocol.exited == 3
        assert await protocol.lost is None
        assert transport.get_returncode() == 3
        assert protocol.data == {1: b"out", 2: b"err"}
        check_callback_order(protocol.calls, fds=[0, 1, 2])
        assert all(c[2] is None for c in protocol.calls if c[0] == "pipe_lost")
        transport.close()

    run(main())
    assert leaked_fds(before) == set()


def test_subprocess_shell_protocol_callbacks(run, loop):
    async def main():
        transport, protocol = await loop.subprocess_shell(
            ProcRecorder, "read line; echo got $line; exit 5", stderr=DEVNULL
        )
        assert transport.get_pipe_transport(2) is None
        transport.get_pipe_transport(0).write(b"shell input\n")
        assert await protocol.exited == 5
        assert await protocol.lost is None
        assert protocol.data[1] == b"got shell input\n"
        check_callback_order(protocol.calls, fds=[0, 1])
        transport.close()

    run(main())


def test_transport_getters_while_the_child_runs(run, loop):
    async def main():
        transport, protocol = await loop.subprocess_exec(ProcRecorder, "cat")
        assert transport.get_returncode() is None
        stdin, stdout, stderr = (transport.get_pipe_transport(fd) for fd in (0, 1, 2))
        assert transport.get_pipe_transport(3) is None
        assert stdin.get_write_buffer_size() == 0 and stdin.can_write_eof()
        assert stdout.is_reading() and stderr.is_reading()
        await iterations()
        assert transport.get_returncode() is None and protocol.calls == ["made"]
        stdin.write(b"echo")
        stdin.close()  # cat sees EOF and exits
        assert await protocol.exited == 0
        assert await protocol.lost is None
        assert transport.get_returncode() == 0
        assert protocol.data[1] == b"echo"
        transport.close()

    run(main())


def test_closing_the_transport_kills_a_running_child(run, loop):
    async def main():
        transport, protocol = await loop.subprocess_exec(ProcRecorder, "sleep", "30")
        transport.close()
        assert transport.is_closing()
        assert await protocol.exited == -signal.SIGKILL
        assert await protocol.lost is None
        check_callback_order(protocol.calls, fds=[0, 1, 2])

    run(main())


@pytest.mark.parametrize("how", ["close", "kill", "send_signal"])
def test_a_child_that_exited_unnoticed(run, loop, loop_name, pipe_files, how, caplog):
    # The child has exited but the loop has not yet handled it, and nothing is killed. close()
    # calls Popen.poll(), which reaps the child itself; so do kill() and send_signal() where
    # asyncio signals through Popen.send_signal() (3.11 and 3.12.1; 3.13 calls os.kill()).
    # - Where asyncio's watcher thread reaps the child as soon as it exits (3.11), the exit
    #   status reaches the protocol all the same.
    # - Where asyncio reaps from the loop (a pidfd, 3.12+), a child that Popen reaped first is
    #   reported with returncode 255 and a warning; one it left alone keeps its status.
    reader, writer = pipe_files

    async def main():
        transport, protocol = await loop.subprocess_exec(
            ProcRecorder, SH, "-c", "read x; exit 3", stdin=reader, stdout=DEVNULL, stderr=DEVNULL
        )
        reader.close()
        pid = transport.get_pid()
        writer.close()  # the child reads EOF and exits; the loop does not run until it has
        # asyncio's watcher thread reaps the child by itself, racing with Popen.poll() (a race
        # asyncio loses now and then, reporting 255): wait until that thread has reaped it.
        # Otherwise the loop reaps it, which this blocking wait holds up: wait for a zombie.
        threaded = loop_name == "asyncio" and not CHILDREN_REAPED_BY_THE_LOOP
        wait_for(lambda: proc_state(pid) in ((None,) if threaded else ("Z", None)), "it exited")
        if how == "close":
            transport.close()
        elif how == "kill":
            transport.kill()
        else:
            transport.send_signal(signal.SIGTERM)
        popen_reaped = transport._proc.returncode is not None
        assert popen_reaped or how != "close"
        returncode = 255 if CHILDREN_REAPED_BY_THE_LOOP and popen_reaped else 3
        assert await protocol.exited == returncode
        assert await protocol.lost is None
        transport.close()
        warned = [r.getMessage() for r in caplog.records if "exit status already read" in r.msg]
        assert warned == (
            [f"child process pid {pid} exit status already read:  will report returncode 255"]
            if returncode == 255
            else []
        )

    run(main())


def test_communicate_with_input(run, loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "tr", "a-z", "A-Z", stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        assert await proc.communicate(b"through tr\n") == (b"THROUGH TR\n", b"")
        assert proc.returncode == 0
        shell = await asyncio.create_subprocess_shell("cat", stdin=PIPE, stdout=PIPE)
        assert await shell.communicate(b"x" * 300_000) == (b"x" * 300_000, None)
        assert shell.returncode == 0

    run(main())


def test_64_mib_through_stdout(run, loop):
    # Counted as it arrives, never stored: the test is about the transport, not memory.
    async def main():
        transport, protocol = await loop.subprocess_exec(
            ByteCounter, "head", "-c", str(64 << 20), "/dev/zero", stdin=DEVNULL, stderr=DEVNULL
        )
        assert await protocol.lost is None
        assert protocol.counts[1] == 64 << 20
        assert transport.get_returncode() == 0
        transport.close()

    run(main(), timeout=60)


def test_a_child_that_exits_without_reading_its_stdin(run, loop, pipe_files):
    # The child holds its stdin open, unread, while the parent writes 4 MiB; then it exits:
    # the parent's pending drain() fails with BrokenPipeError; communicate() ignores it.
    payload = b"s" * (4 << 20)
    code = "import os, sys; print('ready', flush=True); os.read(int(sys.argv[1]), 1)"
    control = pipe_files[0].fileno()

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, str(control), stdin=PIPE, stdout=PIPE, pass_fds=(control,)
        )
        assert await proc.stdout.readline() == b"ready\n"
        proc.stdin.write(payload)
        drain = asyncio.ensure_future(proc.stdin.drain())
        await iterations()
        assert not drain.done()  # nobody reads: the parent waits
        pipe_files[1].close()  # the child exits
        with pytest.raises(BrokenPipeError):
            await drain
        with pytest.raises(BrokenPipeError):
            await proc.stdin.wait_closed()
        assert await proc.wait() == 0
        # communicate() on a child that exits at once, unread stdin or not, just finishes.
        proc = await asyncio.create_subprocess_exec("true", stdin=PIPE, stdout=PIPE)
        assert await proc.communicate(payload) == (b"", None)
        assert proc.returncode == 0

    run(main())


def test_writing_to_a_child_whose_stdin_is_already_gone(run, loop, pipe_files):
    # The child has exited before the parent writes and the loop has not run since: the write
    # fails at once, which asyncio reports late. drain() returns (the protocol was never
    # paused and does not know yet), wait_closed() raises BrokenPipeError, and drain() raises
    # ConnectionResetError from then on.
    code = "import os, sys; os.read(int(sys.argv[1]), 1)"
    control = pipe_files[0].fileno()

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", code, str(control), stdin=PIPE, pass_fds=(control,)
        )
        for f in pipe_files:
            f.close()  # the child exits
        # Either reaped by asyncio's watcher thread or a zombie (ferroloop reaps in the loop).
        wait_for(lambda: proc_state(proc.pid) in ("Z", None), "the child has exited")
        proc.stdin.write(b"late" * (1 << 20))
        assert proc.stdin.transport.is_closing()
        assert proc.stdin.transport.get_write_buffer_size() == 0
        await proc.stdin.drain()
        with pytest.raises(BrokenPipeError):
            await proc.stdin.wait_closed()
        with pytest.raises(ConnectionResetError):
            await proc.stdin.drain()
        assert await proc.wait() == 0

    run(main())


@pytest.mark.parametrize(
    "how, returncode",
    [
        ("kill", -signal.SIGKILL),
        ("terminate", -signal.SIGTERM),
        ("send_signal", -signal.SIGUSR1),
        ("trapped", 7),
    ],
)
def test_a_child_ended_by_a_signal(run, loop, how, returncode):
    # A trapped child must not wait in signal.pause(): a signal that arrives between its last
    # check for Python signal handlers and pause() runs its handler only once pause() returns,
    # that is never. Sleeping in a loop runs the handler at the latest when the sleep ends.
    if how == "trapped":
        code = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGUSR1, lambda *_: sys.exit(7))\n"
            "print('ready', flush=True)\n"
            "while True: time.sleep(0.05)\n"
        )
    else:  # SIGUSR1's default action ends the child in the kernel
        code = "import signal\nprint('ready', flush=True)\nsignal.pause()\n"

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE)
        try:
            assert await proc.stdout.readline() == b"ready\n"
            if how in ("kill", "terminate"):
                getattr(proc, how)()
            else:
                proc.send_signal(signal.SIGUSR1)
            assert await proc.wait() == returncode
            assert await proc.stdout.read() == b""
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        # Once the child is reaped and the transport done, signalling it is an error (and can
        # never reach another process that got the pid).
        await iterations()
        with pytest.raises(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)

    run(main())


def test_stdio_redirections(run, loop, tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    source.write_bytes(b"from a file descriptor\n")
    fd = os.open(source, os.O_RDONLY)

    async def main():
        # stderr=STDOUT: both streams through one pipe, and no stderr pipe.
        proc = await asyncio.create_subprocess_shell(
            "echo out; echo err >&2", stdout=PIPE, stderr=STDOUT
        )
        assert proc.stderr is None
        assert await proc.communicate() == (b"out\nerr\n", None)
        # stdout=DEVNULL
        proc = await asyncio.create_subprocess_shell(
            "echo out; echo err >&2", stdout=DEVNULL, stderr=PIPE
        )
        assert proc.stdout is None and proc._transport.get_pipe_transport(1) is None
        assert await proc.communicate() == (None, b"err\n")
        # stdin from an fd, stdout to a file object
        with open(target, "wb") as out:
            proc = await asyncio.create_subprocess_exec("cat", stdin=fd, stdout=out)
            assert await proc.wait() == 0
            assert not out.closed
        assert os.fstat(fd)  # the caller's fd stays open

    try:
        run(main())
    finally:
        os.close(fd)
    assert target.read_bytes() == b"from a file descriptor\n"


def test_cwd_and_env(run, loop, tmp_path):
    env_program = shutil.which("env")

    async def main():
        for cwd in (str(tmp_path), tmp_path):
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", "import os; print(os.getcwd())", stdout=PIPE, cwd=cwd
            )
            out, _ = await proc.communicate()
            assert out.decode().strip() == os.path.realpath(tmp_path)
        proc = await asyncio.create_subprocess_exec(
            env_program, stdout=PIPE, env={"FERROLOOP_TEST": "value"}
        )
        assert await proc.communicate() == (b"FERROLOOP_TEST=value\n", None)

    run(main())


def test_pass_fds_and_close_fds(run, loop, pipe_files, tmp_path):
    reader, writer = pipe_files
    w = writer.fileno()
    with open(tmp_path / "hidden", "wb") as hidden_file:
        hidden = hidden_file.fileno()
        os.set_inheritable(hidden, True)  # only close_fds (on by default) keeps it from the child

        async def main():
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", FDS, "passed", str(w), stdout=PIPE, pass_fds=(w,)
            )
            out, _ = await proc.communicate()
            return ast.literal_eval(out.decode())

        fds = run(main())
    writer.close()
    assert reader.read() == b"passed"
    assert w in fds and hidden not in fds
    assert len(set(fds) - {0, 1, 2, w}) == 1  # listdir's own directory fd


def test_close_fds_false_passes_only_inheritable_fds(run, loop):
    # The loop's own fds (epoll, wake-up, pidfds, other pipes) are close-on-exec: a child
    # spawned with close_fds=False gets nothing the caller did not make inheritable.
    async def main():
        keep = await asyncio.create_subprocess_exec("sleep", "30", stdin=PIPE, stdout=PIPE)
        inheritable = inheritable_fds()
        proc = await asyncio.create_subprocess_exec(PY, "-c", FDS, stdout=PIPE, close_fds=False)
        out, _ = await proc.communicate()
        keep.kill()
        await keep.wait()
        return inheritable, ast.literal_eval(out.decode())

    inheritable, fds = run(main())
    assert len(set(fds) - inheritable - {0, 1, 2}) == 1  # listdir's own directory fd


@pytest.mark.parametrize(
    "kwargs", [{}, {"start_new_session": True}, {"process_group": 0}], ids=repr
)
def test_sessions_and_process_groups(run, loop, kwargs):
    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", IDS, stdout=PIPE, **kwargs)
        out, _ = await proc.communicate()
        return proc.pid, ast.literal_eval(out.decode())

    pid, (child, pgrp, sid) = run(main())
    assert child == pid
    if kwargs.get("start_new_session"):
        assert (pgrp, sid) == (pid, pid)
    elif "process_group" in kwargs:
        assert (pgrp, sid) == (pid, os.getsid(0))
    else:
        assert (pgrp, sid) == (os.getpgrp(), os.getsid(0))


def test_preexec_fn_runs_in_the_child(run, loop, pipe_files):
    reader, writer = pipe_files
    w = writer.fileno()

    async def main():
        proc = await asyncio.create_subprocess_exec(
            "true", preexec_fn=lambda: os.write(w, str(os.getpid()).encode())
        )
        assert await proc.wait() == 0
        return proc.pid

    pid = run(main())
    writer.close()
    assert reader.read() == str(pid).encode()


REJECTIONS = [
    ({"universal_newlines": True}, "universal_newlines must be False"),
    ({"text": True}, "text must be False"),
    ({"encoding": "utf-8"}, "encoding must be None"),
    ({"errors": "strict"}, "errors must be None"),
    ({"bufsize": 1}, "bufsize must be 0"),
]


@pytest.mark.parametrize(
    "method, args, kwargs, message",
    [("exec", ("true",), kw, msg) for kw, msg in REJECTIONS]
    + [("shell", ("true",), kw, msg) for kw, msg in REJECTIONS]
    + [
        ("exec", ("true",), {"shell": True}, "shell must be False"),
        ("shell", ("true",), {"shell": False}, "shell must be True"),
        ("shell", (["true"],), {}, "cmd must be a string"),
    ],
)
def test_asyncio_argument_checks(run, loop, method, args, kwargs, message):
    before, zombies = open_fds(), zombie_children()
    spawn = loop.subprocess_exec if method == "exec" else loop.subprocess_shell
    with pytest.raises(ValueError) as info:
        run(spawn(ProcRecorder, *args, **kwargs))
    assert str(info.value) == message
    assert zombie_children() == zombies
    assert leaked_fds(before) == set()


@pytest.mark.parametrize("program", ["/nonexistent/ferroloop-test", "ferroloop-no-such-program"])
def test_a_missing_executable(run, loop, program):
    before = open_fds()
    with pytest.raises(FileNotFoundError) as info:
        run(asyncio.create_subprocess_exec(program, stdin=PIPE, stdout=PIPE, stderr=PIPE))
    assert info.value.filename == program
    del info
    assert leaked_fds(before) == set()


def test_many_short_lived_children_leave_no_zombie_and_no_fd(run, loop):
    # The slowest test here (~1-2 s per loop): 500 fork/exec/reap rounds, one after another.
    before = open_fds()

    async def main():
        pids = set()
        for _ in range(500):
            proc = await asyncio.create_subprocess_exec("true", stdout=PIPE)
            assert await proc.communicate() == (b"", None)
            assert proc.returncode == 0
            pids.add(proc.pid)
        return pids

    pids = run(main(), timeout=60)
    assert len(pids) == 500
    assert zombie_children() & pids == set()
    assert leaked_fds(before) == set()


@pytest.mark.parametrize("close_transport", [True, False])
def test_no_zombie_after_the_loop_closes_with_a_child_running(loop, loop_name, close_transport):
    async def start():
        transport, _ = await loop.subprocess_exec(
            ProcRecorder, "sleep", "0.3", stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL
        )
        return transport

    transport = loop.run_until_complete(start())
    pid = transport.get_pid()
    if close_transport:
        transport.close()  # kills the child, which the closed loop never sees exit
    loop.close()
    assert transport.get_returncode() is None  # the loop closed before it saw the child exit
    # asyncio's watcher thread (3.11) and ferroloop's waiter threads reap it once it exits.
    # asyncio's pidfd watching (3.12+) ends with the loop: it guarantees no more than the exit,
    # and leaves a zombie to Popen (which reaps it when it is polled: close() does).
    exited = ("Z", None) if loop_name == "asyncio" and CHILDREN_REAPED_BY_THE_LOOP else (None,)
    wait_for(lambda: proc_state(pid) in exited, f"child {pid} has exited", timeout=5)
    transport.close()
