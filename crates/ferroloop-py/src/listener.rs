//! `Listener`: accepts connections on a listening socket and makes their transports, in Rust.
//!
//! It replaces asyncio's `_accept_connection` reader for servers without TLS: up to `backlog`
//! connections per readable event, each made non-blocking by `accept4` itself, wrapped in a
//! Python `socket.socket` (what `get_extra_info('socket')` returns), given a protocol from the
//! server's factory and a transport straight away: no task and no waiter per connection, where
//! asyncio runs a coroutine for each. Running out of fds is reported and retried after
//! `ACCEPT_RETRY_DELAY`, as asyncio does. A TLS server's connections get their TLS protocol
//! from `ferroloop._tls.accept` (asyncio's `_accept_connection2` without its task).
//!
//! On the `io_uring` backend (completion model) a listener is one multishot accept: each
//! completion is an accepted fd, handled as above (its peer address from `getpeername`, which a
//! multishot accept does not report). Stopping cancels it; connections accepted meanwhile are
//! closed.

use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use ferroloop_core::driver::Interest;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::{PyTraverseError, PyVisit};
use rustix::io::Errno;
use rustix::net::SocketFlags;

use crate::cell::AttachedCell;
use crate::glue::{self, copy_context, os_error};
use crate::owner::{Done, IoOp, LoopRef, Owner};
use crate::sockaddr;
use crate::transport::{fd_of, in_context, is_exit};

/// Linux's `SOCK_NONBLOCK`, or-ed into the type given to `socket.socket(...)` so that Python
/// knows the accepted socket is non-blocking without a `setblocking` call.
const SOCK_NONBLOCK: i64 = SocketFlags::NONBLOCK.bits() as i64;

#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct Listener {
    loop_: LoopRef,
    fd: RawFd,
    sock: Py<PyAny>,
    protocol_factory: Py<PyAny>,
    server: Option<Py<PyAny>>,
    backlog: usize,
    /// `(family, type, proto)` of accepted sockets.
    kind: (i64, i64, i64),
    context: Py<PyAny>,
    /// False once stopped, and while waiting to retry after running out of fds.
    active: AtomicBool,
    /// `(sslcontext, handshake_timeout, shutdown_timeout)` of a TLS server.
    tls: Option<Py<PyAny>>,
    /// The multishot accept in flight (completion model).
    accept_op: AttachedCell<Option<usize>>,
    completion: bool,
}

impl Listener {
    /// Starts or stops accepting, keeping the loop's count of servers accepting now.
    fn set_active(&self, on: bool) {
        if self.active.swap(on, Ordering::Relaxed) != on {
            self.loop_.io().stats().servers_changed(on);
        }
    }

    pub fn wants(&self) -> Interest {
        if self.active.load(Ordering::Relaxed) && !self.completion {
            Interest::READABLE
        } else {
            Interest::NONE
        }
    }

    pub fn context(&self) -> &Py<PyAny> {
        &self.context
    }

    pub fn run_op(slf: &Bound<'_, Self>, op: IoOp) -> PyResult<()> {
        match op {
            IoOp::Read => Self::accept_ready(slf),
            IoOp::Done(done) => Self::accept_done(slf, &done),
            IoOp::Start(_) | IoOp::Write | IoOp::ConnectionLost(_) | IoOp::Eof | IoOp::Deliver | IoOp::Rearm => Ok(()),
        }
    }

