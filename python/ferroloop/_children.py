"""Child-exit watching for subprocess transports, with no process-wide SIGCHLD handler.

On Linux each child gets a pidfd, registered with the loop like any readable fd: when it becomes
readable the child has exited and is reaped with ``waitpid`` at once, so no zombie is left and no
other library's ``waitpid(-1)`` or SIGCHLD handler is disturbed. Where ``os.pidfd_open`` is
missing or refused (old kernels, seccomp), one waiter thread per child does the ``waitpid``
instead, as asyncio's ``ThreadedChildWatcher`` does. Children still running when the loop closes
are handed to such threads, so they are reaped whenever they exit.
"""

import os
import threading
from asyncio.log import logger

__all__ = ("ChildWatcher",)


def _reap(pid, popen=None):
    """``waitpid`` and the exit code. If the child was reaped already, the code its ``Popen``
    saw (``kill()``, ``send_signal()`` and ``poll()`` reap an exited child themselves), else 255
    with a warning, asyncio's rule."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        if popen is not None and popen.returncode is not None:
            return popen.returncode
        logger.warning(
            "child process pid %d exit status already read:  will report returncode 255", pid
        )
        return 255
    return os.waitstatus_to_exitcode(status)


class ChildWatcher:
    def __init__(self, loop):
        self._loop = loop
        #: pid -> pidfd of the children watched through the loop.
        self._pidfds = {}

    def watch(self, pid, callback, popen=None):
        """Calls ``callback(returncode)`` in the loop thread once ``pid`` has exited."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._watch_with_thread(pid, callback, popen)
            return
        self._pidfds[pid] = pidfd
        self._loop._add_reader(pidfd, self._exited, pid, callback, popen)

    def _exited(self, pid, callback, popen):
        pidfd = self._pidfds.pop(pid)
        self._loop._remove_reader(pidfd)
        os.close(pidfd)
        callback(_reap(pid, popen))

    def _watch_with_thread(self, pid, callback, popen):
        loop = self._loop

        def wait():
            returncode = _reap(pid, popen)
            if not loop.is_closed():
                loop.call_soon_threadsafe(callback, returncode)

        threading.Thread(target=wait, name=f"ferroloop-waitpid-{pid}", daemon=True).start()

    def close(self):
        """Stops watching through the loop; children still running are reaped by threads."""
        for pid, pidfd in list(self._pidfds.items()):
            self._loop._remove_reader(pidfd)
            os.close(pidfd)
            threading.Thread(
                target=_reap, args=(pid,), name=f"ferroloop-waitpid-{pid}", daemon=True
            ).start()
        self._pidfds.clear()
