//! The Linux `io_uring` driver: readiness for registrations (a one-shot `POLL_ADD` each, re-armed
//! on the wait after it is reported) and operations for the completion model (multishot receives
//! into a provided-buffer ring, sends, multishot accepts).
//!
//! The readiness half gives `add_reader`/`add_writer` semantics identical to the other drivers,
//! so every loop API runs on it; the completion half is what stream transports and listeners use
//! on this backend (`ops.rs`).
//!
//! # Why one-shot polls, not multishot
//!
//! A multishot `POLL_ADD` (`IORING_POLL_ADD_MULTI`) posts a CQE each time the file's wait queue
//! is woken, not on each wait while the file stays ready. Measured on Linux 6.18: with one unread
//! byte in a socket, a multishot poll gave one CQE, then two 100 ms waits ended in `ETIME`; a second
//! write gave a second CQE. That is edge-triggered, like `EPOLLET`, and asyncio's `add_reader` is
//! level-triggered. A one-shot `POLL_ADD` checks the file's state when it is armed (`vfs_poll`) and
//! completes inline if the file is ready, so re-arming each reported registration at the start of
//! the next wait reports an fd that stays readable on every wait (three re-arms of that socket
//! gave three CQEs, each within 5 µs). The re-arms cost one SQE each and no syscall: they go to
//! the kernel with the wait's own `io_uring_enter`. The waker's eventfd is a true edge source
//! (every wake that matters writes to it), so it keeps one multishot poll for the driver's life.
//!
//! # Implementation
//!
//! The submission and completion queues are used only under the [`Mutex`] that guards the
//! registrations (`State`, whose `SqLock` field is the proof `push` asks for). [`Uring::wait`]
//! queues the polls to arm under the lock, calls `io_uring_enter` (submit, then wait for one CQE
//! or the timeout through `IORING_ENTER_EXT_ARG`) with the lock released, and reaps under the lock.
//!
//! A poll's `user_data` is its registration's generation and fd (`gen << 32 | fd`); bit 63 marks
//! the driver's own requests. `add` and `modify` give a new generation, so the CQE of a poll that
//! was removed or replaced is ignored: stale readiness never reaches a token the caller reused.
//!
//! As in `poll.rs`, `add` and `modify` take effect on the next wait, and wake a wait in progress so
//! that the next one comes at once; `modify` of an armed registration queues a `POLL_REMOVE`.
//! `delete` of an armed one submits its `POLL_REMOVE` at once, since an armed poll holds a
//! reference to the file: a caller that deletes and closes the fd expects the file to close (the
//! peer to see EOF) as after `epoll_ctl(DEL)`. Deleting after a report costs no syscall.
//!
//! `io_uring` completes a poll as task work of the thread that submitted it, normally the waiting
//! loop thread; a poll that the kernel cancels (`ECANCELED`: its submitter exited) is re-armed.
//!
//! # Where this differs from epoll
//!
//! - A regular file is accepted and always ready: `POLL_ADD` completes at once with `IN|OUT`, the
//!   kernel's default mask for files without a poll method, as `poll` and `select` report it.
//! - An fd closed while its poll is armed: the poll keeps the file open (the peer does not see EOF)
//!   and reports for it until `delete` or `modify` removes it. epoll drops the registration when
//!   the file closes. `modify` always re-arms, so that a number reused by a new file gets watched.
//! - An fd closed before its poll is armed: the poll fails with `EBADF` and the registration goes
//!   quiet, as epoll's does, until `modify` re-arms it or `delete` forgets it.
//! - After `fork` the ring is shared with the child, as an epoll fd is.
//!
//! # Probe
//!
//! [`Uring::new`] fails with an error saying why and naming epoll as the alternative when
//! `io_uring_setup` is refused (`kernel.io_uring_disabled`, a seccomp filter, a kernel without
//! `io_uring`), when the kernel lacks `IORING_FEAT_EXT_ARG` (Linux 5.11), or when a multishot poll of
//! the readable waker does not complete with `IORING_CQE_F_MORE` (Linux 5.13).
//!
//! # The completion model
//!
//! Beside the polls, the ring carries *operations* for transports ([`Uring::recv_multishot`],
//! [`Uring::send`], [`Uring::cancel`]): their `user_data` is bit 62 plus the caller's tag, and
//! their CQEs are kept as [`Completion`]s for the caller to take after the wait
//! ([`Uring::take_completions`]). A multishot receive picks its buffers from a provided-buffer
//! ring (`bufring`), registered on first use; the caller copies the data out
//! and gives the buffer back ([`Uring::copy_out`], [`Uring::recycle`]). Operations are submitted with the next
//! wait's `io_uring_enter`, so queueing one costs no syscall; a cancel is submitted at once, so
//! that the file it holds is released when the caller closes its fd.
//!
//! The memory an operation uses must outlive it: the caller keeps a send's bytes until the send's
//! last CQE, and the driver keeps the buffer ring until every operation has ended — dropping the
//! driver cancels what is in flight and waits for it ([`Uring::drain_ops`]).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use rustix::event::PollFlags;
use rustix::io::Errno;

