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
//! Layout: this file has the state and the methods Python (and the transport below) call;
//! `machine.rs` the state machine's steps; `transport.rs` the application's transport.
//!
//! Rule for these files: state lives in an [`AttachedCell`] and every Python call (the `SSLObject`,
//! the BIOs, the application, the transport) happens outside its borrow, because each of them can
//! re-enter (an application writes from `data_received`, which encrypts and sends).

use std::collections::VecDeque;

use pyo3::exceptions::{PyAssertionError, PyConnectionResetError, PyException, PyRuntimeError, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyDict, PyMemoryView, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::buffers::MAX_READ;
use crate::cell::AttachedCell;
use crate::glue;
use crate::owner::LoopRef;
use crate::stream::NativeReader;
use crate::transport::default_limits;

mod machine;
mod transport;

use machine::cancel;

pub use transport::TlsTransport;

/// TLS's protocol as a reader the stream below feeds in Rust (plugged in by `lib.rs`).
pub fn native_reader() -> NativeReader {
    fn accepts(protocol: &Bound<'_, PyAny>) -> bool {
        protocol.is_instance_of::<TlsProtocol>()
    }
    fn feed(protocol: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        TlsProtocol::feed(protocol.cast::<TlsProtocol>()?, data)
    }
    NativeReader { accepts, feed }
}

/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_READ` and `_WRITE`, in bytes.
const HIGH_WATER_SSL_READ: usize = 256 * 1024;
const HIGH_WATER_SSL_WRITE: usize = 512 * 1024;

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
    loop_: LoopRef,
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

#[pymethods]
impl TlsProtocol {
    /// `(loop, app_protocol, sslobj, incoming, outgoing, sslcontext, waiter, call_connection_made,
    /// handshake_timeout, shutdown_timeout)`: `ferroloop._tls` checks the arguments and makes the
    /// `SSLObject` and its BIOs.
    #[new]
    #[allow(clippy::too_many_arguments)] // asyncio's constructor, plus what Python prepared
    #[pyo3(signature = (loop_, app_protocol, sslobj, incoming, outgoing, sslcontext, waiter, call_connection_made, handshake_timeout, shutdown_timeout))]
    fn new(
        py: Python<'_>,
        loop_: LoopRef,
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
        let extra = PyDict::new(py);
        extra.set_item("sslcontext", sslcontext)?;
        let (incoming_high, incoming_low) = default_limits(HIGH_WATER_SSL_READ);
        let (outgoing_high, outgoing_low) = default_limits(HIGH_WATER_SSL_WRITE);
        Ok(TlsProtocol {
            loop_,
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

    /// The transport below is connected: the TLS handshake starts.
    fn connection_made(slf: &Bound<'_, Self>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let old = slf
            .get()
            .with(slf.py(), |s| s.transport.replace(transport.clone().unbind()))?;
        drop(old);
        Self::start_handshake(slf)
    }

    /// The transport below is closed.
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
        let view = PyMemoryView::from(PyByteArray::new_with(py, want, |_| Ok(()))?.as_any())?
            .into_any()
            .unbind();
        let old = self.with(py, |s| s.buffer.replace(view.clone_ref(py)))?;
        drop(old);
        Ok(view)
    }

    /// `nbytes` of ciphertext were received into the buffer `get_buffer` gave.
    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: usize) -> PyResult<()> {
        let py = slf.py();
        let buffer = slf.get().with(py, |s| s.buffer.as_ref().map(|b| b.clone_ref(py)))?;
        let Some(buffer) = buffer else {
            return Err(PyRuntimeError::new_err("buffer_updated() before get_buffer()"));
        };
        let data = buffer.bind(py).get_item(glue::slice(py, 0, nbytes as isize)?)?;
        Self::feed(slf, &data)
    }

    /// Ciphertext was received.
    fn data_received(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::feed(slf, data)
    }

    /// The transport below received the peer's EOF.
    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        let py = slf.py();
        let this = slf.get();
        this.with(py, |s| s.eof_received = true)?;
        let result = (|| {
            if this.loop_.io().debug() {
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

    /// The transport below can take more data.
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
                t.bind(py)
                    .call_method1(intern!(py, "_force_close"), (glue::exc_value(py, &exc),))?;
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
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.loop_.object(py)
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

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.loop_.traverse(&visit)?;
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
