//! `io_uring`'s completion model: the operations started for transports and listeners (multishot
//! receives and accepts, sends), their cancellation, the provided buffers receives fill, and the
//! receives starved of them.

use std::os::fd::RawFd;

use ferroloop_core::driver::uring::Uring;
use ferroloop_core::driver::{Backend, BufRef, Driver};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{closed_error, LoopCore, Ready, State};
use crate::glue::os_error;
use crate::owner::{Buffers, IoOp, Owner};

/// Whether stream transports on `backend` use the completion model: on `io_uring` where the
/// kernel has what it needs, unless `FERROLOOP_URING_STREAMS=readiness`.
pub(super) fn completion_wanted(backend: Backend) -> bool {
    #[cfg(target_os = "linux")]
    let supported = Uring::completion_supported();
    #[cfg(not(target_os = "linux"))]
    let supported = false;
    backend == Backend::IoUring
        && supported
        && std::env::var("FERROLOOP_URING_STREAMS").map_or(true, |v| v != "readiness")
}

/// Gives starved receives (see [`LoopCore::starve`]) their `IoOp::Rearm`: as many as buffers
/// came back since the last time, and at least one, so that a receive restarted too early (and
/// starved again) cannot stall the rest. Queued before the wait, which then does not block.
pub(super) fn restart_starved(s: &mut State) {
    let n = s.recycled.max(1).min(s.starved.len());
    s.recycled = 0;
    for owner in s.starved.drain(..n) {
        s.ready.push(Ready::Io(owner, IoOp::Rearm, None));
    }
}

impl LoopCore {
    /// At close: waits until the kernel is done with every operation's memory, then lets the
    /// table go of it (the buffers of sends, the owners).
    pub(super) fn end_ops(&self, py: Python<'_>) -> PyResult<()> {
        let driver = self.state.with(py, |s| s.driver.clone())?;
        if let Some(u) = driver.as_deref().and_then(Driver::uring) {
            py.detach(|| u.drain_ops());
        }
        let ops = self.state.with(py, |s| s.ops.drain())?;
        drop(ops);
        Ok(())
    }

    /// `owner`'s multishot receive ended with `ENOBUFS`: every provided buffer was taken. It
    /// waits here instead of starting again at once: with thousands of connections, restarting
    /// each at once made every batch of buffers cost a failed receive per connection (5,000
    /// connections echoing 1 KiB: 35,000 requests/s against 220,000 on epoll). Restarted in order,
    /// as many per iteration as buffers came back (at least one), by `restart_starved`.
    pub(super) fn starve(&self, py: Python<'_>, owner: Owner) -> PyResult<()> {
        self.state.with(py, |s| s.starved.push_back(owner))
    }

