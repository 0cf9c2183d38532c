//! `StreamTransport`'s write path: `write()` tried at once and queued without a copy, the
//! queue's flush with `writev`, asyncio's buffer-size accounting of memoryviews, and its errors.

use std::io::IoSlice;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use rustix::io::Errno;
use rustix::net::{SendFlags, Shutdown};

use super::{State, StreamTransport};
use crate::buffers::Chunk;
use crate::glue::{self, os_error};
use crate::stats::Stats;
use crate::transport::base;
use crate::transport::{
    compat_flag, fd_of, not_contiguous, retry_later, with_bytes, LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};

/// Whether asyncio's socket transport counts a queued memoryview by its `len()` (3.12+).
fn write_buffer_counts_len(py: Python<'_>) -> PyResult<bool> {
    static SWITCH: PyOnceLock<bool> = PyOnceLock::new();
    compat_flag(py, &SWITCH, "WRITE_BUFFER_COUNTS_LEN")
}

/// Whether asyncio's socket transport has a `writelines` of its own (3.12+), with its checks.
fn writelines_of_its_own(py: Python<'_>) -> PyResult<bool> {
    static SWITCH: PyOnceLock<bool> = PyOnceLock::new();
    compat_flag(py, &SWITCH, "SOCKET_TRANSPORT_HAS_WRITELINES")
}

/// The `TypeError` of `write()` given something else than bytes, a bytearray or a memoryview.
fn write_type_error(data: &Bound<'_, PyAny>) -> PyResult<PyErr> {
    static PREFIX: PyOnceLock<String> = PyOnceLock::new();
    let py = data.py();
    let prefix = PREFIX.get_or_try_init(py, || glue::compat(py, "WRITE_TYPE_ERROR")?.extract())?;
    let name = data.get_type().name()?;
    Ok(PyTypeError::new_err(format!("{prefix}, not '{name}'")))
}

impl StreamTransport {
    /// `write(data)`: see the `#[pymethods]` entry.
    pub(super) fn write_data(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let bytes = data.cast::<PyBytes>().ok();
        let view = bytes.is_none() && data.is_instance_of::<PyMemoryView>();
        if bytes.is_none() && !view && !data.is_instance_of::<PyByteArray>() {
            return Err(write_type_error(data)?);
        }
        let (eof, waiting, conn_lost, queued) = this.state.with(py, |s| {
            (s.eof, s.empty_waiter.is_some(), s.flags.conn_lost, !s.writes.is_empty())
        })?;
        if eof {
            return Err(PyRuntimeError::new_err("Cannot call write() after write_eof()"));
        }
        if waiting {
            return Err(PyRuntimeError::new_err("unable to write; sendfile is in progress"));
        }
        // A memoryview's `len()`: asyncio's `if not data` asks for it (a 0-dim view has none
        // since 3.12), and since 3.12 it is what a queued view counts for in the buffer size.
        let items = if view { data.len()? } else { 0 };
        let counted_items = (items > 0 && write_buffer_counts_len(py)?).then_some(items);
        // The bytes per counted item, decided once here (1: bytes are counted).
        let unit = |nbytes: usize| counted_items.filter(|&n| n < nbytes).map_or(1, |n| nbytes / n);
        let attempt = Attempt {
            fd: this.base.fd,
            stats: this.base.lp().stats(),
            conn_lost,
            queued,
        };
        let mut per_item = 1;
        let outcome = if let Some(b) = bytes {
            // Queued as it is, without a copy: a bytes object cannot change.
            attempt.send(b.as_bytes(), |sent| (Chunk::Bytes(b.clone().unbind()), sent))
        } else {
            // Mutable or borrowed memory: sent from where it is; what the kernel does not take now
            // is copied, as asyncio copies it into its buffer. (It used to be copied into a new
            // `bytes` by a Python call first: 400 of 5,600 instructions per request on
            // `tcp bufproto 1KiB`, whose protocol writes a memoryview.)
            let direct = with_bytes(data, |buf| {
                per_item = unit(buf.len());
                attempt.send(buf, |sent| (Chunk::Bytes(PyBytes::new(py, &buf[sent..]).unbind()), 0))
            });
            if let Some(outcome) = direct {
                outcome
            } else {
                return Self::write_not_contiguous(slf, data, &attempt, unit);
            }
        };
        match outcome {
            Sent::Nothing | Sent::All => Ok(()),
            Sent::Lost => Self::write_after_loss(slf, conn_lost),
            Sent::Failed(e) => {
                let e = this
                    .state
                    .with(py, |s| reset_not_pipe(e.into(), s.completion, this.base.fd))?;
                base::fatal_error(slf, &os_error(&e), "Fatal write error on socket transport")
            }
            Sent::Part(chunk, offset) => {
                this.state.with(py, |s| s.queue(py, chunk, offset, per_item))?;
                base::sync_interest(slf)?;
                base::maybe_pause_protocol(slf)
            }
        }
    }

