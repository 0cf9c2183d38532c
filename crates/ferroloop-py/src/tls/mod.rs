//! TLS over a ferroloop transport: `TlsProtocol` (the protocol of the socket transport) and
//! `TlsTransport` (the transport the application sees), driving Python's own `ssl.SSLObject`
//! between two `ssl.MemoryBIO`s, so every `SSLContext` setting users make is honoured.
//!
//! The state machine is asyncio's `sslproto.SSLProtocol` (3.11), step for step: the same phases
//! (`UNWRAPPED`, `DO_HANDSHAKE`, `WRAPPED`, `FLUSHING`, `SHUTDOWN`), the same callbacks in the same
//! order, the same errors and log records, the same flow control on both sides. What differs is
//! where the per-record work runs: feeding ciphertext into the incoming BIO, reading plaintext
//! out, encrypting writes and handing the records to the socket are Rust calls on the `SSLObject`
//! and the BIOs, with no Python frame between the socket and the application's `data_received`.
//!
//! Two shortcuts, both invisible to the application:
//! - a ferroloop socket transport gives its reads straight to [`TlsProtocol::feed`], and the
//!   records go straight to its Rust `write`;
//! - after a read, the incoming BIO is asked whether it still holds ciphertext; when it does not,
//!   the read that could only raise `SSLWantReadError` is not made (an exception per record).
//!
//! Rule for this file: state lives in an [`AttachedCell`] and every Python call (the `SSLObject`,
//! the BIOs, the application, the transport) happens outside its borrow, because each of them can
//! re-enter (an application writes from `data_received`, which encrypts and sends).

use std::collections::VecDeque;

