//! `AttachedCell`: loop-owned state that is mutated only by a thread attached to the interpreter.
//!
//! # Implementation
//!
//! With the GIL, being attached (holding a `Python` token) already excludes every other thread, so
//! the cell is a plain `UnsafeCell` plus a borrow flag that turns an accidental re-entrant borrow
//! into a `RuntimeError` instead of undefined behaviour. Without the GIL (free-threaded builds) the
//! same API is backed by a `Mutex`, uncontended in the common case of one loop per thread. In both,
//! `with` wraps a private, token-free `lock` (the flag check and set, or the mutex lock) that
//! returns a guard, so the cell's behaviour is unit-tested without an interpreter.
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

// SAFETY: every access goes through `lock` (whose contract is that the calling thread holds the
// GIL; `with` proves it with a `Python` token) or `for_traverse` (called by the GC, with the GIL
// held). So no two threads touch the cell at once, and a borrow cannot outlive the GIL being held:
// the closure given to `with` cannot release it (it runs no Python code). `T: Send` because the
// value may be touched by different threads over its life, one at a time.
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
    ///
    /// If `f` panics, the value stays borrowed: later calls fail and `for_traverse` returns
    /// `None`. (Releasing it on unwind, as the free-threaded build's poisoned lock effectively
    /// does, would add a landing pad to every caller whose closure can unwind.)
    #[inline]
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> PyResult<R> {
        // SAFETY: `_py` proves that this thread holds the GIL, and it holds it until `f` returns
        // (`f` runs no Python code, so it cannot release it).
        let Some(guard) = (unsafe { self.lock() }) else {
            return Err(PyRuntimeError::new_err("ferroloop: re-entrant access to loop state"));
        };
        // Released explicitly below, not by an unwind: the generated code is a flag check and
        // set, `f`, and a flag clear, with no cleanup path.
        let mut guard = std::mem::ManuallyDrop::new(guard);
        let r = f(&mut guard);
        drop(std::mem::ManuallyDrop::into_inner(guard));
        Ok(r)
    }

    /// The token-free core of [`with`](Self::with): marks the value borrowed and returns a guard
    /// that gives exclusive access to it and clears the mark when dropped. Returns `None`,
    /// changing nothing, if the value is already borrowed. One flag check and set, like
    /// `RefCell::try_borrow_mut`.
    ///
    /// # Safety
    ///
    /// The calling thread must hold the GIL (or otherwise be the only thread that can reach the
    /// cell, as in a single-threaded test), and must keep holding it for as long as the guard
    /// lives. The guard is neither `Send` nor `Sync`, so it cannot leave this thread.
    #[inline]
    unsafe fn lock(&self) -> Option<BorrowGuard<'_, T>> {
        if self.borrowed.get() {
            return None;
        }
        self.borrowed.set(true);
        Some(BorrowGuard {
            cell: self,
            _not_send: std::marker::PhantomData,
        })
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
        // SAFETY: traversal runs with the GIL held and no `lock` guard live (checked above), so
        // nothing mutates the value while the shared reference exists.
        Some(unsafe { &*self.value.get() })
    }
}

/// Exclusive access to an [`AttachedCell`]'s value on the GIL build, from
/// [`AttachedCell::lock`]; dropping it ends the borrow.
#[cfg(not(Py_GIL_DISABLED))]
struct BorrowGuard<'a, T> {
    cell: &'a AttachedCell<T>,
    /// Keeps the guard on the thread that holds the GIL (`lock`'s contract): not `Send`/`Sync`.
    _not_send: std::marker::PhantomData<*mut ()>,
}

#[cfg(not(Py_GIL_DISABLED))]
impl<T> Deref for BorrowGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard is the only borrow of the value (`lock` set the flag, which only the
        // guard's drop clears), and `lock`'s contract keeps other threads out.
        unsafe { &*self.cell.value.get() }
    }
}

#[cfg(not(Py_GIL_DISABLED))]
impl<T> std::ops::DerefMut for BorrowGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference derived from the guard.
        unsafe { &mut *self.cell.value.get() }
    }
}

#[cfg(not(Py_GIL_DISABLED))]
impl<T> Drop for BorrowGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.cell.borrowed.set(false);
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

    /// Runs `f` with exclusive access to the value (see the GIL build's version). Never fails:
    /// a re-entrant borrow from this thread would deadlock, which the GIL build reports instead.
    #[inline]
    #[allow(clippy::unnecessary_wraps)] // the GIL build's signature, where a re-entrant borrow fails
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> PyResult<R> {
        let mut guard = self.lock();
        Ok(f(&mut guard))
    }

    /// The token-free core of [`with`](Self::with): takes the lock, waiting for it if another
    /// thread holds it (that thread is inside a short, Python-free section). A lock poisoned by a
    /// panic is taken all the same: the cell carries on, as the GIL build's does.
    #[inline]
    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        match self.value.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::WouldBlock) => {
                self.value.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
            }
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
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