    /// `writelines(list_of_data)`: see the `#[pymethods]` entry.
    pub(super) fn write_lines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if writelines_of_its_own(py)? {
            let (eof, waiting) = slf.get().state.with(py, |s| (s.eof, s.empty_waiter.is_some()))?;
            if eof {
                return Err(PyRuntimeError::new_err("Cannot call writelines() after write_eof()"));
            }
            if waiting {
                return Err(PyRuntimeError::new_err("unable to writelines; sendfile is in progress"));
            }
            if !list_of_data.is_truthy()? {
                return Ok(());
            }
            let items = list_of_data.try_iter()?.collect::<PyResult<Vec<_>>>()?;
            for item in &items {
                // asyncio takes a `memoryview(data)` of each.
                // SAFETY: a type check of a live object.
                if unsafe { ffi::PyObject_CheckBuffer(item.as_ptr()) } == 0 {
                    let name = item.get_type().name()?;
                    return Err(PyTypeError::new_err(format!(
                        "memoryview: a bytes-like object is required, not '{name}'"
                    )));
                }
            }
            let data = PyBytes::new(py, &[]).call_method1(intern!(py, "join"), (items,))?;
            return Self::write_data(slf, &data);
        }
        let data = PyBytes::new(py, &[]).call_method1(intern!(py, "join"), (list_of_data,))?;
        Self::write_data(slf, &data)
    }

    pub(super) fn run_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.base.fd;
        if this.state.with(py, |s| s.refused && s.flags.conn_lost == 0)? {
            return Self::flush_refused(slf);
        }
        let flushed = this.state.with(py, |s| {
            if s.flags.conn_lost > 0 || s.writes.is_empty() {
                return None;
            }
            Some(s.writes.flush(|iov| send_vectored(fd, iov)))
        })?;
        let Some(flushed) = flushed else { return Ok(()) };
        Self::after_flush(slf, flushed)
    }

    /// `write()` of a memoryview that is not C-contiguous (`memoryview(b)[::2]`): asyncio passes
    /// it to `socket.send()`, which refuses it with `BufferError`, a fatal write error; with data
    /// already queued, 3.11 fails at once (its `bytearray` buffer refuses it: `TypeError`) and
    /// 3.12+ queues it as it is, so the next flush fails.
    fn write_not_contiguous(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        attempt: &Attempt<'_>,
        unit: impl Fn(usize) -> usize,
    ) -> PyResult<()> {
        let py = slf.py();
        if attempt.conn_lost > 0 {
            return Self::write_after_loss(slf, attempt.conn_lost);
        }
        if !attempt.queued {
            return base::fatal_error(slf, &not_contiguous(), "Fatal write error on socket transport");
        }
        if !write_buffer_counts_len(py)? {
            // 3.11's `self._buffer.extend(data)` (the same switch: 3.12's zero-copy queue).
            return Err(PyTypeError::new_err("can't set bytearray slice from memoryview"));
        }
        let copy = py.get_type::<PyBytes>().call1((data,))?.cast_into::<PyBytes>()?;
        let per_item = unit(copy.as_bytes().len());
        slf.get().state.with(py, |s| {
            s.queue(py, Chunk::Bytes(copy.unbind()), 0, per_item);
            s.refused = true;
        })?;
        base::maybe_pause_protocol(slf)
    }

    /// A write to a lost connection is dropped and counted; asyncio warns from the fifth on.
    fn write_after_loss(slf: &Bound<'_, Self>, conn_lost: u32) -> PyResult<()> {
        let py = slf.py();
        if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
            glue::helper(py, "log_warning")?.call1(("socket.send() raised exception.",))?;
        }
        slf.get().state.with(py, |s| s.flags.conn_lost += 1)
    }

    /// The flush of a queue holding a refused memoryview (see `write_not_contiguous`).
    pub(super) fn flush_refused(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_failed(slf, &not_contiguous())
    }

    /// A flush of the queue failed with `err`: the queue is dropped, asyncio's fatal write error
    /// is reported, and a sendfile waiting for the queue to drain gets the error.
    fn write_failed(slf: &Bound<'_, Self>, err: &PyErr) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let dropped = this.state.with(py, State::clear_writes)?;
        drop(dropped);
        base::sync_interest(slf)?;
        base::fatal_error(slf, err, "Fatal write error on socket transport")?;
        if let Some(w) = this
            .state
            .with(py, |s| s.empty_waiter.as_ref().map(|w| w.clone_ref(py)))?
        {
            w.bind(py)
                .call_method1(intern!(py, "set_exception"), (glue::exc_value(py, err),))?;
        }
        Ok(())
    }

    /// What follows a write of queued data: flow control, the empty waiter, a pending close or
    /// `write_eof`; or, if it failed, asyncio's fatal write error.
    pub(super) fn after_flush(slf: &Bound<'_, Self>, flushed: std::io::Result<(usize, Vec<Chunk>)>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.base.fd;
        match flushed {
            Err(e) if retry_later(&e) => Ok(()),
            Err(e) => Self::write_failed(slf, &os_error(&e)),
            Ok((n, done)) => {
                this.base.lp().stats().wrote(n);
                if !done.is_empty() {
                    this.state.with(py, |s| s.sent(&done))?;
                }
                drop(done);
                base::maybe_resume_protocol(slf)?;
                let (empty, completion, closing, eof, waiter) = this.state.with(py, |s| {
                    (
                        s.writes.is_empty(),
                        s.completion,
                        s.flags.closing,
                        s.eof,
                        s.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                    )
                })?;
                if !empty {
                    // The completion model sends the next chunk; readiness keeps watching.
                    return if completion { base::sync_interest(slf) } else { Ok(()) };
                }
                base::sync_interest(slf)?;
                if let Some(w) = waiter {
                    w.bind(py).call_method1(intern!(py, "set_result"), (py.None(),))?;
                }
                if closing {
                    base::connection_lost(slf, None)
                } else if eof {
                    rustix::net::shutdown(fd_of(fd), Shutdown::Write).map_err(|e| os_error(&e.into()))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// The error of a failed send as `send()` on a readiness loop reports it. After a TCP reset, the
/// socket's pending error (`ECONNRESET`) goes to the first call that asks; with `io_uring` that is
/// the receive always in flight, and the send after it sees `EPIPE`. asyncio's send would have
/// seen the reset, so `EPIPE` is told as `ECONNRESET` there. (A UNIX socket has no reset: `EPIPE`
/// is what its send says on every loop.)
pub(super) fn reset_not_pipe(e: std::io::Error, completion: bool, fd: RawFd) -> std::io::Error {
    if completion && e.raw_os_error() == Some(Errno::PIPE.raw_os_error()) {
        let domain = rustix::net::sockopt::socket_domain(fd_of(fd));
        if matches!(domain, Ok(d) if d == rustix::net::AddressFamily::INET || d == rustix::net::AddressFamily::INET6) {
            return std::io::Error::from_raw_os_error(Errno::CONNRESET.raw_os_error());
        }
    }
    e
}

/// What `write` knows before it touches the data.
struct Attempt<'a> {
    fd: RawFd,
    /// The loop's counters (bytes sent at once).
    stats: &'a Stats,
    conn_lost: u32,
    /// Data is already queued: the new data goes behind it.
    queued: bool,
}

/// What became of the data given to `write`.
enum Sent {
    /// It was empty.
    Nothing,
    /// The connection is lost: dropped (and counted).
    Lost,
    All,
    /// To queue: the chunk and the offset where its unsent part starts.
    Part(Chunk, usize),
    Failed(Errno),
}

impl Attempt<'_> {
    /// Tries to send `data` at once if nothing is queued; `keep(sent)` makes the chunk to queue
    /// for the rest. Runs no Python code (the caller may hold `data`'s buffer exported).
    fn send(&self, data: &[u8], keep: impl FnOnce(usize) -> (Chunk, usize)) -> Sent {
        if data.is_empty() {
            return Sent::Nothing;
        }
        if self.conn_lost > 0 {
            return Sent::Lost;
        }
        let mut sent = 0;
        if !self.queued {
            match rustix::net::send(fd_of(self.fd), data, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
                Ok(n) if n == data.len() => {
                    self.stats.wrote(n);
                    return Sent::All;
                }
                Ok(n) => {
                    self.stats.wrote(n);
                    sent = n;
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => return Sent::Failed(e),
            }
        }
        let (chunk, offset) = keep(sent);
        Sent::Part(chunk, offset)
    }
}

/// One vectored send, without SIGPIPE.
fn send_vectored(fd: RawFd, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
    if let [one] = iov {
        return Ok(rustix::net::send(
            fd_of(fd),
            one,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )?);
    }
    let mut ancillary = rustix::net::SendAncillaryBuffer::default();
    Ok(rustix::net::sendmsg(
        fd_of(fd),
        iov,
        &mut ancillary,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?)
}
