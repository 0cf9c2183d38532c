//! Readiness notification from the OS: one file per OS API, the backend chosen at run time.
//!
//! Every driver is level-triggered, because asyncio's `add_reader` is: a callback keeps firing while
//! its fd stays readable. The epoll driver also takes edge-triggered registrations
//! ([`Interest::edge`], see [`Driver::reports_edges`]): the binding keeps a socket registered that
//! way between `sock_recv` waits, where a level-triggered registration would have to go and come
//! back with each wait. A driver reports readiness per *token* (the caller's slab index), never
//! per fd, so an event finds its handler without hashing.
//!
//! The error and hang-up conditions are reported the way Python's `selectors` module reports them:
//! anything but "writable" counts as readable and anything but "readable" counts as writable, so a
//! reader sees EOF and a writer sees the error on its next syscall.
//!
//! # Backends
//!
//! | backend | cost of a wait | regular files | fd closed while registered |
//! |---|---|---|---|
//! | [`Backend::Epoll`] (default) | O(ready fds) | refused (`EPERM`) | the kernel drops the registration |
//! | [`Backend::Poll`] | O(registered fds) | accepted, always ready | `POLLNVAL`: reported readable and writable |
//! | [`Backend::Select`] | O(highest fd) | accepted, always ready | `EBADF`: reported readable and writable |
//! | [`Backend::IoUring`] (Linux) | O(ready fds) | accepted, always ready | an armed poll keeps the file open until `delete`; else it goes quiet |
//!
//! `poll`, `select` and `io_uring` keep their registrations in user space, behind a mutex that a
//! blocked wait does not hold; see their module docs for what a registration changed during a wait
//! does. The `select` driver has no `FD_SETSIZE` (1024) limit: it sizes its fd sets to the highest
//! fd. The `io_uring` driver reports readiness with one-shot `POLL_ADD`s re-armed after each
//! report, and also runs operations of the completion model ([`Completion`]); [`Driver::new`] fails with the reason, and [`Backend::available`] leaves it out, where the
//! kernel refuses `io_uring` or lacks what it needs.

#[cfg(target_os = "linux")]
mod bufring;
mod epoll;
mod poll;
mod select;
#[cfg(target_os = "linux")]
pub mod uring;

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustix::event::Timespec;
use rustix::io::Errno;

use crate::waker::Waker;

/// Which OS API a [`Driver`] uses. Chosen at run time, so one build can run all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Linux `epoll`, level-triggered.
    #[default]
    Epoll,
    /// POSIX `poll`: a `pollfd` array rebuilt from the registrations on each wait.
    Poll,
    /// POSIX `select`, with fd sets sized to the highest fd rather than `FD_SETSIZE`.
    Select,
    /// Linux `io_uring`: one-shot `POLL_ADD`s, re-armed after each report. Linux 5.13+, and not
    /// where `kernel.io_uring_disabled` or a seccomp filter refuses it.
    IoUring,
}

impl Backend {
    /// Every backend this build knows, whether or not this machine offers it.
    pub const ALL: &'static [Backend] = &[Backend::Epoll, Backend::Poll, Backend::Select, Backend::IoUring];

    /// The name users pass to choose it (`FERROLOOP_BACKEND`, `new_event_loop(backend=...)`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::Poll => "poll",
            Backend::Select => "select",
            Backend::IoUring => "io_uring",
        }
    }

    /// The backends that work on this machine (probed by creating one).
    #[must_use]
    pub fn available() -> Vec<Backend> {
        Self::ALL.iter().copied().filter(|b| Driver::new(*b).is_ok()).collect()
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "epoll" => Ok(Backend::Epoll),
            "poll" => Ok(Backend::Poll),
            "select" => Ok(Backend::Select),
            "io_uring" => Ok(Backend::IoUring),
            other => {
                let known: Vec<&str> = Backend::ALL.iter().map(|b| b.name()).collect();
                Err(format!(
                    "unknown backend {other:?}; known backends: {}",
                    known.join(", ")
                ))
            }
        }
    }
}

/// What a registration waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// Report the fd when it is readable (or has an error or hang-up).
    pub readable: bool,
    /// Report the fd when it is writable (or has an error or hang-up).
    pub writable: bool,
    /// Report the fd when it *becomes* ready (new data, a hang-up), not while it stays ready
    /// (epoll's `EPOLLET`). Only where [`Driver::reports_edges`] says so; the others refuse it.
    pub edge: bool,
}

