//! Stream transports in the completion model (the `io_uring` backend): the same transport, the
//! same callbacks, with reads and queued writes done by the kernel as operations.
//!
//! - Reading is one multishot receive into the driver's provided buffers, started when the
//!   transport starts reading and cancelled when it pauses or closes. Each completion's data is
//!   copied into a `bytes` (the buffer goes straight back to the kernel) and given to the protocol
//!   as a readiness read would be. What completes after `pause_reading` (the receive is cancelled,
//!   but data already received still arrives) is held, in order, and given on `resume_reading`.
//! - A write is still tried at once with `send`; what the kernel does not take is queued as
//!   before and sent by a send operation of the first queued chunk, which keeps the `bytes` alive
//!   (in the loop's operation table) until its completion, even if the transport is aborted.
//! - Closing cancels what is in flight; the socket is closed as before, and the kernel lets go of
//!   the file when the cancels complete.
//!
//! Every callback order, error message and flow-control rule is the readiness path's (`mod.rs`);
//! the whole test suite runs on this model with `FERROLOOP_BACKEND=io_uring`.

use std::collections::VecDeque;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rustix::io::Errno;

use super::read::{protocol_buffer_error, ReadStep};
use super::{State, StreamTransport};
use crate::buffers::Chunk;
use crate::glue::os_error;
use crate::owner::{Done, IoOp, LoopIo, Owner};
use crate::transport::base;
use crate::transport::{is_exit, with_bytes_mut};
use ferroloop_core::driver::BufRef;

/// The operations a transport has in flight, and what they received while reading was paused.
#[derive(Default)]
#[allow(clippy::struct_excessive_bools)] // independent flags of the operations, not a state machine
pub(super) struct Ops {
    recv: Option<usize>,
    recv_cancelled: bool,
    send: Option<usize>,
    send_cancelled: bool,
    /// Data (or `None`: the peer's EOF) that arrived while reading was paused, oldest first.
    held: VecDeque<Option<Py<PyBytes>>>,
    /// An `IoOp::Deliver` is queued for `held`.
    delivering: bool,
    /// Data arrived after the connection was lost, and was dropped.
    discarded: bool,
    /// The receive ended with `ENOBUFS` and waits in the loop's starved queue.
    starved: bool,
}

impl Ops {
    pub(super) fn receiving(&self) -> bool {
        self.recv.is_some() && !self.recv_cancelled
    }

    pub(super) fn sending(&self) -> bool {
        self.send.is_some()
    }

    /// Received data will never reach the protocol: the receive took it out of the kernel, so
    /// closing the socket now would send the peer a clean EOF where a readiness loop, whose
    /// unread data is still in the kernel, sends a reset.
    pub(super) fn discards_data(&self) -> bool {
        self.discarded || self.held.iter().any(Option::is_some)
    }

    /// The peer's EOF has arrived (held, not yet given): nothing more will.
    fn eof_held(&self) -> bool {
        self.held.back().is_some_and(Option::is_none)
    }
}

/// Received data being copied into a `BufferedProtocol`'s buffers: a `bytes`, or the provided
/// buffers of a completion (copied from the ring directly, one copy fewer), with a cursor.
enum Source<'a> {
    Bytes(&'a [u8]),
    Ring {
        parts: &'a [(BufRef, usize)],
        /// The part being copied, and the offset in it.
        part: usize,
        from: usize,
    },
}

