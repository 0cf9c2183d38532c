//! `StreamTransport`: asyncio's socket transport (`asyncio.Transport` over TCP and UNIX stream
//! sockets), with its read, write and close paths in Rust.
//!
//! It behaves as asyncio's `_SelectorSocketTransport` does, callback for callback: the same order
//! of `connection_made`, `data_received`/`buffer_updated`, `eof_received`, `pause_writing`,
//! `resume_writing` and `connection_lost`, the same exceptions and the same log records. What
//! differs is the cost:
//!
//! - the loop dispatches readiness straight to [`StreamTransport::run_op`]: no handle, no bound
//!   method, no Python frame between `epoll_wait` and `data_received`;
//! - a read goes into the loop's one reusable buffer and becomes a `bytes` of the exact size (one
//!   copy); a `BufferedProtocol` is read into its own buffer (no copy);
//! - a write is tried at once when nothing is queued; what the kernel does not take is queued
//!   without copying (`bytes` are kept as they are) and flushed with `writev` when the socket is
//!   writable again.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::RawFd;

use ferroloop_core::driver::Interest;
use ferroloop_core::writeq::WriteQueue;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, Shutdown};

use crate::cell::AttachedCell;
use crate::event_loop::{copy_context, LoopCore};
use crate::glue::{self, os_error};
use crate::owner::{IoOp, Owner};
use crate::read;
use crate::stats::Stats;
use crate::tls::TlsProtocol;

mod completion;
use crate::transport::base::{self, Base, Flags, Transport};
use crate::transport::{
    compat_flag, fd_of, is_exit, not_contiguous, with_bytes, with_bytes_mut, LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};

/// asyncio's `max_size`: the most one read takes.
pub const MAX_READ: usize = 256 * 1024;

/// A queued write: a `bytes` object, kept as it is (a mutable buffer is copied into one first).
pub enum Chunk {
    Bytes(Py<PyBytes>),
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        match self {
            // SAFETY: a bytes object is immutable and this reference keeps it alive, so its buffer
            // stays valid and unchanged for as long as the chunk exists.
            Chunk::Bytes(b) => unsafe {
                let ptr = ffi::PyBytes_AS_STRING(b.as_ptr()).cast::<u8>();
                std::slice::from_raw_parts(ptr, ffi::PyBytes_Size(b.as_ptr()) as usize)
            },
        }
    }
}

impl Chunk {
    fn is(&self, other: &Py<PyBytes>) -> bool {
        match self {
            Chunk::Bytes(b) => b.as_ptr() == other.as_ptr(),
        }
    }
}

/// Whether asyncio's socket transport counts a queued memoryview by its `len()` (3.12+).
fn write_buffer_counts_len(py: Python<'_>) -> PyResult<bool> {
    static SWITCH: PyOnceLock<bool> = PyOnceLock::new();
    compat_flag(py, &SWITCH, "WRITE_BUFFER_COUNTS_LEN")
}

/// Whether asyncio's socket transport has a `writelines` of its own (3.12+), with its checks.
fn writelines_of_its_own(py: Python<'_>) -> PyResult<bool> {
    static SWITCH: PyOnceLock<bool> = PyOnceLock::new();
    compat_flag(py, &SWITCH, "SOCKET_TRANSPORT_HAS_WRITELINES")
}

/// Whether `connection_lost` runs in the connection's context, not in its closer's (3.15+).
pub fn connection_lost_in_connection_context(py: Python<'_>) -> PyResult<bool> {
    static SWITCH: PyOnceLock<bool> = PyOnceLock::new();
    compat_flag(py, &SWITCH, "CONNECTION_LOST_IN_CONNECTION_CONTEXT")
}

/// The `TypeError` of `write()` given something else than bytes, a bytearray or a memoryview.
fn write_type_error(data: &Bound<'_, PyAny>) -> PyResult<PyErr> {
    static PREFIX: PyOnceLock<String> = PyOnceLock::new();
    let py = data.py();
    let prefix = PREFIX.get_or_try_init(py, || glue::compat(py, "WRITE_TYPE_ERROR")?.extract())?;
    let name = data.get_type().name()?;
    Ok(PyTypeError::new_err(format!("{prefix}, not '{name}'")))
}

/// What the byte count of a `unit`-bytes-per-item chunk of `bytes` bytes says more than its items.
fn overcount(bytes: usize, unit: usize) -> usize {
    bytes - bytes.div_ceil(unit)
}

/// The protocol and what is cached of it.
struct Proto {
    protocol: Py<PyAny>,
    /// `get_buffer` and `buffer_updated` for a `BufferedProtocol`, else `data_received`.
    reader: Reader,
}

enum Reader {
    Data(Py<PyAny>),
    /// ferroloop's TLS protocol: given each read in Rust.
    Tls(Py<TlsProtocol>),
    Buffered {
        get_buffer: Py<PyAny>,
        buffer_updated: Py<PyAny>,
    },
}

