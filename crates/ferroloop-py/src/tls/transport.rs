//! `TlsTransport`: the transport the application of a TLS connection uses (asyncio's
//! `_SSLProtocolTransport`). It holds the connection's [`TlsProtocol`], where all the state is, and
//! forwards to it; a second `close()` drops that reference, as asyncio's does.

use pyo3::exceptions::{PyAttributeError, PyNotImplementedError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::{App, Phase, TlsProtocol, HIGH_WATER_SSL_READ, HIGH_WATER_SSL_WRITE};
use crate::cell::AttachedCell;
use crate::owner::LoopRef;
use crate::transport::{compat_flag, given_limits};

/// `ferroloop._compat.TLS_IS_CLOSING_ASKS_BELOW`, read once.
fn is_closing_asks_below(py: Python<'_>) -> PyResult<bool> {
    static ASKS: PyOnceLock<bool> = PyOnceLock::new();
    ASKS.get_or_try_init(py, || {
        py.import("ferroloop._compat")?
            .getattr("TLS_IS_CLOSING_ASKS_BELOW")?
            .is_truthy()
    })
    .copied()
}

/// The application's side of a TLS connection (asyncio's `_SSLProtocolTransport`).
#[pyclass(frozen, subclass, weakref, extends = crate::transport_root::TransportRoot, module = "ferroloop._ferroloop")]
pub struct TlsTransport {
    loop_: LoopRef,
    side: AttachedCell<Side>,
}

struct Side {
    protocol: Option<Py<TlsProtocol>>,
    closed: bool,
}

impl TlsTransport {
    pub(super) fn set_closed(&self, py: Python<'_>) -> PyResult<()> {
        self.side.with(py, |s| s.closed = true)
    }

    fn protocol<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, TlsProtocol>> {
        match self.side.with(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))? {
            Some(p) => Ok(p.into_bound(py)),
            None => Err(PyAttributeError::new_err(
                "'NoneType' object has no attribute of the SSL protocol (the transport was closed twice)",
            )),
        }
    }
}

#[pymethods]
impl TlsTransport {
    #[new]
    fn new(protocol: &Bound<'_, TlsProtocol>) -> Self {
        TlsTransport {
            loop_: protocol.get().loop_.clone_ref(protocol.py()),
            side: AttachedCell::new(Side {
                protocol: Some(protocol.clone().unbind()),
                closed: false,
            }),
        }
    }

    /// Information about the connection by name (`peername`, `sockname`, `socket`,
    /// `sslcontext`, `ssl_object`, `peercert`, `cipher`, `compression`), or `default`.
    #[pyo3(signature = (name, default=None))]
    fn get_extra_info(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.protocol(py)?.get().get_extra(py, name, default)
    }