use super::bufring::BufRing;
use super::BufRef;

/// `IOU_PBUF_RING_INC`: the flag that registers a buffer ring for incremental consumption.
const IOU_PBUF_RING_INC: u16 = 2;
use super::{borrow, check_open, Completion, Event, Interest};
use crate::waker::Waker;

mod ops;

/// Submission queue entries. A wait arms at most one poll per reported fd; more than this many are
/// pushed in batches, each submitted when the queue fills.
const SQ_ENTRIES: u32 = 256;
/// Completion queue entries: the most events one wait reports. The kernel keeps the overflow
/// (`IORING_FEAT_NODROP`) and hands it over on the next wait.
const CQ_ENTRIES: u32 = 1024;
/// `user_data` of the waker's multishot poll.
const WAKER_DATA: u64 = u64::MAX;
/// `user_data` of every `POLL_REMOVE`: its own CQE says nothing we need.
const REMOVE_DATA: u64 = u64::MAX - 1;
/// `user_data` of every `ASYNC_CANCEL`.
const CANCEL_DATA: u64 = u64::MAX - 2;
/// Bit of an operation's `user_data`; the bits below it are the caller's tag.
const OP_BIT: u64 = 1 << 62;
/// Generations use 30 bits, so a registration's `user_data` never has bit 62 or 63 set.
const GEN_MASK: u32 = 0x3FFF_FFFF;

/// The `io_uring` driver: the ring, the registrations and operations behind its state lock, and the
/// waker (see the module docs).
pub struct Uring {
    ring: IoUring,
    state: Mutex<State>,
    waker: Arc<Waker>,
}

/// Proof that the state lock is held: the submission and completion queues are used only with it.
#[derive(Default)]
struct SqLock;

/// The registrations and what the kernel holds for them.
#[derive(Default)]
struct State {
    regs: HashMap<RawFd, Reg>,
    /// fds whose registration is [`Arm::Queued`], to arm at the start of the next wait. May name
    /// fds deleted or re-armed since; those are skipped.
    queued: Vec<RawFd>,
    /// False until the waker's multishot poll is in the ring, and again when the kernel ends it.
    waker_armed: bool,
    /// How many waits are inside `io_uring_enter`: a registration queued now is not armed by
    /// them, so it wakes them.
    waiting: usize,
    /// The last generation handed out.
    gen: u32,
    sq: SqLock,
    /// CQEs of operations, for the caller to take after the wait.
    completions: Vec<Completion>,
    /// Operations in the ring that have not posted their last CQE.
    ops_in_flight: usize,
    /// The provided buffers of multishot receives, once the first one was asked for.
    bufs: Option<BufRing>,
}

#[derive(Clone, Copy, Debug)]
struct Reg {
    token: usize,
    interest: Interest,
    gen: u32,
    arm: Arm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    /// No poll in the kernel; one is armed at the next wait.
    Queued,
    /// A poll with this registration's generation is in the ring and has not completed.
    Armed,
    /// Arming failed with `EBADF`: the fd was closed. Quiet until `modify`.
    Closed,
}

