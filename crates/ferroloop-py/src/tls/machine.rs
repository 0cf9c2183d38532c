//! The TLS state machine: asyncio's `SSLProtocol` methods (`_do_handshake`, `_do_read`,
//! `_do_write`, `_do_shutdown`, flow control, `_fatal_error`), as Rust methods of [`TlsProtocol`].
//! Python reaches them through the `#[pymethods]` in `mod.rs` and `transport.rs`.

use pyo3::exceptions::{PyAttributeError, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyMemoryView, PyString};

use super::{is_exception, types, AppPhase, AppReader, Phase, State, TlsProtocol};
use crate::buffers::MAX_READ;
use crate::glue;
use crate::stream::StreamTransport;
use crate::transport::{is_exit, LOG_THRESHOLD_FOR_CONNLOST_WRITES};

/// `ferroloop._compat.SHUTDOWN_TIMEOUT_COVERS_CLOSE`, read once.
fn shutdown_timeout_covers_close(py: Python<'_>) -> PyResult<bool> {
    static COVERS: PyOnceLock<bool> = PyOnceLock::new();
    COVERS
        .get_or_try_init(py, || {
            py.import("ferroloop._compat")?
                .getattr("SHUTDOWN_TIMEOUT_COVERS_CLOSE")?
                .is_truthy()
        })
        .copied()
}

/// Takes a timer handle out of the state and cancels it.
pub(super) fn cancel(py: Python<'_>, timer: Option<Py<PyAny>>) -> PyResult<()> {
    if let Some(t) = timer {
        t.bind(py).call_method0(intern!(py, "cancel"))?;
    }
    Ok(())
}

impl TlsProtocol {
    pub(super) fn with<R>(&self, py: Python<'_>, f: impl FnOnce(&mut State) -> R) -> PyResult<R> {
        self.state.with(py, f)
    }

    pub(super) fn phase(&self, py: Python<'_>) -> PyResult<Phase> {
        self.with(py, |s| s.phase)
    }

    pub(super) fn set_phase(&self, py: Python<'_>, next: Phase) -> PyResult<()> {
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

    pub(super) fn transport(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.with(py, |s| s.transport.as_ref().map(|t| t.clone_ref(py)))
    }

    pub(super) fn app_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.with(py, |s| s.app.as_ref().map(|a| a.protocol.clone_ref(py)))
    }