use pyo3::exceptions::{
    PyAssertionError, PyAttributeError, PyConnectionResetError, PyException, PyRuntimeError, PyTimeoutError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PySlice, PyString, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::cell::AttachedCell;
use crate::event_loop::LoopCore;
use crate::glue;
use crate::stream::{StreamTransport, MAX_READ};
use crate::transport::{flow_limits, is_exit, LOG_THRESHOLD_FOR_CONNLOST_WRITES};

mod transport;

pub use transport::TlsTransport;

/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_READ` and `_WRITE`, in bytes.
const HIGH_WATER_SSL_READ: i64 = 256 * 1024;
const HIGH_WATER_SSL_WRITE: i64 = 512 * 1024;

/// asyncio's `SSLProtocolState`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Unwrapped,
    DoHandshake,
    Wrapped,
    Flushing,
    Shutdown,
}

impl Phase {
    /// As asyncio's enum prints itself in the "cannot switch state" message.
    fn name(self) -> &'static str {
        match self {
            Phase::Unwrapped => "SSLProtocolState.UNWRAPPED",
            Phase::DoHandshake => "SSLProtocolState.DO_HANDSHAKE",
            Phase::Wrapped => "SSLProtocolState.WRAPPED",
            Phase::Flushing => "SSLProtocolState.FLUSHING",
            Phase::Shutdown => "SSLProtocolState.SHUTDOWN",
        }
    }

    fn may_become(self, next: Phase) -> bool {
        matches!(
            (self, next),
            (_, Phase::Unwrapped)
                | (Phase::Unwrapped, Phase::DoHandshake)
                | (Phase::DoHandshake, Phase::Wrapped)
                | (Phase::Wrapped, Phase::Flushing)
                | (Phase::Flushing, Phase::Shutdown)
        )
    }

    /// Writes from the application are dropped (and counted) in these phases.
    fn refuses_writes(self) -> bool {
        matches!(self, Phase::Flushing | Phase::Shutdown | Phase::Unwrapped)
    }
}

/// asyncio's `AppProtocolState`: `INIT -> CON_MADE [-> EOF] -> CON_LOST`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AppPhase {
    Init,
    ConMade,
    Eof,
    ConLost,
}

/// The application's protocol and how plaintext reaches it.
struct App {
    protocol: Py<PyAny>,
    reader: AppReader,
}

enum AppReader {
    /// A `Protocol`: `data_received`, looked up when the protocol is set.
    Data(Option<Py<PyAny>>),
    Buffered {
        get_buffer: Py<PyAny>,
        buffer_updated: Py<PyAny>,
    },
}

impl App {
    fn new(protocol: &Bound<'_, PyAny>) -> PyResult<App> {
        let py = protocol.py();
        let buffered = protocol.hasattr(intern!(py, "get_buffer"))?
            && protocol.is_instance(&py.import("asyncio")?.getattr("BufferedProtocol")?)?;
        let reader = if buffered {
            AppReader::Buffered {
                get_buffer: protocol.getattr(intern!(py, "get_buffer"))?.unbind(),
                buffer_updated: protocol.getattr(intern!(py, "buffer_updated"))?.unbind(),
            }
        } else {
            AppReader::Data(protocol.getattr(intern!(py, "data_received")).ok().map(Bound::unbind))
        };
        Ok(App {
            protocol: protocol.clone().unbind(),
            reader,
        })
    }
}

#[allow(clippy::struct_excessive_bools)] // asyncio's flags, one for one
struct State {
    phase: Phase,
    app_phase: AppPhase,
    app: Option<App>,
    /// The transport below (a socket transport, or another TLS transport).
    transport: Option<Py<PyAny>>,
    app_transport: Option<Py<TlsTransport>>,
    waiter: Option<Py<PyAny>>,
    /// Application data not yet given to the `SSLObject`, and its size (asyncio's
    /// `_write_backlog` and `_write_buffer_size`).
    backlog: VecDeque<Py<PyAny>>,
    backlog_size: usize,
    conn_lost: u32,
    ssl_writing_paused: bool,
    app_reading_paused: bool,
    ssl_reading_paused: bool,
    eof_received: bool,
    app_writing_paused: bool,
    incoming_high: usize,
    incoming_low: usize,
    outgoing_high: usize,
    outgoing_low: usize,
    handshake_timer: Option<Py<PyAny>>,
    shutdown_timer: Option<Py<PyAny>>,
    handshake_start: Option<f64>,
    /// What `get_buffer` hands out to a transport that is not ferroloop's own.
    buffer: Option<Py<PyAny>>,
}

/// The exception classes the state machine tells apart, imported once.
struct Types {
    want_read: Py<PyType>,
    syscall: Py<PyType>,
    ssl_error: Py<PyType>,
    certificate_error: Py<PyType>,
}

static TYPES: PyOnceLock<Types> = PyOnceLock::new();

fn types(py: Python<'_>) -> PyResult<&Types> {
    TYPES.get_or_try_init(py, || {
        let ssl = py.import("ssl")?;
        let get = |name: &str| -> PyResult<Py<PyType>> { Ok(ssl.getattr(name)?.cast_into::<PyType>()?.unbind()) };
        Ok(Types {
            want_read: get("SSLWantReadError")?,
            syscall: get("SSLSyscallError")?,
            ssl_error: get("SSLError")?,
            certificate_error: get("CertificateError")?,
        })
    })
}

impl Types {
    /// asyncio's `SSLAgainErrors`: the `SSLObject` needs more data (or the peer went away).
    fn again(&self, py: Python<'_>, err: &PyErr) -> bool {
        err.is_instance(py, self.want_read.bind(py)) || err.is_instance(py, self.syscall.bind(py))
    }

    fn ssl(&self, py: Python<'_>, err: &PyErr) -> bool {
        err.is_instance(py, self.ssl_error.bind(py))
    }
}

/// `Exception` subclasses are reported; other `BaseException`s propagate (`except Exception:`).
fn is_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyException>(py)
}

#[pyclass(frozen, subclass, weakref, module = "ferroloop._ferroloop")]
pub struct TlsProtocol {
    loop_: Py<LoopCore>,
    sslobj: Py<PyAny>,
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
    /// Bound methods of the per-record path, looked up once.
    incoming_write: Py<PyAny>,
    sslobj_read: Py<PyAny>,
    sslobj_write: Py<PyAny>,
    outgoing_read: Py<PyAny>,
    extra: Py<PyDict>,
    handshake_timeout: Py<PyAny>,
    shutdown_timeout: Py<PyAny>,
    state: AttachedCell<State>,
}

/// Takes a timer handle out of the state and cancels it.
fn cancel(py: Python<'_>, timer: Option<Py<PyAny>>) -> PyResult<()> {
    if let Some(t) = timer {
        t.bind(py).call_method0(intern!(py, "cancel"))?;
    }
    Ok(())
}

impl TlsProtocol {
    fn with<R>(&self, py: Python<'_>, f: impl FnOnce(&mut State) -> R) -> PyResult<R> {
        self.state.with(py, f)
    }

    fn phase(&self, py: Python<'_>) -> PyResult<Phase> {
        self.with(py, |s| s.phase)
    }

    fn set_phase(&self, py: Python<'_>, next: Phase) -> PyResult<()> {
        let refused = self.with(py, |s| {
            if s.phase.may_become(next) {
                s.phase = next;
                None
            } else {
                Some(s.phase)
            }
        })?;
        match refused {
            None => Ok(()),
            Some(now) => Err(PyRuntimeError::new_err(format!(
                "cannot switch state from {} to {}",
                now.name(),
                next.name()
            ))),
        }
    }

    fn transport(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.with(py, |s| s.transport.as_ref().map(|t| t.clone_ref(py)))
    }

    fn app_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.with(py, |s| s.app.as_ref().map(|a| a.protocol.clone_ref(py)))
    }

    fn incoming_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.incoming.bind(py).getattr(intern!(py, "pending"))?.extract()
    }

    fn outgoing_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.outgoing.bind(py).getattr(intern!(py, "pending"))?.extract()
    }

    fn call_soon(&self, py: Python<'_>, callback: &Bound<'_, PyAny>, arg: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let lp = self.loop_.bind(py);
        match arg {
            Some(a) => lp.call_method1(intern!(py, "call_soon"), (callback, a)),
            None => lp.call_method1(intern!(py, "call_soon"), (callback,)),
        }
        .map(drop)
    }

    /// asyncio's `_fatal_error`: force the transport below closed, then report (through the
    /// exception handler unless it is an `OSError` or a cancellation).
    fn fatal_error(slf: &Bound<'_, Self>, exc: &PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let transport = slf.get().transport(py)?;
        if let Some(t) = &transport {
            t.bind(py).call_method1(intern!(py, "_force_close"), (exc.value(py),))?;
        }
        glue::helper(py, "tls_fatal_error")?
            .call1((slf, transport, exc.value(py), message))
            .map(drop)
    }

    /// Reports `err` as asyncio's `except Exception as ex: self._fatal_error(ex, message)` does;
    /// anything that is not an `Exception` propagates.
    fn report(slf: &Bound<'_, Self>, result: PyResult<()>, message: &str) -> PyResult<()> {
        match result {
            Err(err) if is_exception(slf.py(), &err) => Self::fatal_error(slf, &err, message),
            other => other,
        }
    }

    fn wakeup_waiter(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(waiter) = self.with(py, |s| s.waiter.take())? else {
            return Ok(());
        };
        let waiter = waiter.bind(py);
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            match exc {
                Some(e) => waiter.call_method1(intern!(py, "set_exception"), (e,))?,
                None => waiter.call_method1(intern!(py, "set_result"), (py.None(),))?,
            };
        }
        Ok(())
    }

    /// Ciphertext from the transport below: into the incoming BIO, then on with the phase.
    pub fn feed(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.incoming_write.bind(py).call1((data,))?;
        match this.phase(py)? {
            Phase::DoHandshake => Self::do_handshake(slf),
            Phase::Wrapped => Self::do_read(slf),
            Phase::Flushing => Self::do_flush(slf),
            Phase::Shutdown => Self::do_shutdown(slf),
            Phase::Unwrapped => Ok(()),
        }
    }

    // --- handshake --------------------------------------------------------------------------

    fn start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let start = if this.loop_.get().debug() {
            glue::helper(py, "log_debug")?.call1(("%r starts SSL handshake", slf))?;
            Some(crate::event_loop::loop_time())
        } else {
            None
        };
        this.with(py, |s| s.handshake_start = start)?;
        this.set_phase(py, Phase::DoHandshake)?;
        let timer = Self::call_later(slf, &this.handshake_timeout, intern!(py, "_check_handshake_timeout"))?;
        let old = this.with(py, |s| s.handshake_timer.replace(timer))?;
        drop(old);
        Self::do_handshake(slf)
    }

    /// `loop.call_later(delay, self.<method>)`: a timeout's timer handle.
    fn call_later(slf: &Bound<'_, Self>, delay: &Py<PyAny>, method: &Bound<'_, PyString>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let timer = slf
            .get()
            .loop_
            .bind(py)
            .call_method1(intern!(py, "call_later"), (delay.bind(py), slf.getattr(method)?))?;
        Ok(timer.unbind())
    }

    fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match this.sslobj.bind(py).call_method0(intern!(py, "do_handshake")) {
            Ok(_) => Self::on_handshake_complete(slf, None),
            Err(err) if types(py)?.again(py, &err) => Self::process_outgoing(slf),
            Err(err) if types(py)?.ssl(py, &err) => Self::on_handshake_complete(slf, Some(err)),
            Err(err) => Err(err),
        }
    }

    fn on_handshake_complete(slf: &Bound<'_, Self>, failure: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        cancel(py, this.with(py, |s| s.handshake_timer.take())?)?;
        let sslobj = this.sslobj.bind(py);
        let peercert = match failure {
            Some(err) => Err(err),
            None => this
                .set_phase(py, Phase::Wrapped)
                .and_then(|()| sslobj.call_method0(intern!(py, "getpeercert"))),
        };
        let peercert = match peercert {
            Ok(cert) => cert,
            Err(err) if is_exception(py, &err) => {
                this.set_phase(py, Phase::Unwrapped)?;
                let message = if err.is_instance(py, types(py)?.certificate_error.bind(py)) {
                    "SSL handshake failed on verifying the certificate"
                } else {
                    "SSL handshake failed"
                };
                Self::fatal_error(slf, &err, message)?;
                return this.wakeup_waiter(py, Some(err.value(py).as_any()));
            }
            Err(err) => return Err(err),
        };
        if this.loop_.get().debug() {
            let start = this
                .with(py, |s| s.handshake_start)?
                .unwrap_or_else(crate::event_loop::loop_time);
            let ms = (crate::event_loop::loop_time() - start) * 1e3;
            glue::helper(py, "tls_log_handshake_time")?.call1((slf, ms))?;
        }
        let extra = this.extra.bind(py);
        extra.set_item(intern!(py, "peercert"), peercert)?;
        extra.set_item(intern!(py, "cipher"), sslobj.call_method0(intern!(py, "cipher"))?)?;
        extra.set_item(
            intern!(py, "compression"),
            sslobj.call_method0(intern!(py, "compression"))?,
        )?;
        extra.set_item(intern!(py, "ssl_object"), sslobj)?;
        let made = this.with(py, |s| {
            if s.app_phase != AppPhase::Init {
                return None;
            }
            s.app_phase = AppPhase::ConMade;
            Some((
                s.app.as_ref().map(|a| a.protocol.clone_ref(py)),
                s.app_transport.as_ref().map(|t| t.clone_ref(py)),
            ))
        })?;
        if let Some((Some(protocol), transport)) = made {
            protocol
                .bind(py)
                .call_method1(intern!(py, "connection_made"), (transport,))?;
        }
        this.wakeup_waiter(py, None)?;
        Self::do_read(slf)
    }

    // --- shutdown ---------------------------------------------------------------------------

    fn start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (phase, app_transport) = this.with(py, |s| (s.phase, s.app_transport.as_ref().map(|t| t.clone_ref(py))))?;
        if matches!(phase, Phase::Flushing | Phase::Shutdown | Phase::Unwrapped) {
            return Ok(());
        }
        if let Some(t) = app_transport {
            t.get().set_closed(py)?;
        }
        if phase == Phase::DoHandshake {
            return Self::abort(slf);
        }
        this.set_phase(py, Phase::Flushing)?;
        let timer = Self::call_later(slf, &this.shutdown_timeout, intern!(py, "_check_shutdown_timeout"))?;
        let old = this.with(py, |s| s.shutdown_timer.replace(timer))?;
        drop(old);
        Self::do_flush(slf)
    }

    fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)?;
        slf.get().set_phase(slf.py(), Phase::Shutdown)?;
        Self::do_shutdown(slf)
    }

    fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let unwrapped = if this.with(py, |s| s.eof_received)? {
            Ok(())
        } else {
            this.sslobj.bind(py).call_method0(intern!(py, "unwrap")).map(drop)
        };
        match unwrapped {
            Ok(()) => {
                Self::process_outgoing(slf)?;
                Self::call_eof_received(slf)?;
                Self::on_shutdown_complete(slf, None)
            }
            Err(err) if types(py)?.again(py, &err) => Self::process_outgoing(slf),
            Err(err) if types(py)?.ssl(py, &err) => Self::on_shutdown_complete(slf, Some(err)),
            Err(err) => Err(err),
        }
    }

    fn on_shutdown_complete(slf: &Bound<'_, Self>, failure: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        cancel(py, this.with(py, |s| s.shutdown_timer.take())?)?;
        match failure {
            Some(err) => Self::fatal_error(slf, &err, "Fatal error on transport"),
            None => match this.transport(py)? {
                Some(t) => this.call_soon(py, &t.bind(py).getattr(intern!(py, "close"))?, None),
                None => Ok(()),
            },
        }
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.set_phase(py, Phase::Unwrapped)?;
        if let Some(t) = this.transport(py)? {
            t.bind(py).call_method0(intern!(py, "abort"))?;
        }
        Ok(())
    }

    // --- outgoing ---------------------------------------------------------------------------

    /// asyncio's `_write_appdata`, for the items of `data` in order.
    fn write_appdata<'py>(
        slf: &Bound<'py, Self>,
        data: impl IntoIterator<Item = PyResult<Bound<'py, PyAny>>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (phase, conn_lost) = this.with(py, |s| (s.phase, s.conn_lost))?;
        if phase.refuses_writes() {
            if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                glue::helper(py, "log_warning")?.call1(("SSL connection is closed",))?;
            }
            return this.with(py, |s| s.conn_lost += 1);
        }
        for item in data {
            let item = item?;
            let len = item.len()?;
            this.with(py, |s| {
                s.backlog.push_back(item.unbind());
                s.backlog_size += len;
            })?;
        }
        if this.phase(py)? == Phase::Wrapped {
            Self::report(slf, Self::do_write(slf), "Fatal error on SSL protocol")?;
        }
        Ok(())
    }

    /// Encrypts the backlog, then hands the records to the transport below.
    fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let write = this.sslobj_write.bind(py);
        while let Some(data) = this.with(py, |s| s.backlog.front().map(|d| d.clone_ref(py)))? {
            let data = data.into_bound(py);
            let count: usize = match write.call1((&data,)) {
                Ok(count) => count.extract()?,
                Err(err) if types(py)?.again(py, &err) => break,
                Err(err) => return Err(err),
            };
            let len = data.len()?;
            let done = if count < len {
                let rest = data.get_item(PySlice::new(py, count as isize, isize::MAX, 1))?.unbind();
                this.with(py, |s| {
                    s.backlog_size -= count;
                    s.backlog.front_mut().map(|front| std::mem::replace(front, rest))
                })?
            } else {
                this.with(py, |s| {
                    s.backlog_size -= len;
                    s.backlog.pop_front()
                })?
            };
            drop(done);
        }
        Self::process_outgoing(slf)
    }

    /// Sends what the `SSLObject` produced, unless the transport below asked us to pause.
    fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (paused, transport) = this.with(py, |s| {
            (s.ssl_writing_paused, s.transport.as_ref().map(|t| t.clone_ref(py)))
        })?;
        let mut drained = false;
        if !paused {
            let data = this.outgoing_read.bind(py).call0()?;
            drained = true;
            if data.len()? > 0 {
                if let Some(t) = transport {
                    write_below(t.bind(py), &data)?;
                }
            }
        }
        Self::control_app_writing(slf, drained)
    }

    /// asyncio's `_control_app_writing`; `drained` says the outgoing BIO was just emptied.
    fn control_app_writing(slf: &Bound<'_, Self>, drained: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let pending = if drained { 0 } else { this.outgoing_pending(py)? };
        let call = this.with(py, |s| {
            let size = pending + s.backlog_size;
            if size >= s.outgoing_high && !s.app_writing_paused {
                s.app_writing_paused = true;
                Some("pause_writing")
            } else if size <= s.outgoing_low && s.app_writing_paused {
                s.app_writing_paused = false;
                Some("resume_writing")
            } else {
                None
            }
        })?;
        let Some(name) = call else { return Ok(()) };
        let Some(protocol) = this.app_protocol(py)? else {
            return Ok(());
        };
        match protocol.bind(py).call_method0(name) {
            Ok(_) => Ok(()),
            Err(err) if is_exit(py, &err) => Err(err),
            Err(err) => {
                let app_transport = this.with(py, |s| s.app_transport.as_ref().map(|t| t.clone_ref(py)))?;
                glue::helper(py, "tls_flow_failed")?
                    .call1((slf, format!("protocol.{name}() failed"), err.value(py), app_transport))
                    .map(drop)
            }
        }
    }

    // --- incoming ---------------------------------------------------------------------------

    fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (phase, paused, buffered) = this.with(py, |s| {
            (
                s.phase,
                s.app_reading_paused,
                matches!(s.app.as_ref().map(|a| &a.reader), Some(AppReader::Buffered { .. })),
            )
        })?;
        if !matches!(phase, Phase::Wrapped | Phase::Flushing) {
            return Ok(());
        }
        let result = (|| {
            let mut incoming_left = None;
            if !paused {
                incoming_left = if buffered {
                    Self::read_buffered(slf)?;
                    None
                } else {
                    Self::read_copied(slf)?
                };
                if this.with(py, |s| !s.backlog.is_empty())? {
                    Self::do_write(slf)?;
                } else {
                    Self::process_outgoing(slf)?;
                }
            }
            Self::control_ssl_reading(slf, incoming_left)
        })();
        Self::report(slf, result, "Fatal error on SSL protocol")
    }

    /// asyncio's `_do_read__copied`: all the plaintext there is, in one `data_received` call.
    /// Returns what the incoming BIO still holds when that is known (nothing, usually).
    fn read_copied(slf: &Bound<'_, Self>) -> PyResult<Option<usize>> {
        let py = slf.py();
        let this = slf.get();
        let read = this.sslobj_read.bind(py);
        let mut chunks: Vec<Bound<'_, PyAny>> = Vec::new();
        let mut eof = false;
        let mut incoming_left = None;
        loop {
            match read.call1((MAX_READ,)) {
                Ok(chunk) if chunk.len()? == 0 => {
                    eof = true;
                    break;
                }
                Ok(chunk) => chunks.push(chunk),
                Err(err) if types(py)?.again(py, &err) => break,
                Err(err) => return Err(err),
            }
            // Without ciphertext left, the next read could only raise SSLWantReadError: a
            // record is at most 16 KiB, so one read of MAX_READ leaves none of it behind.
            let left = this.incoming_pending(py)?;
            if left == 0 {
                incoming_left = Some(0);
                break;
            }
        }
        let data = match chunks.len() {
            0 => None,
            1 => chunks.pop(),
            _ => Some(PyBytes::new(py, b"").call_method1(intern!(py, "join"), (chunks,))?),
        };
        if let Some(data) = data {
            let receiver = this.with(py, |s| match s.app.as_ref().map(|a| &a.reader) {
                Some(AppReader::Data(Some(f))) => Some(f.clone_ref(py)),
                _ => None,
            })?;
            match receiver {
                Some(f) => f.bind(py).call1((data,))?,
                // No `data_received` when the protocol was set: the lookup raises as asyncio's.
                None => match this.app_protocol(py)? {
                    Some(p) => p.bind(py).call_method1(intern!(py, "data_received"), (data,))?,
                    None => {
                        return Err(PyAttributeError::new_err(
                            "'NoneType' object has no attribute 'data_received'",
                        ))
                    }
                },
            };
        }
        if eof {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(incoming_left)
    }

    /// asyncio's `_do_read__buffered`: plaintext straight into the application's buffer.
    fn read_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some((get_buffer, buffer_updated)) = this.with(py, |s| match s.app.as_ref().map(|a| &a.reader) {
            Some(AppReader::Buffered {
                get_buffer,
                buffer_updated,
            }) => Some((get_buffer.clone_ref(py), buffer_updated.clone_ref(py))),
            _ => None,
        })?
        else {
            return Ok(());
        };
        let pending = this.incoming_pending(py)?;
        let buf = get_buffer.bind(py).call1((pending,))?;
        let view = PyMemoryView::from(&buf)?;
        let wants = view.len()?;
        let read = this.sslobj_read.bind(py);
        let mut offset = 0;
        let mut count = 1;
        match read.call1((wants, &view)) {
            Ok(n) => {
                count = n.extract::<usize>()?;
                if count > 0 {
                    offset = count;
                    loop {
                        if offset >= wants {
                            // The buffer is full: the rest in a later iteration.
                            this.call_soon(py, &slf.getattr(intern!(py, "_do_read_later"))?, None)?;
                            break;
                        }
                        let rest = view.get_item(PySlice::new(py, offset as isize, isize::MAX, 1))?;
                        match read.call1((wants - offset, rest)) {
                            Ok(n) => {
                                count = n.extract()?;
                                if count == 0 {
                                    break;
                                }
                                offset += count;
                            }
                            Err(err) if types(py)?.again(py, &err) => break,
                            Err(err) => return Err(err),
                        }
                    }
                }
            }
            Err(err) if types(py)?.again(py, &err) => {}
            Err(err) => return Err(err),
        }
        if offset > 0 {
            buffer_updated.bind(py).call1((offset,))?;
        }
        if count == 0 {
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    fn call_eof_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = this.with(py, |s| {
            if s.app_phase != AppPhase::ConMade {
                return None;
            }
            s.app_phase = AppPhase::Eof;
            s.app.as_ref().map(|a| a.protocol.clone_ref(py))
        })?;
        let Some(protocol) = protocol else { return Ok(()) };
        let keep_open = protocol
            .bind(py)
            .call_method0(intern!(py, "eof_received"))
            .and_then(|keep| keep.is_truthy());
        match keep_open {
            Ok(true) => glue::helper(py, "log_warning")?
                .call1(("returning true from eof_received() has no effect when using ssl",))
                .map(drop),
            Ok(false) => Ok(()),
            Err(err) if is_exit(py, &err) => Err(err),
            Err(err) => Self::fatal_error(slf, &err, "Error calling eof_received()"),
        }
    }

    /// asyncio's `_control_ssl_reading`: pause the transport below while the incoming BIO holds
    /// more than its high-water mark.
    fn control_ssl_reading(slf: &Bound<'_, Self>, known: Option<usize>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let size = match known {
            Some(size) => size,
            None => this.incoming_pending(py)?,
        };
        let call = this.with(py, |s| {
            if size >= s.incoming_high && !s.ssl_reading_paused {
                s.ssl_reading_paused = true;
                Some("pause_reading")
            } else if size <= s.incoming_low && s.ssl_reading_paused {
                s.ssl_reading_paused = false;
                Some("resume_reading")
            } else {
                None
            }
        })?;
        if let (Some(name), Some(t)) = (call, this.transport(py)?) {
            t.bind(py).call_method0(name)?;
        }
        Ok(())
    }

    fn get_extra(&self, py: Python<'_>, name: &Bound<'_, PyAny>, default: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        if let Some(v) = self.extra.bind(py).get_item(name)? {
            return Ok(v.unbind());
        }
        match self.transport(py)? {
            Some(t) => Ok(t
                .bind(py)
                .call_method1(intern!(py, "get_extra_info"), (name, default))?
                .unbind()),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        let pending = self.outgoing_pending(py)?;
        Ok(pending + self.with(py, |s| s.backlog_size)?)
    }
}

/// Hands records to the transport below: straight to the Rust socket transport when it is one.
fn write_below(transport: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(stream) = transport.cast::<StreamTransport>() {
        return StreamTransport::write(stream, data);
    }
    transport
        .call_method1(intern!(transport.py(), "write"), (data,))
        .map(drop)
}

#[pymethods]
impl TlsProtocol {
    /// `(loop, app_protocol, sslobj, incoming, outgoing, sslcontext, waiter, call_connection_made,
    /// handshake_timeout, shutdown_timeout)`: `ferroloop._tls` checks the arguments and makes the
    /// `SSLObject` and its BIOs.
    #[new]
    #[allow(clippy::too_many_arguments)] // asyncio's constructor, plus what Python prepared
    #[pyo3(signature = (loop_, app_protocol, sslobj, incoming, outgoing, sslcontext, waiter, call_connection_made, handshake_timeout, shutdown_timeout))]
    fn new(
        loop_: &Bound<'_, LoopCore>,
        app_protocol: &Bound<'_, PyAny>,
        sslobj: &Bound<'_, PyAny>,
        incoming: &Bound<'_, PyAny>,
        outgoing: &Bound<'_, PyAny>,
        sslcontext: &Bound<'_, PyAny>,
        waiter: Option<Py<PyAny>>,
        call_connection_made: bool,
        handshake_timeout: Py<PyAny>,
        shutdown_timeout: Py<PyAny>,
    ) -> PyResult<Self> {
        let py = loop_.py();
        let extra = PyDict::new(py);
        extra.set_item("sslcontext", sslcontext)?;
        let (incoming_high, incoming_low) = flow_limits(None, None, HIGH_WATER_SSL_READ)?;
        let (outgoing_high, outgoing_low) = flow_limits(None, None, HIGH_WATER_SSL_WRITE)?;
        Ok(TlsProtocol {
            loop_: loop_.clone().unbind(),
            incoming_write: incoming.getattr("write")?.unbind(),
            sslobj_read: sslobj.getattr("read")?.unbind(),
            sslobj_write: sslobj.getattr("write")?.unbind(),
            outgoing_read: outgoing.getattr("read")?.unbind(),
            sslobj: sslobj.clone().unbind(),
            incoming: incoming.clone().unbind(),
            outgoing: outgoing.clone().unbind(),
            extra: extra.unbind(),
            handshake_timeout,
            shutdown_timeout,
            state: AttachedCell::new(State {
                phase: Phase::Unwrapped,
                app_phase: if call_connection_made {
                    AppPhase::Init
                } else {
                    AppPhase::ConMade
                },
                app: Some(App::new(app_protocol)?),
                transport: None,
                app_transport: None,
                waiter: waiter.filter(|w| !w.is_none(py)),
                backlog: VecDeque::new(),
                backlog_size: 0,
                conn_lost: 0,
                ssl_writing_paused: false,
                app_reading_paused: false,
                ssl_reading_paused: false,
                eof_received: false,
                app_writing_paused: false,
                incoming_high,
                incoming_low,
                outgoing_high,
                outgoing_low,
                handshake_timer: None,
                shutdown_timer: None,
                handshake_start: None,
                buffer: None,
            }),
        })
    }

    /// Gives the protocol its application-side transport (once, right after construction).
    fn _set_app_transport(&self, py: Python<'_>, transport: Py<TlsTransport>) -> PyResult<()> {
        let old = self.with(py, |s| s.app_transport.replace(transport))?;
        if old.is_some() {
            drop(old);
            return Err(PyRuntimeError::new_err("Creating _SSLProtocolTransport twice"));
        }
        Ok(())
    }

    fn connection_made(slf: &Bound<'_, Self>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let old = slf
            .get()
            .with(slf.py(), |s| s.transport.replace(transport.clone().unbind()))?;
        drop(old);
        Self::start_handshake(slf)
    }

    #[pyo3(signature = (exc))]
    fn connection_lost(slf: &Bound<'_, Self>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let backlog = this.with(py, |s| std::mem::take(&mut s.backlog))?;
        drop(backlog);
        this.outgoing_read.bind(py).call0()?;
        let (phase, app_phase, app_transport, protocol) = this.with(py, |s| {
            s.conn_lost += 1;
            (
                s.phase,
                s.app_phase,
                s.app_transport.as_ref().map(|t| t.clone_ref(py)),
                s.app.as_ref().map(|a| a.protocol.clone_ref(py)),
            )
        })?;
        if let Some(t) = &app_transport {
            t.get().set_closed(py)?;
        }
        if phase != Phase::DoHandshake && matches!(app_phase, AppPhase::ConMade | AppPhase::Eof) {
            this.with(py, |s| s.app_phase = AppPhase::ConLost)?;
            if let Some(p) = &protocol {
                let exc = exc.map_or_else(|| py.None().into_bound(py), Clone::clone);
                this.call_soon(py, &p.bind(py).getattr(intern!(py, "connection_lost"))?, Some(&exc))?;
            }
        }
        this.set_phase(py, Phase::Unwrapped)?;
        let released = this.with(py, |s| (s.transport.take(), s.app_transport.take(), s.app.take()))?;
        drop(released);
        this.wakeup_waiter(py, exc)?;
        let timers = this.with(py, |s| (s.shutdown_timer.take(), s.handshake_timer.take()))?;
        cancel(py, timers.0)?;
        cancel(py, timers.1)
    }

    /// For a transport below that is not ferroloop's own: a buffer to read into.
    fn get_buffer(&self, py: Python<'_>, n: isize) -> PyResult<Py<PyAny>> {
        let want = if n <= 0 || n as usize > MAX_READ {
            MAX_READ
        } else {
            n as usize
        };
        let current = self.with(py, |s| s.buffer.as_ref().map(|b| b.clone_ref(py)))?;
        if let Some(b) = current {
            if b.bind(py).len()? >= want {
                return Ok(b);
            }
        }
        let view = PyMemoryView::from(&PyByteArray::new(py, &vec![0; want]))?
            .into_any()
            .unbind();
        let old = self.with(py, |s| s.buffer.replace(view.clone_ref(py)))?;
        drop(old);
        Ok(view)
    }

    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: usize) -> PyResult<()> {
        let py = slf.py();
        let buffer = slf.get().with(py, |s| s.buffer.as_ref().map(|b| b.clone_ref(py)))?;
        let Some(buffer) = buffer else {
            return Err(PyRuntimeError::new_err("buffer_updated() before get_buffer()"));
        };
        let data = buffer.bind(py).get_item(PySlice::new(py, 0, nbytes as isize, 1))?;
        Self::feed(slf, &data)
    }

    fn data_received(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::feed(slf, data)
    }

    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        let py = slf.py();
        let this = slf.get();
        this.with(py, |s| s.eof_received = true)?;
        let result = (|| {
            if this.loop_.get().debug() {
                glue::helper(py, "log_debug")?.call1(("%r received EOF", slf))?;
            }
            match this.phase(py)? {
                Phase::DoHandshake => {
                    Self::on_handshake_complete(slf, Some(PyConnectionResetError::new_err(())))?;
                }
                Phase::Wrapped => {
                    this.set_phase(py, Phase::Flushing)?;
                    if this.with(py, |s| s.app_reading_paused)? {
                        return Ok(Some(true));
                    }
                    Self::do_flush(slf)?;
                }
                Phase::Flushing => {
                    Self::do_write(slf)?;
                    this.set_phase(py, Phase::Shutdown)?;
                    Self::do_shutdown(slf)?;
                }
                Phase::Shutdown => Self::do_shutdown(slf)?,
                Phase::Unwrapped => {}
            }
            Ok(None)
        })();
        match result {
            Err(err) if is_exception(py, &err) => {
                if let Some(t) = this.transport(py)? {
                    t.bind(py).call_method0(intern!(py, "close"))?;
                }
                Err(err)
            }
            other => other,
        }
    }

    /// The transport below's buffer went over its high-water mark.
    fn pause_writing(&self, py: Python<'_>) -> PyResult<()> {
        let was = self.with(py, |s| std::mem::replace(&mut s.ssl_writing_paused, true))?;
        if was {
            return Err(PyAssertionError::new_err(()));
        }
        Ok(())
    }

    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let was = slf
            .get()
            .with(slf.py(), |s| std::mem::replace(&mut s.ssl_writing_paused, false))?;
        if !was {
            return Err(PyAssertionError::new_err(()));
        }
        Self::process_outgoing(slf)
    }

    fn _check_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.phase(py)? == Phase::DoHandshake {
            let exc = glue::helper(py, "tls_handshake_timeout_error")?.call1((this.handshake_timeout.bind(py),))?;
            Self::fatal_error(slf, &PyErr::from_value(exc), "Fatal error on transport")?;
        }
        Ok(())
    }

    fn _check_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if matches!(this.phase(py)?, Phase::Flushing | Phase::Shutdown) {
            if let Some(t) = this.transport(py)? {
                let exc = PyTimeoutError::new_err("SSL shutdown timed out");
                t.bind(py).call_method1(intern!(py, "_force_close"), (exc.value(py),))?;
            }
        }
        Ok(())
    }

    /// The rest of a read that filled a `BufferedProtocol`'s buffer.
    fn _do_read_later(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)
    }

    /// `resume_reading()` of the application's transport, one iteration later.
    fn _resume_later(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().phase(slf.py())? {
            Phase::Wrapped => Self::do_read(slf),
            Phase::Flushing => Self::do_flush(slf),
            Phase::Shutdown => Self::do_shutdown(slf),
            _ => Ok(()),
        }
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<LoopCore> {
        self.loop_.clone_ref(py)
    }

    #[getter]
    fn _transport(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.transport(py)
    }

    #[getter]
    fn _app_transport(&self, py: Python<'_>) -> PyResult<Option<Py<TlsTransport>>> {
        self.with(py, |s| s.app_transport.as_ref().map(|t| t.clone_ref(py)))
    }

    #[getter]
    fn _app_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.app_protocol(py)
    }

    #[getter]
    fn _sslobj(&self, py: Python<'_>) -> Py<PyAny> {
        self.sslobj.clone_ref(py)
    }

    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.extra.clone_ref(py)
    }

    /// The phase, by asyncio's name for it (`"WRAPPED"`, ...).
    #[getter]
    fn _state_name(&self, py: Python<'_>) -> PyResult<&'static str> {
        Ok(self.phase(py)?.name().trim_start_matches("SSLProtocolState."))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.sslobj)?;
        visit.call(&self.incoming)?;
        visit.call(&self.outgoing)?;
        visit.call(&self.incoming_write)?;
        visit.call(&self.sslobj_read)?;
        visit.call(&self.sslobj_write)?;
        visit.call(&self.outgoing_read)?;
        visit.call(&self.extra)?;
        visit.call(&self.handshake_timeout)?;
        visit.call(&self.shutdown_timeout)?;
        let Some(s) = self.state.for_traverse() else {
            return Ok(());
        };
        if let Some(app) = &s.app {
            visit.call(&app.protocol)?;
            match &app.reader {
                AppReader::Data(f) => visit.call(f)?,
                AppReader::Buffered {
                    get_buffer,
                    buffer_updated,
                } => {
                    visit.call(get_buffer)?;
                    visit.call(buffer_updated)?;
                }
            }
        }
        visit.call(&s.transport)?;
        visit.call(&s.app_transport)?;
        visit.call(&s.waiter)?;
        for data in &s.backlog {
            visit.call(data)?;
        }
        visit.call(&s.handshake_timer)?;
        visit.call(&s.shutdown_timer)?;
        visit.call(&s.buffer)?;
        Ok(())
    }
}
