//! Wakes a loop blocked in `Driver::wait` from any thread: an `eventfd` the driver watches.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::event::{eventfd, EventfdFlags};

/// A cross-thread wake-up. Cheap to call often: a wake while one is already pending is a no-op, so
/// a burst of `call_soon_threadsafe` calls costs one `write`.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
    /// True from the first `wake` until the loop thread drains the eventfd.
    pending: AtomicBool,
}

impl Waker {
    /// A waker over a new non-blocking, close-on-exec eventfd, not yet watched by any driver.
    pub fn new() -> io::Result<Waker> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Waker {
            fd,
            pending: AtomicBool::new(false),
        })
    }

    /// Makes the driver's current or next wait return at once.
    pub fn wake(&self) -> io::Result<()> {
        if self.pending.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            // EAGAIN: the counter is at its maximum, so the fd is readable anyway.
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => {
                self.pending.store(false, Ordering::Release);
                Err(e.into())
            }
        }
    }

    /// Resets the eventfd after the driver saw it readable (it is level-triggered).
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        // NOTE: EAGAIN means another drain got there first; nothing else can fail on an eventfd.
        let _ = rustix::io::read(&self.fd, &mut buf);
        // NOTE: cleared only after the read. Cleared before it, a wake landing in between would
        // set `pending` and write, the read would swallow that write, and `pending` would stay
        // set over an empty eventfd: every later wake would be skipped. In this order a wake
        // that lands in between is skipped once, harmlessly: what it announced is already
        // queued, and the loop looks at its queue before it waits again.
        self.pending.store(false, Ordering::Release);
    }

    /// The eventfd, for the driver to watch for readability. It stays open as long as the waker.
    #[must_use]
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
