//! Socket addresses between the kernel's form and Python's, converted as the `socket` module
//! converts them: `('127.0.0.1', 8080)`, `('::1', 8080, 0, 0)`, a path `str`, an abstract name
//! `bytes`, or `None` when the kernel gave no address.

use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use rustix::net::{AddressFamily, SocketAddrAny, SocketAddrUnix};

/// The Python form of an address the kernel returned.
pub fn to_py(py: Python<'_>, addr: Option<SocketAddrAny>) -> PyResult<Bound<'_, PyAny>> {
    let Some(addr) = addr else {
        return Ok(py.None().into_bound(py));
    };
    match addr.address_family() {
        AddressFamily::INET => {
            let a = SocketAddrV4::try_from(addr).map_err(|e| PyErr::from(std::io::Error::from(e)))?;
            Ok(PyTuple::new(
                py,
                [
                    a.ip().to_string().into_pyobject(py)?.into_any(),
                    a.port().into_pyobject(py)?.into_any(),
                ],
            )?
            .into_any())
        }
        AddressFamily::INET6 => {
            let a = SocketAddrV6::try_from(addr).map_err(|e| PyErr::from(std::io::Error::from(e)))?;
            Ok((a.ip().to_string(), a.port(), a.flowinfo(), a.scope_id())
                .into_pyobject(py)?
                .into_any())
        }
        AddressFamily::UNIX => {
            let a = SocketAddrUnix::try_from(addr).map_err(|e| PyErr::from(std::io::Error::from(e)))?;
            if let Some(path) = a.path_bytes() {
                Ok(OsStr::from_bytes(path).into_pyobject(py)?.into_any())
            } else if let Some(name) = a.abstract_name() {
                // The socket module gives abstract names with their leading NUL, as bytes.
                let mut full = Vec::with_capacity(name.len() + 1);
                full.push(0);
                full.extend_from_slice(name);
                Ok(PyBytes::new(py, &full).into_any())
            } else {
                Ok(PyString::new(py, "").into_any())
            }
        }
        other => Err(pyo3::exceptions::PyOSError::new_err(format!(
            "unsupported address family {}",
            other.as_raw()
        ))),
    }
}

/// A destination parsed from its Python form without any lookup.
pub enum Dest {
    V4(SocketAddrV4),
    V6(SocketAddrV6),
    Unix(SocketAddrUnix),
}

/// Parses `(host, port)`, `(host, port, flowinfo, scope_id)` with a numeric host, or a UNIX path.
/// Returns `None` for anything else (a host name, an odd type), for the caller to hand to Python's
/// `socket.sendto`, which resolves and validates as asyncio's users expect.
pub fn from_py(addr: &Bound<'_, PyAny>) -> Option<Dest> {
    if let Ok(path) = addr.cast::<PyString>() {
        return SocketAddrUnix::new(path.to_str().ok()?).ok().map(Dest::Unix);
    }
    let tuple = addr.cast::<PyTuple>().ok()?;
    let host: String = tuple.get_item(0).ok()?.extract().ok()?;
    let port: u16 = tuple.get_item(1).ok()?.extract().ok()?;
    match (host.parse::<IpAddr>().ok()?, tuple.len()) {
        (IpAddr::V4(ip), 2) => Some(Dest::V4(SocketAddrV4::new(ip, port))),
        (IpAddr::V6(ip), n @ 2..=4) => {
            let flowinfo: u32 = if n > 2 {
                tuple.get_item(2).ok()?.extract().ok()?
            } else {
                0
            };
            let scope: u32 = if n > 3 {
                tuple.get_item(3).ok()?.extract().ok()?
            } else {
                0
            };
            Some(Dest::V6(SocketAddrV6::new(ip, port, flowinfo, scope)))
        }
        _ => None,
    }
}
