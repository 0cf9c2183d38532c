//! `LoopCore` as its transports, listeners, TLS protocols and handles see it: the [`LoopIo`]
//! interface (each method is the loop's own, in `readers.rs`, `ops.rs` or `callbacks.rs`) and the
//! conversion of a Python loop object, given to their constructors, into a [`LoopRef`].

use std::os::fd::RawFd;

use ferroloop_core::driver::{BufRef, Interest};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::Borrowed;

use super::LoopCore;
use crate::buffers::ReadBuf;
use crate::owner::{Buffers, IoOp, LoopIo, LoopRef, Owner};
use crate::stats::Stats;

impl LoopIo for LoopCore {
    fn debug(&self) -> bool {
        LoopCore::debug(self)
    }

    fn is_closed(&self) -> bool {
        LoopCore::is_closed(self)
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn read_buf(&self) -> &ReadBuf {
        &self.read_buf
    }

    fn timer_cancelled(&self, py: Python<'_>) -> PyResult<()> {
        LoopCore::timer_cancelled(self, py)
    }

    fn attach_owner(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<()> {
        LoopCore::attach_owner(self, py, fd, owner)
    }

    fn detach_owner(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        LoopCore::detach_owner(self, py, fd)
    }

    fn set_owner_interest(&self, py: Python<'_>, fd: RawFd, interest: Interest) -> PyResult<()> {
        LoopCore::set_owner_interest(self, py, fd, interest)
    }

    fn schedule(&self, py: Python<'_>, owner: Owner, op: IoOp) -> PyResult<()> {
        LoopCore::schedule(self, py, owner, op)
    }

    fn completion_streams(&self, py: Python<'_>) -> PyResult<bool> {
        LoopCore::completion_streams(self, py)
    }

    fn start_recv(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<usize> {
        LoopCore::start_recv(self, py, fd, owner)
    }

    fn start_accept(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<usize> {
        LoopCore::start_accept(self, py, fd, owner)
    }

    fn start_send(&self, py: Python<'_>, fd: RawFd, owner: Owner, data: Py<PyBytes>, offset: usize) -> PyResult<usize> {
        LoopCore::start_send(self, py, fd, owner, data, offset)
    }

    fn cancel_op(&self, py: Python<'_>, op: usize) -> PyResult<()> {
        LoopCore::cancel_op(self, py, op)
    }

    fn starve(&self, py: Python<'_>, owner: Owner) -> PyResult<()> {
        LoopCore::starve(self, py, owner)
    }

    fn take_buffers<'py>(&self, py: Python<'py>, buffers: &Buffers) -> PyResult<Option<Bound<'py, PyBytes>>> {
        LoopCore::take_buffers(self, py, buffers)
    }

    fn copy_out(&self, py: Python<'_>, buf: BufRef, len: usize, from: usize, out: &mut [u8]) -> PyResult<usize> {
        LoopCore::copy_out(self, py, buf, len, from, out)
    }

    fn recycle(&self, py: Python<'_>, buffers: &Buffers) -> PyResult<()> {
        LoopCore::recycle(self, py, buffers)
    }
}

/// A transport's, listener's or TLS protocol's `loop` argument: a `ferroloop.Loop`.
impl<'a, 'py> FromPyObject<'a, 'py> for LoopRef {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<LoopRef> {
        Ok(LoopRef::new(&*obj.cast::<LoopCore>()?))
    }
}