    fn accept_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        for _ in 0..this.backlog {
            if !this.active.load(Ordering::Relaxed) {
                return Ok(());
            }
            match rustix::net::acceptfrom_with(fd_of(this.fd), SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok((conn, addr)) => Self::accepted(slf, conn.into_raw_fd(), addr)?,
                Err(Errno::AGAIN | Errno::INTR | Errno::CONNABORTED) => return Ok(()),
                Err(e) => return Self::accept_failed(slf, e),
            }
        }
        Ok(())
    }

    /// A failed accept, as asyncio's `_accept_connection` treats it: out of resources, report
    /// and retry after a delay; anything else, report.
    fn accept_failed(slf: &Bound<'_, Self>, e: Errno) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let exc = os_error(&e.into());
        if matches!(e, Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) {
            Self::pause(slf)?;
            glue::helper(py, "accept_out_of_resources")?.call1((
                this.loop_.bind(py),
                slf,
                &this.sock,
                glue::exc_value(py, &exc),
            ))?;
            return Ok(());
        }
        // asyncio lets this escape its reader callback, so the loop reports it.
        glue::helper(py, "report_call_error")?.call1((
            this.loop_.bind(py),
            slf.getattr(intern!(py, "_accept"))?,
            (),
            glue::exc_value(py, &exc),
        ))?;
        Ok(())
    }

    /// Stops accepting until `_start` (readiness: no interest; completion: the accept cancelled).
    fn pause(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.set_active(false);
        if this.completion {
            if let Some(op) = this.accept_op.with(py, |op| *op)? {
                this.loop_.io().cancel_op(py, op)?;
            }
            return Ok(());
        }
        this.loop_.io().set_owner_interest(py, this.fd, Interest::NONE)
    }

    /// A completion of the multishot accept: a connection, or why it ended.
    fn accept_done(slf: &Bound<'_, Self>, done: &Done) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let ours = this.accept_op.with(py, |op| {
            let ours = *op == Some(done.op);
            if ours && !done.more {
                *op = None;
            }
            ours
        })?;
        let active = ours && this.active.load(Ordering::Relaxed);
        let conn_fd: RawFd = done.result;
        if conn_fd >= 0 {
            if active {
                // SAFETY: the kernel just made `conn_fd` for us; nothing else uses it yet.
                let peer = rustix::net::getpeername(unsafe { std::os::fd::BorrowedFd::borrow_raw(conn_fd) })
                    .ok()
                    .flatten();
                Self::accepted(slf, conn_fd, peer)?;
            } else {
                // Accepted while stopping: nobody will serve it.
                // SAFETY: the kernel just made `conn_fd` for us; nothing else uses it.
                drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(conn_fd) });
            }
        }
        if done.result < 0 && active {
            let e = Errno::from_raw_os_error(-done.result);
            if !matches!(e, Errno::AGAIN | Errno::INTR | Errno::CONNABORTED | Errno::CANCELED) {
                Self::accept_failed(slf, e)?;
            }
        }
        // An accept that ended while the listener still serves is started again.
        if !done.more && this.active.load(Ordering::Relaxed) && this.accept_op.with(py, |op| op.is_none())? {
            Self::start_accepting(slf)?;
        }
        Ok(())
    }

    fn start_accepting(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let op = this
            .loop_
            .io()
            .start_accept(py, this.fd, Owner::Listener(slf.clone().unbind()))?;
        this.accept_op.with(py, |slot| *slot = Some(op))
    }

    /// `protocol_factory()` and a transport for it, as asyncio's `_accept_connection2` makes them,
    /// both in `context`: the connection's own copy of the server's context (asyncio 3.15 passes
    /// it explicitly; before, its per-connection accept task ran in such a copy).
    fn make_transport(
        &self,
        py: Python<'_>,
        conn: &Bound<'_, PyAny>,
        peername: &Bound<'_, PyAny>,
        context: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let extra = PyDict::new(py);
        extra.set_item("peername", peername)?;
        if let Some(tls) = &self.tls {
            // The TLS protocol and transport are made by ferroloop._tls (once per connection).
            return glue::helper(py, "tls_accept")?
                .call1((
                    self.loop_.bind(py),
                    conn,
                    &self.protocol_factory,
                    extra,
                    &self.server,
                    tls,
                    context,
                ))
                .map(drop);
        }
        let protocol = self.protocol_factory.bind(py).call0()?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("extra", extra)?;
        kwargs.set_item("server", &self.server)?;
        kwargs.set_item("context", context)?;
        self.loop_
            .bind(py)
            .call_method(intern!(py, "_make_socket_transport"), (conn, protocol), Some(&kwargs))
            .map(drop)
    }

    /// Wraps one accepted connection and gives it a protocol and a transport.
    fn accepted(slf: &Bound<'_, Self>, conn_fd: RawFd, addr: Option<rustix::net::SocketAddrAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.loop_.io().stats().accepted.add(1);
        let (family, kind, proto) = this.kind;
        let socket_type = py.import("socket")?.getattr(intern!(py, "socket"))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("fileno", conn_fd)?;
        let conn = match socket_type.call((family, kind | SOCK_NONBLOCK, proto), Some(&kwargs)) {
            Ok(conn) => conn,
            Err(err) => {
                // SAFETY: the fd came from accept and was not given to any object.
                drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(conn_fd) });
                return Err(err);
            }
        };
        let peername = sockaddr::to_py(py, addr)?;
        let context = this.context.bind(py).call_method0(intern!(py, "copy"))?;
        let made = in_context(py, &context.clone().unbind(), || {
            this.make_transport(py, &conn, &peername, &context)
        });
        match made {
            Ok(()) => Ok(()),
            Err(err) if is_exit(py, &err) => Err(err),
            Err(err) => {
                conn.call_method0(intern!(py, "close"))?;
                glue::helper(py, "transport_creation_failed")?
                    .call1((this.loop_.bind(py), glue::exc_value(py, &err)))
                    .map(drop)
            }
        }
    }
}

