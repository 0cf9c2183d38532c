//! TLS over TCP for `--tls`: rustls (ring provider) driven by non-blocking sockets.
//!
//! The handshake is completed with the socket still blocking, before the measurement starts, so
//! a request's latency covers only the echo. After that the connection is non-blocking and fits
//! the edge-triggered loop of `main.rs`: `send` and `recv` report `Ok(None)` only once the
//! socket itself would block, and `flush` pushes out the records rustls has queued.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::nonblocking;

/// What every connection of a run shares: the client configuration trusting one CA, and the
/// name the server's certificate is checked against.
pub struct Connector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Connector {
    /// Trusts the certificates of the PEM file `ca` only and checks the server as `name`
    /// (a DNS name or an IP address).
    pub fn new(ca: &str, name: &str) -> io::Result<Connector> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca).map_err(|e| io::Error::other(format!("{ca}: {e}")))?;
        for cert in certs {
            let cert = cert.map_err(|e| io::Error::other(format!("{ca}: {e}")))?;
            roots.add(cert).map_err(|e| io::Error::other(format!("{ca}: {e}")))?;
        }
        if roots.is_empty() {
            return Err(io::Error::other(format!("{ca}: no certificate")));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, format!("server name {name:?}: {e}")))?;
        Ok(Connector {
            config: Arc::new(config),
            name,
        })
    }

    /// Connects, completes the handshake (blocking), and returns the connection non-blocking.
    pub fn connect(&self, addr: &str) -> io::Result<TlsStream> {
        let mut sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        let mut conn = ClientConnection::new(self.config.clone(), self.name.clone()).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        sock.set_nonblocking(true)?;
        Ok(TlsStream { sock, conn })
    }
}

pub struct TlsStream {
    sock: TcpStream,
    conn: ClientConnection,
}

impl TlsStream {
    pub fn sock(&self) -> &TcpStream {
        &self.sock
    }

    /// The negotiated protocol version and cipher suite, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
    pub fn describe(&self) -> String {
        let version = self.conn.protocol_version().map_or("?".into(), |v| format!("{v:?}"));
        let suite = self
            .conn
            .negotiated_cipher_suite()
            .map_or("?".into(), |s| format!("{:?}", s.suite()));
        format!("{version} {suite}")
    }

    /// Writes the TLS records rustls has queued until none is left or the socket would block.
    /// Returns whether any byte went out.
    pub fn flush(&mut self) -> io::Result<bool> {
        let mut moved = false;
        while self.conn.wants_write() {
            match nonblocking(|| self.conn.write_tls(&mut self.sock))? {
                Some(0) | None => break,
                Some(_) => moved = true,
            }
        }
        Ok(moved)
    }

    /// Hands plaintext to rustls (which encrypts it, up to its buffer limit) and flushes;
    /// `Ok(None)` when earlier records still wait for the socket to become writable.
    pub fn send(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        self.flush()?;
        if self.conn.wants_write() {
            return Ok(None);
        }
        let n = self.conn.writer().write(buf)?;
        self.flush()?;
        Ok((n > 0).then_some(n))
    }

    /// Plaintext already decrypted, else reads and decrypts what the socket has; `Ok(None)` once
    /// the socket would block, `Ok(Some(0))` when the server closed the connection.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match nonblocking(|| self.conn.read_tls(&mut self.sock))? {
                Some(0) => return Ok(Some(0)),
                Some(_) => {
                    self.conn.process_new_packets().map_err(io::Error::other)?;
                }
                None => return Ok(None),
            }
        }
    }
}
