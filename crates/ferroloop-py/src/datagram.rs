//! `DatagramTransport`: asyncio's UDP (and UNIX datagram) transport with its receive and send
//! paths in Rust.
//!
//! It follows asyncio's `_SelectorDatagramTransport`: each datagram is given to
//! `datagram_received(data, addr)`; `sendto` tries the syscall at once and queues (a `bytes` copy,
//! as asyncio does) only when the socket buffer is full; send and receive errors go to
//! `error_received`. Addresses are converted in Rust when they are numeric (the common case);
//! anything else goes through Python's `socket.sendto`, which resolves as users expect.
//!
//! Where asyncio reads one datagram per readable event, a readable event here reads up to
//! [`READ_BATCH`] datagrams, as libuv (so uvloop) does, checking before each one that the
//! transport still reads (`pause_reading()` or `close()` in `datagram_received` ends the batch).
//! The protocol sees the same datagrams in the same order; only callbacks that `datagram_received`
//! schedules run after the rest of the batch rather than between two datagrams.
//!
//! One difference, kept on purpose: `sendto(data)` with no address on a socket that has no
//! `peername` (an `AF_UNIX` socketpair) sends with `send()`, as uvloop does, where asyncio fails
//! with a `TypeError` from `sock.sendto(data, None)`.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use ferroloop_core::driver::Interest;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketAddrAny};

use crate::cell::AttachedCell;
use crate::glue::{self, copy_context, os_error};
use crate::owner::{IoOp, LoopRef, Owner};
use crate::sockaddr::{self, PeerCache};
use crate::transport::base::{self, Base, Flags, Transport};
use crate::transport::{
    compat_flag, compat_size, fd_of, flow_callback, is_strided_view, not_contiguous, LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};

/// Datagrams read at most per readable event.
///
/// One `epoll_wait` per datagram was a third of the server's syscalls on a 1 KiB echo with 10
/// sockets in flight (strace: 20,000 each of `epoll_pwait`, `recvfrom` and `sendto` for 20,000
/// echoes, where uvloop made 639 `epoll_pwait`s, libuv reading up to 32 datagrams per event). The bound keeps
/// one busy socket from holding up the loop's other work.
const READ_BATCH: usize = 32;

/// Whether `sendto(b"")` sends an empty datagram (asyncio 3.13+; before, it did nothing).
fn sends_empty_datagrams(py: Python<'_>) -> PyResult<bool> {
    static SWITCH: PyOnceLock<bool> = PyOnceLock::new();
    compat_flag(py, &SWITCH, "SENDTO_SENDS_EMPTY_DATAGRAMS")
}

/// `(queued, sent)`: what a queued datagram adds to the buffer size beyond its bytes, and what
/// its sending takes off beyond them (asyncio 3.13+ counts 8 header bytes; 3.13.0 forgot to take
/// them off).
fn header_sizes(py: Python<'_>) -> PyResult<(usize, usize)> {
    static HEADER: PyOnceLock<usize> = PyOnceLock::new();
    static RELEASED: PyOnceLock<bool> = PyOnceLock::new();
    let header = compat_size(py, &HEADER, "DATAGRAM_HEADER_SIZE")?;
    let released = compat_flag(py, &RELEASED, "DATAGRAM_SENT_RELEASES_HEADER")?;
    Ok((header, if released { header } else { 0 }))
}

pub struct State {
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    protocol_connected: bool,
    /// Datagrams waiting for the socket to be writable, with their destination.
    queue: VecDeque<(Py<PyBytes>, Option<Py<PyAny>>)>,
    buffer_size: usize,
    flags: Flags,
    /// The Python forms of recent peers' addresses (see [`PeerCache`]).
    peers: PeerCache,
    /// The last address object given to `datagram_received` or `sendto`, and its kernel form:
    /// an echo sends back to the very tuple it received, which then needs no parsing.
    dest: Option<(Py<PyAny>, SocketAddrAny)>,
}

/// A datagram, with its destination.
type Queued = (Py<PyBytes>, Option<Py<PyAny>>);