impl Source<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Source::Bytes(b) => b.is_empty(),
            Source::Ring { parts, part, .. } => *part >= parts.len(),
        }
    }

    /// Copies as much as fits into `out` and moves past it. Runs no Python code.
    fn copy_into(&mut self, py: Python<'_>, lp: &dyn LoopIo, out: &mut [u8]) -> PyResult<usize> {
        match self {
            Source::Bytes(b) => {
                let n = b.len().min(out.len());
                out[..n].copy_from_slice(&b[..n]);
                *b = &b[n..];
                Ok(n)
            }
            Source::Ring { parts, part, from } => {
                let mut n = 0;
                while n < out.len() && *part < parts.len() {
                    let (buf, len) = parts[*part];
                    let got = lp.copy_out(py, buf, len, *from, &mut out[n..])?;
                    n += got;
                    *from += got;
                    if *from >= len {
                        *part += 1;
                        *from = 0;
                    } else if got == 0 {
                        break; // the loop closed: its buffers are gone
                    }
                }
                Ok(n)
            }
        }
    }

    /// What is left, as a `bytes` (to hold while reading is paused).
    fn rest<'py>(&mut self, py: Python<'py>, lp: &dyn LoopIo) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        match self {
            Source::Bytes(b) => out.extend_from_slice(b),
            Source::Ring { parts, part, from } => {
                for &(buf, len) in &parts[*part..] {
                    let start = out.len();
                    out.resize(start + len - *from, 0);
                    let got = lp.copy_out(py, buf, len, *from, &mut out[start..])?;
                    out.truncate(start + got);
                    *from = 0;
                }
            }
        }
        *self = Source::Bytes(&[]);
        Ok(PyBytes::new(py, &out))
    }
}

enum Recv {
    Start,
    Cancel(usize),
    Leave,
}

enum Kind {
    Recv,
    Send,
    Stale,
}

/// The errors of a receive or send that only mean "start it again".
fn transient(errno: i32) -> bool {
    [Errno::CANCELED, Errno::NOBUFS, Errno::AGAIN, Errno::INTR]
        .iter()
        .any(|e| e.raw_os_error() == errno)
}

fn wants_recv(s: &State) -> bool {
    s.flags.started
        && s.flags.is_reading()
        && !s.read_eof
        && s.flags.conn_lost == 0
        && !s.ops.eof_held()
        && !s.ops.starved
}

impl StreamTransport {
    /// Starts or cancels the receive, starts the next send, and queues the delivery of held
    /// data, as the state now wants.
    pub(super) fn sync_ops(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (recv, send, cancel_send, deliver, refused) = this.state.with(py, |s| {
            let want = wants_recv(s);
            let recv = match s.ops.recv {
                None if want => Recv::Start,
                Some(op) if !want && !s.ops.recv_cancelled => {
                    s.ops.recv_cancelled = true;
                    Recv::Cancel(op)
                }
                _ => Recv::Leave,
            };
            // The next send of a queue holding a refused memoryview fails instead (mod.rs).
            let refused = s.ops.send.is_none() && s.refused && s.flags.conn_lost == 0;
            let send = match (s.ops.send, s.writes.front()) {
                (None, Some((Chunk::Bytes(b), offset))) if s.flags.conn_lost == 0 && !refused => {
                    Some((b.clone_ref(py), offset))
                }
                _ => None,
            };
            let cancel_send = match s.ops.send {
                Some(op) if s.flags.conn_lost > 0 && !s.ops.send_cancelled => {
                    s.ops.send_cancelled = true;
                    Some(op)
                }
                _ => None,
            };
            let deliver = s.flags.is_reading()
                && s.flags.conn_lost == 0
                && !s.read_eof
                && !s.ops.held.is_empty()
                && !s.ops.delivering;
            s.ops.delivering |= deliver;
            (recv, send, cancel_send, deliver, refused)
        })?;
        let lp = this.base.lp();
        match recv {
            Recv::Start => {
                let op = lp.start_recv(py, this.base.fd, Owner::Stream(slf.clone().unbind()))?;
                this.state.with(py, |s| {
                    s.ops.recv = Some(op);
                    s.ops.recv_cancelled = false;
                })?;
            }
            Recv::Cancel(op) => lp.cancel_op(py, op)?,
            Recv::Leave => {}
        }
        if let Some((data, offset)) = send {
            let op = lp.start_send(py, this.base.fd, Owner::Stream(slf.clone().unbind()), data, offset)?;
            this.state.with(py, |s| {
                s.ops.send = Some(op);
                s.ops.send_cancelled = false;
            })?;
        }
        if let Some(op) = cancel_send {
            lp.cancel_op(py, op)?;
        }
        if deliver {
            lp.schedule(py, Owner::Stream(slf.clone().unbind()), IoOp::Deliver)?;
        }
        if refused {
            return Self::flush_refused(slf);
        }
        Ok(())
    }

