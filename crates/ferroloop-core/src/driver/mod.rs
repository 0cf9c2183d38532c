//! Readiness notification from the OS: one file per OS API, the backend chosen at run time.
//!
//! Every driver is level-triggered, because asyncio's `add_reader` is: a callback keeps firing while
//! its fd stays readable. A driver reports readiness per *token* (the caller's slab index), never
//! per fd, so an event finds its handler without hashing.
//!
//! The error and hang-up conditions are reported the way Python's `selectors` module reports them:
//! anything but "writable" counts as readable and anything but "readable" counts as writable, so a
//! reader sees EOF and a writer sees the error on its next syscall.

mod epoll;

use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::waker::Waker;

/// Which OS API a [`Driver`] uses. Chosen at run time, so one build can run all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Linux `epoll`, level-triggered.
    #[default]
    Epoll,
}

impl Backend {
    /// Every backend this build knows, whether or not this machine offers it.
    pub const ALL: &'static [Backend] = &[Backend::Epoll];

    /// The name users pass to choose it (`FERROLOOP_BACKEND`, `new_event_loop(backend=...)`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
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
    pub readable: bool,
    pub writable: bool,
}

impl Interest {
    pub const NONE: Interest = Interest {
        readable: false,
        writable: false,
    };
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    pub const WRITABLE: Interest = Interest {
        readable: false,
        writable: true,
    };
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };

    #[must_use]
    pub fn is_none(self) -> bool {
        !self.readable && !self.writable
    }
}

/// One readiness report: the token given at registration and what the fd is ready for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub token: usize,
    pub readable: bool,
    pub writable: bool,
}

/// A readiness driver over one OS API. All methods take `&self`: registrations may change while
/// another thread is blocked in [`Driver::wait`].
#[derive(Debug)]
pub enum Driver {
    Epoll(epoll::Epoll),
}

impl Driver {
    /// Creates a driver of the given backend, with its [`Waker`] registered.
    pub fn new(backend: Backend) -> io::Result<Driver> {
        match backend {
            Backend::Epoll => Ok(Driver::Epoll(epoll::Epoll::new()?)),
        }
    }

    #[must_use]
    pub fn backend(&self) -> Backend {
        match self {
            Driver::Epoll(_) => Backend::Epoll,
        }
    }

    /// Starts watching `fd` for `interest`, reporting it as `token`.
    pub fn add(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.add(fd, token, interest),
        }
    }

    /// Changes what an added `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.modify(fd, token, interest),
        }
    }

    /// Stops watching `fd`. An fd that was closed meanwhile is not an error here: the kernel has
    /// already forgotten it, which is what the caller wanted.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.delete(fd),
        }
    }

    /// Waits until an fd is ready, the waker is woken or `timeout` passes (`None`: no limit), and
    /// replaces `events` with what is ready. An interrupted wait (`EINTR`) returns `Ok` with no
    /// events, so that the caller can run Python's signal handlers.
    pub fn wait(&self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        match self {
            Driver::Epoll(d) => d.wait(events, timeout),
        }
    }

    /// The waker that interrupts [`Driver::wait`] from any thread.
    #[must_use]
    pub fn waker(&self) -> &Arc<Waker> {
        match self {
            Driver::Epoll(d) => d.waker(),
        }
    }
}
