//! The fast path of `sock_recv`, `sock_recv_into` and `sock_sendall`.
//!
//! asyncio's versions first call the socket method, catch the `BlockingIOError` it raises when
//! nothing is ready, then wait with a reader handle, a `functools.partial` done callback and a
//! Python callback per readiness event. Here the first attempt is a syscall that reports `EAGAIN`
//! without building an exception, and the wait is a [`SockOp`]: one Rust object that is both the
//! reader/writer callback and the future's done callback, completing the future itself. The
//! coroutine stays a Python `async def` (so `create_task(loop.sock_recv(...))` keeps working).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use super::LoopCore;
use crate::buffers::MAX_READ;
use crate::cell::AttachedCell;
use crate::glue::{self, os_error};
use crate::handle::Handle;
use crate::tasks::new_future;
use crate::transport::{fd_of, with_bytes, with_bytes_mut};

/// What a [`SockOp`] waits to do.
enum Kind {
    Recv(usize),
    RecvInto(PyUntypedBuffer),
    /// The data and how much of it was sent.
    SendAll(PyUntypedBuffer, AttachedCell<usize>),
}

/// The outcome of one attempt.
enum Attempt {
    Done(Py<PyAny>),
    Again,
    Failed(PyErr),
}

#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct SockOp {
    loop_: Py<LoopCore>,
    fd: RawFd,
    kind: Kind,
    future: Py<PyAny>,
    /// The reader or writer handle that calls us, to remove only our own registration.
    handle: AttachedCell<Option<Py<Handle>>>,
    /// The reader was added the kept way ([`LoopCore::add_kept_reader`]).
    kept: AtomicBool,
    finished: AtomicBool,
}

fn recv(py: Python<'_>, lp: &LoopCore, fd: RawFd, n: usize) -> PyResult<Attempt> {
    let flags = RecvFlags::DONTWAIT;
    let res = if n <= MAX_READ {
        lp.read_buf.with(py, |buf| {
            rustix::net::recv(fd_of(fd), &mut buf[..n], flags).map(|(k, _)| PyBytes::new(py, &buf[..k]))
        })?
    } else {
        let mut buf = vec![0u8; n];
        rustix::net::recv(fd_of(fd), &mut buf[..], flags).map(|(k, _)| PyBytes::new(py, &buf[..k]))
    };
    Ok(match res {
        Ok(bytes) => Attempt::Done(bytes.into_any().unbind()),
        Err(Errno::AGAIN | Errno::INTR) => Attempt::Again,
        Err(e) => Attempt::Failed(os_error(&e.into())),
    })
}

fn recv_into(py: Python<'_>, fd: RawFd, buf: &PyUntypedBuffer) -> Attempt {
    // SAFETY: the buffer is writable and C-contiguous (checked when the view was taken) and the
    // view keeps it exported, so the memory is valid for `len_bytes` bytes during the call.
    let target = unsafe { std::slice::from_raw_parts_mut(buf.buf_ptr().cast::<u8>(), buf.len_bytes()) };
    recv_into_slice(py, fd, target)
}

fn recv_into_slice(py: Python<'_>, fd: RawFd, target: &mut [u8]) -> Attempt {
    match rustix::net::recv(fd_of(fd), target, RecvFlags::DONTWAIT) {
        Ok((k, _)) => Attempt::Done(
            k.into_pyobject(py)
                .map_or_else(|_| py.None(), |v| v.into_any().unbind()),
        ),
        Err(Errno::AGAIN | Errno::INTR) => Attempt::Again,
        Err(e) => Attempt::Failed(os_error(&e.into())),
    }
}

/// Sends from `*sent` on until done or the socket is full.
fn send_all(py: Python<'_>, fd: RawFd, data: &PyUntypedBuffer, sent: &mut usize) -> Attempt {
    // SAFETY: the view keeps the exporter's memory valid and unchanged-in-size while it exists.
    let all = unsafe { std::slice::from_raw_parts(data.buf_ptr().cast::<u8>(), data.len_bytes()) };
    send_all_slice(py, fd, all, sent)
}

fn send_all_slice(py: Python<'_>, fd: RawFd, all: &[u8], sent: &mut usize) -> Attempt {
    while *sent < all.len() {
        match rustix::net::send(fd_of(fd), &all[*sent..], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(n) => *sent += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Attempt::Again,
            Err(e) => return Attempt::Failed(os_error(&e.into())),
        }
    }
    Attempt::Done(py.None())
}

fn contiguous(view: PyUntypedBuffer, writable: bool) -> Option<PyUntypedBuffer> {
    (view.is_c_contiguous() && (!writable || !view.readonly())).then_some(view)
}