impl base::State for State {
    /// The protocol, and the peers' addresses (dropped before the socket's close).
    type Released = (
        Option<Py<PyAny>>,
        Option<(Vec<Py<PyAny>>, Option<(Py<PyAny>, SocketAddrAny)>)>,
    );
    type Dropped = VecDeque<Queued>;

    fn flags(&self) -> &Flags {
        &self.flags
    }

    fn flags_mut(&mut self) -> &mut Flags {
        &mut self.flags
    }

    fn protocol(&self) -> Option<&Py<PyAny>> {
        self.protocol.as_ref()
    }

    fn protocol_connected(&self) -> bool {
        self.protocol_connected
    }

    fn wanted_interest(&self) -> Interest {
        let f = &self.flags;
        Interest {
            readable: f.started && f.is_reading() && f.conn_lost == 0,
            writable: !self.queue.is_empty(),
            edge: false,
        }
    }

    fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    fn writes_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    fn drop_writes(&mut self) -> VecDeque<Queued> {
        self.buffer_size = 0;
        std::mem::take(&mut self.queue)
    }

    fn release(&mut self, _py: Python<'_>) -> (Option<Py<PyAny>>, Self::Released) {
        let peers = (self.peers.clear(), self.dest.take());
        (self.sock.take(), (self.protocol.take(), Some(peers)))
    }
}

#[pyclass(frozen, subclass, weakref, extends = crate::transport_root::TransportRoot, module = "ferroloop._ferroloop")]
pub struct DatagramTransport {
    base: Base,
    /// The `remote_addr` the endpoint was created with (asyncio's `_address`).
    address: Option<Py<PyAny>>,
    /// The socket has a peer: sends use `send()`.
    connected: bool,
    state: AttachedCell<State>,
}

/// How a send went: done, would block (queue it), or failed with an `OSError` for
/// `error_received`.
enum Sent {
    Done,
    Blocked,
    Failed(PyErr),
}

impl Transport for DatagramTransport {
    type State = State;

    fn base(&self) -> &Base {
        &self.base
    }

    fn state(&self) -> &AttachedCell<State> {
        &self.state
    }

    fn owner(slf: &Bound<'_, Self>) -> Owner {
        Owner::Datagram(slf.clone().unbind())
    }

    fn lose(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        base::force_close(slf, exc)
    }

    fn before_close(&self, _: Option<&Py<PyAny>>, released: &mut <State as base::State>::Released) {
        drop(released.1.take());
    }
}

impl DatagramTransport {
    /// Sends one datagram.
    fn send_one(&self, py: Python<'_>, data: &[u8], addr: Option<&Bound<'_, PyAny>>) -> Sent {
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        let fd = fd_of(self.base.fd);
        let res = match addr.filter(|_| !self.connected) {
            None => rustix::net::send(fd, data, flags),
            Some(addr) => match self.dest_of(py, addr) {
                Ok(Some(a)) => rustix::net::sendto(fd, data, flags, &a),
                Ok(None) => return self.send_with_python(py, data, addr),
                Err(e) => return Sent::Failed(e),
            },
        };
        match res {
            Ok(n) => {
                self.base.lp().stats().wrote(n);
                Sent::Done
            }
            Err(Errno::AGAIN | Errno::INTR) => Sent::Blocked,
            // No address on a socket with no peer: let `socket.sendto` say what asyncio says.
            Err(Errno::DESTADDRREQ) if addr.is_none() => self.send_with_python(py, data, &py.None().into_bound(py)),
            Err(e) => Sent::Failed(os_error(&e.into())),
        }
    }

