"""Child-exit watching for subprocess transports, with no process-wide SIGCHLD handler.

On Linux each child gets a pidfd, registered with the loop like any readable fd: when it becomes
readable the child has exited and is reaped with ``waitpid`` at once, so no zombie is left and no
other library's ``waitpid(-1)`` or SIGCHLD handler is disturbed. Where ``os.pidfd_open`` is
missing or refused (old kernels, seccomp), one waiter thread per child does the ``waitpid``
instead, as asyncio's ``ThreadedChildWatcher`` does. Children still running when the loop closes
are handed to such threads, so they are reaped whenever they exit (asyncio's pidfd watching, 3.12+,
stops with the loop and leaves them to ``Popen``).

A child that its ``Popen`` reaped first (``transport.close()`` polls it) is reported as asyncio's
watcher of the running version reports it: with returncode 255 and a warning where asyncio reaps
from the loop too (3.12+), else with the status ``Popen`` saw, which 3.11's watcher thread, reaping
as soon as the child exits, would have read itself.
"""

import os
import threading
from asyncio.log import logger

from . import _compat

__all__ = ("ChildWatcher",)


def _reap(pid, popen=None):
    """``waitpid`` and the exit code. If the child was reaped already, the code its ``Popen``
    saw if ``popen`` is given (``poll()`` reaps an exited child itself, and so do ``kill()`` and
    ``send_signal()`` where asyncio signals through ``Popen``), else 255 with a warning, asyncio's
    rule."""
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
        callback(_reap(pid, None if _compat.CHILDREN_REAPED_BY_THE_LOOP else popen))

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
