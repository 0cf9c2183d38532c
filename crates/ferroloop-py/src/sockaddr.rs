//! Socket addresses between the kernel's form and Python's, converted as the `socket` module
//! converts them: `('127.0.0.1', 8080)`, `('::1', 8080, 0, 0)`, a path `str`, an abstract name
//! `bytes`, or `None` when the kernel gave no address.
//!
//! [`PeerCache`] keeps the Python form of recent peers, so that a datagram from a peer seen before
//! costs no address conversion.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};
use rustix::net::{AddressFamily, SocketAddrAny, SocketAddrUnix};

/// The Python form of an address the kernel returned.
pub fn to_py(py: Python<'_>, addr: Option<SocketAddrAny>) -> PyResult<Bound<'_, PyAny>> {
    let Some(addr) = addr else {
        return Ok(py.None().into_bound(py));
    };
    match addr.address_family() {
        AddressFamily::INET => {
            let a = SocketAddrV4::try_from(addr).map_err(|e| PyErr::from(std::io::Error::from(e)))?;
            let mut text = [0u8; 15];
            let host = ipv4_text(*a.ip(), &mut text);
            Ok(PyTuple::new(
                py,
                [
                    PyString::new(py, host).into_any(),
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

/// Dotted-quad text of `ip` in `buf`, as `inet_ntop` writes it.
///
/// `Ipv4Addr::to_string` goes through `core::fmt` and a growing `String`: with `from_py`'s old
/// `String` extraction, that was about 1,300 of 6,800 instructions per datagram of a 1 KiB echo
/// (`scripts/callgrind_udp.py`). The [`PeerCache`] makes this rare; this keeps a miss cheap.
fn ipv4_text(ip: Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    std::str::from_utf8(&buf[..n]).expect("ASCII digits and dots")
}

/// Parses `(host, port)`, `(host, port, flowinfo, scope_id)` with a numeric host, or a UNIX path.
/// Returns `None` for anything else (a host name, an odd type), for the caller to hand to Python's
/// `socket.sendto`, which resolves and validates as asyncio's users expect.
pub fn from_py(addr: &Bound<'_, PyAny>) -> Option<SocketAddrAny> {
    if let Ok(path) = addr.cast::<PyString>() {
        return SocketAddrUnix::new(path.to_str().ok()?).ok().map(SocketAddrAny::from);
    }
    let tuple = addr.cast::<PyTuple>().ok()?;
    let item = |i: usize| tuple.get_borrowed_item(i).ok();
    // NOTE: `to_str` borrows the string's UTF-8 form (for an ASCII string, its own data): no copy.
    let host = item(0)?
        .cast::<PyString>()
        .ok()?
        .to_str()
        .ok()?
        .parse::<IpAddr>()
        .ok()?;
    let number = |i: usize| -> Option<u32> { item(i)?.cast::<PyInt>().ok()?.extract().ok() };
    let port = u16::try_from(number(1)?).ok()?;
    match (host, tuple.len()) {
        (IpAddr::V4(ip), 2) => Some(SocketAddrV4::new(ip, port).into()),
        (IpAddr::V6(ip), n @ 2..=4) => {
            let flowinfo = if n > 2 { number(2)? } else { 0 };
            let scope = if n > 3 { number(3)? } else { 0 };
            Some(SocketAddrV6::new(ip, port, flowinfo, scope).into())
        }
        _ => None,
    }
}

/// Addresses a [`PeerCache`] holds at most; when full, it starts again from empty.
const PEER_CACHE_MAX: usize = 64;

/// The Python forms of the IP addresses datagrams came from lately, so that a datagram from a
/// known peer gets the tuple made for its first datagram. A tuple of a `str` and `int`s is
/// immutable, so sharing it is not visible to the protocol beyond `is`.
///
/// Measured with `scripts/callgrind_udp.py` (1 KiB, 10 peers): formatting and parsing addresses
/// was about 1,300 of 6,800 instructions per datagram. A direct-mapped table of 32 slots missed
/// 60% of the time there (two peers in one slot evict each other on every datagram), hence a map.
#[derive(Default)]
pub struct PeerCache {
    map: HashMap<SocketAddr, Py<PyAny>, BuildHasherDefault<Fold>>,
}

impl PeerCache {
    fn key(addr: &SocketAddrAny) -> Option<SocketAddr> {
        match addr.address_family() {
            AddressFamily::INET | AddressFamily::INET6 => SocketAddr::try_from(addr.clone()).ok(),
            _ => None,
        }
    }

    /// The cached Python form of `addr`, if any.
    pub fn get(&self, py: Python<'_>, addr: &SocketAddrAny) -> Option<Py<PyAny>> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get(&Self::key(addr)?).map(|obj| obj.clone_ref(py))
    }

    /// Remembers `obj` as the Python form of `addr`; returns what it forgets, for the caller to
    /// drop once it may run Python code.
    pub fn insert(&mut self, addr: &SocketAddrAny, obj: &Py<PyAny>, py: Python<'_>) -> Vec<Py<PyAny>> {
        let Some(key) = Self::key(addr) else {
            return Vec::new();
        };
        let mut forgotten = if self.map.len() >= PEER_CACHE_MAX {
            self.clear()
        } else {
            Vec::new()
        };
        forgotten.extend(self.map.insert(key, obj.clone_ref(py)));
        forgotten
    }

    /// Forgets every address; returns the objects, for the caller to drop.
    pub fn clear(&mut self) -> Vec<Py<PyAny>> {
        self.map.drain().map(|(_, obj)| obj).collect()
    }

    pub fn objects(&self) -> impl Iterator<Item = &Py<PyAny>> {
        self.map.values()
    }
}

/// A hasher good enough for a few socket addresses, much cheaper than the default `SipHash`: it
/// folds 8 bytes at a time.
#[derive(Default)]
pub struct Fold(u64);

impl Hasher for Fold {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(last));
        }
    }
}

impl Fold {
    fn mix(&mut self, word: u64) {
        // The multiplier of FxHash (rustc's hasher): odd, with well-spread bits.
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_matches_display() {
        let mut buf = [0u8; 15];
        for ip in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [255, 255, 255, 255],
            [10, 99, 100, 9],
            [1, 20, 250, 109],
        ] {
            let ip = Ipv4Addr::from(ip);
            assert_eq!(ipv4_text(ip, &mut buf), ip.to_string());
        }
    }
}
