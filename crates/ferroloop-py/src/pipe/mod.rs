//! `ReadPipeTransport` and `WritePipeTransport`: asyncio's Unix pipe transports (pipes, FIFOs,
//! ttys, character devices, socket pairs) with their read and write paths in Rust. This module holds
//! what the two ends share; `read.rs` and `write.rs` hold each end.
//!
//! They follow asyncio's `_UnixReadPipeTransport` and `_UnixWritePipeTransport` callback for
//! callback. A pipe transport owns its pipe object and closes it exactly once, after
//! `connection_lost`; the fd leaves the loop before that close, so its number can be reused at
//! once. A write pipe also watches its fd for readability, which on a pipe or socket means the
//! reading end went away: the transport then closes (with `BrokenPipeError` if data was queued).

use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::cell::AttachedCell;
use crate::event_loop::{copy_context, LoopCore};
use crate::glue;
use crate::transport::is_exit;

mod read;
mod write;

pub use read::ReadPipeTransport;
pub use write::WritePipeTransport;

/// What both pipe transports hold besides their state.
struct Common {
    loop_: Py<LoopCore>,
    fd: RawFd,
    extra: Py<PyDict>,
    context: Py<PyAny>,
}

impl Common {
    fn new(
        loop_: &Bound<'_, LoopCore>,
        pipe: &Bound<'_, PyAny>,
        extra: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Common> {
        let py = loop_.py();
        let dict = match extra {
            Some(e) => e.clone(),
            None => PyDict::new(py),
        };
        dict.set_item("pipe", pipe)?;
        Ok(Common {
            loop_: loop_.clone().unbind(),
            fd: pipe.call_method0("fileno")?.extract()?,
            extra: dict.unbind(),
            context: copy_context(py)?,
        })
    }

    fn lp(&self) -> &LoopCore {
        self.loop_.get()
    }

    fn extra(&self, py: Python<'_>) -> Py<PyDict> {
        self.extra.clone_ref(py)
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.extra)?;
        visit.call(&self.context)
    }
}

/// Calls `protocol.<name>(*args)` in the transport's context; an exception goes to the exception
/// handler as asyncio's handle would report it.
fn call_protocol<'py>(
    transport: &Bound<'py, PyAny>,
    common: &Common,
    protocol: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<()> {
    let py = transport.py();
    let method = protocol.getattr(name)?;
    match method.call1(args).map(drop) {
        Ok(()) => Ok(()),
        Err(err) if is_exit(py, &err) => Err(err),
        Err(err) => glue::helper(py, "report_call_error")?
            .call1((common.loop_.bind(py), method, args, glue::exc_value(py, &err)))
            .map(drop),
    }
}

/// What the two ends' states share, for the steps they take alike.
trait PipeState {
    fn protocol(&self) -> Option<&Py<PyAny>>;
    fn set_started(&mut self);
    /// The pipe and the protocol, taken out; the registration forgotten.
    fn release(&mut self) -> (Option<Py<PyAny>>, Option<Py<PyAny>>);
}

fn protocol_of<S: PipeState>(py: Python<'_>, state: &AttachedCell<S>) -> PyResult<Option<Py<PyAny>>> {
    state.with(py, |s| s.protocol().map(|p| p.clone_ref(py)))
}

/// The transport's start: `connection_made` (its exception reported), then it counts as started.
fn start<S: PipeState>(transport: &Bound<'_, PyAny>, common: &Common, state: &AttachedCell<S>) -> PyResult<()> {
    let py = transport.py();
    if let Some(p) = protocol_of(py, state)? {
        call_protocol(
            transport,
            common,
            p.bind(py),
            intern!(py, "connection_made"),
            &PyTuple::new(py, [transport])?,
        )?;
    }
    state.with(py, PipeState::set_started)
}

/// asyncio's `_call_connection_lost`: tell the protocol, then release the pipe (whatever the
/// protocol did).
fn connection_lost<S: PipeState>(
    py: Python<'_>,
    common: &Common,
    state: &AttachedCell<S>,
    exc: Option<Py<PyAny>>,
) -> PyResult<()> {
    let told = match protocol_of(py, state)? {
        Some(p) => p
            .bind(py)
            .call_method1(intern!(py, "connection_lost"), (exc,))
            .map(drop),
        None => Ok(()),
    };
    let (pipe, protocol) = state.with(py, PipeState::release)?;
    common.lp().detach_owner(py, common.fd)?;
    if let Some(pipe) = pipe {
        pipe.bind(py).call_method0(intern!(py, "close"))?;
    }
    drop(protocol);
    told
}

fn resolve_waiter(py: Python<'_>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
    if let Some(waiter) = waiter {
        let waiter = waiter.bind(py);
        if !waiter.call_method0("cancelled")?.is_truthy()? {
            waiter.call_method1("set_result", (py.None(),))?;
        }
    }
    Ok(())
}