#[allow(clippy::struct_excessive_bools)] // asyncio's transport flags, one for one
pub struct State {
    sock: Option<Py<PyAny>>,
    proto: Option<Proto>,
    protocol_connected: bool,
    server: Option<Py<PyAny>>,
    writes: WriteQueue<Chunk>,
    /// Queued chunks that asyncio (3.12+) counts by the `len()` of the memoryview they came from,
    /// its items, not its bytes: each with its bytes per item. Almost always empty.
    counted: VecDeque<(Py<PyBytes>, usize)>,
    /// What the byte count of `counted`'s whole chunks says more than their items.
    overcount: usize,
    /// A non-contiguous memoryview is queued (3.12+): asyncio queues it as it is, and the next
    /// `sendmsg()` of the queue refuses it, a fatal write error. The next flush fails so.
    refused: bool,
    /// The peer's EOF was seen and the protocol kept the connection open: no more reads.
    read_eof: bool,
    /// Bytes of the last read (for a `Protocol`): large reads skip the loop's buffer (`read`).
    last_read: usize,
    eof: bool,
    empty_waiter: Option<Py<PyAny>>,
    flags: Flags,
    /// Reads and queued writes are `io_uring` operations (see `completion.rs`).
    completion: bool,
    ops: completion::Ops,
}

impl State {
    /// `get_write_buffer_size()`: the queued bytes, where asyncio counts bytes.
    fn counted_size(&self) -> usize {
        let bytes = self.writes.len();
        let Some((first, unit)) = self.counted.front() else {
            return bytes;
        };
        let mut over = self.overcount;
        // The first counted chunk may be partly sent: count what is left of it.
        if let Some((front, sent)) = self.writes.front() {
            if sent > 0 && front.is(first) {
                let size = front.as_ref().len();
                over = over - overcount(size, *unit) + overcount(size - sent, *unit);
            }
        }
        bytes - over
    }

    /// Queues `chunk`, of which `sent` bytes were sent, counted in items of `unit` bytes.
    fn queue(&mut self, py: Python<'_>, chunk: Chunk, sent: usize, unit: usize) {
        if unit > 1 {
            let Chunk::Bytes(b) = &chunk;
            self.overcount += overcount(chunk.as_ref().len(), unit);
            self.counted.push_back((b.clone_ref(py), unit));
        }
        self.writes.push(chunk, sent);
    }

    /// Forgets the counted chunks among `done`, which were sent.
    fn sent(&mut self, done: &[Chunk]) {
        for chunk in done {
            let Some((first, unit)) = self.counted.front() else {
                return;
            };
            if chunk.is(first) {
                self.overcount -= overcount(chunk.as_ref().len(), *unit);
                self.counted.pop_front();
            }
        }
    }

    /// Drops the write queue (the connection is lost); returns its chunks.
    fn clear_writes(&mut self) -> (Vec<Chunk>, VecDeque<(Py<PyBytes>, usize)>) {
        self.overcount = 0;
        self.refused = false;
        (self.writes.clear(), std::mem::take(&mut self.counted))
    }
}

/// What `connection_lost` releases besides the socket.
pub struct Released {
    /// Close with a reset (see `Ops::discards_data`).
    reset: bool,
    proto: Option<Proto>,
    server: Option<Py<PyAny>>,
    waiter: Option<Py<PyAny>>,
}

impl base::State for State {
    type Released = Released;
    type Dropped = (Vec<Chunk>, VecDeque<(Py<PyBytes>, usize)>);

    fn flags(&self) -> &Flags {
        &self.flags
    }

    fn flags_mut(&mut self) -> &mut Flags {
        &mut self.flags
    }

    fn protocol(&self) -> Option<&Py<PyAny>> {
        self.proto.as_ref().map(|p| &p.protocol)
    }

    fn protocol_connected(&self) -> bool {
        self.protocol_connected
    }

    fn wanted_interest(&self) -> Interest {
        if self.completion {
            return Interest::NONE;
        }
        let f = &self.flags;
        Interest {
            readable: f.started && f.is_reading() && !self.read_eof && f.conn_lost == 0,
            writable: !self.writes.is_empty(),
        }
    }

    fn completion(&self) -> bool {
        self.completion
    }

    fn buffer_size(&self) -> usize {
        self.counted_size()
    }

    fn writes_pending(&self) -> bool {
        !self.writes.is_empty()
    }

    fn drop_writes(&mut self) -> Self::Dropped {
        self.clear_writes()
    }

    fn release(&mut self, py: Python<'_>) -> (Option<Py<PyAny>>, Released) {
        let reset = self.completion && self.ops.discards_data();
        let sock = self.sock.take();
        let released = Released {
            reset,
            proto: self.proto.take(),
            server: self.server.take(),
            waiter: self.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
        };
        (sock, released)
    }
}