    /// The kernel form of a destination, `None` for one Rust does not parse. The last one is
    /// kept with its object: the same object again (not merely an equal one) needs no parsing,
    /// since a tuple of `str` and `int`s cannot change.
    fn dest_of(&self, py: Python<'_>, addr: &Bound<'_, PyAny>) -> PyResult<Option<SocketAddrAny>> {
        let hit = self.state.with(py, |s| {
            s.dest
                .as_ref()
                .filter(|(obj, _)| obj.as_ptr() == addr.as_ptr())
                .map(|(_, a)| a.clone())
        })?;
        if hit.is_some() {
            return Ok(hit);
        }
        let Some(parsed) = sockaddr::from_py(addr) else {
            return Ok(None);
        };
        let old = self
            .state
            .with(py, |s| s.dest.replace((addr.clone().unbind(), parsed.clone())))?;
        drop(old);
        Ok(Some(parsed))
    }

    /// The Python form of a peer's address, from the cache when the peer was seen lately.
    fn peer_object<'py>(&self, py: Python<'py>, addr: Option<SocketAddrAny>) -> PyResult<Bound<'py, PyAny>> {
        let Some(addr) = addr else {
            return Ok(py.None().into_bound(py));
        };
        let cached = self.state.with(py, |s| s.peers.get(py, &addr))?;
        let (obj, evicted) = if let Some(obj) = cached {
            (obj, Vec::new())
        } else {
            let obj = sockaddr::to_py(py, Some(addr.clone()))?.unbind();
            let evicted = self.state.with(py, |s| s.peers.insert(&addr, &obj, py))?;
            (obj, evicted)
        };
        let old = self.state.with(py, |s| s.dest.replace((obj.clone_ref(py), addr)))?;
        drop((evicted, old));
        Ok(obj.into_bound(py))
    }

    /// A failed send: an `OSError` goes to `error_received`, anything else is fatal (asyncio).
    fn send_failed(slf: &Bound<'_, Self>, err: &PyErr) -> PyResult<()> {
        if err.is_instance_of::<pyo3::exceptions::PyOSError>(slf.py()) {
            Self::error_received(slf, err)
        } else {
            base::fatal_error(slf, err, "Fatal write error on datagram transport")
        }
    }

    /// `sock.sendto(data, addr)` for addresses Rust does not parse (host names, odd forms).
    fn send_with_python(&self, py: Python<'_>, data: &[u8], addr: &Bound<'_, PyAny>) -> Sent {
        let sock = match self.state.with(py, |s| s.sock.as_ref().map(|s| s.clone_ref(py))) {
            Ok(Some(sock)) => sock,
            Ok(None) => return Sent::Done,
            Err(e) => return Sent::Failed(e),
        };
        match sock.bind(py).call_method1("sendto", (PyBytes::new(py, data), addr)) {
            Ok(_) => Sent::Done,
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py) => Sent::Blocked,
            Err(e) => Sent::Failed(e),
        }
    }

    /// Calls `protocol.error_received(exc)`; what it raises goes to the exception handler.
    fn error_received(slf: &Bound<'_, Self>, err: &PyErr) -> PyResult<()> {
        let py = slf.py();
        let Some(protocol) = base::protocol(slf.get(), py)? else {
            return Ok(());
        };
        let args = PyTuple::new(py, [glue::exc_value(py, err)])?;
        base::call_protocol(slf, protocol.bind(py), intern!(py, "error_received"), &args)
    }

    fn run_start(slf: &Bound<'_, Self>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        if let Some(protocol) = base::protocol(slf.get(), py)? {
            let args = PyTuple::new(py, [slf])?;
            base::call_protocol(slf, protocol.bind(py), intern!(py, "connection_made"), &args)?;
        }
        base::started(slf, waiter)
    }

    /// Reads and delivers up to [`READ_BATCH`] datagrams, while the socket has them and the
    /// transport still reads.
    fn run_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.base.fd;
        for _ in 0..READ_BATCH {
            let protocol = this.state.with(py, |s| {
                s.protocol
                    .as_ref()
                    .filter(|_| base::State::wanted_interest(s).readable)
                    .map(|p| p.clone_ref(py))
            })?;
            let Some(protocol) = protocol else {
                return Ok(());
            };
            // NOTE: making the bytes inside the borrow is allowed: bytes are not GC-tracked, so
            // their allocation cannot start a collection that runs finalizers.
            let got = this.base.lp().read_buf().with(py, |buf| {
                match rustix::net::recvfrom(fd_of(fd), &mut buf[..], RecvFlags::DONTWAIT) {
                    Ok((n, _, addr)) => {
                        this.base.lp().stats().read(n);
                        Ok((PyBytes::new(py, &buf[..n]), addr))
                    }
                    Err(e) => Err(e),
                }
            })?;
            let (data, addr) = match got {
                Ok(got) => got,
                Err(Errno::AGAIN | Errno::INTR) => return Ok(()),
                Err(e) => return Self::error_received(slf, &os_error(&e.into())),
            };
            let addr = this.peer_object(py, addr)?;
            let protocol = protocol.bind(py);
            if let Err(err) = protocol.call_method1(intern!(py, "datagram_received"), (&data, &addr)) {
                let method = protocol.getattr(intern!(py, "datagram_received"))?;
                base::report(slf, Err(err), &method, &PyTuple::new(py, [&data])?)?;
            }
        }
        Ok(())
    }

    fn run_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (_, header) = header_sizes(py)?;
        loop {
            let Some((data, addr)) = this.state.with(py, |s| {
                let item = s.queue.pop_front()?;
                s.buffer_size -= item.0.bind(py).as_bytes().len() + header;
                Some(item)
            })?
            else {
                break;
            };
            match this.send_one(py, data.bind(py).as_bytes(), addr.as_ref().map(|a| a.bind(py))) {
                Sent::Done => {}
                Sent::Blocked => {
                    this.state.with(py, |s| {
                        s.buffer_size += data.bind(py).as_bytes().len() + header;
                        s.queue.push_front((data, addr));
                    })?;
                    break;
                }
                Sent::Failed(err) => return Self::send_failed(slf, &err),
            }
        }
        base::maybe_resume_protocol(slf)?;
        let (empty, closing) = this.state.with(py, |s| (s.queue.is_empty(), s.flags.closing))?;
        if empty {
            base::sync_interest(slf)?;
            if closing {
                return base::connection_lost(slf, None);
            }
        }
        Ok(())
    }

    pub fn run_op(slf: &Bound<'_, Self>, op: IoOp) -> PyResult<()> {
        match op {
            IoOp::Start(waiter) => Self::run_start(slf, waiter),
            IoOp::Read => Self::run_read(slf),
            IoOp::Write => Self::run_write(slf),
            IoOp::ConnectionLost(exc) => base::connection_lost(slf, exc),
            // Not used by datagram transports (readiness only).
            IoOp::Eof | IoOp::Done(_) | IoOp::Deliver | IoOp::Rearm => Ok(()),
        }
    }

    pub fn context(&self) -> &Py<PyAny> {
        &self.base.context
    }

    pub fn wants(&self, py: Python<'_>) -> Interest {
        base::wants(self, py)
    }
}

