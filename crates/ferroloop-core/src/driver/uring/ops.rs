//! The completion model of the `io_uring` driver: operations whose results come back as
//! completions (multishot receives into the provided-buffer ring, multishot accepts, sends,
//! cancellation), and the buffers they hand out.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};

use super::{libc_msg_nosignal, push, timespec, transient, State, Uring, CANCEL_DATA, IOU_PBUF_RING_INC, OP_BIT};
use crate::driver::bufring::{self, BufRing};
use crate::driver::{BufRef, Completion};

impl Uring {
    fn push_op(&self, st: &mut State, sqe: &squeue::Entry) -> io::Result<()> {
        push(&self.ring, &mut st.sq, sqe)?;
        st.ops_in_flight += 1;
        Ok(())
    }

    /// Starts receiving on `fd` into the driver's provided buffers: a completion per arrival
    /// (`more` while it goes on), `result` 0 at EOF. Reported with `tag` (below bit 62).
    pub fn recv_multishot(&self, fd: RawFd, tag: u64) -> io::Result<()> {
        let mut st = self.lock();
        if st.bufs.is_none() {
            let mut bufs = BufRing::new()?;
            // SAFETY: the ring stays allocated (in the state) until the driver is dropped, after
            // every operation that could use it has ended (`drain_ops`).
            let register = |flags| unsafe {
                self.ring
                    .submitter()
                    .register_buf_ring_with_flags(bufs.addr(), bufring::ENTRIES, bufring::GROUP, flags)
            };
            // Incremental consumption where the kernel has it (6.12), else whole buffers.
            let incremental = register(IOU_PBUF_RING_INC).is_ok();
            if !incremental {
                register(0)?;
            }
            bufs.set_incremental(incremental);
            st.bufs = Some(bufs);
        }
        let sqe = opcode::RecvMulti::new(types::Fd(fd), bufring::GROUP)
            .build()
            .user_data(OP_BIT | tag);
        self.push_op(&mut st, &sqe)
    }

    /// Starts accepting on the listening socket `fd`: a completion per connection, its
    /// `result` the new fd (non-blocking, close-on-exec) or a negated errno.
    pub fn accept_multishot(&self, fd: RawFd, tag: u64) -> io::Result<()> {
        let flags = (rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC).bits() as i32;
        let sqe = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(flags)
            .build()
            .user_data(OP_BIT | tag);
        let mut st = self.lock();
        self.push_op(&mut st, &sqe)
    }

    /// Whether this kernel has what the completion model uses: multishot receives and accepts
    /// with provided-buffer rings (Linux 6.0). Older kernels keep the readiness model.
    #[must_use]
    pub fn completion_supported() -> bool {
        let release = rustix::system::uname();
        let release = release.release().to_string_lossy();
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse::<u32>().ok());
        matches!((parts.next(), parts.next()), (Some(major), Some(_)) if major >= 6)
    }

    /// Sends `len` bytes at `ptr` on `fd`; one completion says how many went.
    ///
    /// # Safety
    ///
    /// The memory must stay valid and unchanged until the completion with `tag` arrives (or the
    /// driver is dropped, which waits for it).
    pub unsafe fn send(&self, fd: RawFd, tag: u64, ptr: *const u8, len: usize) -> io::Result<()> {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc_msg_nosignal())
            .build()
            .user_data(OP_BIT | tag);
        let mut st = self.lock();
        self.push_op(&mut st, &sqe)
    }

    /// Asks the kernel to end the operation `tag`, at once; its last completion still comes
    /// (`ECANCELED`, or whatever it completed with first).
    pub fn cancel(&self, tag: u64) -> io::Result<()> {
        let sqe = opcode::AsyncCancel::new(OP_BIT | tag).build().user_data(CANCEL_DATA);
        {
            let mut st = self.lock();
            push(&self.ring, &mut st.sq, &sqe)?;
        }
        match self.ring.submit() {
            Err(e) if !transient(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Moves the completions reaped so far into `out`.
    pub fn take_completions(&self, out: &mut Vec<Completion>) {
        let mut st = self.lock();
        out.append(&mut st.completions);
    }

    /// True if completions wait to be taken.
    pub fn has_completions(&self) -> bool {
        !self.lock().completions.is_empty()
    }

    /// Copies bytes `from..` of provided buffer `bid` (a completion's, of `len` bytes) into `out`,
    /// as many as fit; the buffer stays ours (give it back with [`Uring::recycle`]). Returns the
    /// bytes copied.
    pub fn copy_out(&self, buf: BufRef, len: usize, from: usize, out: &mut [u8]) -> usize {
        let st = self.lock();
        let bufs = st.bufs.as_ref().expect("a completion with a buffer implies the ring");
        let data = &bufs.slice(buf, len)[from.min(len)..];
        let n = data.len().min(out.len());
        out[..n].copy_from_slice(&data[..n]);
        n
    }

    /// Whether the provided buffers are consumed incrementally (see `bufring`); false until the
    /// first receive registers them.
    pub fn incremental_buffers(&self) -> bool {
        self.lock().bufs.as_ref().is_some_and(BufRing::incremental)
    }

    /// Gives back a completion's part of a provided buffer (see [`BufRef`]).
    pub fn recycle(&self, buf: BufRef) {
        if let Some(bufs) = self.lock().bufs.as_mut() {
            bufs.recycle(buf);
        }
    }

    /// Cancels every operation in flight and waits (up to a second) for their last completions,
    /// so that no kernel write or read of their memory can follow. Completions reaped here are
    /// discarded. True if none is left in flight.
    pub fn drain_ops(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut cancelled = false;
        loop {
            let mut st = self.lock();
            if st.ops_in_flight == 0 {
                st.completions.clear();
                return true;
            }
            if !cancelled {
                let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(CANCEL_DATA);
                if push(&self.ring, &mut st.sq, &sqe).is_err() {
                    return false;
                }
                cancelled = true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let ts = timespec(deadline - now);
            let args = types::SubmitArgs::new().timespec(&ts);
            drop(st);
            match self.ring.submitter().submit_with_args(1, &args) {
                Err(e) if !transient(&e) => return false,
                _ => {}
            }
            let mut st = self.lock();
            let mut events = Vec::new();
            self.reap(&mut st, &mut events);
            st.completions.clear();
        }
    }
}