#[pymethods]
impl Listener {
    #[new]
    /// `context` is the server's (asyncio 3.15 passes it to `_start_serving`); by default a copy
    /// of the current one. Each connection gets a copy of it.
    #[pyo3(signature = (loop_, sock, protocol_factory, server=None, backlog=100, tls=None, context=None))]
    fn new(
        py: Python<'_>,
        loop_: LoopRef,
        sock: &Bound<'_, PyAny>,
        protocol_factory: &Bound<'_, PyAny>,
        server: Option<&Bound<'_, PyAny>>,
        backlog: i64,
        tls: Option<Py<PyAny>>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let context = match context.filter(|c| !c.is_none(py)) {
            Some(c) => c,
            None => copy_context(py)?,
        };
        let completion = loop_.io().completion_streams(py)?;
        Ok(Listener {
            loop_,
            fd: sock.call_method0(intern!(py, "fileno"))?.extract()?,
            sock: sock.clone().unbind(),
            protocol_factory: protocol_factory.clone().unbind(),
            server: server.filter(|s| !s.is_none()).map(|s| s.clone().unbind()),
            // asyncio takes any int its socket's listen() took (a negative one means 0 there) and
            // accepts up to that many per readiness; at least one here, so that the server serves.
            backlog: usize::try_from(backlog).unwrap_or(0).max(1),
            kind: (
                sock.getattr(intern!(py, "family"))?.extract()?,
                sock.getattr(intern!(py, "type"))?.extract()?,
                sock.getattr(intern!(py, "proto"))?.extract()?,
            ),
            context,
            active: AtomicBool::new(false),
            tls: tls.filter(|t| !t.is_none(py)),
            accept_op: AttachedCell::new(None),
            completion,
        })
    }

    /// Starts accepting (again, after a retry delay).
    fn _start(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.loop_.io().is_closed() {
            return Ok(());
        }
        this.set_active(true);
        if this.completion {
            // A retry after running out of fds may find the old accept still ending: it is
            // started again when its last completion comes.
            return match this.accept_op.with(py, |op| *op)? {
                Some(_) => Ok(()),
                None => Self::start_accepting(slf),
            };
        }
        this.loop_
            .io()
            .attach_owner(py, this.fd, Owner::Listener(slf.clone().unbind()))?;
        this.loop_.io().set_owner_interest(py, this.fd, Interest::READABLE)
    }

    /// Accepts what is pending now (asyncio's `_accept_connection`, for error reports).
    fn _accept(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::accept_ready(slf)
    }

    /// Stops accepting; the server closes the socket.
    fn _stop(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.completion {
            return Self::pause(slf);
        }
        this.set_active(false);
        this.loop_.io().detach_owner(py, this.fd)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.loop_.traverse(&visit)?;
        visit.call(&self.sock)?;
        visit.call(&self.protocol_factory)?;
        visit.call(&self.server)?;
        visit.call(&self.tls)?;
        visit.call(&self.context)
    }
}
