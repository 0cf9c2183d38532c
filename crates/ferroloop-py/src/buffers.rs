//! The bytes transports move: the most one read takes ([`MAX_READ`]), the loop's read buffer
//! ([`ReadBuf`]) and a queued write ([`Chunk`]). A leaf: the loop, the transports and TLS use it,
//! it uses none of them.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::cell::AttachedCell;

/// asyncio's `max_size`: the most one read takes.
pub const MAX_READ: usize = 256 * 1024;

/// The one buffer a loop's stream and datagram reads go through, allocated on first use.
pub struct ReadBuf(AttachedCell<Vec<u8>>);

impl Default for ReadBuf {
    fn default() -> Self {
        ReadBuf(AttachedCell::new(Vec::new()))
    }
}

impl ReadBuf {
    /// Runs `f` on the buffer (`MAX_READ` bytes). `f` must not run Python code.
    #[inline]
    pub fn with<R>(&self, py: Python<'_>, f: impl FnOnce(&mut [u8]) -> R) -> PyResult<R> {
        self.0.with(py, |buf| {
            if buf.len() < MAX_READ {
                buf.resize(MAX_READ, 0);
            }
            f(&mut buf[..MAX_READ])
        })
    }
}

/// A queued write: a `bytes` object, kept as it is (a mutable buffer is copied into one first).
pub enum Chunk {
    Bytes(Py<PyBytes>),
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        match self {
            // SAFETY: a bytes object is immutable and this reference keeps it alive, so its buffer
            // stays valid and unchanged for as long as the chunk exists.
            Chunk::Bytes(b) => unsafe {
                let ptr = ffi::PyBytes_AS_STRING(b.as_ptr()).cast::<u8>();
                std::slice::from_raw_parts(ptr, ffi::PyBytes_Size(b.as_ptr()) as usize)
            },
        }
    }
}

impl Chunk {
    pub fn is(&self, other: &Py<PyBytes>) -> bool {
        match self {
            Chunk::Bytes(b) => b.as_ptr() == other.as_ptr(),
        }
    }
}
