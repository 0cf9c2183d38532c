//! The POSIX `select` driver: level-triggered, with fd sets sized to the highest fd instead of `FD_SETSIZE`.
//!
//! # Implementation
//!
//! The registrations live in a [`Mutex`]-guarded table: each fd's token and interest, and the read
//! and write fd sets kept in step with them (the read set also holds the waker). [`Select::wait`]
//! copies both sets into scratch buffers under the lock and calls `select` on the copies with the
//! lock released. A change during a wait takes effect on the next wait, which `add` and `modify`
//! bring on at once by waking the driver's waker while a wait is in progress, exactly as in
//! `poll.rs`; ready fds are turned into tokens from the current table, so an fd deleted during the
//! wait is not reported.
//!
//! # `FD_SETSIZE`
//!
//! A C `fd_set` holds fds below `FD_SETSIZE` (1024), and `FD_SET` on a higher fd writes past it.
//! This driver never uses that type: the sets are `Vec`s of rustix's [`FdSetElement`], grown to
//! hold the highest registered fd, and Linux's `select` takes any `nfds`. So an fd above 1024 is
//! watched like any other; what grows is the cost of a wait, O(highest fd) instead of O(ready).
//! (Python's `selectors.SelectSelector` raises `ValueError` there instead.)
//!
//! Where this differs from epoll:
//! - readiness comes from the sets an fd was registered in: an error or hang-up shows as readable
//!   to a reader and as writable to a writer (the kernel marks both sets), never as both;
//! - a regular file is accepted (epoll refuses it with `EPERM`) and is always ready;
//! - one closed fd makes the whole `select` fail with `EBADF`; the driver then finds the closed
//!   registered fds and reports each readable and writable to its token, so the caller's next
//!   syscall fails and it deletes the fd (as `poll.rs` does for `POLLNVAL`).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::event::{fd_set_bound, fd_set_insert, fd_set_num_elements, fd_set_remove, FdSetElement, FdSetIter};
use rustix::io::Errno;

use super::{borrow, check_open, timespec, Event, Interest};
use crate::waker::Waker;

/// The `select` driver: the registrations, their fd sets and the waker (see the module docs).
pub struct Select {
    table: Mutex<Table>,
    /// The read and write sets the current wait passes to `select`. Held for the whole wait; a
    /// second concurrent wait finds it taken and uses fresh sets, so waits never queue.
    scratch: Mutex<Sets>,
    waker: Arc<Waker>,
}

/// A read set and a write set, always of the same length (rustix asserts both cover `nfds`).
#[derive(Default)]
struct Sets {
    read: Vec<FdSetElement>,
    write: Vec<FdSetElement>,
}

/// The registrations and the sets that watch them.
struct Table {
    /// Each registered fd's token and interest; the waker is not here.
    regs: HashMap<RawFd, (usize, Interest)>,
    /// `read` holds the waker and every fd with readable interest, `write` every fd with writable
    /// interest.
    sets: Sets,
    /// How many waits are between copying `sets` and reading the result (see `poll.rs`).
    waiting: usize,
}

impl Sets {
    /// Makes both sets long enough to hold `fd`.
    fn reserve(&mut self, fd: RawFd) {
        let len = fd_set_num_elements(0, fd + 1);
        if self.read.len() < len {
            self.read.resize(len, FdSetElement::default());
            self.write.resize(len, FdSetElement::default());
        }
    }

    /// Puts `fd` in the sets `interest` asks for and takes it out of the others.
    fn set(&mut self, fd: RawFd, interest: Interest) {
        self.reserve(fd);
        for (set, wanted) in [
            (&mut self.read, interest.readable),
            (&mut self.write, interest.writable),
        ] {
            if wanted {
                fd_set_insert(set, fd);
            } else {
                fd_set_remove(set, fd);
            }
        }
    }

    /// The `nfds` argument for these sets: one more than the highest fd in either.
    fn bound(&self) -> RawFd {
        fd_set_bound(&self.read).max(fd_set_bound(&self.write))
    }

    fn copy_from(&mut self, other: &Sets) {
        self.read.clear();
        self.read.extend_from_slice(&other.read);
        self.write.clear();
        self.write.extend_from_slice(&other.write);
    }
}

impl Select {
    /// A driver with nothing registered but a new waker.
    pub fn new() -> io::Result<Select> {
        let waker = Arc::new(Waker::new()?);
        let mut table = Table {
            regs: HashMap::new(),
            sets: Sets::default(),
            waiting: 0,
        };
        table.sets.set(waker.raw_fd(), Interest::READABLE);
        Ok(Select {
            table: Mutex::new(table),
            scratch: Mutex::new(Sets::default()),
            waker,
        })
    }