#[pymethods]
impl DatagramTransport {
    /// `(loop, sock, protocol, address=None, waiter=None, extra=None)`, as asyncio's
    /// `_make_datagram_transport` receives them.
    #[new]
    #[pyo3(signature = (loop_, sock, protocol, address=None, waiter=None, extra=None))]
    fn new(
        py: Python<'_>,
        loop_: LoopRef,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        address: Option<&Bound<'_, PyAny>>,
        waiter: Option<&Bound<'_, PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let _ = waiter; // resolved by `_start`, once the object exists
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        let extra = glue::helper(py, "socket_extra")?
            .call1((sock, extra))?
            .cast_into::<PyDict>()?;
        let connected = match extra.get_item("peername")? {
            Some(p) => p.is_truthy()?,
            None => false,
        };
        Ok(DatagramTransport {
            base: Base {
                loop_,
                fd,
                extra: extra.unbind(),
                context: copy_context(py)?,
            },
            address: address.filter(|a| !a.is_none()).map(|a| a.clone().unbind()),
            connected,
            state: AttachedCell::new(State {
                sock: Some(sock.clone().unbind()),
                protocol: Some(protocol.clone().unbind()),
                protocol_connected: true,
                queue: VecDeque::new(),
                buffer_size: 0,
                flags: Flags::default(),
                peers: PeerCache::default(),
                dest: None,
            }),
        })
    }