impl Interest {
    /// Nothing: the fd is not watched ([`Sources::set_interest`](crate::sources::Sources::set_interest)
    /// deletes it from the driver).
    pub const NONE: Interest = Interest {
        readable: false,
        writable: false,
        edge: false,
    };
    /// Readability only (`add_reader`).
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
        edge: false,
    };
    /// Writability only (`add_writer`).
    pub const WRITABLE: Interest = Interest {
        readable: false,
        writable: true,
        edge: false,
    };
    /// Readability and writability.
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
        edge: false,
    };

    /// Readability, reported as it changes ([`Interest::edge`]).
    pub const READABLE_EDGE: Interest = Interest {
        readable: true,
        writable: false,
        edge: true,
    };

    /// True if neither readability nor writability is asked for.
    #[must_use]
    pub fn is_none(self) -> bool {
        !self.readable && !self.writable
    }
}

/// One readiness report: the token given at registration and what the fd is ready for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The token the fd was added or last modified with.
    pub token: usize,
    /// The fd is readable, or has an error or hang-up (a read will say which).
    pub readable: bool,
    /// The fd is writable, or has an error or hang-up (a write will say which).
    pub writable: bool,
    /// The registration that reported it is edge-triggered. An fd closed while registered that
    /// way, its file kept open by a `dup` or a child, stays registered under its old token, which
    /// a later registration may reuse: the caller drops an `edge` report for a source it did not
    /// register edge-triggered.
    pub edge: bool,
}

/// The end (or one step, `more`) of an operation of the completion model (`io_uring`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The caller's tag given when the operation was started.
    pub tag: u64,
    /// The syscall's result: bytes, or a negated errno.
    pub result: i32,
    /// More completions of this operation follow (a multishot receive goes on).
    pub more: bool,
    /// The provided buffer holding a receive's data: copy it out and give it back
    /// ([`uring::Uring::copy_out`], [`uring::Uring::recycle`]).
    pub buffer: Option<BufRef>,
}

/// Where a receive's data lies in the provided buffers: buffer `bid`, from `offset`. With
/// incremental consumption (Linux 6.12) the kernel fills one buffer with several receives, each
/// after the last. Every `BufRef` a completion carries is given back once ([`uring::Uring::
/// recycle`]); the buffer returns to the kernel when the kernel is done with it and every part
/// of it was given back, in whatever order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufRef {
    /// The buffer's id in the driver's provided-buffer ring.
    pub bid: u16,
    /// Where in that buffer this completion's data starts (0 without incremental consumption).
    pub offset: u32,
}

/// A readiness driver over one OS API. All methods take `&self`: registrations may change while
/// another thread is blocked in [`Driver::wait`].
#[derive(Debug)]
pub enum Driver {
    /// [`Backend::Epoll`].
    Epoll(epoll::Epoll),
    /// [`Backend::Poll`].
    Poll(poll::Poll),
    /// [`Backend::Select`].
    Select(select::Select),
    /// [`Backend::IoUring`]. Boxed: the ring's state is much larger than the other drivers'.
    #[cfg(target_os = "linux")]
    IoUring(Box<uring::Uring>),
}

