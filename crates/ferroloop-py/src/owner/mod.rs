//! The hub between the loop and the Rust objects that own an fd's readiness (transports,
//! listening sockets): what the loop asks of them ([`Owner`], [`IoOp`]) and, in `loop_ref.rs`,
//! what they ask of the loop ([`LoopIo`] through a [`LoopRef`]).
//!
//! An owner tells the loop what it wants to hear about ([`LoopIo::set_owner_interest`]); the loop
//! queues an [`IoOp`] for it when the fd is ready, in the same ready queue as callbacks, so the
//! order of events is asyncio's. Nothing here allocates a Python object.

use ferroloop_core::driver::{BufRef, Interest};
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::datagram::DatagramTransport;
use crate::listener::Listener;
use crate::pipe::{ReadPipeTransport, WritePipeTransport};
use crate::stream::StreamTransport;
use crate::transport::in_context;

mod loop_ref;

pub use loop_ref::{LoopIo, LoopRef};

/// What an owner learns of one of its operations.
#[derive(Debug)]
pub struct Done {
    /// The operation (its index in the table, as returned when it was started).
    pub op: usize,
    /// Bytes (all of `buffers`), or a negated errno.
    pub result: i32,
    /// The operation goes on (a multishot receive).
    pub more: bool,
    /// The provided buffers holding received data, oldest first, with the bytes in each: the
    /// owner must take them ([`LoopIo::take_buffers`]), which gives them back to the kernel.
    pub buffers: Buffers,
}

/// The buffers of one [`Done`]. The receives of one operation reaped by one wait are given as
/// one, so that a protocol sees what arrived meanwhile in one `data_received`, as a readiness
/// read of all the socket holds would give it.
#[derive(Debug, Default)]
pub enum Buffers {
    #[default]
    None,
    One([(BufRef, usize); 1]),
    Many(Vec<(BufRef, usize)>),
}

impl Buffers {
    pub(crate) fn push(&mut self, buf: BufRef, len: usize) {
        *self = match std::mem::take(self) {
            Buffers::None => Buffers::One([(buf, len)]),
            Buffers::One([first]) => Buffers::Many(vec![first, (buf, len)]),
            Buffers::Many(mut v) => {
                v.push((buf, len));
                Buffers::Many(v)
            }
        };
    }

    pub fn as_slice(&self) -> &[(BufRef, usize)] {
        match self {
            Buffers::None => &[],
            Buffers::One(one) => one,
            Buffers::Many(v) => v,
        }
    }
}

/// What the loop asks an owner to do.
pub enum IoOp {
    /// `connection_made`, then start reading, then resolve the creator's waiter.
    Start(Option<Py<PyAny>>),
    Read,
    Write,
    /// `connection_lost(exc)` and release the socket. It runs in the context it was scheduled
    /// from, as asyncio's `call_soon(self._call_connection_lost, exc)` does (in the owner's own
    /// where asyncio 3.15 passes the transport's: `Owner::loses_in_own_context`).
    ConnectionLost(Option<Py<PyAny>>),
    /// `eof_received()` (a read pipe that hit end of file).
    Eof,
    /// An operation of the completion model completed (or went one step further).
    Done(Done),
    /// Give the protocol what arrived while reading was paused (completion model).
    Deliver,
    /// Start the receive again: buffers came back after it ended with `ENOBUFS`.
    Rearm,
}

impl IoOp {
    /// The method an asyncio transport would run for this, for debug mode's slow-callback
    /// report (`Executing <Handle TCPTransport._read_ready()> took ...`).
    pub fn method_name(&self) -> &'static str {
        match self {
            IoOp::Start(_) => "_start",
            IoOp::Read | IoOp::Deliver | IoOp::Rearm => "_read_ready",
            IoOp::Done(done) if !done.buffers.as_slice().is_empty() => "_read_ready",
            IoOp::Write => "_write_ready",
            IoOp::ConnectionLost(_) => "_call_connection_lost",
            IoOp::Eof => "_eof_received",
            IoOp::Done(_) => "_io_done",
        }
    }
}