    /// Makes `protocol` the transport's protocol.
    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let app = App::new(protocol)?;
        let old = self.protocol(py)?.get().with(py, |s| s.app.replace(app))?;
        drop(old);
        Ok(())
    }

    /// The transport's protocol.
    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.protocol(py)?.get().app_protocol(py)
    }

    /// Whether the transport is closing or closed.
    fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        if self.side.with(py, |s| s.closed)? {
            return Ok(true);
        }
        if !is_closing_asks_below(py)? {
            return Ok(false);
        }
        // 3.14: also closing when the transport below is.
        match self.protocol(py)?.get().transport(py)? {
            Some(t) => t.bind(py).call_method0(intern!(py, "is_closing"))?.is_truthy(),
            None => Ok(false),
        }
    }

    /// Closes the transport: what is queued is sent first, then the protocol's
    /// `connection_lost(None)` is called.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let first = self.side.with(py, |s| !std::mem::replace(&mut s.closed, true))?;
        if first {
            TlsProtocol::start_shutdown(&self.protocol(py)?)
        } else {
            let old = self.side.with(py, |s| s.protocol.take())?;
            drop(old);
            Ok(())
        }
    }

    /// Whether received data is delivered to the protocol (reading is not paused).
    fn is_reading(&self, py: Python<'_>) -> PyResult<bool> {
        self.protocol(py)?.get().with(py, |s| !s.app_reading_paused)
    }

    /// Stops delivering received data to the protocol until `resume_reading()`.
    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        self.protocol(py)?.get().with(py, |s| s.app_reading_paused = true)
    }

    /// Delivers received data to the protocol again.
    fn resume_reading(&self, py: Python<'_>) -> PyResult<()> {
        let protocol = self.protocol(py)?;
        let resumed = protocol
            .get()
            .with(py, |s| std::mem::replace(&mut s.app_reading_paused, false))?;
        if resumed {
            protocol
                .get()
                .call_soon(py, &protocol.getattr(intern!(py, "_resume_later"))?, None)?;
        }
        Ok(())
    }

    /// Sets the write buffer's water marks: the protocol's `pause_writing()` is called when the
    /// queue grows above `high`, `resume_writing()` when it drains to `low` or below.
    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (high, low) = given_limits(high, low, HIGH_WATER_SSL_WRITE)?;
        let protocol = self.protocol(py)?;
        protocol.get().with(py, |s| {
            s.outgoing_high = high;
            s.outgoing_low = low;
        })?;
        TlsProtocol::control_app_writing(&protocol, false)
    }

    /// `(low, high)`: the write buffer's water marks.
    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        self.protocol(py)?.get().with(py, |s| (s.outgoing_low, s.outgoing_high))
    }

    /// The size of what is queued to be written.
    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.protocol(py)?.get().get_write_buffer_size(py)
    }

    /// Sets the water marks of the TLS read buffer.
    #[pyo3(signature = (high=None, low=None))]
    fn set_read_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (high, low) = given_limits(high, low, HIGH_WATER_SSL_READ)?;
        let protocol = self.protocol(py)?;
        protocol.get().with(py, |s| {
            s.incoming_high = high;
            s.incoming_low = low;
        })?;
        TlsProtocol::control_ssl_reading(&protocol, None)
    }

    /// `(low, high)`: the TLS read buffer's water marks.
    fn get_read_buffer_limits(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        self.protocol(py)?.get().with(py, |s| (s.incoming_low, s.incoming_high))
    }

    /// The size of the decrypted data not yet given to the protocol.
    fn get_read_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.protocol(py)?.get().incoming_pending(py)
    }

    /// The application was told to pause writing (used by the sendfile fallback).
    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> PyResult<bool> {
        self.protocol(py)?.get().with(py, |s| s.app_writing_paused)
    }

    /// Writes `data` (a bytes-like object): sent at once if the peer can take it, else queued and
    /// sent as it can; never blocks.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            let name = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!(
                "data: expecting a bytes-like instance, got {name}"
            )));
        }
        if data.len()? == 0 {
            return Ok(());
        }
        TlsProtocol::write_appdata(&self.protocol(py)?, [Ok(data.clone())])
    }

    /// Writes the bytes-like objects of `list_of_data`, in order.
    fn writelines(&self, py: Python<'_>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        TlsProtocol::write_appdata(&self.protocol(py)?, list_of_data.try_iter()?)
    }

    /// Closes the write end once the queued data is sent; reading goes on.
    #[allow(clippy::unused_self)] // asyncio's API
    fn write_eof(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(()))
    }

    /// Whether `write_eof()` is possible on this transport.
    #[allow(clippy::unused_self)] // asyncio's API
    fn can_write_eof(&self) -> bool {
        false
    }

    /// Closes the transport at once, dropping what is queued; the protocol's
    /// `connection_lost(None)` is called.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.set_closed(py)?;
        let protocol = self.side.with(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))?;
        match protocol {
            Some(p) => TlsProtocol::abort(p.bind(py)),
            None => Ok(()),
        }
    }

    /// asyncio's private `_force_close(exc)`, which a TLS protocol above this one calls.
    fn _force_close(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        static TOLERATES: PyOnceLock<bool> = PyOnceLock::new();
        self.set_closed(py)?;
        let released = self.side.with(py, |s| s.protocol.is_none())?;
        if released && compat_flag(py, &TOLERATES, "TLS_FORCE_CLOSE_TOLERATES_A_RELEASED_PROTOCOL")? {
            return Ok(());
        }
        let protocol = self.protocol(py)?;
        protocol.get().set_phase(py, Phase::Unwrapped)?;
        if let Some(t) = protocol.get().transport(py)? {
            t.bind(py).call_method1(intern!(py, "_force_close"), (exc,))?;
        }
        Ok(())
    }

    #[pyo3(name = "_test__append_write_backlog")]
    fn test_append_write_backlog(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let len = data.len()?;
        self.protocol(py)?.get().with(py, |s| {
            s.backlog.push_back(data.clone().unbind());
            s.backlog_size += len;
        })
    }

    #[getter]
    fn _closed(&self, py: Python<'_>) -> PyResult<bool> {
        self.side.with(py, |s| s.closed)
    }

    #[setter(_closed)]
    fn set_closed_flag(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.side.with(py, |s| s.closed = value)
    }

    #[getter]
    fn _ssl_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<TlsProtocol>>> {
        self.side.with(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.loop_.object(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.loop_.traverse(&visit)?;
        if let Some(s) = self.side.for_traverse() {
            visit.call(&s.protocol)?;
        }
        Ok(())
    }

    /// Breaks the protocol <-> transport cycle of a connection that was never closed.
    fn __clear__(&self) {
        // The collector runs this attached to the interpreter.
        Python::attach(|py| {
            let old = self.side.with(py, |s| s.protocol.take()).ok().flatten();
            drop(old);
        });
    }
}