    pub(super) fn incoming_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.incoming.bind(py).getattr(intern!(py, "pending"))?.extract()
    }

    pub(super) fn outgoing_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.outgoing.bind(py).getattr(intern!(py, "pending"))?.extract()
    }

    pub(super) fn call_soon(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        arg: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let lp = self.loop_.bind(py);
        match arg {
            Some(a) => lp.call_method1(intern!(py, "call_soon"), (callback, a)),
            None => lp.call_method1(intern!(py, "call_soon"), (callback,)),
        }
        .map(drop)
    }

    /// asyncio's `_fatal_error`: force the transport below closed, then report (through the
    /// exception handler unless it is an `OSError` or a cancellation).
    pub(super) fn fatal_error(slf: &Bound<'_, Self>, exc: &PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let transport = slf.get().transport(py)?;
        if let Some(t) = &transport {
            t.bind(py)
                .call_method1(intern!(py, "_force_close"), (glue::exc_value(py, exc),))?;
        }
        glue::helper(py, "tls_fatal_error")?
            .call1((slf, transport, glue::exc_value(py, exc), message))
            .map(drop)
    }

    /// Reports `err` as asyncio's `except Exception as ex: self._fatal_error(ex, message)` does;
    /// anything that is not an `Exception` propagates.
    pub(super) fn report(slf: &Bound<'_, Self>, result: PyResult<()>, message: &str) -> PyResult<()> {
        match result {
            Err(err) if is_exception(slf.py(), &err) => Self::fatal_error(slf, &err, message),
            other => other,
        }
    }

    pub(super) fn wakeup_waiter(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
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

    pub(super) fn start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let start = if this.loop_.io().debug() {
            glue::helper(py, "log_debug")?.call1(("%r starts SSL handshake", slf))?;
            Some(crate::glue::loop_time())
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
    pub(super) fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Py<PyAny>,
        method: &Bound<'_, PyString>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let timer = slf
            .get()
            .loop_
            .bind(py)
            .call_method1(intern!(py, "call_later"), (delay.bind(py), slf.getattr(method)?))?;
        Ok(timer.unbind())
    }

    pub(super) fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match this.sslobj.bind(py).call_method0(intern!(py, "do_handshake")) {
            Ok(_) => Self::on_handshake_complete(slf, None),
            Err(err) if types(py)?.again(py, &err) => Self::process_outgoing(slf),
            Err(err) if types(py)?.ssl(py, &err) => Self::on_handshake_complete(slf, Some(err)),
            Err(err) => Err(err),
        }
    }

    pub(super) fn on_handshake_complete(slf: &Bound<'_, Self>, failure: Option<PyErr>) -> PyResult<()> {
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
                return this.wakeup_waiter(py, Some(glue::exc_value(py, &err).as_any()));
            }
            Err(err) => return Err(err),
        };
        if this.loop_.io().debug() {
            let start = this
                .with(py, |s| s.handshake_start)?
                .unwrap_or_else(crate::glue::loop_time);
            let ms = (crate::glue::loop_time() - start) * 1e3;
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

    pub(super) fn start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
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

    pub(super) fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)?;
        slf.get().set_phase(slf.py(), Phase::Shutdown)?;
        Self::do_shutdown(slf)
    }

    pub(super) fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
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

    pub(super) fn on_shutdown_complete(slf: &Bound<'_, Self>, failure: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if failure.is_some() || !shutdown_timeout_covers_close(py)? {
            cancel(py, this.with(py, |s| s.shutdown_timer.take())?)?;
        } else if this.with(py, |s| s.shutdown_timer.is_none())? {
            // 3.14: the transport's close() flushes its buffer first, which a peer that does not
            // read can delay forever: the timeout stays (or starts, when the peer initiated the
            // shutdown) until connection_lost().
            let timer = Self::call_later(slf, &this.shutdown_timeout, intern!(py, "_check_shutdown_timeout"))?;
            let old = this.with(py, |s| s.shutdown_timer.replace(timer))?;
            drop(old);
        }
        match failure {
            Some(err) => Self::fatal_error(slf, &err, "Fatal error on transport"),
            None => match this.transport(py)? {
                Some(t) => this.call_soon(py, &t.bind(py).getattr(intern!(py, "close"))?, None),
                None => Ok(()),
            },
        }
    }

    pub(super) fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
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
    pub(super) fn write_appdata<'py>(
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
    pub(super) fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
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
                let rest = data.get_item(glue::slice(py, count as isize, isize::MAX)?)?.unbind();
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
    pub(super) fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
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
    pub(super) fn control_app_writing(slf: &Bound<'_, Self>, drained: bool) -> PyResult<()> {
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
                    .call1((
                        slf,
                        format!("protocol.{name}() failed"),
                        glue::exc_value(py, &err),
                        app_transport,
                    ))
                    .map(drop)
            }
        }
    }

    // --- incoming ---------------------------------------------------------------------------

    pub(super) fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
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
    pub(super) fn read_copied(slf: &Bound<'_, Self>) -> PyResult<Option<usize>> {
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
    pub(super) fn read_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
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
                        let rest = view.get_item(glue::slice(py, offset as isize, isize::MAX)?)?;
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

    pub(super) fn call_eof_received(slf: &Bound<'_, Self>) -> PyResult<()> {
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
    pub(super) fn control_ssl_reading(slf: &Bound<'_, Self>, known: Option<usize>) -> PyResult<()> {
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

    pub(super) fn get_extra(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
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

    pub(super) fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        let pending = self.outgoing_pending(py)?;
        Ok(pending + self.with(py, |s| s.backlog_size)?)
    }
}

/// Hands records to the transport below: straight to the Rust socket transport when it is one.
pub(super) fn write_below(transport: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(stream) = transport.cast::<StreamTransport>() {
        return StreamTransport::write(stream, data);
    }
    transport
        .call_method1(intern!(transport.py(), "write"), (data,))
        .map(drop)
}
