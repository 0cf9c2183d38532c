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

use super::{new_base, pipe_of, run_start, set_protocol, traverse, Ends, PipeState};
use crate::buffers::Chunk;
use crate::cell::AttachedCell;
use crate::glue::{self, os_error};
use crate::owner::{IoOp, LoopRef, Owner};
use crate::transport::base::{self, Base, Flags, Transport};
use crate::transport::{fd_of, is_strided_view, not_contiguous, retry_later, LOG_THRESHOLD_FOR_CONNLOST_WRITES};

pub struct WriteState {
    ends: Ends,
    writes: WriteQueue<Chunk>,
    /// Watch for readability: the reader went away (pipes and sockets only).
    watch_peer: bool,
    flags: Flags,
}

impl base::State for WriteState {
    type Released = Option<Py<PyAny>>;
    type Dropped = Vec<Chunk>;

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
        let f = &self.flags;
        Interest {
            readable: f.started
                && self.watch_peer
                && self.ends.pipe.is_some()
                && !(f.closing && self.writes.is_empty()),
            writable: !self.writes.is_empty(),
            edge: false,
        }
    }

    /// A pipe end is asked for what it watches now.
    fn wants(&self) -> Interest {
        self.flags.interest
    }

    fn buffer_size(&self) -> usize {
        self.writes.len()
    }

    fn writes_pending(&self) -> bool {
        !self.writes.is_empty()
    }

    fn drop_writes(&mut self) -> Vec<Chunk> {
        self.writes.clear()
    }

    fn release(&mut self, _py: Python<'_>) -> (Option<Py<PyAny>>, Option<Py<PyAny>>) {
        self.ends.release()
    }
}

impl PipeState for WriteState {
    fn ends(&self) -> &Ends {
        &self.ends
    }

    fn ends_mut(&mut self) -> &mut Ends {
        &mut self.ends
    }
}

#[pyclass(frozen, subclass, weakref, extends = crate::transport_root::TransportRoot, module = "ferroloop._ferroloop")]
pub struct WritePipeTransport {
    base: Base,
    state: AttachedCell<WriteState>,
}

impl Transport for WritePipeTransport {
    type State = WriteState;

    fn base(&self) -> &Base {
        &self.base
    }

    fn state(&self) -> &AttachedCell<WriteState> {
        &self.state
    }

    fn owner(slf: &Bound<'_, Self>) -> Owner {
        Owner::WritePipe(slf.clone().unbind())
    }

    fn lose(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        Self::close_with(slf, exc)
    }
}

impl WritePipeTransport {
    /// asyncio's `_close`: drop queued data, stop watching, `connection_lost(exc)` next pass.
    fn close_with(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        base::close_now(slf, exc, |s| {
            s.flags.closing = true;
            s.watch_peer = false;
            Some(s.writes.clear())
        })
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.base.fd;
        let flushed = this
            .state
            .with(py, |s| s.writes.flush(|iov| Ok(rustix::io::writev(fd_of(fd), iov)?)))?;
        match flushed {
            Err(e) if retry_later(&e) => Ok(()),
            Err(e) => {
                this.state.with(py, |s| s.flags.conn_lost += 1)?;
                base::fatal_error(slf, &os_error(&e), "Fatal write error on pipe transport")
            }
            Ok((n, done)) => {
                this.base.lp().stats().wrote(n);
                drop(done);
                if !this.state.with(py, |s| s.writes.is_empty())? {
                    return Ok(());
                }
                base::sync_interest(slf)?;
                base::maybe_resume_protocol(slf)?;
                if this.state.with(py, |s| s.flags.closing && s.writes.is_empty())? {
                    base::sync_interest(slf)?;
                    return base::connection_lost(slf, None);
                }
                Ok(())
            }
        }
    }

    pub fn run_op(slf: &Bound<'_, Self>, op: IoOp) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match op {
            IoOp::Start(waiter) => run_start(slf, waiter),
            IoOp::Read => {
                // Readable on a write pipe: the reading end is gone.
                if this.base.lp().debug() {
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
            IoOp::ConnectionLost(exc) => base::connection_lost(slf, exc),
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
impl WritePipeTransport {
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
        Ok(WritePipeTransport {
            base: new_base(py, loop_, pipe, extra)?,
            state: AttachedCell::new(WriteState {
                ends: Ends::new(pipe, protocol),
                writes: WriteQueue::new(),
                watch_peer: false,
                flags: Flags::default(),
            }),
        })
    }

    /// `watch_peer`: the fd is a pipe or socket, whose readability means the reader went away.
    #[pyo3(signature = (waiter=None, watch_peer=false))]
    fn _start(slf: &Bound<'_, Self>, waiter: Option<Py<PyAny>>, watch_peer: bool) -> PyResult<()> {
        slf.get().state.with(slf.py(), |s| s.watch_peer = watch_peer)?;
        base::start(slf, waiter)
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
            .with(py, |s| (s.flags.conn_lost > 0 || s.flags.closing, !s.writes.is_empty()))?;
        if !lost && is_strided_view(data) {
            // asyncio hands the view to os.write(), which refuses it (a fatal write error), or,
            // with data queued, adds it to its bytearray buffer, which refuses it too.
            if queued {
                return Err(PyTypeError::new_err("can't concat memoryview to bytearray"));
            }
            this.state.with(py, |s| s.flags.conn_lost += 1)?;
            return base::fatal_error(slf, &not_contiguous(), "Fatal write error on pipe transport");
        }
        if lost {
            let count = this.state.with(py, |s| {
                s.flags.conn_lost += 1;
                s.flags.conn_lost - 1
            })?;
            if count >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                glue::helper(py, "log_warning")?
                    .call1(("pipe closed by peer or os.write(pipe, data) raised exception.",))?;
            }
            return Ok(());
        }
        let mut sent = 0;
        if !queued {
            match rustix::io::write(fd_of(this.base.fd), chunk.as_bytes()) {
                Ok(n) => {
                    this.base.lp().stats().wrote(n);
                    if n == size {
                        return Ok(());
                    }
                    sent = n;
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => {
                    this.state.with(py, |s| s.flags.conn_lost += 1)?;
                    return base::fatal_error(slf, &os_error(&e.into()), "Fatal write error on pipe transport");
                }
            }
        }
        this.state
            .with(py, |s| s.writes.push(Chunk::Bytes(chunk.unbind()), sent))?;
        base::sync_interest(slf)?;
        base::maybe_pause_protocol(slf)
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
            if s.flags.closing {
                return None;
            }
            s.flags.closing = true;
            Some(s.writes.is_empty())
        })?;
        if lost_now == Some(true) {
            this.state.with(py, |s| s.watch_peer = false)?;
            base::sync_interest(slf)?;
            base::schedule(slf, IoOp::ConnectionLost(None))?;
        }
        Ok(())
    }

    /// Closes the transport: what is queued is sent first, then the protocol's
    /// `connection_lost(None)` is called.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf
            .get()
            .state
            .with(slf.py(), |s| s.ends.pipe.is_some() && !s.flags.closing)?
        {
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
        base::flag(self, py, |f| f.closing)
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
    fn _protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        base::protocol(self, py)
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> PyResult<bool> {
        base::flag(self, py, |f| f.closing)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> PyResult<u32> {
        base::flag(self, py, |f| f.conn_lost)
    }

    fn _polling(&self, py: Python<'_>) -> PyResult<(bool, bool)> {
        base::polling(self, py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        traverse(self, &visit)
    }
}