    /// One of this transport's operations completed (or a multishot receive went a step on).
    /// The loop queued a receive completion with data for this transport (taken off in
    /// `on_done`; see `queued_data`).
    pub(crate) fn data_queued(&self) {
        self.queued_data.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn on_done(slf: &Bound<'_, Self>, done: Done) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !done.buffers.as_slice().is_empty() {
            // Counted when the loop queued it (`data_queued`).
            this.queued_data.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        let kind = this.state.with(py, |s| {
            if s.ops.recv == Some(done.op) {
                if !done.more {
                    s.ops.recv = None;
                    s.ops.recv_cancelled = false;
                }
                Kind::Recv
            } else if s.ops.send == Some(done.op) {
                s.ops.send = None;
                s.ops.send_cancelled = false;
                Kind::Send
            } else {
                Kind::Stale
            }
        })?;
        if matches!(kind, Kind::Recv) && !done.buffers.as_slice().is_empty() {
            // A BufferedProtocol reading now gets the data straight from the ring buffers.
            if let Some((get_buffer, buffer_updated)) = Self::buffered_now(slf)? {
                let parts = done.buffers.as_slice();
                let mut source = Source::Ring {
                    parts,
                    part: 0,
                    from: 0,
                };
                let given = Self::give_buffered(slf, &get_buffer, &buffer_updated, &mut source);
                this.base.lp().recycle(py, &done.buffers)?;
                given?;
                return base::sync_interest(slf);
            }
        }
        // The buffers go back to the kernel whatever becomes of their data.
        let data = this.base.lp().take_buffers(py, &done.buffers)?;
        match kind {
            Kind::Recv => Self::on_received(slf, done.result, data),
            Kind::Send => Self::on_sent(slf, done.result),
            Kind::Stale => Ok(()),
        }
    }

    fn on_received(slf: &Bound<'_, Self>, result: i32, data: Option<Bound<'_, PyBytes>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lost = this.state.with(py, |s| {
            s.ops.discarded |= s.flags.conn_lost > 0 && result > 0;
            s.flags.conn_lost > 0
        })?;
        if lost {
            return Ok(());
        }
        if result == -Errno::NOBUFS.raw_os_error() {
            // Every provided buffer is taken: wait for some to come back (`LoopIo::starve`).
            this.state.with(py, |s| s.ops.starved = true)?;
            return this.base.lp().starve(py, Owner::Stream(slf.clone().unbind()));
        }
        if result < 0 {
            if !transient(-result) {
                let err = os_error(&std::io::Error::from_raw_os_error(-result));
                base::fatal_error(slf, &err, "Fatal read error on socket transport")?;
            }
            return base::sync_interest(slf);
        }
        // `None` for the peer's EOF (a receive of 0 bytes, which ends the operation).
        let item = if result > 0 { data } else { None };
        this.base.lp().stats().read(usize::try_from(result).unwrap_or(0));
        let direct = this
            .state
            .with(py, |s| s.flags.is_reading() && !s.read_eof && s.ops.held.is_empty())?;
        if direct {
            Self::give(slf, item)?;
        } else {
            this.state.with(py, |s| s.ops.held.push_back(item.map(Bound::unbind)))?;
        }
        base::sync_interest(slf)
    }

    /// Buffers came back after the receive ended with `ENOBUFS`: start it again (if it is
    /// still wanted).
    pub(super) fn rearm(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().state.with(slf.py(), |s| s.ops.starved = false)?;
        base::sync_interest(slf)
    }

    fn on_sent(slf: &Bound<'_, Self>, result: i32) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.state.with(py, |s| s.flags.conn_lost > 0)? {
            return Ok(()); // the queue was dropped with the connection
        }
        if result < 0 && transient(-result) {
            return base::sync_interest(slf); // sent again
        }
        let flushed = match usize::try_from(result) {
            Ok(n) => Ok((n, this.state.with(py, |s| s.writes.consume(n))?)),
            Err(_) => Err(super::write::reset_not_pipe(
                std::io::Error::from_raw_os_error(-result),
                true,
                this.base.fd,
            )),
        };
        Self::after_flush(slf, flushed)
    }