#[cfg(test)]
mod tests {
    /// Tests of the GIL build's borrow flag, through the token-free `lock`.
    #[cfg(not(Py_GIL_DISABLED))]
    mod gil {
        use crate::cell::AttachedCell;

        #[test]
        fn borrow_while_borrowed_is_refused() {
            let cell = AttachedCell::new(1_u32);
            // SAFETY: the cell is local to this single-threaded test.
            let mut guard = unsafe { cell.lock() }.expect("first borrow");
            *guard += 1;
            // SAFETY: as above.
            assert!(unsafe { cell.lock() }.is_none(), "a second borrow must be refused");
            // The refused attempt changed nothing: the first guard still works.
            *guard += 1;
            assert_eq!(*guard, 3);
        }

        #[test]
        fn borrow_is_released_when_the_guard_drops() {
            let cell = AttachedCell::new(1_u32);
            // SAFETY: the cell is local to this single-threaded test.
            let mut guard = unsafe { cell.lock() }.expect("first borrow");
            *guard = 5;
            drop(guard);
            // SAFETY: as above.
            let guard = unsafe { cell.lock() }.expect("borrow after the guard dropped");
            assert_eq!(*guard, 5);
        }

        #[test]
        fn for_traverse_is_none_while_borrowed_and_some_otherwise() {
            let cell = AttachedCell::new(1_u32);
            assert_eq!(cell.for_traverse().map(|v| *v), Some(1));
            // SAFETY: the cell is local to this single-threaded test.
            let mut guard = unsafe { cell.lock() }.expect("first borrow");
            *guard = 2;
            assert!(cell.for_traverse().is_none());
            drop(guard);
            assert_eq!(cell.for_traverse().map(|v| *v), Some(2));
        }
    }

    /// Tests of the free-threaded build's mutex, through the token-free `lock`.
    #[cfg(Py_GIL_DISABLED)]
    mod free_threaded {
        use std::sync::{Barrier, TryLockError};
        use std::thread;

        use crate::cell::AttachedCell;

        #[test]
        fn guard_holds_the_lock_until_dropped() {
            let cell = AttachedCell::new(1_u32);
            let mut guard = cell.lock();
            *guard = 2;
            assert!(matches!(cell.value.try_lock(), Err(TryLockError::WouldBlock)));
            drop(guard);
            assert_eq!(*cell.value.try_lock().expect("lock released on drop"), 2);
        }

        #[test]
        fn for_traverse_does_not_block_while_another_thread_holds_the_lock() {
            let cell = AttachedCell::new(1_u32);
            let held = Barrier::new(2);
            let checked = Barrier::new(2);
            let seen_while_held = thread::scope(|s| {
                let holder = s.spawn(|| {
                    let mut guard = cell.lock();
                    *guard = 2;
                    held.wait();
                    checked.wait(); // keep the lock until the main thread has looked
                });
                held.wait();
                // Would deadlock (the holder waits for us) if `for_traverse` blocked.
                let seen = cell.for_traverse().map(|v| *v);
                checked.wait();
                holder.join().expect("holder thread");
                seen
            });
            assert_eq!(seen_while_held, None);
            assert_eq!(cell.for_traverse().map(|v| *v), Some(2));
        }

        #[test]
        fn poisoned_lock_is_still_traversed_and_usable() {
            let cell = AttachedCell::new(1_u32);
            let result = thread::scope(|s| {
                s.spawn(|| {
                    let mut guard = cell.lock();
                    *guard = 2;
                    // Unwinds (poisoning the lock) without running the panic hook.
                    std::panic::resume_unwind(Box::new(()));
                })
                .join()
            });
            assert!(result.is_err());
            assert!(cell.value.is_poisoned());
            assert_eq!(cell.for_traverse().map(|v| *v), Some(2));
            *cell.lock() += 1;
            assert_eq!(*cell.lock(), 3);
            assert_eq!(cell.for_traverse().map(|v| *v), Some(3));
        }

        #[test]
        fn two_threads_counting_through_the_cell_reach_20000() {
            let cell = AttachedCell::new(0_u32);
            let start = Barrier::new(2);
            thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        start.wait();
                        for _ in 0..10_000 {
                            *cell.lock() += 1;
                        }
                    });
                }
            });
            assert_eq!(*cell.lock(), 20_000);
        }
    }
}
