//! `StreamTransport`'s read path on a readiness loop: a readable event read into a `bytes` for
//! `data_received` (or ferroloop's TLS protocol) or into a `BufferedProtocol`'s own buffer, and
//! the peer's EOF.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rustix::io::Errno;
use rustix::net::RecvFlags;

use super::{Feed, Reader, StreamTransport};
use crate::glue::{self, os_error};
use crate::read;
use crate::transport::base;
use crate::transport::{fd_of, is_exit, with_bytes_mut};

impl StreamTransport {
    pub(super) fn run_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        match Self::read_step(slf)? {
            None => Ok(()),
            Some(ReadStep::Data(sink, large)) => Self::read_data(slf, &sink, large),
            Some(ReadStep::Buffered(get_buffer, buffer_updated)) => {
                Self::read_buffered(slf, &get_buffer, &buffer_updated)
            }
        }
    }

    /// Who a read goes to, if the transport reads now.
    pub(super) fn read_step<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<ReadStep<'py>>> {
        let py = slf.py();
        // `Bound` clones: dropping them is a plain decref (a `Py` first checks thread state).
        slf.get().state.with(py, |s| {
            if s.flags.conn_lost > 0 || !s.flags.is_reading() {
                return None;
            }
            let large = s.last_read >= read::DIRECT_READ_MIN;
            s.proto.as_ref().map(|p| match &p.reader {
                Reader::Data(f) => ReadStep::Data(Sink::Call(f.bind(py).clone()), large),
                Reader::Native(p, feed) => ReadStep::Data(Sink::Native(p.bind(py).clone(), *feed), large),
                Reader::Buffered {
                    get_buffer,
                    buffer_updated,
                } => ReadStep::Buffered(get_buffer.bind(py).clone(), buffer_updated.bind(py).clone()),
            })
        })
    }

    fn read_data(slf: &Bound<'_, Self>, sink: &Sink<'_>, large: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let data = match read::read_bytes(this.base.lp().read_buf(), py, this.base.fd, large)? {
            Ok(data) => data,
            Err(Errno::AGAIN | Errno::INTR) => return Ok(()),
            Err(e) => return base::fatal_error(slf, &os_error(&e.into()), "Fatal read error on socket transport"),
        };
        let n = data.as_bytes().len();
        this.base.lp().stats().read(n);
        this.state.with(py, |s| s.last_read = n)?;
        if n == 0 {
            return Self::on_eof(slf);
        }
        Self::give_data(slf, sink, data)
    }

    /// Gives one read's `bytes` to the protocol; an exception from it is asyncio's fatal error.
    pub(super) fn give_data(slf: &Bound<'_, Self>, sink: &Sink<'_>, data: Bound<'_, PyBytes>) -> PyResult<()> {
        let py = slf.py();
        let (given, message) = match sink {
            Sink::Call(data_received) => (
                data_received.call1((data,)).map(drop),
                "Fatal error: protocol.data_received() call failed.",
            ),
            // asyncio's TLS protocol is a BufferedProtocol: its failures are reported as such.
            Sink::Native(protocol, feed) => (
                feed(protocol, data.as_any()),
                "Fatal error: protocol.buffer_updated() call failed.",
            ),
        };
        if let Err(err) = given {
            if is_exit(py, &err) {
                return Err(err);
            }
            base::fatal_error(slf, &err, message)?;
        }
        Ok(())
    }

    fn read_buffered(
        slf: &Bound<'_, Self>,
        get_buffer: &Bound<'_, PyAny>,
        buffer_updated: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fd = this.base.fd;
        let got = get_buffer.call1((-1,)).and_then(|buf| {
            let read = with_bytes_mut(&buf, |target| {
                (!target.is_empty()).then(|| rustix::net::recv(fd_of(fd), target, RecvFlags::empty()))
            });
            // Not a writable contiguous buffer, or an empty one: the checks below say which.
            read.flatten().map_or_else(|| Err(protocol_buffer_error(&buf)), Ok)
        });
        let read = match got {
            Ok(read) => read,
            Err(err) if is_exit(py, &err) => return Err(err),
            Err(err) => return base::fatal_error(slf, &err, "Fatal error: protocol.get_buffer() call failed."),
        };
        let n = match read {
            Ok((n, _)) => {
                this.base.lp().stats().read(n);
                n
            }
            Err(Errno::AGAIN | Errno::INTR) => return Ok(()),
            Err(e) => return base::fatal_error(slf, &os_error(&e.into()), "Fatal read error on socket transport"),
        };
        if n == 0 {
            return Self::on_eof(slf);
        }
        if let Err(err) = buffer_updated.call1((n,)).map(drop) {
            if is_exit(py, &err) {
                return Err(err);
            }
            base::fatal_error(slf, &err, "Fatal error: protocol.buffer_updated() call failed.")?;
        }
        Ok(())
    }

    /// asyncio's `_read_ready__on_eof`.
    pub(super) fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.base.lp().debug() {
            glue::helper(py, "log_debug")?.call1(("%r received EOF", slf))?;
        }
        let Some(protocol) = base::protocol(this, py)? else {
            return Ok(());
        };
        match protocol
            .bind(py)
            .call_method0(intern!(py, "eof_received"))
            .and_then(|keep| keep.is_truthy())
        {
            Ok(true) => {
                // Keep the connection open for writing; stop watching for reads.
                this.state.with(py, |s| s.read_eof = true)?;
                base::sync_interest(slf)
            }
            Ok(false) => Self::close(slf),
            Err(err) if is_exit(py, &err) => Err(err),
            Err(err) => base::fatal_error(slf, &err, "Fatal error: protocol.eof_received() call failed."),
        }
    }
}

/// What a readable event does, decided inside the state borrow and run outside it.
pub(super) enum ReadStep<'py> {
    /// Read into a `bytes` (large: straight into one, see `read`) and give it to the sink.
    Data(Sink<'py>, bool),
    /// `get_buffer` and `buffer_updated` of a `BufferedProtocol`.
    Buffered(Bound<'py, PyAny>, Bound<'py, PyAny>),
}

/// Who receives the `bytes` of a read.
pub(super) enum Sink<'py> {
    /// The protocol's `data_received`.
    Call(Bound<'py, PyAny>),
    /// A protocol written in Rust (TLS's), called in Rust.
    Native(Bound<'py, PyAny>, Feed),
}

/// Why the buffer a `BufferedProtocol` gave cannot be read into (it is not a writable contiguous
/// buffer, or it is empty), as asyncio reports it.
pub(super) fn protocol_buffer_error(buf: &Bound<'_, PyAny>) -> PyErr {
    let view = match PyBuffer::<u8>::get(buf) {
        Ok(view) => view,
        Err(err) => return err,
    };
    if view.len_bytes() == 0 && !view.readonly() && view.is_c_contiguous() {
        return PyRuntimeError::new_err("get_buffer() returned an empty buffer");
    }
    PyTypeError::new_err("get_buffer() must return a writable contiguous buffer")
}
