//! The fd registry: what is registered for each fd ([`IoEntry`]), the `add_reader`/`add_writer`
//! callbacks, and the transports and listeners that own an fd's readiness (the `Owner` API:
//! `attach_owner`, `set_owner_interest`, `detach_owner`, `schedule`).

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use ferroloop_core::driver::{Driver, Interest};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple, PyWeakrefMethods, PyWeakrefReference};

use super::{closed_error, LoopCore, Ready};
use crate::glue::copy_context;
use crate::glue::os_error;
use crate::handle::Handle;
use crate::owner::{IoOp, Owner};

/// What `_io_key` reports for an fd: `(selectors event mask, reader, writer)`.
pub(super) type IoKey = (u8, Option<Py<Handle>>, Option<Py<Handle>>);

/// What is registered for one fd: `add_reader`/`add_writer` callbacks, a transport, or both
/// (asyncio's sendfile adds a writer to a transport's fd while the transport is paused).
#[derive(Default)]
pub(super) struct IoEntry {
    pub(super) reader: Option<Py<Handle>>,
    pub(super) writer: Option<Py<Handle>>,
    pub(super) owner: Option<Owner>,
    /// What the owner asked to be told about.
    pub(super) owner_interest: Interest,
    /// The file object (not a plain int) whose `add_reader`/`add_writer` created the entry:
    /// selectors' key keeps it, and finds the fd by it once its `fileno()` is -1 (closed).
    pub(super) fileobj: Option<Py<PyAny>>,
    /// The socket whose `sock_recv`/`sock_recv_into` waits keep the fd registered,
    /// edge-triggered, from one wait to the next ([`LoopCore::add_kept_reader`]): asyncio adds a
    /// reader for each wait and removes it after, two `epoll_ctl` per wait. The reader, if any,
    /// is such a wait's; with none the entry is *dormant*: watched by the kernel, reported by
    /// nothing (`_io_key`, `_io_fds`), its reports dropped. Any other registration on the fd (a
    /// reader, a writer, a transport) or a removal ends the keeping. Weak: the entry must not
    /// keep the socket open, and a socket freed and its fd number reused must not pass for the
    /// one registered.
    pub(super) kept_for: Option<Py<PyWeakrefReference>>,
}

/// What [`LoopCore::add_kept_reader`] found for an fd.
enum Kept {
    /// The fd has another reader, a writer or a transport, or the backend has no edge-triggered
    /// registrations: the caller registers a plain reader.
    No,
    /// Kept for this socket already: the wait's reader is set, no system call needed.
    Set,
    /// Unwatched, or kept for another socket (closed since, its number reused).
    Register,
}

impl IoEntry {
    pub(super) fn interest(&self) -> Interest {
        if self.kept_for.is_some() {
            // Nothing but a kept socket's wait (or none) is registered: see `kept_for`.
            return Interest::READABLE_EDGE;
        }
        Interest {
            readable: self.reader.is_some() || self.owner_interest.readable,
            writable: self.writer.is_some() || self.owner_interest.writable,
            edge: false,
        }
    }

    /// No reader, writer or owner: nothing to report (the entry is gone, or dormant).
    pub(super) fn is_empty(&self) -> bool {
        self.reader.is_none() && self.writer.is_none() && self.owner.is_none()
    }

    /// Nothing registered and nothing kept: the entry can go.
    pub(super) fn is_unused(&self) -> bool {
        self.is_empty() && self.kept_for.is_none()
    }

    /// Ends the keeping of a `sock_*` socket's registration, before another registration on the
    /// fd; a dormant entry is then as new (`fileobj` is `add_reader`'s, if it is the one).
    fn end_keeping(&mut self, fileobj: Option<&Bound<'_, PyAny>>) {
        // NOTE: the weak reference may be freed here, in the state's borrow: freeing a weak
        // reference with no callback runs no Python code.
        if self.kept_for.take().is_some() && self.is_empty() {
            self.fileobj = fileobj
                .filter(|f| !f.is_instance_of::<PyInt>())
                .map(|f| f.clone().unbind());
        }
    }
}

/// selectors' `_fileobj_to_fd`: an int, or an object with `fileno()`; never negative.
fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd = if obj.is_instance_of::<PyInt>() {
        obj.clone()
    } else {
        let invalid = || {
            PyValueError::new_err(format!(
                "Invalid file object: {}",
                obj.repr().map_or_else(|_| "?".into(), |r| r.to_string())
            ))
        };
        let fileno = obj.call_method0("fileno").map_err(|e| {
            let py = obj.py();
            if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py)
                || e.is_instance_of::<PyTypeError>(py)
                || e.is_instance_of::<PyValueError>(py)
            {
                invalid()
            } else {
                e
            }
        })?;
        fileno.call_method0("__int__").map_err(|_| invalid())?
    };
    if let Ok(fd) = fd.extract::<RawFd>() {
        if fd >= 0 {
            return Ok(fd);
        }
    }
    // Past a C int, or negative: as big as Python's ints go.
    if fd.lt(0)? {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
    }
    // What the selectors' C calls say of an fd past a C int.
    Err(PyOverflowError::new_err("Python int too large to convert to C int"))
}