fn flags(interest: Interest) -> PollFlags {
    let mut f = PollFlags::empty();
    f.set(PollFlags::IN, interest.readable);
    f.set(PollFlags::OUT, interest.writable);
    f
}

fn reg_data(fd: RawFd, gen: u32) -> u64 {
    (u64::from(gen) << 32) | u64::from(fd as u32)
}

/// `flags` as the 32-bit mask of `IORING_OP_POLL_ADD`. (rustix's bits are a `u16` on its
/// `linux_raw` backend and a C `short` on its libc one, which Miri uses.)
#[allow(clippy::cast_sign_loss, clippy::unnecessary_cast)]
fn poll_mask(flags: PollFlags) -> u32 {
    u32::from(flags.bits() as u16)
}

fn poll_sqe(fd: RawFd, reg: &Reg) -> squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd), poll_mask(flags(reg.interest)))
        .build()
        .user_data(reg_data(fd, reg.gen))
}

fn remove_sqe(fd: RawFd, gen: u32) -> squeue::Entry {
    opcode::PollRemove::new(reg_data(fd, gen))
        .build()
        .user_data(REMOVE_DATA)
}

/// A wait's timeout for `IORING_ENTER_EXT_ARG`: nanoseconds as given (the kernel waits on an
/// hrtimer, so never less), seconds capped where the kernel's signed `tv_sec` ends.
fn timespec(d: Duration) -> types::Timespec {
    types::Timespec::new()
        .sec(d.as_secs().min(i64::MAX as u64))
        .nsec(d.subsec_nanos())
}

/// Errors of `io_uring_enter` that leave nothing to report: a signal, the timeout, and a full
/// completion queue (`EBUSY`, `EAGAIN`) that reaping makes room in. What was not submitted stays
/// queued for the next call.
fn transient(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::INTR | Errno::TIME | Errno::BUSY | Errno::AGAIN)
    )
}

/// Queues `sqe`, first submitting the queue if it is full.
fn push(ring: &IoUring, _held: &mut SqLock, sqe: &squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: `_held` proves the state lock is held, and `SubmissionQueue`s are made here and
        // nowhere else, each dropped (publishing the tail) before this returns. The
        // entries are POLL_ADD and POLL_REMOVE, which carry an fd and a `user_data`, no pointer
        // the kernel could read after the call.
        if unsafe { ring.submission_shared().push(sqe) }.is_ok() {
            return Ok(());
        }
        if ring.submit()? == 0 {
            return Err(Errno::BUSY.into()); // the kernel takes nothing: do not spin
        }
    }
}

