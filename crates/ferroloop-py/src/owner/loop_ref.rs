//! The loop as the objects that hold it see it: [`LoopIo`], the few things a transport, listener,
//! TLS protocol or handle asks of the loop's Rust side, and [`LoopRef`], how they hold the loop.
//!
//! They never name `LoopCore`: the loop implements [`LoopIo`] (`event_loop/io.rs`) and turns a
//! Python loop object into a [`LoopRef`] when one is passed to a transport's constructor. So the
//! loop depends on its owners ([`Owner`]) and they depend on this interface, not on the loop.

use std::os::fd::RawFd;
use std::ptr::NonNull;

use ferroloop_core::driver::{BufRef, Interest};
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::types::PyBytes;
use pyo3::{PyClass, PyTraverseError, PyVisit};

use super::{Buffers, IoOp, Owner};
use crate::buffers::ReadBuf;
use crate::stats::Stats;

/// What the loop offers the objects that hold it. Every method runs on the loop's thread with the
/// thread attached; none runs Python code unless it says so.
pub trait LoopIo: Sync {
    /// asyncio's `get_debug()`.
    fn debug(&self) -> bool;
    /// asyncio's `is_closed()`.
    fn is_closed(&self) -> bool;
    /// The counters of `loop.stats()`.
    fn stats(&self) -> &Stats;
    /// The one buffer every stream and datagram read of this loop goes through.
    fn read_buf(&self) -> &ReadBuf;
    /// A scheduled timer of this loop was cancelled (asyncio's `_timer_handle_cancelled`).
    fn timer_cancelled(&self, py: Python<'_>) -> PyResult<()>;

    /// `owner` takes readiness events of `fd` (replacing any reader and writer callback).
    fn attach_owner(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<()>;
    /// The owner of `fd` no longer takes its events; the fd leaves the loop.
    fn detach_owner(&self, py: Python<'_>, fd: RawFd) -> PyResult<()>;
    /// What the owner of `fd` wants to hear about now.
    fn set_owner_interest(&self, py: Python<'_>, fd: RawFd, interest: Interest) -> PyResult<()>;
    /// Queues `op` for `owner` behind the callbacks already ready, as asyncio's `call_soon`.
    fn schedule(&self, py: Python<'_>, owner: Owner, op: IoOp) -> PyResult<()>;

    /// Whether stream transports use the completion model (`io_uring`) rather than readiness.
    fn completion_streams(&self, py: Python<'_>) -> PyResult<bool>;
    /// Starts a multishot receive on `fd` for `owner`; returns the operation.
    fn start_recv(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<usize>;
    /// Starts a multishot accept on the listening socket `fd` for `owner`; returns the operation.
    fn start_accept(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<usize>;
    /// Starts sending `data[offset..]` on `fd` for `owner`; returns the operation.
    fn start_send(&self, py: Python<'_>, fd: RawFd, owner: Owner, data: Py<PyBytes>, offset: usize) -> PyResult<usize>;
    /// Asks the kernel to end operation `op`; its last completion still comes.
    fn cancel_op(&self, py: Python<'_>, op: usize) -> PyResult<()>;
    /// A receive ended for want of provided buffers: `owner` is restarted as they come back.
    fn starve(&self, py: Python<'_>, owner: Owner) -> PyResult<()>;
    /// The data in `buffers` as one `bytes` (`None` if there is none); the buffers go back.
    fn take_buffers<'py>(&self, py: Python<'py>, buffers: &Buffers) -> PyResult<Option<Bound<'py, PyBytes>>>;
    /// Copies bytes `from..len` of the provided buffer `buf` into `out`; returns how many.
    fn copy_out(&self, py: Python<'_>, buf: BufRef, len: usize, from: usize, out: &mut [u8]) -> PyResult<usize>;
    /// Gives the provided buffers of `buffers` back to the kernel, their data read (or dropped).
    fn recycle(&self, py: Python<'_>, buffers: &Buffers) -> PyResult<()>;
}

/// A loop held by a transport, listener, TLS protocol or handle: the Python object (for
/// `get_loop()`, calls into asyncio's Python code and the GC) and its Rust side as [`LoopIo`].
pub struct LoopRef {
    obj: Py<PyAny>,
    /// The Rust value inside `obj`.
    io: NonNull<dyn LoopIo>,
}

// SAFETY: `io` points into `obj`, which this value keeps alive; the value it points at is `Sync`
// (`LoopIo: Sync`) and only read through `&`, so sharing or sending the pair is as safe as sharing
// or sending `obj` and a `&dyn LoopIo` to it.
unsafe impl Send for LoopRef {}
// SAFETY: as above.
unsafe impl Sync for LoopRef {}

impl LoopRef {
    /// The loop `lp`: a frozen pyclass, so its Rust value is never moved or mutated through `&`.
    pub fn new<L: LoopIo + PyClass<Frozen = True>>(lp: &Bound<'_, L>) -> LoopRef {
        let io: &dyn LoopIo = lp.get();
        LoopRef {
            obj: lp.clone().into_any().unbind(),
            io: NonNull::from(io),
        }
    }

    /// The loop's Rust side.
    #[inline]
    pub fn io(&self) -> &dyn LoopIo {
        // SAFETY: `io` was taken from the frozen pyclass value inside `obj` (`new`), and `obj`, a
        // strong reference held as long as `self`, keeps that object, and so the value, alive and
        // in place: Python objects never move, and a frozen pyclass is never mutated through `&`.
        unsafe { self.io.as_ref() }
    }

    /// The Python loop object.
    #[inline]
    pub fn bind<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.obj.bind(py)
    }

    /// The Python loop object, a new reference (`get_loop()`, `_loop`).
    pub fn object(&self, py: Python<'_>) -> Py<PyAny> {
        self.obj.clone_ref(py)
    }

    pub fn as_ptr(&self) -> *mut pyo3::ffi::PyObject {
        self.obj.as_ptr()
    }

    pub fn clone_ref(&self, py: Python<'_>) -> LoopRef {
        LoopRef {
            obj: self.obj.clone_ref(py),
            io: self.io,
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.obj)
    }
}
