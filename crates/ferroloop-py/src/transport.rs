//! What every Rust transport shares: entering the protocol's context, borrowing its fd, telling
//! apart the exceptions that must stop the loop, and the flow-control callbacks.

use std::ffi::c_int;
use std::os::fd::{BorrowedFd, RawFd};

use pyo3::exceptions::{PyBufferError, PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyMemoryView;

use crate::glue;

pub mod base;

/// asyncio's default high-water mark for a transport's write buffer.
const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// asyncio's `LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
pub const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// The version switch `name` of `ferroloop._compat` (a bool), read once into `cell`.
pub fn compat_flag(py: Python<'_>, cell: &'static PyOnceLock<bool>, name: &str) -> PyResult<bool> {
    cell.get_or_try_init(py, || glue::compat(py, name)?.is_truthy())
        .copied()
}

/// The version switch `name` of `ferroloop._compat` (a size), read once into `cell`.
pub fn compat_size(py: Python<'_>, cell: &'static PyOnceLock<usize>, name: &str) -> PyResult<usize> {
    cell.get_or_try_init(py, || glue::compat(py, name)?.extract()).copied()
}

/// `SystemExit` and `KeyboardInterrupt` stop the loop; asyncio re-raises exactly those two from
/// protocol callbacks and reports every other exception.
pub fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// A flush that found the fd full (or was interrupted): nothing to do until it is writable.
pub fn retry_later(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// Borrows a transport's fd for one syscall.
pub fn fd_of(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: a transport owns its socket object, which keeps the fd open until the transport's
    // connection_lost closes it; no syscall is made on the fd after that.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Calls `f` with the bytes of `obj`'s buffer (read-only), or returns `None` if `obj` does not
/// export a C-contiguous buffer (the error is cleared).
///
/// The `Py_buffer` lives on the stack for the one call: `PyO3`'s `PyBuffer` boxes it, which was a
/// `malloc`, a `memset` and a `free` per read or write (150 of 5,600 instructions per request on
/// `tcp bufproto 1KiB`, callgrind). `f` must not run Python code: while the buffer is exported, a
/// `bytearray` cannot be resized.
pub fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    // SAFETY: a read-only request; the slice is built from what the exporter filled in.
    unsafe {
        with_buffer(obj, ffi::PyBUF_SIMPLE, |ptr, len| {
            f(std::slice::from_raw_parts(ptr, len))
        })
    }
}

/// Whether `obj` is a memoryview that is not C-contiguous (`memoryview(b)[::2]`): the buffers
/// `socket.send()`, `sendto()` and `os.write()` refuse with [`not_contiguous`].
pub fn is_strided_view(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyMemoryView>() && with_bytes(obj, |_| ()).is_none()
}

/// What `socket.send()` and `os.write()` raise for a memoryview that is not C-contiguous.
pub fn not_contiguous() -> PyErr {
    PyBufferError::new_err("memoryview: underlying buffer is not C-contiguous")
}

/// [`with_bytes`] for a writable buffer (`None` also for a read-only one).
pub fn with_bytes_mut<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
    // SAFETY: a writable request, so the exporter allows writes to the memory it gives.
    unsafe {
        with_buffer(obj, ffi::PyBUF_WRITABLE, |ptr, len| {
            f(std::slice::from_raw_parts_mut(ptr.cast_mut(), len))
        })
    }
}

/// # Safety
///
/// `f` receives the exporter's pointer and length; it must respect `flags` (no writes unless
/// `PyBUF_WRITABLE` was asked for).
unsafe fn with_buffer<R>(obj: &Bound<'_, PyAny>, flags: c_int, f: impl FnOnce(*const u8, usize) -> R) -> Option<R> {
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: `view` is filled in by a successful `PyObject_GetBuffer` and released exactly once,
    // below, without having moved. `PyBUF_SIMPLE` (with or without `PyBUF_WRITABLE`) only succeeds
    // for contiguous memory of `len` bytes, valid until the release.
    unsafe {
        if ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) != 0 {
            ffi::PyErr_Clear();
            return None;
        }
        let release = Release(view.as_mut_ptr());
        let v = view.assume_init_ref();
        let ptr: *const u8 = if v.len == 0 {
            std::ptr::NonNull::dangling().as_ptr()
        } else {
            v.buf.cast()
        };
        let r = f(ptr, v.len as usize);
        drop(release);
        Some(r)
    }
}