impl Driver {
    /// Creates a driver of the given backend, with its [`Waker`] registered.
    pub fn new(backend: Backend) -> io::Result<Driver> {
        match backend {
            Backend::Epoll => Ok(Driver::Epoll(epoll::Epoll::new()?)),
            Backend::Poll => Ok(Driver::Poll(poll::Poll::new()?)),
            Backend::Select => Ok(Driver::Select(select::Select::new()?)),
            #[cfg(target_os = "linux")]
            Backend::IoUring => Ok(Driver::IoUring(Box::new(uring::Uring::new()?))),
            #[cfg(not(target_os = "linux"))]
            Backend::IoUring => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring backend unavailable: io_uring exists only on Linux",
            )),
        }
    }

    /// The backend this driver was created with.
    #[must_use]
    pub fn backend(&self) -> Backend {
        match self {
            Driver::Epoll(_) => Backend::Epoll,
            Driver::Poll(_) => Backend::Poll,
            Driver::Select(_) => Backend::Select,
            #[cfg(target_os = "linux")]
            Driver::IoUring(_) => Backend::IoUring,
        }
    }

    /// True if a wait reports nothing but the fds it watches and the waker: the readiness
    /// backends. An `io_uring` wait also submits queued requests and reaps completions of
    /// operations, so it is never left out.
    #[must_use]
    pub fn reports_only_fds(&self) -> bool {
        match self {
            Driver::Epoll(_) | Driver::Poll(_) | Driver::Select(_) => true,
            #[cfg(target_os = "linux")]
            Driver::IoUring(_) => false,
        }
    }

    /// True if [`Interest::edge`] registrations are taken: epoll. (`poll` and `select` have no
    /// edge-triggered mode; `io_uring`'s one-shot polls are re-armed by the driver.)
    #[must_use]
    pub fn reports_edges(&self) -> bool {
        matches!(self, Driver::Epoll(_))
    }

    /// Refuses an edge-triggered `interest` where it is not taken.
    fn check_edge(&self, interest: Interest) -> io::Result<()> {
        if interest.edge && !self.reports_edges() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the {} backend has no edge-triggered registrations",
                    self.backend().name()
                ),
            ));
        }
        Ok(())
    }

    /// Starts watching `fd` for `interest`, reporting it as `token`.
    pub fn add(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        self.check_edge(interest)?;
        match self {
            Driver::Epoll(d) => d.add(fd, token, interest),
            Driver::Poll(d) => d.add(fd, token, interest),
            Driver::Select(d) => d.add(fd, token, interest),
            #[cfg(target_os = "linux")]
            Driver::IoUring(d) => d.add(fd, token, interest),
        }
    }

    /// Changes what an added `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        self.check_edge(interest)?;
        match self {
            Driver::Epoll(d) => d.modify(fd, token, interest),
            Driver::Poll(d) => d.modify(fd, token, interest),
            Driver::Select(d) => d.modify(fd, token, interest),
            #[cfg(target_os = "linux")]
            Driver::IoUring(d) => d.modify(fd, token, interest),
        }
    }

    /// Stops watching `fd`. An fd that was closed meanwhile is not an error here: the kernel has
    /// already forgotten it, which is what the caller wanted.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.delete(fd),
            Driver::Poll(d) => d.delete(fd),
            Driver::Select(d) => d.delete(fd),
            #[cfg(target_os = "linux")]
            Driver::IoUring(d) => d.delete(fd),
        }
    }

    /// Waits until an fd is ready, the waker is woken or `timeout` passes (`None`: no limit), and
    /// replaces `events` with what is ready. An interrupted wait (`EINTR`) returns `Ok` with no
    /// events, so that the caller can run Python's signal handlers.
    pub fn wait(&self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        match self {
            Driver::Epoll(d) => d.wait(events, timeout),
            Driver::Poll(d) => d.wait(events, timeout),
            Driver::Select(d) => d.wait(events, timeout),
            #[cfg(target_os = "linux")]
            Driver::IoUring(d) => d.wait(events, timeout),
        }
    }

    /// The `io_uring` driver, where transports can use the completion model.
    #[cfg(target_os = "linux")]
    #[must_use]
    pub fn uring(&self) -> Option<&uring::Uring> {
        match self {
            Driver::IoUring(d) => Some(d),
            _ => None,
        }
    }

    /// Moves the completions of the last wait into `out` (none but on `io_uring`).
    pub fn take_completions(&self, out: &mut Vec<Completion>) {
        #[cfg(target_os = "linux")]
        if let Driver::IoUring(d) = self {
            d.take_completions(out);
        }
        let _ = out;
    }

    /// True if the last wait reaped completions not yet taken.
    #[must_use]
    pub fn has_completions(&self) -> bool {
        #[cfg(target_os = "linux")]
        if let Driver::IoUring(d) = self {
            return d.has_completions();
        }
        false
    }

    /// The waker that interrupts [`Driver::wait`] from any thread.
    #[must_use]
    pub fn waker(&self) -> &Arc<Waker> {
        match self {
            Driver::Epoll(d) => d.waker(),
            Driver::Poll(d) => d.waker(),
            Driver::Select(d) => d.waker(),
            #[cfg(target_os = "linux")]
            Driver::IoUring(d) => d.waker(),
        }
    }
}

/// Borrows a caller's raw fd for the `poll` and `select` drivers, which keep it until `delete`.
fn borrow(fd: RawFd) -> io::Result<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(Errno::BADF.into());
    }
    // SAFETY: asyncio's contract (and `Driver::add`'s) is that a registered fd stays open until it
    // is deleted. A caller that breaks it gets no memory unsafety: the kernel answers POLLNVAL or
    // EBADF for a closed fd, which the drivers report, or watches whatever file reused the number.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Fails with `EBADF` unless `fd` is open: `epoll_ctl` checks that at `add`, `poll` and `select`
/// would only notice at the next wait.
fn check_open(fd: RawFd) -> io::Result<()> {
    rustix::io::fcntl_getfd(borrow(fd)?)?;
    Ok(())
}

/// A wait's timeout as rustix takes it. On Linux rustix calls `ppoll` and `pselect6`, which take
/// nanoseconds as they are; where it falls back to `poll` (ms) or `select` (a `timeval`, µs) it
/// rounds up, so a wait never returns before its timeout. Saturates instead of wrapping negative.
fn timespec(timeout: Option<Duration>) -> Option<Timespec> {
    timeout.map(|d| Timespec {
        tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    })
}
