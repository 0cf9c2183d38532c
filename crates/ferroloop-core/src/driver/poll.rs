//! The POSIX `poll` driver: level-triggered, a `pollfd` array rebuilt from the registrations on each wait.
//!
//! # Implementation
//!
//! The registrations live in a [`Mutex`]-guarded table: a `pollfd` array whose slot 0 is the
//! waker, the token of each slot, and an fd-to-slot index. [`Poll::wait`] copies the array into a
//! scratch buffer under the lock and calls `poll` on the copy with the lock released, so `add`,
//! `modify` and `delete` from another thread never wait for a blocked `poll`.
//!
//! A registration changed during a wait takes effect on the next wait. So that this next wait
//! comes at once, `add` and `modify` wake the driver's own waker when (and only when) a wait is in
//! progress: the blocked wait returns with no events and the caller's next wait sees the change. A
//! single-threaded loop, which never changes registrations while it waits, pays nothing for this.
//! After `poll` returns, ready fds are turned into tokens from the *current* table, under the lock:
//! an fd deleted during the wait is not reported, and its stale readiness cannot reach a token the
//! caller has meanwhile handed to another fd.
//!
//! Where this differs from epoll:
//! - a regular file is accepted (epoll refuses it with `EPERM`) and is always ready, as POSIX says;
//! - an fd closed while registered is not dropped by the kernel: `poll` flags it `POLLNVAL`, which
//!   is reported readable and writable to its token (as `selectors.PollSelector` does), so that the
//!   caller's next syscall on it fails with `EBADF` and it deletes the fd, rather than waits that
//!   return at once forever with nothing to show for it;
//! - a wait reports every ready fd, not at most a fixed batch.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use super::{borrow, check_open, timespec, Event, Interest};
use crate::waker::Waker;

/// The slot of the waker in every `pollfd` array; user registrations start after it.
const WAKER_SLOT: usize = 0;

/// The `poll` driver: the registrations and the waker (see the module docs).
pub struct Poll {
    table: Mutex<Table>,
    /// The array the current wait polls. Held for the whole wait; a second concurrent wait finds
    /// it taken and polls a fresh array instead, so waits never queue behind each other.
    scratch: Mutex<Vec<PollFd<'static>>>,
    waker: Arc<Waker>,
}

/// The registrations. `fds[i]` and `tokens[i]` describe one slot; `index` maps each registered fd
/// to its slot. Slot [`WAKER_SLOT`] is the waker, never in `index` and never moved.
struct Table {
    fds: Vec<PollFd<'static>>,
    tokens: Vec<usize>,
    index: HashMap<RawFd, usize>,
    /// How many waits are between taking their copy of `fds` and reading the result: a change
    /// while this is non-zero is not seen by them, so it wakes them.
    waiting: usize,
}

fn flags(interest: Interest) -> PollFlags {
    let mut f = PollFlags::empty();
    if interest.readable {
        f |= PollFlags::IN;
    }
    if interest.writable {
        f |= PollFlags::OUT;
    }
    f
}

impl Poll {
    /// A driver with nothing registered but a new waker.
    pub fn new() -> io::Result<Poll> {
        let waker = Arc::new(Waker::new()?);
        // SAFETY: the waker's eventfd stays open as long as `waker`, which this driver owns; the
        // `'static` borrow lives in the table and the scratch array, both dropped with the driver.
        let waker_fd = unsafe { BorrowedFd::borrow_raw(waker.raw_fd()) };
        let table = Table {
            fds: vec![PollFd::from_borrowed_fd(waker_fd, PollFlags::IN)],
            tokens: vec![usize::MAX],
            index: HashMap::new(),
            waiting: 0,
        };
        Ok(Poll {
            table: Mutex::new(table),
            scratch: Mutex::new(Vec::new()),
            waker,
        })
    }

    /// Locks the table. Nothing panics while holding it, so a poisoned lock still holds a
    /// consistent table.
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a wait that is blocked on an older copy of the table return, so the next one sees it.
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
        if fd == self.waker.raw_fd() || table.index.contains_key(&fd) {
            return Err(Errno::EXIST.into());
        }
        table.insert(fd, token, interest)?;
        self.changed(&table);
        Ok(())
    }

    /// [`Driver::modify`](super::Driver::modify) on this backend; an fd not added is added. Takes
    /// effect at the next wait; a wait in progress is woken.
    pub fn modify(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        check_open(fd)?;
        let mut table = self.lock();
        match table.index.get(&fd) {
            Some(&slot) => {
                table.fds[slot] = PollFd::from_borrowed_fd(borrow(fd)?, flags(interest));
                table.tokens[slot] = token;
            }
            // As epoll.rs: an fd unknown here (closed and reused since `add`) is added.
            None => table.insert(fd, token, interest)?,
        }
        self.changed(&table);
        Ok(())
    }

    /// [`Driver::delete`](super::Driver::delete) on this backend.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        borrow(fd)?; // a negative fd is EBADF, as with epoll
        let mut table = self.lock();
        if let Some(slot) = table.index.remove(&fd) {
            table.fds.swap_remove(slot);
            table.tokens.swap_remove(slot);
            if let Some(moved) = table.fds.get(slot) {
                let moved = moved.as_fd().as_raw_fd();
                table.index.insert(moved, slot);
            }
        }
        // NOTE: no wake: a wait still watching the fd reports nothing for it once it is gone from
        // the table.
        Ok(())
    }

    /// [`Driver::wait`](super::Driver::wait) on this backend, appending what is ready to `out`.
    pub fn wait(&self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        let ts = timespec(timeout);
        let mut own = Vec::new();
        let mut shared = self.scratch.try_lock().ok();
        let fds = shared.as_deref_mut().unwrap_or(&mut own);
        {
            let mut table = self.lock();
            fds.clear();
            fds.extend_from_slice(&table.fds);
            table.waiting += 1;
        }
        let result = rustix::event::poll(fds, ts.as_ref());
        let mut table = self.lock();
        table.waiting -= 1;
        match result {
            Ok(0) | Err(Errno::INTR) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        if !fds[WAKER_SLOT].revents().is_empty() {
            self.waker.drain();
        }
        for pfd in &fds[WAKER_SLOT + 1..] {
            let f = pfd.revents();
            if f.is_empty() {
                continue;
            }
            let Some(&slot) = table.index.get(&pfd.as_fd().as_raw_fd()) else {
                continue; // deleted during the wait
            };
            out.push(Event {
                token: table.tokens[slot],
                edge: false,
                // As selectors.PollSelector: any condition but OUT wakes a reader, any but IN a
                // writer, so ERR, HUP and NVAL (fd closed behind our back) wake both.
                readable: !(f - PollFlags::OUT).is_empty(),
                writable: !(f - PollFlags::IN).is_empty(),
            });
        }
        Ok(())
    }

    /// The waker registered with this driver.
    pub fn waker(&self) -> &Arc<Waker> {
        &self.waker
    }
}

impl Table {
    fn insert(&mut self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        self.fds.push(PollFd::from_borrowed_fd(borrow(fd)?, flags(interest)));
        self.tokens.push(token);
        self.index.insert(fd, self.fds.len() - 1);
        Ok(())
    }
}

impl fmt::Debug for Poll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poll")
            .field("registered", &self.lock().index.len())
            .field("waker", &self.waker)
            .finish_non_exhaustive()
    }
}