    /// Whether stream transports of this loop use the completion model.
    pub(super) fn completion_streams(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.completion_streams && s.driver.is_some())
    }

    /// Starts an operation for `owner` with `start(driver, tag)`; `keep` lives until its last
    /// completion. Returns the operation (its tag).
    fn start_op(
        &self,
        py: Python<'_>,
        owner: Owner,
        keep: Option<Py<PyBytes>>,
        start: impl FnOnce(&Uring, u64) -> std::io::Result<()>,
    ) -> PyResult<usize> {
        let started = self.state.with(py, |s| {
            let uring = s.driver.as_deref().and_then(Driver::uring)?;
            let op = s.ops.insert(owner, keep);
            Some(match start(uring, op as u64) {
                Ok(()) => Ok(op),
                Err(e) => Err((e, s.ops.abandon(op))),
            })
        })?;
        match started {
            Some(Ok(op)) => Ok(op),
            Some(Err((e, dropped))) => {
                drop(dropped);
                Err(os_error(&e))
            }
            None => Err(closed_error()),
        }
    }

    /// Starts a multishot receive on `fd` for `owner`; returns the operation.
    pub(super) fn start_recv(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<usize> {
        self.start_op(py, owner, None, |u, tag| u.recv_multishot(fd, tag))
    }

    /// Starts a multishot accept on the listening socket `fd` for `owner`; returns the operation.
    pub(super) fn start_accept(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<usize> {
        self.start_op(py, owner, None, |u, tag| u.accept_multishot(fd, tag))
    }

    /// Starts sending `data[offset..]` on `fd` for `owner`, keeping `data` alive until the send
    /// completes; returns the operation.
    pub(super) fn start_send(
        &self,
        py: Python<'_>,
        fd: RawFd,
        owner: Owner,
        data: Py<PyBytes>,
        offset: usize,
    ) -> PyResult<usize> {
        // SAFETY: a bytes object's buffer never moves or changes, and the table keeps `data` until
        // the send's completion (or until the driver ended the send, at close).
        let (ptr, len) = unsafe {
            let p = data.as_ptr();
            (
                ffi::PyBytes_AS_STRING(p).cast::<u8>().add(offset),
                (ffi::PyBytes_Size(p) as usize).saturating_sub(offset),
            )
        };
        // SAFETY: see above: the memory lives in the table entry of the operation.
        self.start_op(py, owner, Some(data), |u, tag| unsafe { u.send(fd, tag, ptr, len) })
    }

    /// Copies bytes `from..len` of the provided buffer `buf` into `out`; returns how many (none
    /// after close).
    pub(super) fn copy_out(
        &self,
        py: Python<'_>,
        buf: BufRef,
        len: usize,
        from: usize,
        out: &mut [u8],
    ) -> PyResult<usize> {
        self.state.with(py, |s| {
            s.driver
                .as_deref()
                .and_then(Driver::uring)
                .map_or(0, |u| u.copy_out(buf, len, from, out))
        })
    }

    /// Gives the provided buffers of `buffers` back to the kernel.
    pub(super) fn recycle(&self, py: Python<'_>, buffers: &Buffers) -> PyResult<()> {
        self.state.with(py, |s| {
            if let Some(u) = s.driver.as_deref().and_then(Driver::uring) {
                for &(buf, _) in buffers.as_slice() {
                    u.recycle(buf);
                }
                s.recycled += buffers.as_slice().len();
            }
        })
    }

    /// Asks the kernel to end operation `op`; its last completion still comes.
    pub(super) fn cancel_op(&self, py: Python<'_>, op: usize) -> PyResult<()> {
        self.state
            .with(py, |s| match s.driver.as_deref().and_then(Driver::uring) {
                Some(u) => u.cancel(op as u64),
                None => Ok(()),
            })?
            .map_err(|e| os_error(&e))
    }

    /// The data receives left in provided buffers, as one `bytes`; the buffers go back to the
    /// kernel. `None` if there were none.
    pub(super) fn take_buffers<'py>(
        &self,
        py: Python<'py>,
        buffers: &Buffers,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let parts = buffers.as_slice();
        if parts.is_empty() {
            return Ok(None);
        }
        let total: usize = parts.iter().map(|&(_, len)| len).sum();
        // NOTE: making the bytes inside the borrow is allowed: bytes are not GC-tracked.
        let taken = self.state.with(py, |s| {
            let uring = s.driver.as_deref().and_then(Driver::uring)?;
            // SAFETY: `PyBytes_FromStringAndSize(NULL, n)` returns a new bytes of `n` bytes, not
            // yet initialised (or null with an exception set), referenced only here; the parts
            // fill all `total` bytes before the object is handed out. (`PyBytes::new_with` zeroes
            // it first: a 100 KiB memset per delivery, 5% of the server's CPU on tcp proto 100KiB.)
            let joined = unsafe {
                Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromStringAndSize(std::ptr::null(), total as isize)).map(
                    |obj| {
                        let ptr = ffi::PyBytes_AS_STRING(obj.as_ptr()).cast_mut().cast::<u8>();
                        let out = std::slice::from_raw_parts_mut(ptr, total);
                        let mut at = 0;
                        for &(buf, len) in parts {
                            at += uring.copy_out(buf, len, 0, &mut out[at..]);
                        }
                        obj.cast_into_unchecked::<PyBytes>()
                    },
                )
            };
            // Given back whether or not the bytes could be made.
            for &(buf, _) in parts {
                uring.recycle(buf);
            }
            s.recycled += parts.len();
            Some(joined)
        })?;
        taken.transpose()
    }
}
