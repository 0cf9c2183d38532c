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

use super::{protocol_buffer_error, Chunk, ReadStep, State, StreamTransport};
use crate::completion::Done;
use crate::glue::os_error;
use crate::owner::{IoOp, Owner};
use crate::transport::{is_exit, with_bytes_mut};

/// The operations a transport has in flight, and what they received while reading was paused.
#[derive(Default)]
pub(super) struct Ops {
    recv: Option<usize>,
    recv_cancelled: bool,
    send: Option<usize>,
    send_cancelled: bool,
    /// Data (or `None`: the peer's EOF) that arrived while reading was paused, oldest first.
    held: VecDeque<Option<Py<PyBytes>>>,
    /// An `IoOp::Deliver` is queued for `held`.
    delivering: bool,
}

impl Ops {
    pub(super) fn receiving(&self) -> bool {
        self.recv.is_some() && !self.recv_cancelled
    }

    pub(super) fn sending(&self) -> bool {
        self.send.is_some()
    }

    /// The peer's EOF has arrived (held, not yet given): nothing more will.
    fn eof_held(&self) -> bool {
        self.held.back().is_some_and(Option::is_none)
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
    s.started && s.is_reading() && !s.read_eof && s.conn_lost == 0 && !s.ops.eof_held()
}

impl StreamTransport {
    /// Starts or cancels the receive, starts the next send, and queues the delivery of held
    /// data, as the state now wants.
    pub(super) fn sync_ops(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (recv, send, cancel_send, deliver) = this.state.with(py, |s| {
            let want = wants_recv(s);
            let recv = match s.ops.recv {
                None if want => Recv::Start,
                Some(op) if !want && !s.ops.recv_cancelled => {
                    s.ops.recv_cancelled = true;
                    Recv::Cancel(op)
                }
                _ => Recv::Leave,
            };
            let send = match (s.ops.send, s.writes.front()) {
                (None, Some((Chunk::Bytes(b), offset))) if s.conn_lost == 0 => Some((b.clone_ref(py), offset)),
                _ => None,
            };
            let cancel_send = match s.ops.send {
                Some(op) if s.conn_lost > 0 && !s.ops.send_cancelled => {
                    s.ops.send_cancelled = true;
                    Some(op)
                }
                _ => None,
            };
            let deliver =
                s.is_reading() && s.conn_lost == 0 && !s.read_eof && !s.ops.held.is_empty() && !s.ops.delivering;
            s.ops.delivering |= deliver;
            (recv, send, cancel_send, deliver)
        })?;
        let lp = this.lp();
        match recv {
            Recv::Start => {
                let op = lp.start_recv(py, this.fd, Owner::Stream(slf.clone().unbind()))?;
                this.state.with(py, |s| {
                    s.ops.recv = Some(op);
                    s.ops.recv_cancelled = false;
                })?;
            }
            Recv::Cancel(op) => lp.cancel_op(py, op)?,
            Recv::Leave => {}
        }
        if let Some((data, offset)) = send {
            let op = lp.start_send(py, this.fd, Owner::Stream(slf.clone().unbind()), data, offset)?;
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
        Ok(())
    }

    /// One of this transport's operations completed (or a multishot receive went a step on).
    pub(super) fn on_done(slf: &Bound<'_, Self>, done: Done) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
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
        // The buffers go back to the kernel whatever becomes of their data.
        let data = this.lp().take_buffers(py, &done.buffers)?;
        match kind {
            Kind::Recv => Self::on_received(slf, done.result, data),
            Kind::Send => Self::on_sent(slf, done.result),
            Kind::Stale => Ok(()),
        }
    }

    fn on_received(slf: &Bound<'_, Self>, result: i32, data: Option<Bound<'_, PyBytes>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.state.with(py, |s| s.conn_lost > 0)? {
            return Ok(());
        }
        if result < 0 {
            if !transient(-result) {
                let err = os_error(&std::io::Error::from_raw_os_error(-result));
                Self::fatal_error(slf, &err, "Fatal read error on socket transport")?;
            }
            return Self::sync_interest(slf);
        }
        // `None` for the peer's EOF (a receive of 0 bytes, which ends the operation).
        let item = if result > 0 { data } else { None };
        let direct = this
            .state
            .with(py, |s| s.is_reading() && !s.read_eof && s.ops.held.is_empty())?;
        if direct {
            Self::give(slf, item)?;
        } else {
            this.state.with(py, |s| s.ops.held.push_back(item.map(Bound::unbind)))?;
        }
        Self::sync_interest(slf)
    }

    fn on_sent(slf: &Bound<'_, Self>, result: i32) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.state.with(py, |s| s.conn_lost > 0)? {
            return Ok(()); // the queue was dropped with the connection
        }
        if result < 0 && transient(-result) {
            return Self::sync_interest(slf); // sent again
        }
        let flushed = match usize::try_from(result) {
            Ok(n) => Ok((n, this.state.with(py, |s| s.writes.consume(n))?)),
            Err(_) => Err(std::io::Error::from_raw_os_error(-result)),
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
                Self::give_buffered(slf, &get_buffer, &buffer_updated, &data)
            }
        }
    }

    /// Copies received data into a `BufferedProtocol`'s buffers, as many as it takes; if the
    /// protocol pauses reading on the way, the rest is held for `resume_reading`.
    fn give_buffered(
        slf: &Bound<'_, Self>,
        get_buffer: &Bound<'_, PyAny>,
        buffer_updated: &Bound<'_, PyAny>,
        data: &Bound<'_, PyBytes>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let bytes = data.as_bytes();
        let mut given = 0;
        while given < bytes.len() {
            let copied = get_buffer.call1((-1,)).and_then(|buf| {
                let n = with_bytes_mut(&buf, |target| {
                    let n = target.len().min(bytes.len() - given);
                    target[..n].copy_from_slice(&bytes[given..given + n]);
                    n
                });
                n.filter(|&n| n > 0).ok_or_else(|| protocol_buffer_error(&buf))
            });
            let n = match copied {
                Ok(n) => n,
                Err(err) if is_exit(py, &err) => return Err(err),
                Err(err) => return Self::fatal_error(slf, &err, "Fatal error: protocol.get_buffer() call failed."),
            };
            given += n;
            if let Err(err) = buffer_updated.call1((n,)) {
                if is_exit(py, &err) {
                    return Err(err);
                }
                return Self::fatal_error(slf, &err, "Fatal error: protocol.buffer_updated() call failed.");
            }
            let reading = this.state.with(py, |s| s.conn_lost == 0 && s.is_reading())?;
            if !reading && given < bytes.len() {
                let rest = PyBytes::new(py, &bytes[given..]).unbind();
                this.state.with(py, |s| s.ops.held.push_front(Some(rest)))?;
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
                if s.conn_lost == 0 && s.is_reading() && !s.read_eof {
                    s.ops.held.pop_front()
                } else {
                    None
                }
            })?;
            let Some(item) = next else { break };
            Self::give(slf, item.map(|b| b.into_bound(py)))?;
        }
        Self::sync_interest(slf)
    }
}
