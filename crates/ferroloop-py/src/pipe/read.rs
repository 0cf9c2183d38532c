//! `ReadPipeTransport`: the read end of a pipe (asyncio's `_UnixReadPipeTransport`): reads on
//! readiness and gives the data to `data_received`, then `eof_received` and `connection_lost`.

use std::os::fd::RawFd;

use ferroloop_core::driver::Interest;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};
use rustix::io::Errno;

use super::{call_protocol, connection_lost, protocol_of, resolve_waiter, start, Common, PipeState};
use crate::cell::AttachedCell;
use crate::event_loop::LoopCore;
use crate::glue::{self, os_error};
use crate::owner::{IoOp, Owner};
use crate::transport::fd_of;

struct ReadState {
    pipe: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    started: bool,
    paused: bool,
    closing: bool,
    interest: Interest,
}

impl ReadState {
    fn is_reading(&self) -> bool {
        !self.paused && !self.closing
    }
}

impl PipeState for ReadState {
    fn protocol(&self) -> Option<&Py<PyAny>> {
        self.protocol.as_ref()
    }

    fn set_started(&mut self) {
        self.started = true;
    }

    fn release(&mut self) -> (Option<Py<PyAny>>, Option<Py<PyAny>>) {
        self.interest = Interest::NONE;
        (self.pipe.take(), self.protocol.take())
    }
}

#[pyclass(frozen, subclass, weakref, extends = crate::transport_root::TransportRoot, module = "ferroloop._ferroloop")]
pub struct ReadPipeTransport {
    common: Common,
    state: AttachedCell<ReadState>,
}

impl ReadPipeTransport {
    fn protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        protocol_of(py, &self.state)
    }

    fn sync_interest(&self, py: Python<'_>) -> PyResult<()> {
        let change = self.state.with(py, |s| {
            let want = Interest {
                readable: s.started && s.is_reading(),
                writable: false,
            };
            (want != s.interest).then(|| {
                s.interest = want;
                want
            })
        })?;
        match change {
            Some(interest) => self.common.lp().set_owner_interest(py, self.common.fd, interest),
            None => Ok(()),
        }
    }

    fn owner(slf: &Bound<'_, Self>) -> Owner {
        Owner::ReadPipe(slf.clone().unbind())
    }

    /// asyncio's `_close`: stop reading, then `connection_lost(exc)` on the next pass.
    fn close_with(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.state.with(py, |s| s.closing = true)?;
        this.sync_interest(py)?;
        this.common
            .lp()
            .schedule(py, Self::owner(slf), IoOp::ConnectionLost(exc))
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.common.fd;
        let read = this
            .common
            .lp()
            .with_read_buf(py, |buf| match rustix::io::read(fd_of(fd), &mut buf[..]) {
                Ok(n) => {
                    this.common.lp().stats.read(n);
                    Ok(PyBytes::new(py, &buf[..n]))
                }
                Err(e) => Err(e),
            })?;
        let data = match read {
            Ok(data) => data,
            Err(Errno::AGAIN | Errno::INTR) => return Ok(()),
            Err(e) => {
                let err = os_error(&e.into());
                glue::helper(py, "pipe_fatal_error")?.call1((
                    slf,
                    glue::exc_value(py, &err),
                    "Fatal read error on pipe transport",
                ))?;
                return Self::close_with(slf, Some(glue::exc_value(py, &err).clone().into_any().unbind()));
            }
        };
        let Some(protocol) = this.protocol(py)? else {
            return Ok(());
        };
        if !data.as_bytes().is_empty() {
            return call_protocol(
                slf.as_any(),
                &this.common,
                protocol.bind(py),
                intern!(py, "data_received"),
                &PyTuple::new(py, [data])?,
            );
        }
        if this.common.lp().debug() {
            glue::helper(py, "log_info")?.call1(("%r was closed by peer", slf))?;
        }
        this.state.with(py, |s| s.closing = true)?;
        this.sync_interest(py)?;
        this.common.lp().schedule(py, Self::owner(slf), IoOp::Eof)?;
        this.common
            .lp()
            .schedule(py, Self::owner(slf), IoOp::ConnectionLost(None))
    }

    fn connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let this = slf.get();
        connection_lost(slf.py(), &this.common, &this.state, exc)
    }

    pub fn run_op(slf: &Bound<'_, Self>, op: IoOp) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match op {
            IoOp::Start(waiter) => {
                start(slf.as_any(), &this.common, &this.state)?;
                this.sync_interest(py)?;
                resolve_waiter(py, waiter)
            }
            IoOp::Read => Self::read_ready(slf),
            IoOp::Eof => match this.protocol(py)? {
                Some(p) => call_protocol(
                    slf.as_any(),
                    &this.common,
                    p.bind(py),
                    intern!(py, "eof_received"),
                    &PyTuple::empty(py),
                ),
                None => Ok(()),
            },
            IoOp::ConnectionLost(exc) => Self::connection_lost(slf, exc),
            // Pipes are readiness-driven on every backend.
            IoOp::Write | IoOp::Done(_) | IoOp::Deliver | IoOp::Rearm => Ok(()),
        }
    }

    pub fn context(&self) -> &Py<PyAny> {
        &self.common.context
    }

    pub fn wants(&self, py: Python<'_>) -> Interest {
        self.state.with(py, |s| s.interest).unwrap_or(Interest::NONE)
    }
}