impl LoopCore {
    /// Makes `owner` the owner of `fd`'s readiness (with no interest yet).
    pub(super) fn attach_owner(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<()> {
        self.check_closed()?;
        let old = self.state.with(py, |s| {
            let token = s.sources.insert(fd, IoEntry::default());
            let entry = &mut s.sources.get_mut(token).expect("just inserted").data;
            entry.end_keeping(None);
            entry.owner_interest = Interest::NONE;
            entry.owner.replace(owner)
        })?;
        drop(old);
        Ok(())
    }

    /// Changes what the loop watches `fd` for on its owner's behalf.
    pub(super) fn set_owner_interest(&self, py: Python<'_>, fd: RawFd, interest: Interest) -> PyResult<()> {
        self.state
            .with(py, |s| {
                let (Some(driver), Some(token)) = (s.driver.clone(), s.sources.token_of(fd)) else {
                    return Ok(());
                };
                let entry = &mut s.sources.get_mut(token).expect("token from the fd map").data;
                entry.owner_interest = interest;
                let want = entry.interest();
                s.sources.set_interest(&driver, token, want)
            })?
            .map_err(|e| os_error(&e))
    }

    /// Forgets `fd`'s owner (before its socket is closed).
    pub(super) fn detach_owner(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        let old = self.state.with(py, |s| {
            let (Some(driver), Some(token)) = (s.driver.clone(), s.sources.token_of(fd)) else {
                return None;
            };
            let entry = &mut s.sources.get_mut(token).expect("token from the fd map").data;
            let old = entry.owner.take();
            entry.owner_interest = Interest::NONE;
            if entry.is_unused() {
                s.sources.remove(&driver, token);
            } else {
                let want = entry.interest();
                let _ = s.sources.set_interest(&driver, token, want);
            }
            old
        })?;
        drop(old);
        Ok(())
    }

    /// Queues `op` for `owner` at the end of the ready queue, as `call_soon` would (a connection
    /// loss with a copy of the current context, as `call_soon` takes one, unless the owner's
    /// connection loss runs in its own context: `Owner::loses_in_own_context`).
    pub(super) fn schedule(&self, py: Python<'_>, owner: Owner, op: IoOp) -> PyResult<()> {
        let context = match op {
            IoOp::ConnectionLost(_) if !owner.loses_in_own_context(py)? => Some(copy_context(py)?),
            _ => None,
        };
        self.state.with(py, |s| s.ready.push(Ready::Io(owner, op, context)))
    }

    /// Changes the callback for one direction of `fd`, registering or deregistering the fd as
    /// needed. Returns the callback it replaced (to be cancelled by the caller).
    fn set_io_callback(
        &self,
        py: Python<'_>,
        fd: RawFd,
        write: bool,
        handle: Option<Py<Handle>>,
        fileobj: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Py<Handle>>> {
        self.state
            .with(py, |s| {
                let Some(driver) = s.driver.clone() else {
                    return Err((closed_error(), None, None));
                };
                let token = match s.sources.token_of(fd) {
                    Some(t) => t,
                    None if handle.is_none() => return Ok((None, None)),
                    None => s.sources.insert(
                        fd,
                        IoEntry {
                            fileobj: fileobj
                                .filter(|f| !f.is_instance_of::<PyInt>())
                                .map(|f| f.clone().unbind()),
                            ..IoEntry::default()
                        },
                    ),
                };
                let entry = &mut s.sources.get_mut(token).expect("token from the fd map").data;
                entry.end_keeping(fileobj);
                let slot = if write { &mut entry.writer } else { &mut entry.reader };
                let old = std::mem::replace(slot, handle);
                let interest = entry.interest();
                // NOTE: not "no interest": a paused transport still owns its fd (asyncio's
                // sendfile adds and removes a writer on the fd of a paused transport).
                if entry.is_unused() {
                    // Forgets it even when the fd is closed already (selectors' epoll `unregister`
                    // ignores the OSError).
                    let gone = s.sources.remove(&driver, token);
                    return Ok((old, gone));
                }
                match s.sources.set_interest(&driver, token, interest) {
                    Ok(()) => Ok((old, None)),
                    Err(e) => {
                        // Leave things as they were; forget an fd that never got registered.
                        let entry = &mut s.sources.get_mut(token).expect("still there").data;
                        let slot = if write { &mut entry.writer } else { &mut entry.reader };
                        let new = std::mem::replace(slot, old);
                        // selectors forget a key whose register/modify failed (e.g. a closed fd);
                        // a transport's fd stays.
                        let gone = if s.sources.get(token).is_some_and(|src| {
                            src.data.owner.is_none() || (src.interest().is_none() && src.data.is_empty())
                        }) {
                            s.sources.remove(&driver, token)
                        } else {
                            None
                        };
                        // Returned, not dropped here: the caller drops them after the borrow
                        // (the entry boxed, to keep the error small).
                        Err((os_error(&e), new, gone.map(Box::new)))
                    }
                }
            })?
            .map(|(old, gone)| {
                drop(gone);
                old
            })
            .map_err(|(err, new, gone)| {
                drop((new, gone));
                err
            })
    }

    /// selectors' `_fileobj_lookup`: the fd of `obj`, or, when `obj` has none (a closed socket's
    /// `fileno()` is -1), the fd whose entry was created by that very object.
    fn lookup_fd(&self, obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
        let py = obj.py();
        match fileobj_to_fd(obj) {
            Err(e) if e.is_instance_of::<PyValueError>(py) && !obj.is_instance_of::<PyInt>() => {
                let found = self.state.with(py, |s| {
                    s.sources
                        .iter()
                        .find(|(_, src)| src.data.fileobj.as_ref().is_some_and(|f| f.is(obj)))
                        .map(|(_, src)| src.fd)
                })?;
                found.ok_or(e)
            }
            r => r,
        }
    }

    pub(super) fn add_io(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        write: bool,
    ) -> PyResult<Py<Handle>> {
        slf.get().check_closed()?;
        let raw = slf.get().lookup_fd(fd)?;
        Self::register_io(slf, raw, Some(fd), callback, args, context, write)
    }

    /// `_add_reader`/`_add_writer` for an fd already checked; the callback runs in `context`
    /// (a copy of the current one when `None`).
    pub(super) fn add_io_fd(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        write: bool,
    ) -> PyResult<Py<Handle>> {
        slf.get().check_closed()?;
        Self::register_io(slf, fd, None, callback, args, context, write)
    }

    /// A new handle for `callback` as `fd`'s reader (writer with `write`), cancelling the one it
    /// replaces; `fileobj` is what `add_reader` was given, when not a plain fd.
    fn register_io(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        fileobj: Option<&Bound<'_, PyAny>>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        write: bool,
    ) -> PyResult<Py<Handle>> {
        let handle = Py::new(slf.py(), Self::new_handle(slf, callback, args, context)?)?;
        Self::install_io(slf, fd, fileobj, handle, write)
    }

    /// Makes `handle` `fd`'s reader (writer with `write`), cancelling the one it replaces.
    fn install_io(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        fileobj: Option<&Bound<'_, PyAny>>,
        handle: Py<Handle>,
        write: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        if let Some(old) = slf
            .get()
            .set_io_callback(py, fd, write, Some(handle.clone_ref(py)), fileobj)?
        {
            Handle::cancel(old.bind(py))?;
        }
        Ok(handle)
    }

    /// The reader of a `sock_recv` wait on `sock`'s `fd`, calling `callback`: kept registered for
    /// the next wait where the backend and the fd allow it ([`LoopCore::add_kept_reader`]), else
    /// added as `_add_reader` adds one. Returns the handle and whether it is kept.
    pub(super) fn add_sock_reader(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        sock: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<(Py<Handle>, bool)> {
        let py = slf.py();
        slf.get().check_closed()?;
        let handle = Py::new(py, Self::new_handle(slf, callback, &PyTuple::empty(py), None)?)?;
        if slf.get().add_kept_reader(py, fd, sock, &handle)? {
            return Ok((handle, true));
        }
        Self::install_io(slf, fd, None, handle, false).map(|h| (h, false))
    }

    pub(super) fn remove_io(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, write: bool) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match this.lookup_fd(fd) {
            Ok(fd) => this.remove_io_fd(py, fd, write),
            // Too large to be registered, so not registered (asyncio's selector finds no key).
            Err(e) if e.is_instance_of::<PyOverflowError>(py) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `_remove_reader`/`_remove_writer` for an fd already checked.
    pub(super) fn remove_io_fd(&self, py: Python<'_>, fd: RawFd, write: bool) -> PyResult<bool> {
        match self.set_io_callback(py, fd, write, None, None)? {
            Some(old) => {
                Handle::cancel(old.bind(py))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Makes `handle` the reader of `sock`'s `fd` for one `sock_recv` wait, keeping the fd
    /// registered edge-triggered for the next wait (see [`IoEntry::kept_for`]). False, with
    /// nothing changed, where that cannot be ([`Kept::No`]): the caller then adds a plain reader.
    ///
    /// Edge-triggered is enough: the caller's last `recv` said `EAGAIN`, so the data that ends
    /// the wait arrives after it and is reported as a change. What changed while the entry was
    /// dormant was dropped, and is read by the next wait's first `recv`.
    fn add_kept_reader(
        &self,
        py: Python<'_>,
        fd: RawFd,
        sock: &Bound<'_, PyAny>,
        handle: &Py<Handle>,
    ) -> PyResult<bool> {
        let found = self.state.with(py, |s| {
            if !s.driver.as_deref().is_some_and(Driver::reports_edges) {
                return Kept::No;
            }
            let Some(token) = s.sources.token_of(fd) else {
                return Kept::Register;
            };
            let entry = &mut s.sources.get_mut(token).expect("token from the fd map").data;
            if !entry.is_empty() {
                return Kept::No;
            }
            let same = entry
                .kept_for
                .as_ref()
                .and_then(|w| w.bind(py).upgrade())
                .is_some_and(|o| o.is(sock));
            if same {
                entry.reader = Some(handle.clone_ref(py));
                Kept::Set
            } else {
                Kept::Register
            }
        })?;
        match found {
            Kept::No => return Ok(false),
            Kept::Set => return Ok(true),
            Kept::Register => {}
        }
        // Made outside the state's borrow (an allocation may collect); `socket.socket` is
        // weakly referenceable, an object that is not takes the plain path.
        let Ok(weak) = PyWeakrefReference::new(sock) else {
            return Ok(false);
        };
        let weak = weak.unbind();
        self.state
            .with(py, |s| {
                let Some(driver) = s.driver.clone() else {
                    return (Err(closed_error()), None, None);
                };
                let token = s.sources.insert(fd, IoEntry::default());
                let entry = &mut s.sources.get_mut(token).expect("just inserted").data;
                if !entry.is_empty() {
                    // Registered meanwhile (a finalizer ran at the allocation).
                    return (Ok(false), Some(weak), None);
                }
                entry.reader = Some(handle.clone_ref(py));
                let old = entry.kept_for.replace(weak);
                // The cache may say "watched" for a registration that went with a closed socket.
                match s.sources.reregister(&driver, token, Interest::READABLE_EDGE) {
                    Ok(()) => (Ok(true), old, None),
                    Err(e) => (Err(os_error(&e)), old, s.sources.remove(&driver, token)),
                }
            })
            // The references let go are dropped after the borrow.
            .and_then(|(result, weak, gone)| {
                drop((weak, gone));
                result
            })
    }

    /// Ends a kept reader's wait ([`LoopCore::add_kept_reader`]): the entry goes dormant, the fd
    /// stays registered. False if `handle` is not the kept reader of `fd` (replaced, or added the
    /// plain way): the caller removes it the plain way.
    pub(super) fn release_kept_reader(&self, py: Python<'_>, fd: RawFd, handle: &Py<Handle>) -> PyResult<bool> {
        let taken = self.state.with(py, |s| {
            let entry = &mut s.sources.get_mut(s.sources.token_of(fd)?)?.data;
            if entry.kept_for.is_none() || !entry.reader.as_ref().is_some_and(|r| r.is(handle)) {
                return None;
            }
            entry.reader.take()
        })?;
        // Dropped after the borrow; the caller holds the handle too.
        Ok(taken.is_some())
    }

    /// `_io_key`: `(events, reader, writer)` for `fd`, or `None`.
    pub(super) fn io_key(&self, py: Python<'_>, fd: RawFd) -> PyResult<Option<IoKey>> {
        self.state.with(py, |s| {
            let src = s.sources.get(s.sources.token_of(fd)?)?;
            let d = &src.data;
            if d.is_empty() {
                return None; // dormant: see `IoEntry::kept_for`
            }
            let mask = u8::from(d.reader.is_some()) | (u8::from(d.writer.is_some()) << 1);
            Some((
                mask,
                d.reader.as_ref().map(|h| h.clone_ref(py)),
                d.writer.as_ref().map(|h| h.clone_ref(py)),
            ))
        })
    }

    /// `_io_fds`: every fd with a reader or writer.
    pub(super) fn io_fds(&self, py: Python<'_>) -> PyResult<Vec<RawFd>> {
        self.state.with(py, |s| {
            s.sources
                .iter()
                .filter(|(_, src)| !src.data.is_empty())
                .map(|(_, src)| src.fd)
                .collect()
        })
    }
}