    #[pyo3(signature = (waiter=None))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
        base::start(slf, waiter)
    }

    /// Sends the datagram `data` to `addr` (to the connected peer when `addr` is None); queued
    /// if the socket cannot take it now.
    #[pyo3(signature = (data, addr=None))]
    fn sendto(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>, addr: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let bytes = if let Ok(b) = data.cast::<PyBytes>() {
            b.clone()
        } else if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
            py.get_type::<PyBytes>().call1((data,))?.cast_into::<PyBytes>()?
        } else {
            let name = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not '{name}'"
            )));
        };
        let size = bytes.as_bytes().len();
        if size == 0 && !sends_empty_datagrams(py)? {
            return Ok(());
        }
        let mut addr = addr.filter(|a| !a.is_none()).cloned();
        if let Some(own) = &this.address {
            let own = own.bind(py);
            if let Some(given) = &addr {
                if !given.eq(own)? {
                    return Err(PyValueError::new_err(format!(
                        "Invalid address: must be None or {}",
                        own.str()?
                    )));
                }
            }
            addr = Some(own.clone());
        }
        let (conn_lost, queued) = this.state.with(py, |s| (s.flags.conn_lost, !s.queue.is_empty()))?;
        if conn_lost > 0 && this.address.is_some() {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                glue::helper(py, "log_warning")?.call1(("socket.send() raised exception.",))?;
            }
            this.state.with(py, |s| s.flags.conn_lost += 1)?;
            return Ok(());
        }
        if !queued && is_strided_view(data) {
            // asyncio hands the view to sock.sendto(), which refuses it (a fatal write error);
            // with datagrams queued it queues bytes(data), as here.
            return base::fatal_error(slf, &not_contiguous(), "Fatal write error on datagram transport");
        }
        if !queued {
            match this.send_one(py, bytes.as_bytes(), addr.as_ref()) {
                Sent::Done => return Ok(()),
                Sent::Blocked => {}
                Sent::Failed(err) => return Self::send_failed(slf, &err),
            }
        }
        let (header, _) = header_sizes(py)?;
        let pause = this.state.with(py, |s| {
            s.queue.push_back((bytes.unbind(), addr.map(Bound::unbind)));
            s.buffer_size += size + header;
            s.flags.flow.should_pause(s.buffer_size)
        })?;
        base::sync_interest(slf)?;
        if pause {
            flow_callback(slf.as_any(), base::protocol(this, py)?, "pause_writing")?;
        }
        Ok(())
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

    /// asyncio's private `_force_close(exc)`.
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
        slf.get()
            .state
            .with(slf.py(), |s| s.flags.paused |= s.flags.is_reading())?;
        base::sync_interest(slf)
    }

    /// Delivers received data to the protocol again.
    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().state.with(slf.py(), |s| s.flags.paused &= s.flags.closing)?;
        base::sync_interest(slf)
    }

    /// Makes `protocol` the transport's protocol.
    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let old = self.state.with(py, |s| {
            s.protocol_connected = true;
            s.protocol.replace(protocol.clone().unbind())
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
    fn _address(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.address.as_ref().map(|a| a.clone_ref(py))
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> PyResult<bool> {
        base::flag(self, py, |f| f.closing)
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

    fn _polling(&self, py: Python<'_>) -> PyResult<(bool, bool)> {
        base::polling(self, py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.base.traverse(&visit)?;
        visit.call(&self.address)?;
        let Some(s) = self.state.for_traverse() else {
            return Ok(());
        };
        visit.call(&s.sock)?;
        visit.call(&s.protocol)?;
        for (data, addr) in &s.queue {
            visit.call(data)?;
            visit.call(addr)?;
        }
        for obj in s.peers.objects() {
            visit.call(obj)?;
        }
        if let Some((obj, _)) = &s.dest {
            visit.call(obj)?;
        }
        Ok(())
    }
}