#[pymethods]
impl ReadPipeTransport {
    #[new]
    #[pyo3(signature = (loop_, pipe, protocol, waiter=None, extra=None))]
    fn new(
        loop_: &Bound<'_, LoopCore>,
        pipe: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        waiter: Option<&Bound<'_, PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let _ = waiter; // resolved by `_start`, once the object exists
        Ok(ReadPipeTransport {
            common: Common::new(loop_, pipe, extra)?,
            state: AttachedCell::new(ReadState {
                pipe: Some(pipe.clone().unbind()),
                protocol: Some(protocol.clone().unbind()),
                started: false,
                paused: false,
                closing: false,
                interest: Interest::NONE,
            }),
        })
    }

    #[pyo3(signature = (waiter=None))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.common.lp().attach_owner(py, this.common.fd, Self::owner(slf))?;
        this.common.lp().schedule(py, Self::owner(slf), IoOp::Start(waiter))
    }

    /// Whether received data is delivered to the protocol (reading is not paused).
    fn is_reading(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.is_reading())
    }

    /// Stops delivering received data to the protocol until `resume_reading()`.
    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let pause = this.state.with(py, |s| {
            let pause = s.is_reading();
            s.paused |= pause;
            pause
        })?;
        if pause {
            this.sync_interest(py)?;
            if this.common.lp().debug() {
                glue::helper(py, "log_debug")?.call1(("%r pauses reading", slf))?;
            }
        }
        Ok(())
    }

    /// Delivers received data to the protocol again.
    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let resume = this.state.with(py, |s| {
            let resume = !s.closing && s.paused;
            s.paused &= !resume;
            resume
        })?;
        if resume {
            this.sync_interest(py)?;
            if this.common.lp().debug() {
                glue::helper(py, "log_debug")?.call1(("%r resumes reading", slf))?;
            }
        }
        Ok(())
    }

    /// Makes `protocol` the transport's protocol.
    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let old = self
            .state
            .with(protocol.py(), |s| s.protocol.replace(protocol.clone().unbind()))?;
        drop(old);
        Ok(())
    }

    /// The transport's protocol.
    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.protocol(py)
    }

    /// The extra-info dict `asyncio.BaseTransport.get_extra_info` reads.
    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.common.extra(py)
    }

    /// Whether the transport is closing or closed.
    fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.closing)
    }

    /// Closes the transport: what is queued is sent first, then the protocol's
    /// `connection_lost(None)` is called.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().state.with(slf.py(), |s| s.closing)? {
            return Ok(());
        }
        Self::close_with(slf, None)
    }

    /// asyncio's private `_close(exc)` (`base_subprocess` calls it on failures).
    #[pyo3(signature = (exc=None))]
    fn _close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        Self::close_with(slf, exc)
    }

    #[getter]
    fn _pipe(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.state.with(py, |s| s.pipe.as_ref().map(|p| p.clone_ref(py)))
    }

    #[getter]
    fn _fileno(&self) -> RawFd {
        self.common.fd
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<LoopCore> {
        self.common.loop_.clone_ref(py)
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.closing)
    }

    fn _polling(&self, py: Python<'_>) -> PyResult<(bool, bool)> {
        self.state.with(py, |s| (s.interest.readable, s.interest.writable))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.common.traverse(&visit)?;
        let Some(s) = self.state.for_traverse() else {
            return Ok(());
        };
        visit.call(&s.pipe)?;
        visit.call(&s.protocol)
    }
}
