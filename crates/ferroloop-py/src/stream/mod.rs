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
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use ferroloop_core::driver::Interest;
use ferroloop_core::writeq::WriteQueue;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use rustix::net::Shutdown;

use crate::buffers::Chunk;
use crate::cell::AttachedCell;
use crate::glue::{self, copy_context, os_error};
use crate::owner::{IoOp, LoopRef, Owner};

mod completion;
mod read;
mod write;
use crate::transport::base::{self, Base, Flags, Transport};
use crate::transport::{compat_flag, fd_of, is_exit};

/// Whether `connection_lost` runs in the connection's context, not in its closer's (3.15+).
pub fn connection_lost_in_connection_context(py: Python<'_>) -> PyResult<bool> {
    static SWITCH: PyOnceLock<bool> = PyOnceLock::new();
    compat_flag(py, &SWITCH, "CONNECTION_LOST_IN_CONNECTION_CONTEXT")
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
    /// A protocol written in Rust (TLS's): given each read without a Python call.
    Native(Py<PyAny>, Feed),
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
            edge: false,
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
    /// Receive completions carrying data that wait in the loop's ready queue (completion model):
    /// counted by the loop as it queues them, outside `state` (the loop holds its own state
    /// then), and by `on_done` as it takes them. A close meanwhile discards that data.
    queued_data: AtomicUsize,
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
        // Data received but still queued for the protocol will not reach it either.
        let queued = self.queued_data.load(Ordering::Relaxed) > 0;
        if sock.is_some() && (released.reset || queued) {
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

/// Gives a protocol written in Rust one read (a `bytes`).
pub type Feed = fn(&Bound<'_, PyAny>, &Bound<'_, PyAny>) -> PyResult<()>;

/// A protocol class written in Rust that takes a stream's reads without a Python call: TLS's
/// `TlsProtocol`. TLS sits above the stream (it writes through it), so the stream does not name
/// it: `lib.rs` plugs it in at import ([`plug_native_reader`]).
pub struct NativeReader {
    /// Whether a protocol is of the class.
    pub accepts: fn(&Bound<'_, PyAny>) -> bool,
    pub feed: Feed,
}

static NATIVE_READER: OnceLock<NativeReader> = OnceLock::new();

/// Makes the stream give reads to `reader`'s protocols in Rust (once, at import).
pub fn plug_native_reader(reader: NativeReader) {
    // NOTE: a second plug (a second import of the module in one process) is the same reader.
    let _ = NATIVE_READER.set(reader);
}

fn make_proto(protocol: &Bound<'_, PyAny>) -> PyResult<Proto> {
    let py = protocol.py();
    let buffered_type = py.import("asyncio")?.getattr(intern!(py, "BufferedProtocol"))?;
    let native = NATIVE_READER.get().filter(|n| (n.accepts)(protocol));
    let reader = if let Some(native) = native {
        Reader::Native(protocol.clone().unbind(), native.feed)
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
        py: Python<'_>,
        loop_: LoopRef,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        waiter: Option<&Bound<'_, PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
        server: Option<&Bound<'_, PyAny>>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let _ = waiter; // resolved by `_start`, once the object exists
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        let extra = glue::helper(py, "socket_extra")?
            .call1((sock, extra))?
            .cast_into::<PyDict>()?
            .unbind();
        let server = server.filter(|s| !s.is_none()).map(|s| s.clone().unbind());
        let completion = loop_.io().completion_streams(py)?;
        let transport = StreamTransport {
            base: Base {
                loop_,
                fd,
                extra,
                context: match context.filter(|c| !c.is_none(py)) {
                    Some(c) => c,
                    None => copy_context(py)?,
                },
            },
            queued_data: AtomicUsize::new(0),
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
                completion,
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
        Self::write_data(slf, data)
    }

    /// `write(b"".join(list_of_data))`, with asyncio's own checks and messages where its socket
    /// transport has a `writelines` of its own (3.12+).
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::write_lines(slf, list_of_data)
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
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.base.loop_.object(py)
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
                Reader::Native(p, _) => visit.call(p)?,
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