pub enum Owner {
    Stream(Py<StreamTransport>),
    Datagram(Py<DatagramTransport>),
    Listener(Py<Listener>),
    ReadPipe(Py<ReadPipeTransport>),
    WritePipe(Py<WritePipeTransport>),
}

impl Owner {
    pub fn clone_ref(&self, py: Python<'_>) -> Owner {
        match self {
            Owner::Stream(t) => Owner::Stream(t.clone_ref(py)),
            Owner::Datagram(t) => Owner::Datagram(t.clone_ref(py)),
            Owner::Listener(l) => Owner::Listener(l.clone_ref(py)),
            Owner::ReadPipe(t) => Owner::ReadPipe(t.clone_ref(py)),
            Owner::WritePipe(t) => Owner::WritePipe(t.clone_ref(py)),
        }
    }

    /// What the owner wants now; readiness queued before it changed its mind is dropped, as
    /// asyncio drops the handle of a removed reader.
    pub fn wants(&self, py: Python<'_>) -> Interest {
        match self {
            Owner::Stream(t) => t.get().wants(py),
            Owner::Datagram(t) => t.get().wants(py),
            Owner::Listener(l) => l.get().wants(),
            Owner::ReadPipe(t) => t.get().wants(py),
            Owner::WritePipe(t) => t.get().wants(py),
        }
    }

    /// The context the owner's work runs in: a copy of its creator's, as asyncio's reader and
    /// writer handles run in a copy taken when the transport registered them.
    fn context(&self, py: Python<'_>) -> Py<PyAny> {
        match self {
            Owner::Stream(t) => t.get().context().clone_ref(py),
            Owner::Datagram(t) => t.get().context().clone_ref(py),
            Owner::Listener(l) => l.get().context().clone_ref(py),
            Owner::ReadPipe(t) => t.get().context().clone_ref(py),
            Owner::WritePipe(t) => t.get().context().clone_ref(py),
        }
    }

    /// Whether `connection_lost` runs in the owner's own context rather than in a copy of the one
    /// it was scheduled from: asyncio 3.15's socket transports (`_SelectorTransport._call_soon`).
    pub fn loses_in_own_context(&self, py: Python<'_>) -> PyResult<bool> {
        match self {
            Owner::Stream(_) => crate::stream::connection_lost_in_connection_context(py),
            _ => Ok(false),
        }
    }

    /// Runs `op` in `context` (the context it was scheduled from, for a connection loss that a
    /// `close()` asked for) or else in the owner's own context.
    pub fn run(&self, py: Python<'_>, op: IoOp, context: Option<Py<PyAny>>) -> PyResult<()> {
        let wants = self.wants(py);
        match op {
            IoOp::Read if !wants.readable => return Ok(()),
            IoOp::Write if !wants.writable => return Ok(()),
            _ => {}
        }
        let context = context.unwrap_or_else(|| self.context(py));
        in_context(py, &context, || self.dispatch(py, op))
    }

    fn dispatch(&self, py: Python<'_>, op: IoOp) -> PyResult<()> {
        match self {
            Owner::Stream(t) => StreamTransport::run_op(t.bind(py), op),
            Owner::Datagram(t) => DatagramTransport::run_op(t.bind(py), op),
            Owner::Listener(l) => Listener::run_op(l.bind(py), op),
            Owner::ReadPipe(t) => ReadPipeTransport::run_op(t.bind(py), op),
            Owner::WritePipe(t) => WritePipeTransport::run_op(t.bind(py), op),
        }
    }

    /// The Python object, for error reports.
    pub fn object<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Owner::Stream(t) => t.bind(py).clone().into_any(),
            Owner::Datagram(t) => t.bind(py).clone().into_any(),
            Owner::Listener(l) => l.bind(py).clone().into_any(),
            Owner::ReadPipe(t) => t.bind(py).clone().into_any(),
            Owner::WritePipe(t) => t.bind(py).clone().into_any(),
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Owner::Stream(t) => visit.call(t),
            Owner::Datagram(t) => visit.call(t),
            Owner::Listener(l) => visit.call(l),
            Owner::ReadPipe(t) => visit.call(t),
            Owner::WritePipe(t) => visit.call(t),
        }
    }
}