    /// Locks the table. Nothing panics while holding it, so a poisoned lock still holds a
    /// consistent table.
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a wait that is blocked on older sets return, so that the next one sees the change.
    fn changed(&self, table: &Table) {
        if table.waiting > 0 {
            // NOTE: a failure would only delay the change to whenever the wait returns anyway; the
            // registration itself succeeded, so it is not reported.
            let _ = self.waker.wake();
        }
    }

    /// [`Driver::add`](super::Driver::add) on this backend. Takes effect at the next wait; a wait in
    /// progress is woken.
    pub fn add(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        check_open(fd)?;
        let mut table = self.lock();
        if fd == self.waker.raw_fd() || table.regs.contains_key(&fd) {
            return Err(Errno::EXIST.into());
        }
        table.regs.insert(fd, (token, interest));
        table.sets.set(fd, interest);
        self.changed(&table);
        Ok(())
    }

    /// [`Driver::modify`](super::Driver::modify) on this backend; an fd not added is added. Takes
    /// effect at the next wait; a wait in progress is woken.
    pub fn modify(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        check_open(fd)?;
        // As epoll.rs: an fd unknown here (closed and reused since `add`) is added.
        let mut table = self.lock();
        table.regs.insert(fd, (token, interest));
        table.sets.set(fd, interest);
        self.changed(&table);
        Ok(())
    }

    /// [`Driver::delete`](super::Driver::delete) on this backend.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        borrow(fd)?; // a negative fd is EBADF, as with epoll
        let mut table = self.lock();
        if table.regs.remove(&fd).is_some() {
            table.sets.set(fd, Interest::NONE);
        }
        Ok(())
    }

    /// [`Driver::wait`](super::Driver::wait) on this backend, appending what is ready to `out`.
    pub fn wait(&self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        let ts = timespec(timeout);
        let mut own = Sets::default();
        let mut shared = self.scratch.try_lock().ok();
        let sets = shared.as_deref_mut().unwrap_or(&mut own);
        let nfds = {
            let mut table = self.lock();
            sets.copy_from(&table.sets);
            table.waiting += 1;
            table.sets.bound()
        };
        // SAFETY: both sets hold `fd_set_num_elements(0, nfds)` elements or more (they are copies
        // of sets grown to their highest fd), which is all `select` reads or writes. The fds in
        // them are open by the registration contract; one that is not makes `select` fail with
        // EBADF without touching memory, which is handled below.
        let result =
            unsafe { rustix::event::select(nfds, Some(&mut sets.read), Some(&mut sets.write), None, ts.as_ref()) };
        let mut table = self.lock();
        table.waiting -= 1;
        match result {
            Ok(0) | Err(Errno::INTR) => return Ok(()),
            Ok(_) => {}
            Err(Errno::BADF) => {
                report_closed(&table, out);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        // Both sets list their fds in increasing order: merge them into one event per fd.
        let mut read = FdSetIter::new(&sets.read).peekable();
        let mut write = FdSetIter::new(&sets.write).peekable();
        loop {
            let fd = match (read.peek(), write.peek()) {
                (None, None) => break,
                (Some(&r), Some(&w)) => r.min(w),
                (Some(&fd), None) | (None, Some(&fd)) => fd,
            };
            let readable = read.next_if_eq(&fd).is_some();
            let writable = write.next_if_eq(&fd).is_some();
            if fd == self.waker.raw_fd() {
                self.waker.drain();
                continue;
            }
            let Some(&(token, _)) = table.regs.get(&fd) else {
                continue; // deleted during the wait
            };
            out.push(Event {
                token,
                edge: false,
                readable,
                writable,
            });
        }
        Ok(())
    }

    /// The waker registered with this driver.
    pub fn waker(&self) -> &Arc<Waker> {
        &self.waker
    }
}

/// Reports every registered fd that is closed as readable and writable, after `select` failed
/// with `EBADF`. Finding none (the fd was deleted, or its number reused, since the wait began)
/// reports nothing; the next wait uses the current sets.
fn report_closed(table: &Table, out: &mut Vec<Event>) {
    for (&fd, &(token, _)) in &table.regs {
        if matches!(check_open(fd), Err(e) if e.raw_os_error() == Some(Errno::BADF.raw_os_error())) {
            out.push(Event {
                token,
                edge: false,
                readable: true,
                writable: true,
            });
        }
    }
}

impl fmt::Debug for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Select")
            .field("registered", &self.lock().regs.len())
            .field("waker", &self.waker)
            .finish_non_exhaustive()
    }
}