#[pyclass(frozen, subclass, weakref, extends = crate::transport_root::TransportRoot, module = "ferroloop._ferroloop")]
pub struct StreamTransport {
    base: Base,
    state: AttachedCell<State>,
}

impl Transport for StreamTransport {
    type State = State;

    fn base(&self) -> &Base {
        &self.base
    }

    fn state(&self) -> &AttachedCell<State> {
        &self.state
    }

    fn owner(slf: &Bound<'_, Self>) -> Owner {
        Owner::Stream(slf.clone().unbind())
    }

    fn sync_completion(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::sync_ops(slf)
    }

    fn lose(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        base::force_close(slf, exc)
    }

    fn before_close(&self, sock: Option<&Py<PyAny>>, released: &mut Released) {
        if sock.is_some() && released.reset {
            // Unread data makes the kernel's close a reset on a readiness loop (see
            // `Ops::discards_data`); a zero linger makes it one here. (TCP only: a UNIX
            // socket has no linger, and its peer sees a clean EOF.)
            let _ = rustix::net::sockopt::set_socket_linger(fd_of(self.base.fd), Some(std::time::Duration::ZERO));
        }
    }

    fn after_close(slf: &Bound<'_, Self>, released: Released) -> PyResult<()> {
        let py = slf.py();
        drop(released.proto);
        if let Some(server) = released.server {
            glue::helper(py, "server_detach")?.call1((server, slf))?;
        }
        if let Some(w) = released.waiter {
            let err = pyo3::exceptions::PyConnectionError::new_err("Connection is closed by peer");
            w.bind(py)
                .call_method1(intern!(py, "set_exception"), (glue::exc_value(py, &err),))?;
        }
        Ok(())
    }
}

impl StreamTransport {
    pub fn context(&self) -> &Py<PyAny> {
        &self.base.context
    }

    fn run_start(slf: &Bound<'_, Self>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // connection_made runs as its own callback in asyncio: its exception is reported, and
        // reading starts regardless.
        if let Some(protocol) = base::protocol(this, py)? {
            let made = protocol
                .bind(py)
                .call_method1(intern!(py, "connection_made"), (slf,))
                .map(drop);
            if let Err(err) = made {
                if is_exit(py, &err) {
                    return Err(err);
                }
                glue::helper(py, "report_call_error")?.call1((
                    slf.getattr(intern!(py, "_loop"))?,
                    protocol.bind(py).getattr(intern!(py, "connection_made"))?,
                    PyTuple::new(py, [slf])?,
                    glue::exc_value(py, &err),
                ))?;
            }
        }
        base::started(slf, waiter)
    }