impl SockOp {
    fn attempt(&self, py: Python<'_>) -> PyResult<Attempt> {
        Ok(match &self.kind {
            Kind::Recv(n) => recv(py, self.loop_.get(), self.fd, *n)?,
            Kind::RecvInto(buf) => recv_into(py, self.fd, buf),
            Kind::SendAll(data, sent) => {
                let mut at = sent.with(py, |s| *s)?;
                let r = send_all(py, self.fd, data, &mut at);
                sent.with(py, |s| *s = at)?;
                r
            }
        })
    }

    fn is_write(&self) -> bool {
        matches!(self.kind, Kind::SendAll(..))
    }

    /// Stops waiting: removes our reader/writer unless someone replaced it.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        if self.finished.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let Some(handle) = self.handle.with(py, Option::take)? else {
            return Ok(());
        };
        let lp = self.loop_.get();
        if self.kept.load(Ordering::Relaxed) && lp.release_kept_reader(py, self.fd, &handle)? {
            return Ok(());
        }
        if !handle.get().is_cancelled() {
            lp.remove_io_fd(py, self.fd, self.is_write())?;
        }
        Ok(())
    }

    /// Waits for the fd to be ready and completes a new future with the operation's result. A
    /// receive from `sock` keeps the fd registered for the next wait, where it can.
    fn wait(
        loop_: &Bound<'_, LoopCore>,
        sock: Option<&Bound<'_, PyAny>>,
        fd: RawFd,
        kind: Kind,
    ) -> PyResult<Py<PyAny>> {
        let py = loop_.py();
        let future = new_future(loop_.as_any())?;
        let write = matches!(kind, Kind::SendAll(..));
        let op = Bound::new(
            py,
            SockOp {
                loop_: loop_.clone().unbind(),
                fd,
                kind,
                future: future.clone().unbind(),
                handle: AttachedCell::new(None),
                kept: AtomicBool::new(false),
                finished: AtomicBool::new(false),
            },
        )?;
        let handle = match sock {
            Some(sock) if !write => {
                let (handle, kept) = LoopCore::add_sock_reader(loop_, fd, sock, op.as_any())?;
                op.get().kept.store(kept, Ordering::Relaxed);
                handle
            }
            _ => LoopCore::add_io_fd(loop_, fd, op.as_any(), &PyTuple::empty(py), None, write)?,
        };
        op.get().handle.with(py, |h| *h = Some(handle))?;
        future.call_method1(pyo3::intern!(py, "add_done_callback"), (&op,))?;
        Ok(future.unbind())
    }
}

#[pymethods]
impl SockOp {
    /// With no argument: the fd is ready (the reader/writer callback). With one: the future is
    /// done (its done callback).
    #[pyo3(signature = (*args))]
    fn __call__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<()> {
        if !args.is_empty() {
            return self.finish(py);
        }
        let future = self.future.bind(py);
        if future.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
            return self.finish(py);
        }
        match self.attempt(py)? {
            Attempt::Again => Ok(()),
            Attempt::Done(v) => {
                self.finish(py)?;
                future.call_method1(pyo3::intern!(py, "set_result"), (v,)).map(drop)
            }
            Attempt::Failed(e) => {
                self.finish(py)?;
                future
                    .call_method1(pyo3::intern!(py, "set_exception"), (glue::exc_value(py, &e),))
                    .map(drop)
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.future)?;
        if let Some(h) = self.handle.for_traverse() {
            visit.call(&*h)?;
        }
        Ok(())
    }
}

/// One attempt's result for Python: the value, `None` if the socket is not ready, or the error.
fn now(attempt: Attempt) -> PyResult<Option<Py<PyAny>>> {
    match attempt {
        Attempt::Done(v) => Ok(Some(v)),
        Attempt::Again => Ok(None),
        Attempt::Failed(e) => Err(e),
    }
}

/// A view of `obj` as contiguous bytes (writable if asked), or `None` for anything else: the
/// caller then takes asyncio's own path.
fn view(obj: &Bound<'_, PyAny>, writable: bool) -> Option<PyUntypedBuffer> {
    PyUntypedBuffer::get(obj).ok().and_then(|v| contiguous(v, writable))
}

/// `sock.recv(n)` without raising for "not ready": the bytes, or `None`.
pub fn try_recv(loop_: &Bound<'_, LoopCore>, fd: RawFd, n: usize) -> PyResult<Option<Py<PyAny>>> {
    now(recv(loop_.py(), loop_.get(), fd, n)?)
}

/// A future of `sock.recv(n)`, completed when the socket is readable.
pub fn wait_recv(loop_: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, fd: RawFd, n: usize) -> PyResult<Py<PyAny>> {
    SockOp::wait(loop_, Some(sock), fd, Kind::Recv(n))
}

