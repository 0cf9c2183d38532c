//! `ferroloop._ferroloop`: the extension module behind the `ferroloop` package.

mod buffers;
mod cell;
mod completion;
mod datagram;
mod event_loop;
mod fastcall;
mod glue;
mod handle;
mod listener;
mod owner;
mod pipe;
mod read;
mod sockaddr;
mod stats;
mod stream;
mod tasks;
mod tls;
mod transport;
mod transport_root;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _ferroloop {
    #[pymodule_export]
    use crate::datagram::DatagramTransport;
    #[pymodule_export]
    use crate::event_loop::LoopCore;
    #[pymodule_export]
    use crate::handle::{Handle, ThreadSafeHandle, TimerHandle};
    #[pymodule_export]
    use crate::listener::Listener;
    #[pymodule_export]
    use crate::pipe::{ReadPipeTransport, WritePipeTransport};
    #[pymodule_export]
    use crate::stream::StreamTransport;
    #[pymodule_export]
    use crate::tls::{TlsProtocol, TlsTransport};

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::handle::Handle::install_traverse(m.py());
        crate::fastcall::install(m.py())?;
        crate::stream::plug_native_reader(crate::tls::native_reader());
        Ok(())
    }

    /// The names of the I/O backends this machine offers, the default first.
    #[pyfunction]
    fn backends() -> Vec<&'static str> {
        ferroloop_core::driver::Backend::available()
            .into_iter()
            .map(ferroloop_core::driver::Backend::name)
            .collect()
    }
}