    fn run_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        match Self::read_step(slf)? {
            None => Ok(()),
            Some(ReadStep::Data(sink, large)) => Self::read_data(slf, &sink, large),
            Some(ReadStep::Buffered(get_buffer, buffer_updated)) => {
                Self::read_buffered(slf, &get_buffer, &buffer_updated)
            }
        }
    }

    /// Who a read goes to, if the transport reads now.
    fn read_step<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<ReadStep<'py>>> {
        let py = slf.py();
        // `Bound` clones: dropping them is a plain decref (a `Py` first checks thread state).
        slf.get().state.with(py, |s| {
            if s.flags.conn_lost > 0 || !s.flags.is_reading() {
                return None;
            }
            let large = s.last_read >= read::DIRECT_READ_MIN;
            s.proto.as_ref().map(|p| match &p.reader {
                Reader::Data(f) => ReadStep::Data(Sink::Call(f.bind(py).clone()), large),
                Reader::Tls(t) => ReadStep::Data(Sink::Tls(t.bind(py).clone()), large),
                Reader::Buffered {
                    get_buffer,
                    buffer_updated,
                } => ReadStep::Buffered(get_buffer.bind(py).clone(), buffer_updated.bind(py).clone()),
            })
        })
    }

    fn read_data(slf: &Bound<'_, Self>, sink: &Sink<'_>, large: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let data = match read::read_bytes(this.base.lp(), py, this.base.fd, large)? {
            Ok(data) => data,
            Err(Errno::AGAIN | Errno::INTR) => return Ok(()),
            Err(e) => return base::fatal_error(slf, &os_error(&e.into()), "Fatal read error on socket transport"),
        };
        let n = data.as_bytes().len();
        this.base.lp().stats.read(n);
        this.state.with(py, |s| s.last_read = n)?;
        if n == 0 {
            return Self::on_eof(slf);
        }
        Self::give_data(slf, sink, data)
    }

    /// Gives one read's `bytes` to the protocol; an exception from it is asyncio's fatal error.
    fn give_data(slf: &Bound<'_, Self>, sink: &Sink<'_>, data: Bound<'_, PyBytes>) -> PyResult<()> {
        let py = slf.py();
        let (given, message) = match sink {
            Sink::Call(data_received) => (
                data_received.call1((data,)).map(drop),
                "Fatal error: protocol.data_received() call failed.",
            ),
            // asyncio's TLS protocol is a BufferedProtocol: its failures are reported as such.
            Sink::Tls(tls) => (
                TlsProtocol::feed(tls, data.as_any()),
                "Fatal error: protocol.buffer_updated() call failed.",
            ),
        };
        if let Err(err) = given {
            if is_exit(py, &err) {
                return Err(err);
            }
            base::fatal_error(slf, &err, message)?;
        }
        Ok(())
    }

    fn read_buffered(
        slf: &Bound<'_, Self>,
        get_buffer: &Bound<'_, PyAny>,
        buffer_updated: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.base.fd;
        let got = get_buffer.call1((-1,)).and_then(|buf| {
            let read = with_bytes_mut(&buf, |target| {
                (!target.is_empty()).then(|| rustix::net::recv(fd_of(fd), target, RecvFlags::empty()))
            });
            // Not a writable contiguous buffer, or an empty one: the checks below say which.
            read.flatten().map_or_else(|| Err(protocol_buffer_error(&buf)), Ok)
        });
        let read = match got {
            Ok(read) => read,
            Err(err) if is_exit(py, &err) => return Err(err),
            Err(err) => return base::fatal_error(slf, &err, "Fatal error: protocol.get_buffer() call failed."),
        };
        let n = match read {
            Ok((n, _)) => {
                this.base.lp().stats.read(n);
                n
            }
            Err(Errno::AGAIN | Errno::INTR) => return Ok(()),
            Err(e) => return base::fatal_error(slf, &os_error(&e.into()), "Fatal read error on socket transport"),
        };
        if n == 0 {
            return Self::on_eof(slf);
        }
        if let Err(err) = buffer_updated.call1((n,)).map(drop) {
            if is_exit(py, &err) {
                return Err(err);
            }
            base::fatal_error(slf, &err, "Fatal error: protocol.buffer_updated() call failed.")?;
        }
        Ok(())
    }

    /// asyncio's `_read_ready__on_eof`.
    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.base.lp().debug() {
            glue::helper(py, "log_debug")?.call1(("%r received EOF", slf))?;
        }
        let Some(protocol) = base::protocol(this, py)? else {
            return Ok(());
        };
        match protocol
            .bind(py)
            .call_method0(intern!(py, "eof_received"))
            .and_then(|keep| keep.is_truthy())
        {
            Ok(true) => {
                // Keep the connection open for writing; stop watching for reads.
                this.state.with(py, |s| s.read_eof = true)?;
                base::sync_interest(slf)
            }
            Ok(false) => Self::close(slf),
            Err(err) if is_exit(py, &err) => Err(err),
            Err(err) => base::fatal_error(slf, &err, "Fatal error: protocol.eof_received() call failed."),
        }
    }

    fn run_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.base.fd;
        if this.state.with(py, |s| s.refused && s.flags.conn_lost == 0)? {
            return Self::flush_refused(slf);
        }
        let flushed = this.state.with(py, |s| {
            if s.flags.conn_lost > 0 || s.writes.is_empty() {
                return None;
            }
            Some(s.writes.flush(|iov| send_vectored(fd, iov)))
        })?;
        let Some(flushed) = flushed else { return Ok(()) };
        Self::after_flush(slf, flushed)
    }

    /// `write()` of a memoryview that is not C-contiguous (`memoryview(b)[::2]`): asyncio passes
    /// it to `socket.send()`, which refuses it with `BufferError`, a fatal write error; with data
    /// already queued, 3.11 fails at once (its `bytearray` buffer refuses it: `TypeError`) and
    /// 3.12+ queues it as it is, so the next flush fails.
    fn write_not_contiguous(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        attempt: &Attempt<'_>,
        unit: impl Fn(usize) -> usize,
    ) -> PyResult<()> {
        let py = slf.py();
        if attempt.conn_lost > 0 {
            return Self::write_after_loss(slf, attempt.conn_lost);
        }
        if !attempt.queued {
            return base::fatal_error(slf, &not_contiguous(), "Fatal write error on socket transport");
        }
        if !write_buffer_counts_len(py)? {
            // 3.11's `self._buffer.extend(data)` (the same switch: 3.12's zero-copy queue).
            return Err(PyTypeError::new_err("can't set bytearray slice from memoryview"));
        }
        let copy = py.get_type::<PyBytes>().call1((data,))?.cast_into::<PyBytes>()?;
        let per_item = unit(copy.as_bytes().len());
        slf.get().state.with(py, |s| {
            s.queue(py, Chunk::Bytes(copy.unbind()), 0, per_item);
            s.refused = true;
        })?;
        base::maybe_pause_protocol(slf)
    }

    /// A write to a lost connection is dropped and counted; asyncio warns from the fifth on.
    fn write_after_loss(slf: &Bound<'_, Self>, conn_lost: u32) -> PyResult<()> {
        let py = slf.py();
        if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
            glue::helper(py, "log_warning")?.call1(("socket.send() raised exception.",))?;
        }
        slf.get().state.with(py, |s| s.flags.conn_lost += 1)
    }

    /// The flush of a queue holding a refused memoryview (see `write_not_contiguous`).
    fn flush_refused(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_failed(slf, &not_contiguous())
    }

    /// A flush of the queue failed with `err`: the queue is dropped, asyncio's fatal write error
    /// is reported, and a sendfile waiting for the queue to drain gets the error.
    fn write_failed(slf: &Bound<'_, Self>, err: &PyErr) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let dropped = this.state.with(py, State::clear_writes)?;
        drop(dropped);
        base::sync_interest(slf)?;
        base::fatal_error(slf, err, "Fatal write error on socket transport")?;
        if let Some(w) = this
            .state
            .with(py, |s| s.empty_waiter.as_ref().map(|w| w.clone_ref(py)))?
        {
            w.bind(py)
                .call_method1(intern!(py, "set_exception"), (glue::exc_value(py, err),))?;
        }
        Ok(())
    }

    /// What follows a write of queued data: flow control, the empty waiter, a pending close or
    /// `write_eof`; or, if it failed, asyncio's fatal write error.
    fn after_flush(slf: &Bound<'_, Self>, flushed: std::io::Result<(usize, Vec<Chunk>)>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.base.fd;
        match flushed {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => Self::write_failed(slf, &os_error(&e)),
            Ok((n, done)) => {
                this.base.lp().stats.wrote(n);
                if !done.is_empty() {
                    this.state.with(py, |s| s.sent(&done))?;
                }
                drop(done);
                base::maybe_resume_protocol(slf)?;
                let (empty, completion, closing, eof, waiter) = this.state.with(py, |s| {
                    (
                        s.writes.is_empty(),
                        s.completion,
                        s.flags.closing,
                        s.eof,
                        s.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                    )
                })?;
                if !empty {
                    // The completion model sends the next chunk; readiness keeps watching.
                    return if completion { base::sync_interest(slf) } else { Ok(()) };
                }
                base::sync_interest(slf)?;
                if let Some(w) = waiter {
                    w.bind(py).call_method1(intern!(py, "set_result"), (py.None(),))?;
                }
                if closing {
                    base::connection_lost(slf, None)
                } else if eof {
                    rustix::net::shutdown(fd_of(fd), Shutdown::Write).map_err(|e| os_error(&e.into()))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Runs one op the loop dequeued for this transport.
    pub fn run_op(slf: &Bound<'_, Self>, op: IoOp) -> PyResult<()> {
        match op {
            IoOp::Start(waiter) => Self::run_start(slf, waiter),
            IoOp::Read => Self::run_read(slf),
            IoOp::Write => Self::run_write(slf),
            IoOp::ConnectionLost(exc) => base::connection_lost(slf, exc),
            IoOp::Done(done) => Self::on_done(slf, done),
            IoOp::Deliver => Self::deliver_held(slf),
            IoOp::Rearm => Self::rearm(slf),
            IoOp::Eof => Ok(()),
        }
    }

    /// Whether the transport currently wants `Read`/`Write` ops (checked when they are queued).
    pub fn wants(&self, py: Python<'_>) -> Interest {
        base::wants(self, py)
    }
}

/// What a readable event does, decided inside the state borrow and run outside it.
enum ReadStep<'py> {
    /// Read into a `bytes` (large: straight into one, see `read`) and give it to the sink.
    Data(Sink<'py>, bool),
    /// `get_buffer` and `buffer_updated` of a `BufferedProtocol`.
    Buffered(Bound<'py, PyAny>, Bound<'py, PyAny>),
}

/// Who receives the `bytes` of a read.
enum Sink<'py> {
    /// The protocol's `data_received`.
    Call(Bound<'py, PyAny>),
    /// ferroloop's TLS protocol, called in Rust.
    Tls(Bound<'py, TlsProtocol>),
}

/// Why the buffer a `BufferedProtocol` gave cannot be read into (it is not a writable contiguous
/// buffer, or it is empty), as asyncio reports it.
fn protocol_buffer_error(buf: &Bound<'_, PyAny>) -> PyErr {
    let view = match PyBuffer::<u8>::get(buf) {
        Ok(view) => view,
        Err(err) => return err,
    };
    if view.len_bytes() == 0 && !view.readonly() && view.is_c_contiguous() {
        return PyRuntimeError::new_err("get_buffer() returned an empty buffer");
    }
    PyTypeError::new_err("get_buffer() must return a writable contiguous buffer")
}

/// The error of a failed send as `send()` on a readiness loop reports it. After a TCP reset, the
/// socket's pending error (`ECONNRESET`) goes to the first call that asks; with `io_uring` that is
/// the receive always in flight, and the send after it sees `EPIPE`. asyncio's send would have
/// seen the reset, so `EPIPE` is told as `ECONNRESET` there. (A UNIX socket has no reset: `EPIPE`
/// is what its send says on every loop.)
fn reset_not_pipe(e: std::io::Error, completion: bool, fd: RawFd) -> std::io::Error {
    if completion && e.raw_os_error() == Some(Errno::PIPE.raw_os_error()) {
        let domain = rustix::net::sockopt::socket_domain(fd_of(fd));
        if matches!(domain, Ok(d) if d == rustix::net::AddressFamily::INET || d == rustix::net::AddressFamily::INET6) {
            return std::io::Error::from_raw_os_error(Errno::CONNRESET.raw_os_error());
        }
    }
    e
}

/// What `write` knows before it touches the data.
struct Attempt<'a> {
    fd: RawFd,
    /// The loop's counters (bytes sent at once).
    stats: &'a Stats,
    conn_lost: u32,
    /// Data is already queued: the new data goes behind it.
    queued: bool,
}

/// What became of the data given to `write`.
enum Sent {
    /// It was empty.
    Nothing,
    /// The connection is lost: dropped (and counted).
    Lost,
    All,
    /// To queue: the chunk and the offset where its unsent part starts.
    Part(Chunk, usize),
    Failed(Errno),
}

impl Attempt<'_> {
    /// Tries to send `data` at once if nothing is queued; `keep(sent)` makes the chunk to queue
    /// for the rest. Runs no Python code (the caller may hold `data`'s buffer exported).
    fn send(&self, data: &[u8], keep: impl FnOnce(usize) -> (Chunk, usize)) -> Sent {
        if data.is_empty() {
            return Sent::Nothing;
        }
        if self.conn_lost > 0 {
            return Sent::Lost;
        }
        let mut sent = 0;
        if !self.queued {
            match rustix::net::send(fd_of(self.fd), data, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
                Ok(n) if n == data.len() => {
                    self.stats.wrote(n);
                    return Sent::All;
                }
                Ok(n) => {
                    self.stats.wrote(n);
                    sent = n;
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => return Sent::Failed(e),
            }
        }
        let (chunk, offset) = keep(sent);
        Sent::Part(chunk, offset)
    }
}

/// One vectored send, without SIGPIPE.
fn send_vectored(fd: RawFd, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
    if let [one] = iov {
        return Ok(rustix::net::send(
            fd_of(fd),
            one,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )?);
    }
    let mut ancillary = rustix::net::SendAncillaryBuffer::default();
    Ok(rustix::net::sendmsg(
        fd_of(fd),
        iov,
        &mut ancillary,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?)
}

fn make_proto(protocol: &Bound<'_, PyAny>) -> PyResult<Proto> {
    let py = protocol.py();
    let buffered_type = py.import("asyncio")?.getattr(intern!(py, "BufferedProtocol"))?;
    let reader = if let Ok(tls) = protocol.cast::<TlsProtocol>() {
        Reader::Tls(tls.clone().unbind())
    } else if protocol.is_instance(&buffered_type)? {
        Reader::Buffered {
            get_buffer: protocol.getattr(intern!(py, "get_buffer"))?.unbind(),
            buffer_updated: protocol.getattr(intern!(py, "buffer_updated"))?.unbind(),
        }
    } else {
        Reader::Data(protocol.getattr(intern!(py, "data_received"))?.unbind())
    };
    Ok(Proto {
        protocol: protocol.clone().unbind(),
        reader,
    })
}

#[pymethods]
impl StreamTransport {
    /// `(loop, sock, protocol, waiter=None, extra=None, server=None, context=None)`, as asyncio's
    /// `_make_socket_transport` receives them. Protocol callbacks run in `context` (asyncio 3.15
    /// passes the connection's), else in a copy of the current context.
    #[new]
    #[pyo3(signature = (loop_, sock, protocol, waiter=None, extra=None, server=None, context=None))]
    fn new(
        loop_: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        waiter: Option<&Bound<'_, PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
        server: Option<&Bound<'_, PyAny>>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let _ = waiter; // resolved by `_start`, once the object exists
        let py = loop_.py();
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        let extra = glue::helper(py, "socket_extra")?
            .call1((sock, extra))?
            .cast_into::<PyDict>()?
            .unbind();
        let server = server.filter(|s| !s.is_none()).map(|s| s.clone().unbind());
        let transport = StreamTransport {
            base: Base {
                loop_: loop_.clone().unbind(),
                fd,
                extra,
                context: match context.filter(|c| !c.is_none(py)) {
                    Some(c) => c,
                    None => copy_context(py)?,
                },
            },
            state: AttachedCell::new(State {
                sock: Some(sock.clone().unbind()),
                proto: Some(make_proto(protocol)?),
                protocol_connected: true,
                server,
                writes: WriteQueue::new(),
                counted: VecDeque::new(),
                overcount: 0,
                refused: false,
                read_eof: false,
                last_read: 0,
                eof: false,
                empty_waiter: None,
                flags: Flags::default(),
                completion: loop_.get().completion_streams(py)?,
                ops: completion::Ops::default(),
            }),
        };
        // Registration and the scheduled start need the Python object: `_start` does them.
        Ok(transport)
    }

    /// Registers the transport with its loop and schedules `connection_made`; called once by
    /// the Python subclass's `__init__`.
    #[pyo3(signature = (waiter=None))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let server = this.state.with(py, |s| s.server.as_ref().map(|s| s.clone_ref(py)))?;
        if let Some(server) = server {
            glue::helper(py, "server_attach")?.call1((server, slf))?;
        }
        base::start(slf, waiter)
    }

    /// Writes `data` (a bytes-like object): sent at once if the peer can take it, else queued and
    /// sent as it can; never blocks.
    pub(crate) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let bytes = data.cast::<PyBytes>().ok();
        let view = bytes.is_none() && data.is_instance_of::<PyMemoryView>();
        if bytes.is_none() && !view && !data.is_instance_of::<PyByteArray>() {
            return Err(write_type_error(data)?);
        }
        let (eof, waiting, conn_lost, queued) = this.state.with(py, |s| {
            (s.eof, s.empty_waiter.is_some(), s.flags.conn_lost, !s.writes.is_empty())
        })?;
        if eof {
            return Err(PyRuntimeError::new_err("Cannot call write() after write_eof()"));
        }
        if waiting {
            return Err(PyRuntimeError::new_err("unable to write; sendfile is in progress"));
        }
        // A memoryview's `len()`: asyncio's `if not data` asks for it (a 0-dim view has none
        // since 3.12), and since 3.12 it is what a queued view counts for in the buffer size.
        let items = if view { data.len()? } else { 0 };
        let counted_items = (items > 0 && write_buffer_counts_len(py)?).then_some(items);
        // The bytes per counted item, decided once here (1: bytes are counted).
        let unit = |nbytes: usize| counted_items.filter(|&n| n < nbytes).map_or(1, |n| nbytes / n);
        let attempt = Attempt {
            fd: this.base.fd,
            stats: &this.base.lp().stats,
            conn_lost,
            queued,
        };
        let mut per_item = 1;
        let outcome = if let Some(b) = bytes {
            // Queued as it is, without a copy: a bytes object cannot change.
            attempt.send(b.as_bytes(), |sent| (Chunk::Bytes(b.clone().unbind()), sent))
        } else {
            // Mutable or borrowed memory: sent from where it is; what the kernel does not take now
            // is copied, as asyncio copies it into its buffer. (It used to be copied into a new
            // `bytes` by a Python call first: 400 of 5,600 instructions per request on
            // `tcp bufproto 1KiB`, whose protocol writes a memoryview.)
            let direct = with_bytes(data, |buf| {
                per_item = unit(buf.len());
                attempt.send(buf, |sent| (Chunk::Bytes(PyBytes::new(py, &buf[sent..]).unbind()), 0))
            });
            if let Some(outcome) = direct {
                outcome
            } else {
                return Self::write_not_contiguous(slf, data, &attempt, unit);
            }
        };
        match outcome {
            Sent::Nothing | Sent::All => Ok(()),
            Sent::Lost => Self::write_after_loss(slf, conn_lost),
            Sent::Failed(e) => {
                let e = this
                    .state
                    .with(py, |s| reset_not_pipe(e.into(), s.completion, this.base.fd))?;
                base::fatal_error(slf, &os_error(&e), "Fatal write error on socket transport")
            }
            Sent::Part(chunk, offset) => {
                this.state.with(py, |s| s.queue(py, chunk, offset, per_item))?;
                base::sync_interest(slf)?;
                base::maybe_pause_protocol(slf)
            }
        }
    }

    /// `write(b"".join(list_of_data))`, with asyncio's own checks and messages where its socket
    /// transport has a `writelines` of its own (3.12+).
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if writelines_of_its_own(py)? {
            let (eof, waiting) = slf.get().state.with(py, |s| (s.eof, s.empty_waiter.is_some()))?;
            if eof {
                return Err(PyRuntimeError::new_err("Cannot call writelines() after write_eof()"));
            }
            if waiting {
                return Err(PyRuntimeError::new_err("unable to writelines; sendfile is in progress"));
            }
            if !list_of_data.is_truthy()? {
                return Ok(());
            }
            let items = list_of_data.try_iter()?.collect::<PyResult<Vec<_>>>()?;
            for item in &items {
                // asyncio takes a `memoryview(data)` of each.
                // SAFETY: a type check of a live object.
                if unsafe { ffi::PyObject_CheckBuffer(item.as_ptr()) } == 0 {
                    let name = item.get_type().name()?;
                    return Err(PyTypeError::new_err(format!(
                        "memoryview: a bytes-like object is required, not '{name}'"
                    )));
                }
            }
            let data = PyBytes::new(py, &[]).call_method1(intern!(py, "join"), (items,))?;
            return Self::write(slf, &data);
        }
        let data = PyBytes::new(py, &[]).call_method1(intern!(py, "join"), (list_of_data,))?;
        Self::write(slf, &data)
    }

    /// Closes the write end once the queued data is sent; reading goes on.
    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        let shutdown = self.state.with(py, |s| {
            if s.flags.closing || s.eof {
                return false;
            }
            s.eof = true;
            s.writes.is_empty()
        })?;
        if shutdown {
            rustix::net::shutdown(fd_of(self.base.fd), Shutdown::Write).map_err(|e| os_error(&e.into()))?;
        }
        Ok(())
    }

    /// Whether `write_eof()` is possible on this transport.
    #[allow(clippy::unused_self)] // an instance method in asyncio's API
    fn can_write_eof(&self) -> bool {
        true
    }

    /// Closes the transport: what is queued is sent first, then the protocol's
    /// `connection_lost(None)` is called.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        base::close(slf)
    }

    /// Closes the transport at once, dropping what is queued; the protocol's
    /// `connection_lost(None)` is called.
    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        base::force_close(slf, None)
    }

    /// asyncio's private `_force_close(exc)`, which `asyncio.sslproto` calls on its transport.
    fn _force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        base::force_close_py(slf, exc)
    }

    /// Whether the transport is closing or closed.
    fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        base::flag(self, py, |f| f.closing)
    }

    /// Whether received data is delivered to the protocol (reading is not paused).
    fn is_reading(&self, py: Python<'_>) -> PyResult<bool> {
        base::flag(self, py, Flags::is_reading)
    }

    /// Stops delivering received data to the protocol until `resume_reading()`.
    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        base::pause_reading(slf)
    }

    /// Delivers received data to the protocol again.
    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        base::resume_reading(slf)
    }

    /// Makes `protocol` the transport's protocol.
    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let proto = make_proto(protocol)?;
        let old = self.state.with(py, |s| {
            s.protocol_connected = true;
            s.proto.replace(proto)
        })?;
        drop(old);
        Ok(())
    }

    /// The transport's protocol.
    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        base::protocol(self, py)
    }

    /// The size of what is queued to be written.
    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        base::buffer_size(self, py)
    }

    /// `(low, high)`: the write buffer's water marks.
    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        base::write_limits(self, py)
    }

    /// Sets the write buffer's water marks: the protocol's `pause_writing()` is called when the
    /// queue grows above `high`, `resume_writing()` when it drains to `low` or below.
    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        base::set_write_buffer_limits(slf, high, low)
    }

    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if this.state.with(py, |s| s.empty_waiter.is_some())? {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let waiter = crate::tasks::new_future(this.base.loop_.bind(py).as_any())?;
        let empty = this.state.with(py, |s| {
            s.empty_waiter = Some(waiter.clone().unbind());
            s.writes.is_empty()
        })?;
        if empty {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) -> PyResult<()> {
        let old = self.state.with(py, |s| s.empty_waiter.take())?;
        drop(old);
        Ok(())
    }

    #[getter]
    fn _sock(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.state.with(py, |s| s.sock.as_ref().map(|s| s.clone_ref(py)))
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.base.fd
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<LoopCore> {
        self.base.loop_.clone_ref(py)
    }

    #[getter]
    fn _protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        base::protocol(self, py)
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> PyResult<bool> {
        base::flag(self, py, |f| f.closing)
    }

    /// The protocol was told to pause writing (asyncio's `_FlowControlMixin._protocol_paused`).
    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> PyResult<bool> {
        base::flag(self, py, |f| f.flow.paused)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> PyResult<u32> {
        base::flag(self, py, |f| f.conn_lost)
    }

    /// The extra-info dict `asyncio.BaseTransport.get_extra_info` reads.
    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.base.extra.clone_ref(py)
    }

    /// `(reading, writing)`: what the loop watches the fd for on the transport's behalf.
    fn _polling(&self, py: Python<'_>) -> PyResult<(bool, bool)> {
        self.state.with(py, |s| {
            if s.completion {
                (s.ops.receiving(), s.ops.sending())
            } else {
                (s.flags.interest.readable, s.flags.interest.writable)
            }
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.base.traverse(&visit)?;
        let Some(s) = self.state.for_traverse() else {
            return Ok(());
        };
        visit.call(&s.sock)?;
        visit.call(&s.server)?;
        visit.call(&s.empty_waiter)?;
        if let Some(p) = &s.proto {
            visit.call(&p.protocol)?;
            match &p.reader {
                Reader::Data(f) => visit.call(f)?,
                Reader::Tls(p) => visit.call(p)?,
                Reader::Buffered {
                    get_buffer,
                    buffer_updated,
                } => {
                    visit.call(get_buffer)?;
                    visit.call(buffer_updated)?;
                }
            }
        }
        Ok(())
    }
}