impl Uring {
    /// A ring with the waker's multishot poll armed, or an error saying why this kernel cannot run
    /// the driver (see "Probe" in the module docs).
    pub fn new() -> io::Result<Uring> {
        // COOP_TASKRUN (Linux 5.19): completions are processed when the loop next enters the
        // ring (every iteration does), instead of interrupting it wherever it runs. Without it,
        // each completion while the loop ran Python cost a signal-style task-work notification:
        // 78% of the server's CPU on `tcp proto 1KiB` (perf), in the sighand lock of
        // `get_signal` after every send. Older kernels refuse the flag: they get a plain ring.
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_coop_taskrun()
            .build(SQ_ENTRIES)
            .or_else(|_| IoUring::builder().setup_cqsize(CQ_ENTRIES).build(SQ_ENTRIES))
            .map_err(|e| refused(&e, sysctl().as_deref()))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(unsupported(
                "the kernel lacks IORING_FEAT_EXT_ARG (a wait with a timeout, Linux 5.11)",
            ));
        }
        let driver = Uring {
            ring,
            state: Mutex::new(State::default()),
            waker: Arc::new(Waker::new()?),
        };
        driver.probe_multishot()?;
        Ok(driver)
    }

    /// Arms the waker's multishot poll with the waker readable, and checks the CQE: a kernel
    /// without `IORING_POLL_ADD_MULTI` fails the poll with `EINVAL`, which only shows there.
    fn probe_multishot(&self) -> io::Result<()> {
        self.waker.wake()?;
        {
            let mut st = self.lock();
            self.arm_waker(&mut st)?;
        }
        let ts = timespec(Duration::from_secs(1));
        let args = types::SubmitArgs::new().timespec(&ts);
        let cqe = loop {
            match self.ring.submitter().submit_with_args(1, &args) {
                Err(e) if Errno::from_io_error(&e) == Some(Errno::INTR) => {}
                Err(e) if !transient(&e) => return Err(e),
                _ => {
                    let _st = self.lock();
                    // SAFETY: the only `CompletionQueue`s are made under the state lock (held by
                    // `_st`) and dropped, publishing the head, before it is released.
                    break unsafe { self.ring.completion_shared() }.next();
                }
            }
        };
        match cqe {
            Some(c) if c.user_data() == WAKER_DATA && c.result() > 0 && cqueue::more(c.flags()) => {
                self.waker.drain();
                Ok(())
            }
            Some(c) if c.result() < 0 => Err(unsupported(&format!(
                "a multishot POLL_ADD failed with {} (IORING_POLL_ADD_MULTI needs Linux 5.13)",
                io::Error::from_raw_os_error(-c.result())
            ))),
            _ => Err(unsupported(
                "a multishot POLL_ADD of a readable eventfd did not report it",
            )),
        }
    }

    /// Locks the state. Nothing panics while holding it, so a poisoned lock still holds a
    /// consistent state.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn arm_waker(&self, st: &mut State) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(types::Fd(self.waker.raw_fd()), poll_mask(PollFlags::IN))
            .multi(true)
            .build()
            .user_data(WAKER_DATA);
        push(&self.ring, &mut st.sq, &sqe)?;
        st.waker_armed = true;
        Ok(())
    }

    /// Makes a wait in `io_uring_enter` return, so that the next one arms what was just queued.
    fn changed(&self, st: &State) {
        if st.waiting > 0 {
            // NOTE: a failure would only delay the change to whenever the wait returns anyway; the
            // registration itself succeeded, so it is not reported.
            let _ = self.waker.wake();
        }
    }

    /// [`Driver::add`](super::Driver::add) on this backend. The poll is armed by the next wait; a
    /// wait in progress is woken.
    pub fn add(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        check_open(fd)?; // EBADF now, as epoll_ctl; the poll itself would only fail at the wait
        let mut st = self.lock();
        if fd == self.waker.raw_fd() || st.regs.contains_key(&fd) {
            return Err(Errno::EXIST.into());
        }
        st.insert(fd, token, interest);
        self.changed(&st);
        Ok(())
    }

    /// [`Driver::modify`](super::Driver::modify) on this backend; an fd not added is added. Always
    /// re-arms, even with the same interest, so that a reused fd number is watched.
    pub fn modify(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        check_open(fd)?;
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(reg) = st.regs.get_mut(&fd) else {
            // As epoll.rs: an fd unknown here (closed and reused since `add`) is added.
            st.insert(fd, token, interest);
            self.changed(st);
            return Ok(());
        };
        // NOTE: re-armed even if nothing changed: the armed poll may watch a file whose fd was
        // closed and whose number now names the file the caller means.
        if reg.arm == Arm::Armed {
            push(&self.ring, &mut st.sq, &remove_sqe(fd, reg.gen))?;
        }
        if reg.arm != Arm::Queued {
            st.queued.push(fd);
        }
        st.gen = st.gen.wrapping_add(1) & GEN_MASK;
        (reg.token, reg.interest, reg.gen, reg.arm) = (token, interest, st.gen, Arm::Queued);
        self.changed(st);
        Ok(())
    }

    /// [`Driver::delete`](super::Driver::delete) on this backend. An armed poll is removed at once:
    /// it holds the file open.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        borrow(fd)?; // a negative fd is EBADF, as with epoll
        let mut st = self.lock();
        let Some(reg) = st.regs.remove(&fd) else {
            return Ok(());
        };
        if reg.arm == Arm::Armed {
            push(&self.ring, &mut st.sq, &remove_sqe(fd, reg.gen))?;
            // Submitted now: the armed poll holds the file open (module docs).
            match self.ring.submit() {
                Err(e) if !transient(&e) => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// [`Driver::wait`](super::Driver::wait) on this backend: arms the queued polls, waits, and
    /// appends what is ready to `out`. Operations' completions are kept for
    /// [`Uring::take_completions`].
    pub fn wait(&self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut timeout = timeout;
        loop {
            {
                let mut st = self.lock();
                self.arm_queued(&mut st)?;
                st.waiting += 1;
            }
            let ts = timeout.map(timespec);
            let args = match &ts {
                Some(ts) => types::SubmitArgs::new().timespec(ts),
                None => types::SubmitArgs::new(),
            };
            // NOTE: the lock is released here: `Submitter` reads the queue's head and tail
            // atomically, and the kernel takes entries up to the tail it reads, so a push meanwhile
            // is safe (it is submitted now or by the next wait).
            // A zero timeout only collects what is there: `min_complete` 0 runs the pending task
            // work (completions) and returns. Asking for one completion with a zero timeout instead
            // took 50 µs per call on 6.18 with COOP_TASKRUN (an hrtimer armed and expired).
            let result = if timeout == Some(Duration::ZERO) {
                self.ring.submitter().submit_and_wait(0)
            } else {
                self.ring.submitter().submit_with_args(1, &args)
            };
            let mut st = self.lock();
            st.waiting -= 1;
            match result {
                Err(e) if Errno::from_io_error(&e) == Some(Errno::INTR) => return Ok(()),
                Err(e) if !transient(&e) => return Err(e),
                _ => {}
            }
            // NOTE: the polls a thread submitted end with ECANCELED once it has exited (measured
            // on 6.18: at the file's next wake-up). They are re-armed, and if nothing else
            // happened the wait goes on rather than return with nothing to show.
            if !self.reap(&mut st, out) {
                return Ok(());
            }
            if let Some(deadline) = deadline {
                timeout = Some(deadline.saturating_duration_since(Instant::now()));
            }
        }
    }

    /// Arms the waker if the kernel ended its poll, and a poll for each queued registration.
    fn arm_queued(&self, st: &mut State) -> io::Result<()> {
        if !st.waker_armed {
            self.arm_waker(st)?;
        }
        let State { regs, queued, sq, .. } = st;
        let mut done = 0;
        let mut result = Ok(());
        for &fd in queued.iter() {
            if let Some(reg) = regs.get_mut(&fd).filter(|r| r.arm == Arm::Queued) {
                if let Err(e) = push(&self.ring, sq, &poll_sqe(fd, reg)) {
                    // A full ring that the kernel takes nothing from: wait and reap first.
                    result = if transient(&e) { Ok(()) } else { Err(e) };
                    break;
                }
                reg.arm = Arm::Armed;
            }
            done += 1;
        }
        queued.drain(..done); // what was not pushed stays queued
        result
    }

    /// Turns the CQEs in the ring into events and queues the reported registrations for re-arming.
    /// True if all there was is polls the kernel cancelled (queued too): no event, no wake.
    fn reap(&self, st: &mut State, out: &mut Vec<Event>) -> bool {
        let (mut cancelled, mut woken) = (false, false);
        // SAFETY: the only `CompletionQueue`s are made under the state lock (`st` borrows it) and
        // dropped, publishing the head, before it is released.
        let cq = unsafe { self.ring.completion_shared() };
        out.reserve(cq.len());
        for cqe in cq {
            match cqe.user_data() {
                WAKER_DATA => {
                    // No F_MORE: the kernel ended the multishot poll (an overflow, a cancel).
                    st.waker_armed &= cqueue::more(cqe.flags());
                    if cqe.result() < 0 {
                        // NOTE: not drained: the wake that ran into the cancel must still end this
                        // wait, through the re-armed poll.
                        cancelled = true;
                    } else {
                        self.waker.drain();
                        woken = true;
                    }
                }
                REMOVE_DATA | CANCEL_DATA => {}
                data if data & OP_BIT != 0 => {
                    let more = cqueue::more(cqe.flags());
                    st.ops_in_flight -= usize::from(!more);
                    let len = usize::try_from(cqe.result()).unwrap_or(0);
                    let buffer = cqueue::buffer_select(cqe.flags()).map(|bid| match st.bufs.as_mut() {
                        Some(bufs) => bufs.consume(bid, len, cqueue::buffer_more(cqe.flags())),
                        None => BufRef { bid, offset: 0 },
                    });
                    st.completions.push(Completion {
                        tag: data & !OP_BIT,
                        result: cqe.result(),
                        more,
                        buffer,
                    });
                }
                data => {
                    let (fd, gen) = (data as u32 as RawFd, (data >> 32) as u32);
                    let Some(reg) = st.regs.get_mut(&fd) else {
                        continue; // deleted
                    };
                    if reg.gen != gen || reg.arm != Arm::Armed {
                        continue; // replaced by `modify`, or deleted and added again
                    }
                    let res = cqe.result();
                    if res == -Errno::BADF.raw_os_error() {
                        reg.arm = Arm::Closed;
                        continue;
                    }
                    reg.arm = Arm::Queued;
                    st.queued.push(fd);
                    if res == -Errno::CANCELED.raw_os_error() {
                        cancelled = true; // not readiness: re-armed, and reported if ready
                        continue;
                    }
                    // Any other error is reported to both sides, as POLLERR, so that the caller's
                    // next syscall on the fd says what it is.
                    let f = PollFlags::from_bits_retain(if res < 0 { !0 } else { res as _ });
                    out.push(Event {
                        token: reg.token,
                        edge: false,
                        // As selectors.EpollSelector: any condition but OUT wakes a reader, any but
                        // IN a writer.
                        readable: !(f - PollFlags::OUT).is_empty(),
                        writable: !(f - PollFlags::IN).is_empty(),
                    });
                }
            }
        }
        cancelled && !woken && out.is_empty() && st.completions.is_empty()
    }

    /// The waker registered with this driver.
    pub fn waker(&self) -> &Arc<Waker> {
        &self.waker
    }
}

impl State {
    fn insert(&mut self, fd: RawFd, token: usize, interest: Interest) {
        self.gen = self.gen.wrapping_add(1) & GEN_MASK;
        let reg = Reg {
            token,
            interest,
            gen: self.gen,
            arm: Arm::Queued,
        };
        self.regs.insert(fd, reg);
        self.queued.push(fd);
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        if !self.drain_ops() {
            // Something is still in flight after a second: the kernel may yet write into the
            // provided buffers, so they are leaked rather than freed.
            std::mem::forget(self.lock().bufs.take());
        }
    }
}

/// `MSG_NOSIGNAL`: a send to a closed peer fails with `EPIPE` instead of raising `SIGPIPE`.
fn libc_msg_nosignal() -> i32 {
    rustix::net::SendFlags::NOSIGNAL.bits() as i32
}

impl fmt::Debug for Uring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uring")
            .field("registered", &self.lock().regs.len())
            .field("waker", &self.waker)
            .finish_non_exhaustive()
    }
}

