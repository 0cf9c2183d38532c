//! The fd registry: what is registered for each fd ([`IoEntry`]), the `add_reader`/`add_writer`
//! callbacks, and the transports and listeners that own an fd's readiness (the `Owner` API:
//! `attach_owner`, `set_owner_interest`, `detach_owner`, `schedule`).

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use ferroloop_core::driver::Interest;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};

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
}

impl IoEntry {
    pub(super) fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some() || self.owner_interest.readable,
            writable: self.writer.is_some() || self.owner_interest.writable,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.reader.is_none() && self.writer.is_none() && self.owner.is_none()
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
            if entry.is_empty() {
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
                let slot = if write { &mut entry.writer } else { &mut entry.reader };
                let old = std::mem::replace(slot, handle);
                let interest = entry.interest();
                // NOTE: not "no interest": a paused transport still owns its fd (asyncio's
                // sendfile adds and removes a writer on the fd of a paused transport).
                let empty = entry.is_empty();
                if empty {
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
                        // Returned, not dropped here: the caller drops them after the borrow.
                        Err((os_error(&e), new, gone))
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
        let py = slf.py();
        let handle = Py::new(py, Self::new_handle(slf, callback, args, context)?)?;
        if let Some(old) = slf
            .get()
            .set_io_callback(py, fd, write, Some(handle.clone_ref(py)), fileobj)?
        {
            Handle::cancel(old.bind(py))?;
        }
        Ok(handle)
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

    /// `_io_key`: `(events, reader, writer)` for `fd`, or `None`.
    pub(super) fn io_key(&self, py: Python<'_>, fd: RawFd) -> PyResult<Option<IoKey>> {
        self.state.with(py, |s| {
            let src = s.sources.get(s.sources.token_of(fd)?)?;
            let d = &src.data;
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
        self.state
            .with(py, |s| s.sources.iter().map(|(_, src)| src.fd).collect())
    }
}
