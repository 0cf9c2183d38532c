//! `AttachedCell`: loop-owned state that is mutated only by a thread attached to the interpreter.
//!
//! # Implementation
//!
//! With the GIL, being attached (holding a `Python` token) already excludes every other thread, so
//! the cell is a plain `UnsafeCell` plus a borrow flag that turns an accidental re-entrant borrow
//! into a `RuntimeError` instead of undefined behaviour. Without the GIL (free-threaded builds) the
//! same API is backed by a `Mutex`, uncontended in the common case of one loop per thread.
//!
//! The rule for callers: the closure given to [`AttachedCell::with`] must not run Python code. It
//! must not call into Python, allocate Python objects (allocation may trigger the cyclic GC, and a
//! finalizer may re-enter the loop) or drop the last reference to one. Move objects out and drop
//! them after the closure returns. Cloning a `Py` (an incref) is fine.

use std::ops::Deref;

#[cfg(not(Py_GIL_DISABLED))]
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

#[cfg(not(Py_GIL_DISABLED))]
pub struct AttachedCell<T> {
    value: std::cell::UnsafeCell<T>,
    borrowed: std::cell::Cell<bool>,
}

// SAFETY: every access goes through `with`, which takes a `Python` token: the calling thread holds
// the GIL, so no two threads are inside `with` at once, and the closure cannot release the GIL
// (it runs no Python code). `T: Send` because the value may be touched by different threads over
// its life, one at a time.
#[cfg(not(Py_GIL_DISABLED))]
unsafe impl<T: Send> Sync for AttachedCell<T> {}

#[cfg(not(Py_GIL_DISABLED))]
impl<T> AttachedCell<T> {
    pub fn new(value: T) -> Self {
        AttachedCell {
            value: std::cell::UnsafeCell::new(value),
            borrowed: std::cell::Cell::new(false),
        }
    }

    /// Runs `f` with exclusive access to the value. Fails if the value is already borrowed
    /// further up the stack (a bug: the rule in the module docs was broken).
    #[inline]
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> PyResult<R> {
        if self.borrowed.replace(true) {
            return Err(PyRuntimeError::new_err("ferroloop: re-entrant access to loop state"));
        }
        // SAFETY: the flag above guarantees this is the only live borrow, and the GIL (proved by
        // `_py`) that no other thread is in `with` (see the `Sync` impl).
        let r = f(unsafe { &mut *self.value.get() });
        self.borrowed.set(false);
        Ok(r)
    }

    /// Read access for the GC's `__traverse__`, which runs while the world is stopped and cannot
    /// take a `Python` token. Returns `None` while the value is borrowed.
    ///
    /// The result is an opaque `Deref` (a plain reference here, a lock guard in free-threaded
    /// builds) so that callers written against this build also compile against the other: bind
    /// it and use `&*guard` or field access, and keep it alive for as long as you visit.
    pub fn for_traverse(&self) -> Option<impl Deref<Target = T> + '_> {
        if self.borrowed.get() {
            return None;
        }
        // SAFETY: traversal runs with the GIL held and no `with` borrow live (checked above), so
        // nothing mutates the value while the shared reference exists.
        Some(unsafe { &*self.value.get() })
    }
}

#[cfg(Py_GIL_DISABLED)]
pub struct AttachedCell<T> {
    value: std::sync::Mutex<T>,
}

#[cfg(Py_GIL_DISABLED)]
impl<T> AttachedCell<T> {
    pub fn new(value: T) -> Self {
        AttachedCell {
            value: std::sync::Mutex::new(value),
        }
    }

    #[inline]
    #[allow(clippy::unnecessary_wraps)] // the GIL build's signature, where a re-entrant borrow fails
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> PyResult<R> {
        match self.value.try_lock() {
            Ok(mut guard) => Ok(f(&mut guard)),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Another thread is inside a short, Python-free section: wait for it. A re-entrant
                // borrow from this thread would deadlock here, which the GIL build reports instead.
                let mut guard = self.value.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                Ok(f(&mut guard))
            }
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(f(&mut p.into_inner())),
        }
    }

    /// Read access for `__traverse__` (see the GIL build's version). The guard holds the lock:
    /// keep it alive while visiting and let it drop when `__traverse__` returns. Traversal runs
    /// with the world stopped, and a thread inside `with` is not stopped there (the closure runs
    /// no Python code, so it reaches no safe point), so the lock is normally free. If it is held
    /// anyway (the module docs' rule was broken), skip the references: an unvisited reference
    /// only keeps objects alive, it never gets one freed early. Never block: with the world
    /// stopped, the holder cannot make progress (or is this very thread).
    pub fn for_traverse(&self) -> Option<impl Deref<Target = T> + '_> {
        match self.value.try_lock() {
            Ok(guard) => Some(guard),
            // `with` carries on after a panic poisoned the lock, so the GC must still see the
            // references; otherwise every cycle through this object would leak for good.
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}