/// `sock.recv_into(buf)`: `(false, None)` if `buf` is not a writable byte buffer, else `true` and
/// the count, or `None` for "not ready".
pub fn try_recv_into(
    loop_: &Bound<'_, LoopCore>,
    fd: RawFd,
    buf: &Bound<'_, PyAny>,
) -> PyResult<(bool, Option<Py<PyAny>>)> {
    // A view on the stack for the one attempt (see `transport::with_bytes`).
    let Some(attempt) = with_bytes_mut(buf, |target| recv_into_slice(loop_.py(), fd, target)) else {
        return Ok((false, None));
    };
    now(attempt).map(|r| (true, r))
}

pub fn wait_recv_into(
    loop_: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    buf: &Bound<'_, PyAny>,
) -> PyResult<Option<Py<PyAny>>> {
    let Some(v) = view(buf, true) else { return Ok(None) };
    SockOp::wait(loop_, Some(sock), fd, Kind::RecvInto(v)).map(Some)
}

/// Sends what the socket takes now: `Ok(None)` if `data` is not a byte buffer, else
/// `(sent, total)` in bytes.
pub fn try_send(loop_: &Bound<'_, LoopCore>, fd: RawFd, data: &Bound<'_, PyAny>) -> PyResult<Option<(usize, usize)>> {
    // A view on the stack for the one attempt (see `transport::with_bytes`).
    let mut sent = 0;
    let Some((attempt, total)) = with_bytes(data, |all| (send_all_slice(loop_.py(), fd, all, &mut sent), all.len()))
    else {
        return Ok(None);
    };
    match attempt {
        Attempt::Failed(e) => Err(e),
        Attempt::Done(_) | Attempt::Again => Ok(Some((sent, total))),
    }
}

/// A future completed once all of `data` from `sent` on is sent.
pub fn wait_sendall(
    loop_: &Bound<'_, LoopCore>,
    fd: RawFd,
    data: &Bound<'_, PyAny>,
    sent: usize,
) -> PyResult<Option<Py<PyAny>>> {
    let Some(v) = view(data, false) else { return Ok(None) };
    SockOp::wait(loop_, None, fd, Kind::SendAll(v, AttachedCell::new(sent))).map(Some)
}

/// `socket.socket`, the one class whose instances [`plain_fd`] takes.
static SOCKET_TYPE: pyo3::sync::PyOnceLock<Py<pyo3::types::PyType>> = pyo3::sync::PyOnceLock::new();

/// The fd of `sock` if the one-call fast path may take it: the loop is not in debug mode (whose
/// checks are asyncio's Python code), `sock` is exactly a `socket.socket` (so not an `SSLSocket`,
/// which asyncio refuses, nor a subclass that overrides `recv`/`send`/`fileno`), and it is open.
fn plain_fd(loop_: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = loop_.py();
    if loop_.get().debug() {
        return Ok(None);
    }
    let ty = SOCKET_TYPE.import(py, "socket", "socket")?;
    if !sock.get_type().is(ty) {
        return Ok(None);
    }
    let fd: RawFd = sock.call_method0(pyo3::intern!(py, "fileno"))?.extract()?;
    Ok((fd >= 0).then_some(fd))
}

/// `sock_recv`'s first try in one call: the bytes, `None` if the socket is not ready, or
/// `NotImplemented` when the fast path does not take `sock`/`n` (see [`plain_fd`]).
pub fn recv_now(loop_: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, n: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = loop_.py();
    let Some(fd) = plain_fd(loop_, sock)? else {
        return Ok(py.NotImplemented());
    };
    if !n.is_exact_instance_of::<pyo3::types::PyInt>() {
        return Ok(py.NotImplemented());
    }
    let Ok(n) = n.extract::<usize>() else {
        return Ok(py.NotImplemented());
    };
    Ok(now(recv(py, loop_.get(), fd, n)?)?.unwrap_or_else(|| py.None()))
}

/// `sock_sendall`'s first try in one call: `None` when all of `data` was sent, the count sent so
/// far when the socket is full, or `NotImplemented` when the fast path does not take `sock`/`data`.
pub fn send_now(loop_: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = loop_.py();
    let Some(fd) = plain_fd(loop_, sock)? else {
        return Ok(py.NotImplemented());
    };
    let mut sent = 0;
    let Some((attempt, total)) = with_bytes(data, |all| (send_all_slice(py, fd, all, &mut sent), all.len())) else {
        return Ok(py.NotImplemented());
    };
    match attempt {
        Attempt::Failed(e) => Err(e),
        Attempt::Done(_) | Attempt::Again if sent == total => Ok(py.None()),
        Attempt::Done(_) | Attempt::Again => Ok(sent.into_pyobject(py)?.into_any().unbind()),
    }
}
