//! `ReadPipeTransport` and `WritePipeTransport`: asyncio's Unix pipe transports (pipes, FIFOs,
//! ttys, character devices, socket pairs) with their read and write paths in Rust. This module holds
//! what the two ends share; `read.rs` and `write.rs` hold each end.
//!
//! They follow asyncio's `_UnixReadPipeTransport` and `_UnixWritePipeTransport` callback for
//! callback. A pipe transport owns its pipe object and closes it exactly once, after
//! `connection_lost`; the fd leaves the loop before that close, so its number can be reused at
//! once. A write pipe also watches its fd for readability, which on a pipe or socket means the
//! reading end went away: the transport then closes (with `BrokenPipeError` if data was queued).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::glue::copy_context;
use crate::owner::LoopRef;
use crate::transport::base::{self, Base, Transport};

mod read;
mod write;

pub use read::ReadPipeTransport;
pub use write::WritePipeTransport;

/// What both ends' states hold besides their flags.
struct Ends {
    pipe: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
}

impl Ends {
    fn new(pipe: &Bound<'_, PyAny>, protocol: &Bound<'_, PyAny>) -> Ends {
        Ends {
            pipe: Some(pipe.clone().unbind()),
            protocol: Some(protocol.clone().unbind()),
        }
    }

    /// The pipe and the protocol, taken out (`connection_lost`).
    fn release(&mut self) -> (Option<Py<PyAny>>, Option<Py<PyAny>>) {
        (self.pipe.take(), self.protocol.take())
    }
}

/// A pipe end's state, as the steps both ends take see it.
trait PipeState: base::State {
    fn ends(&self) -> &Ends;
    fn ends_mut(&mut self) -> &mut Ends;
}

/// A pipe end's [`Base`]: the extra-info dict gets `pipe`.
fn new_base(
    py: Python<'_>,
    loop_: LoopRef,
    pipe: &Bound<'_, PyAny>,
    extra: Option<&Bound<'_, PyDict>>,
) -> PyResult<Base> {
    let dict = match extra {
        Some(e) => e.clone(),
        None => PyDict::new(py),
    };
    dict.set_item("pipe", pipe)?;
    Ok(Base {
        loop_,
        fd: pipe.call_method0("fileno")?.extract()?,
        extra: dict.unbind(),
        context: copy_context(py)?,
    })
}

/// The transport's start: `connection_made` (its exception reported), then it counts as started
/// and the waiter is resolved.
fn run_start<T: Transport>(slf: &Bound<'_, T>, waiter: Option<Py<PyAny>>) -> PyResult<()>
where
    T::State: PipeState,
{
    let py = slf.py();
    if let Some(p) = base::protocol(slf.get(), py)? {
        base::call_protocol(
            slf,
            p.bind(py),
            intern!(py, "connection_made"),
            &PyTuple::new(py, [slf])?,
        )?;
    }
    base::started(slf, waiter)
}

/// `set_protocol(protocol)`.
fn set_protocol<T: Transport>(this: &T, protocol: &Bound<'_, PyAny>) -> PyResult<()>
where
    T::State: PipeState,
{
    let old = this.state().with(protocol.py(), |s| {
        s.ends_mut().protocol.replace(protocol.clone().unbind())
    })?;
    drop(old);
    Ok(())
}

/// The `_pipe` getter.
fn pipe_of<T: Transport>(this: &T, py: Python<'_>) -> PyResult<Option<Py<PyAny>>>
where
    T::State: PipeState,
{
    this.state()
        .with(py, |s| s.ends().pipe.as_ref().map(|p| p.clone_ref(py)))
}

fn traverse<T: Transport>(this: &T, visit: &PyVisit<'_>) -> Result<(), PyTraverseError>
where
    T::State: PipeState,
{
    this.base().traverse(visit)?;
    let Some(s) = this.state().for_traverse() else {
        return Ok(());
    };
    visit.call(&s.ends().pipe)?;
    visit.call(&s.ends().protocol)
}
