//! `WritePipeTransport`: the write end of a pipe (asyncio's `_UnixWritePipeTransport`): writes at
//! once or queues, flushes on writability, flow control, and the reader-went-away watch.

use std::os::fd::RawFd;

use ferroloop_core::driver::Interest;
use ferroloop_core::writeq::WriteQueue;
use pyo3::exceptions::{PyAssertionError, PyBrokenPipeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use pyo3::{PyTraverseError, PyVisit};
use rustix::io::Errno;

use super::{connection_lost, protocol_of, resolve_waiter, start, Common, PipeState};
use crate::cell::AttachedCell;
use crate::event_loop::LoopCore;
use crate::glue::{self, os_error};
use crate::owner::{IoOp, Owner};
use crate::stream::Chunk;
use crate::transport::{
    fd_of, flow_callback, is_strided_view, not_contiguous, write_buffer_limits, WaterMarks,
    LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};

#[allow(clippy::struct_excessive_bools)] // asyncio's transport flags, one for one
struct WriteState {
    pipe: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    writes: WriteQueue<Chunk>,
    /// Watch for readability: the reader went away (pipes and sockets only).
    watch_peer: bool,
    started: bool,
    closing: bool,
    conn_lost: u32,
    /// asyncio's write-side flow control (`_FlowControlMixin`).
    flow: WaterMarks,
    interest: Interest,
}

impl PipeState for WriteState {
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
pub struct WritePipeTransport {
    common: Common,
    state: AttachedCell<WriteState>,
}

impl WritePipeTransport {
    fn protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        protocol_of(py, &self.state)
    }

    fn owner(slf: &Bound<'_, Self>) -> Owner {
        Owner::WritePipe(slf.clone().unbind())
    }

    fn sync_interest(&self, py: Python<'_>) -> PyResult<()> {
        let change = self.state.with(py, |s| {
            let want = Interest {
                readable: s.started && s.watch_peer && s.pipe.is_some() && !(s.closing && s.writes.is_empty()),
                writable: !s.writes.is_empty(),
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

    /// asyncio's `_close`: drop queued data, stop watching, `connection_lost(exc)` next pass.
    fn close_with(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let dropped = this.state.with(py, |s| {
            s.closing = true;
            s.watch_peer = false;
            s.writes.clear()
        })?;
        drop(dropped);
        this.sync_interest(py)?;
        this.common
            .lp()
            .schedule(py, Self::owner(slf), IoOp::ConnectionLost(exc))
    }

    fn fatal_error(slf: &Bound<'_, Self>, err: &PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        glue::helper(py, "transport_fatal_error")?.call1((slf, glue::exc_value(py, err), message))?;
        Self::close_with(slf, Some(glue::exc_value(py, err).clone().into_any().unbind()))
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.common.fd;
        let flushed = this
            .state
            .with(py, |s| s.writes.flush(|iov| Ok(rustix::io::writev(fd_of(fd), iov)?)))?;
        match flushed {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => {
                this.state.with(py, |s| s.conn_lost += 1)?;
                Self::fatal_error(slf, &os_error(&e), "Fatal write error on pipe transport")
            }
            Ok((n, done)) => {
                this.common.lp().stats.wrote(n);
                drop(done);
                if !this.state.with(py, |s| s.writes.is_empty())? {
                    return Ok(());
                }
                this.sync_interest(py)?;
                Self::maybe_resume_protocol(slf)?;
                if this.state.with(py, |s| s.closing && s.writes.is_empty())? {
                    this.sync_interest(py)?;
                    return Self::connection_lost(slf, None);
                }
                Ok(())
            }
        }
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let resume = this.state.with(py, |s| s.flow.should_resume(s.writes.len()))?;
        if resume {
            flow_callback(slf.as_any(), this.protocol(py)?, "resume_writing")?;
        }
        Ok(())
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let pause = this.state.with(py, |s| s.flow.should_pause(s.writes.len()))?;
        if pause {
            flow_callback(slf.as_any(), this.protocol(py)?, "pause_writing")?;
        }
        Ok(())
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
            IoOp::Read => {
                // Readable on a write pipe: the reading end is gone.
                if this.common.lp().debug() {
                    glue::helper(py, "log_info")?.call1(("%r was closed by peer", slf))?;
                }
                let queued = this.state.with(py, |s| !s.writes.is_empty())?;
                let exc = if queued {
                    Some(PyBrokenPipeError::new_err(()).value(py).clone().into_any().unbind())
                } else {
                    None
                };
                Self::close_with(slf, exc)
            }
            IoOp::Write => Self::write_ready(slf),
            IoOp::ConnectionLost(exc) => Self::connection_lost(slf, exc),
            IoOp::Eof | IoOp::Done(_) | IoOp::Deliver | IoOp::Rearm => Ok(()),
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
impl WritePipeTransport {
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
        Ok(WritePipeTransport {
            common: Common::new(loop_, pipe, extra)?,
            state: AttachedCell::new(WriteState {
                pipe: Some(pipe.clone().unbind()),
                protocol: Some(protocol.clone().unbind()),
                writes: WriteQueue::new(),
                watch_peer: false,
                started: false,
                closing: false,
                conn_lost: 0,
                flow: WaterMarks::default(),
                interest: Interest::NONE,
            }),
        })
    }

    /// `watch_peer`: the fd is a pipe or socket, whose readability means the reader went away.
    #[pyo3(signature = (waiter=None, watch_peer=false))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<Py<PyAny>>, watch_peer: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.state.with(py, |s| s.watch_peer = watch_peer)?;
        this.common.lp().attach_owner(py, this.common.fd, Self::owner(slf))?;
        this.common.lp().schedule(py, Self::owner(slf), IoOp::Start(waiter))
    }

    /// Writes `data` (a bytes-like object): sent at once if the peer can take it, else queued and
    /// sent as it can; never blocks.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let chunk = if let Ok(b) = data.cast::<PyBytes>() {
            b.clone()
        } else if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
            py.get_type::<PyBytes>().call1((data,))?.cast_into::<PyBytes>()?
        } else {
            // asyncio asserts the type here.
            return Err(PyAssertionError::new_err(data.repr()?.unbind()));
        };
        let size = chunk.as_bytes().len();
        if size == 0 {
            return Ok(());
        }
        let (lost, queued) = this
            .state
            .with(py, |s| (s.conn_lost > 0 || s.closing, !s.writes.is_empty()))?;
        if !lost && is_strided_view(data) {
            // asyncio hands the view to os.write(), which refuses it (a fatal write error), or,
            // with data queued, adds it to its bytearray buffer, which refuses it too.
            if queued {
                return Err(PyTypeError::new_err("can't concat memoryview to bytearray"));
            }
            this.state.with(py, |s| s.conn_lost += 1)?;
            return Self::fatal_error(slf, &not_contiguous(), "Fatal write error on pipe transport");
        }
        if lost {
            let count = this.state.with(py, |s| {
                s.conn_lost += 1;
                s.conn_lost - 1
            })?;
            if count >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                glue::helper(py, "log_warning")?
                    .call1(("pipe closed by peer or os.write(pipe, data) raised exception.",))?;
            }
            return Ok(());
        }
        let mut sent = 0;
        if !queued {
            match rustix::io::write(fd_of(this.common.fd), chunk.as_bytes()) {
                Ok(n) => {
                    this.common.lp().stats.wrote(n);
                    if n == size {
                        return Ok(());
                    }
                    sent = n;
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => {
                    this.state.with(py, |s| s.conn_lost += 1)?;
                    return Self::fatal_error(slf, &os_error(&e.into()), "Fatal write error on pipe transport");
                }
            }
        }
        this.state
            .with(py, |s| s.writes.push(Chunk::Bytes(chunk.unbind()), sent))?;
        this.sync_interest(py)?;
        Self::maybe_pause_protocol(slf)
    }

    /// Writes the bytes-like objects of `list_of_data`, in order.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = PyBytes::new(slf.py(), &[]).call_method1("join", (list_of_data,))?;
        Self::write(slf, &data)
    }

    /// Whether `write_eof()` is possible on this transport.
    #[allow(clippy::unused_self)] // an instance method in asyncio's API
    fn can_write_eof(&self) -> bool {
        true
    }

    /// Closes the write end once the queued data is sent; reading goes on.
    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lost_now = this.state.with(py, |s| {
            if s.closing {
                return None;
            }
            s.closing = true;
            Some(s.writes.is_empty())
        })?;
        if lost_now == Some(true) {
            this.state.with(py, |s| s.watch_peer = false)?;
            this.sync_interest(py)?;
            this.common
                .lp()
                .schedule(py, Self::owner(slf), IoOp::ConnectionLost(None))?;
        }
        Ok(())
    }

    /// Closes the transport: what is queued is sent first, then the protocol's
    /// `connection_lost(None)` is called.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().state.with(slf.py(), |s| s.pipe.is_some() && !s.closing)? {
            Self::write_eof(slf)?;
        }
        Ok(())
    }

    /// Closes the transport at once, dropping what is queued; the protocol's
    /// `connection_lost(None)` is called.
    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_with(slf, None)
    }

    /// asyncio's private `_close(exc)`.
    #[pyo3(signature = (exc=None))]
    fn _close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        Self::close_with(slf, exc)
    }

    /// Whether the transport is closing or closed.
    fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.closing)
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

    /// The size of what is queued to be written.
    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.state.with(py, |s| s.writes.len())
    }

    /// `(low, high)`: the write buffer's water marks.
    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        self.state.with(py, |s| (s.flow.low, s.flow.high))
    }

    /// Sets the write buffer's water marks: the protocol's `pause_writing()` is called when the
    /// queue grows above `high`, `resume_writing()` when it drains to `low` or below.
    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (high, low) = write_buffer_limits(high, low)?;
        slf.get().state.with(slf.py(), |s| {
            s.flow.high = high;
            s.flow.low = low;
        })?;
        Self::maybe_pause_protocol(slf)
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
    fn _protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.protocol(py)
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.closing)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> PyResult<u32> {
        self.state.with(py, |s| s.conn_lost)
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