    /// Gives one receive to the protocol: data, or the peer's EOF (`None`).
    fn give(slf: &Bound<'_, Self>, item: Option<Bound<'_, PyBytes>>) -> PyResult<()> {
        let Some(data) = item else {
            return Self::on_eof(slf);
        };
        match Self::read_step(slf)? {
            None => Ok(()),
            Some(ReadStep::Data(sink, _)) => Self::give_data(slf, &sink, data),
            Some(ReadStep::Buffered(get_buffer, buffer_updated)) => {
                let mut source = Source::Bytes(data.as_bytes());
                Self::give_buffered(slf, &get_buffer, &buffer_updated, &mut source)
            }
        }
    }

    /// The `BufferedProtocol`'s methods, if the protocol is one and data received now goes
    /// straight to it (reading, and nothing held before it).
    fn buffered_now<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        let py = slf.py();
        let direct = slf.get().state.with(py, |s| {
            s.flags.conn_lost == 0 && s.flags.is_reading() && !s.read_eof && s.ops.held.is_empty()
        })?;
        if !direct {
            return Ok(None);
        }
        Ok(match Self::read_step(slf)? {
            Some(ReadStep::Buffered(get_buffer, buffer_updated)) => Some((get_buffer, buffer_updated)),
            _ => None,
        })
    }

    /// Copies received data into a `BufferedProtocol`'s buffers, as many as it takes; if the
    /// protocol pauses reading on the way, the rest is held for `resume_reading`.
    fn give_buffered(
        slf: &Bound<'_, Self>,
        get_buffer: &Bound<'_, PyAny>,
        buffer_updated: &Bound<'_, PyAny>,
        source: &mut Source<'_>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        while !source.is_empty() {
            let copied = get_buffer.call1((-1,)).and_then(|buf| {
                let n = with_bytes_mut(&buf, |target| {
                    if target.is_empty() {
                        return Ok(0);
                    }
                    source.copy_into(py, this.base.lp(), target)
                });
                match n {
                    Some(Ok(n)) if n > 0 => Ok(n),
                    Some(Err(err)) => Err(err),
                    _ => Err(protocol_buffer_error(&buf)),
                }
            });
            let n = match copied {
                Ok(n) => n,
                Err(err) if is_exit(py, &err) => return Err(err),
                Err(err) => return base::fatal_error(slf, &err, "Fatal error: protocol.get_buffer() call failed."),
            };
            if let Err(err) = buffer_updated.call1((n,)) {
                if is_exit(py, &err) {
                    return Err(err);
                }
                return base::fatal_error(slf, &err, "Fatal error: protocol.buffer_updated() call failed.");
            }
            let reading = this
                .state
                .with(py, |s| s.flags.conn_lost == 0 && s.flags.is_reading())?;
            if !reading && !source.is_empty() {
                let rest = source.rest(py, this.base.lp())?;
                this.state.with(py, |s| s.ops.held.push_front(Some(rest.unbind())))?;
                break;
            }
        }
        Ok(())
    }

    /// Gives the protocol what arrived while reading was paused, until it pauses again.
    pub(super) fn deliver_held(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.state.with(py, |s| s.ops.delivering = false)?;
        loop {
            let next = this.state.with(py, |s| {
                if s.flags.conn_lost == 0 && s.flags.is_reading() && !s.read_eof {
                    s.ops.held.pop_front()
                } else {
                    None
                }
            })?;
            let Some(item) = next else { break };
            Self::give(slf, item.map(|b| b.into_bound(py)))?;
        }
        base::sync_interest(slf)
    }
}