/// Releases an exported buffer when dropped (also if the caller's closure panics).
struct Release(*mut ffi::Py_buffer);

impl Drop for Release {
    fn drop(&mut self) {
        // SAFETY: made only right after a successful `PyObject_GetBuffer` on this view.
        unsafe { ffi::PyBuffer_Release(self.0) }
    }
}

/// Calls `f` with `context` entered, as asyncio runs a transport's reader handle.
pub fn in_context<R>(py: Python<'_>, context: &Py<PyAny>, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    // SAFETY: `context` is a live Context object; enter and exit pair up on every path.
    unsafe {
        if ffi::PyContext_Enter(context.as_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
        let r = f();
        ffi::PyContext_Exit(context.as_ptr());
        r
    }
}

/// Calls the protocol's `pause_writing`/`resume_writing`; a failure goes to the loop's exception
/// handler with asyncio's message (`FlowControlMixin`).
pub fn flow_callback(transport: &Bound<'_, PyAny>, protocol: Option<Py<PyAny>>, name: &str) -> PyResult<()> {
    let py = transport.py();
    let Some(protocol) = protocol else { return Ok(()) };
    match protocol.bind(py).call_method0(name) {
        Ok(_) => Ok(()),
        Err(err) if is_exit(py, &err) => Err(err),
        Err(err) => {
            let message = format!("protocol.{name}() failed");
            glue::helper(py, "protocol_callback_failed")?
                .call1((transport, message, glue::exc_value(py, &err)))
                .map(drop)
        }
    }
}

/// asyncio's write-side flow control (`_FlowControlMixin`): the water marks and whether the
/// protocol was told to pause. Used inside a transport's state borrow (it runs no Python code).
pub struct WaterMarks {
    pub high: usize,
    pub low: usize,
    pub paused: bool,
}

impl Default for WaterMarks {
    fn default() -> Self {
        WaterMarks {
            high: DEFAULT_HIGH_WATER,
            low: DEFAULT_HIGH_WATER / 4,
            paused: false,
        }
    }
}

impl WaterMarks {
    /// With `size` bytes buffered: must the protocol be told `pause_writing` now? (Noted.)
    pub fn should_pause(&mut self, size: usize) -> bool {
        let pause = size > self.high && !self.paused;
        self.paused |= pause;
        pause
    }

    /// With `size` bytes buffered: must the protocol be told `resume_writing` now? (Noted.)
    pub fn should_resume(&mut self, size: usize) -> bool {
        let resume = self.paused && size <= self.low;
        self.paused &= !resume;
        resume
    }
}

/// asyncio's `set_write_buffer_limits` defaults and validation: `(high, low)`.
pub fn write_buffer_limits(
    high: Option<&Bound<'_, PyAny>>,
    low: Option<&Bound<'_, PyAny>>,
) -> PyResult<(usize, usize)> {
    given_limits(high, low, DEFAULT_HIGH_WATER)
}

/// `set_write_buffer_limits(high, low)` (and TLS's `set_read_buffer_limits`) as asyncio takes
/// them: asyncio computes with the objects given, so a float or a huge int works and a `str`
/// fails with the operator's `TypeError`; `_glue.flow_limits` does the same arithmetic and
/// floors the result to byte counts. Neither given: the defaults, without Python.
pub fn given_limits(
    high: Option<&Bound<'_, PyAny>>,
    low: Option<&Bound<'_, PyAny>>,
    default_high: usize,
) -> PyResult<(usize, usize)> {
    let Some(py) = high.or(low).map(Bound::py) else {
        return Ok(default_limits(default_high));
    };
    glue::helper(py, "flow_limits")?
        .call1((high, low, default_high))?
        .extract()
}

/// The water marks when none are given: `(default_high, default_high / 4)`, as asyncio's.
pub fn default_limits(default_high: usize) -> (usize, usize) {
    (default_high, default_high / 4)
}