/// `kernel.io_uring_disabled`, if this kernel has it (Linux 6.6+).
fn sysctl() -> Option<String> {
    let s = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()?;
    Some(s.trim().to_owned())
}

/// An error for a kernel that has `io_uring` but not what this driver needs.
fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("io_uring backend unavailable: {what}; use the epoll backend instead"),
    )
}

/// Explains why `io_uring_setup` failed, given `kernel.io_uring_disabled` (if readable).
fn refused(err: &io::Error, sysctl: Option<&str>) -> io::Error {
    let why = match (Errno::from_io_error(err), sysctl) {
        (Some(Errno::PERM), Some("2")) => "disabled by the sysctl kernel.io_uring_disabled=2",
        (Some(Errno::PERM), Some("1")) => {
            "the sysctl kernel.io_uring_disabled=1 allows it only to the group kernel.io_uring_group"
        }
        (Some(Errno::PERM), _) => "not permitted, most likely by a seccomp filter (as in containers)",
        (Some(Errno::NOSYS), _) => "no io_uring_setup: a kernel before 5.1 or without CONFIG_IO_URING, or seccomp",
        _ => "io_uring_setup failed",
    };
    io::Error::new(
        err.kind(),
        format!("io_uring backend unavailable: {why} (io_uring_setup: {err}); use the epoll backend instead"),
    )
}

#[cfg(test)]
mod tests;
