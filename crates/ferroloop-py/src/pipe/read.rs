//! `ReadPipeTransport`: the read end of a pipe (asyncio's `_UnixReadPipeTransport`): reads on
//! readiness and gives the data to `data_received`, then `eof_received` and `connection_lost`.

use std::os::fd::RawFd;

use ferroloop_core::driver::Interest;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};
use rustix::io::Errno;

use super::{new_base, pipe_of, run_start, set_protocol, traverse, Ends, PipeState};
use crate::cell::AttachedCell;
use crate::glue::{self, os_error};
use crate::owner::{IoOp, LoopRef, Owner};
use crate::transport::base::{self, Base, Flags, Transport};
use crate::transport::fd_of;

pub struct ReadState {
    ends: Ends,
    flags: Flags,
}

impl base::State for ReadState {
    type Released = Option<Py<PyAny>>;
    type Dropped = ();

    fn flags(&self) -> &Flags {
        &self.flags
    }

    fn flags_mut(&mut self) -> &mut Flags {
        &mut self.flags
    }

    fn protocol(&self) -> Option<&Py<PyAny>> {
        self.ends.protocol.as_ref()
    }

    fn wanted_interest(&self) -> Interest {
        Interest {
            readable: self.flags.started && self.flags.is_reading(),
            writable: false,
            edge: false,
        }
    }

    /// A pipe end is asked for what it watches now.
    fn wants(&self) -> Interest {
        self.flags.interest
    }

    fn drop_writes(&mut self) {}

    fn release(&mut self, _py: Python<'_>) -> (Option<Py<PyAny>>, Option<Py<PyAny>>) {
        self.ends.release()
    }
}

impl PipeState for ReadState {
    fn ends(&self) -> &Ends {
        &self.ends
    }

    fn ends_mut(&mut self) -> &mut Ends {
        &mut self.ends
    }
}

#[pyclass(frozen, subclass, weakref, extends = crate::transport_root::TransportRoot, module = "ferroloop._ferroloop")]
pub struct ReadPipeTransport {
    base: Base,
    state: AttachedCell<ReadState>,
}

impl Transport for ReadPipeTransport {
    type State = ReadState;

    fn base(&self) -> &Base {
        &self.base
    }

    fn state(&self) -> &AttachedCell<ReadState> {
        &self.state
    }

    fn owner(slf: &Bound<'_, Self>) -> Owner {
        Owner::ReadPipe(slf.clone().unbind())
    }

    fn lose(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        Self::close_with(slf, exc)
    }
}

impl ReadPipeTransport {
    /// asyncio's `_close`: stop reading, then `connection_lost(exc)` on the next pass.
    fn close_with(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        base::close_now(slf, exc, |s| {
            s.flags.closing = true;
            Some(())
        })
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.base.fd;
        let read = this
            .base
            .lp()
            .read_buf()
            .with(py, |buf| match rustix::io::read(fd_of(fd), &mut buf[..]) {
                Ok(n) => {
                    this.base.lp().stats().read(n);
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
        let Some(protocol) = base::protocol(this, py)? else {
            return Ok(());
        };
        if !data.as_bytes().is_empty() {
            return base::call_protocol(
                slf,
                protocol.bind(py),
                intern!(py, "data_received"),
                &PyTuple::new(py, [data])?,
            );
        }
        if this.base.lp().debug() {
            glue::helper(py, "log_info")?.call1(("%r was closed by peer", slf))?;
        }
        this.state.with(py, |s| s.flags.closing = true)?;
        base::sync_interest(slf)?;
        base::schedule(slf, IoOp::Eof)?;
        base::schedule(slf, IoOp::ConnectionLost(None))
    }

    pub fn run_op(slf: &Bound<'_, Self>, op: IoOp) -> PyResult<()> {
        let py = slf.py();
        match op {
            IoOp::Start(waiter) => run_start(slf, waiter),
            IoOp::Read => Self::read_ready(slf),
            IoOp::Eof => match base::protocol(slf.get(), py)? {
                Some(p) => base::call_protocol(slf, p.bind(py), intern!(py, "eof_received"), &PyTuple::empty(py)),
                None => Ok(()),
            },
            IoOp::ConnectionLost(exc) => base::connection_lost(slf, exc),
            // Pipes are readiness-driven on every backend.
            IoOp::Write | IoOp::Done(_) | IoOp::Deliver | IoOp::Rearm => Ok(()),
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
impl ReadPipeTransport {
    #[new]
    #[pyo3(signature = (loop_, pipe, protocol, waiter=None, extra=None))]
    fn new(
        py: Python<'_>,
        loop_: LoopRef,
        pipe: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        waiter: Option<&Bound<'_, PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let _ = waiter; // resolved by `_start`, once the object exists
        Ok(ReadPipeTransport {
            base: new_base(py, loop_, pipe, extra)?,
            state: AttachedCell::new(ReadState {
                ends: Ends::new(pipe, protocol),
                flags: Flags::default(),
            }),
        })
    }

    #[pyo3(signature = (waiter=None))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
        base::start(slf, waiter)
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
        set_protocol(self, protocol)
    }

    /// The transport's protocol.
    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        base::protocol(self, py)
    }

    /// The extra-info dict `asyncio.BaseTransport.get_extra_info` reads.
    #[getter]
    fn _extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.base.extra.clone_ref(py)
    }

    /// Whether the transport is closing or closed.
    fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        base::flag(self, py, |f| f.closing)
    }

    /// Closes the transport: what is queued is sent first, then the protocol's
    /// `connection_lost(None)` is called.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if base::flag(slf.get(), slf.py(), |f| f.closing)? {
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
        pipe_of(self, py)
    }

    #[getter]
    fn _fileno(&self) -> RawFd {
        self.base.fd
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.base.loop_.object(py)
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> PyResult<bool> {
        base::flag(self, py, |f| f.closing)
    }

    fn _polling(&self, py: Python<'_>) -> PyResult<(bool, bool)> {
        base::polling(self, py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        traverse(self, &visit)
    }
}
