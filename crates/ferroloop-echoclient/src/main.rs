//! The load generator of ferroloop's echo benchmarks (`python -m ferroloop.bench`).
//!
//! Opens `--conns` connections to an echo server over TCP, TLS over TCP (`--tls`, rustls,
//! trusting only the CA given by `--ca`) or a UNIX socket. Each connection
//! sends one `--size`-byte message, waits until the whole echo is back, checks it, and only then
//! sends the next one (no pipelining), for `--duration` seconds or `--max-requests` messages,
//! whichever comes first. It prints one JSON line: the number of requests, the measured time,
//! requests per second and latency percentiles, where a request's latency runs from its first
//! byte written to its last byte read.
//!
//! `--udp` drives `--conns` datagram sockets the same way, one datagram in flight each; lost
//! datagrams are re-sent after `--timeout-ms` and counted (see `udp.rs`).
//!
//! # Implementation
//!
//! One thread and one edge-triggered epoll set, so that the client costs one core however many
//! connections it drives and never competes with the server for another one. Each connection
//! writes and reads at the same time (a large message is echoed back while it is still being
//! sent; waiting for the write to finish first could deadlock once both socket buffers are
//! full). By default the client polls epoll with a zero timeout, so its own wake-up latency stays
//! out of the measurement (`--no-spin` lets it sleep). Since spinning keeps its core busy
//! anyway, the client reports how much of the run it spent handling events (`client_busy`):
//! near 1 means the client, not the server, was the bottleneck.

use std::io::{self, ErrorKind, Read, Write};
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::Timespec;
use rustix::io::Errno;

mod tls;
mod udp;

const USAGE: &str = "usage: ferroloop-echoclient (--tcp HOST:PORT | --unix PATH | --udp HOST:PORT | \
                     --tls HOST:PORT --ca PEM [--server-name NAME]) [--size BYTES] [--conns N] \
                     [--duration SECONDS] [--max-requests N] [--timeout-ms MS] [--no-spin] [--wait-go]";

/// How long one epoll wait may sleep with `--no-spin`; bounds how late the deadline is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(10);

struct Options {
    target: Target,
    size: usize,
    conns: usize,
    duration: Duration,
    max_requests: u64,
    spin: bool,
    /// `--wait-go`: once connected, print `CONNECTED` and wait for a line on stdin before the
    /// measured window starts, so that the caller can exclude connection set-up (TLS
    /// handshakes) from what it measures on the server.
    wait_go: bool,
    /// `--tls`: the PEM file of the CA to trust, and the name to check the server as.
    ca: Option<String>,
    server_name: Option<String>,
    /// `--udp`: milliseconds without an echo after which a datagram is counted lost and re-sent.
    timeout_ms: u64,
}

enum Target {
    Tcp(String),
    Unix(String),
    Tls(String),
    Udp(String),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tls::TlsStream>),
}

/// What a run measured: each finished request's latency (ns), how long the measured window
/// lasted, and the time the client spent handling events (not spinning idle).
struct Stats {
    latencies: Vec<u64>,
    elapsed: Duration,
    busy: Duration,
}

/// The epoll timeout: zero when spinning, else a short sleep that bounds how late the
/// deadline is noticed.
fn poll_timeout(spin: bool) -> Timespec {
    let timeout = if spin { Duration::ZERO } else { IDLE_WAIT };
    Timespec {
        tv_sec: 0,
        tv_nsec: timeout.as_nanos() as _,
    }
}

impl Stream {
    fn connect(target: &Target, tls: Option<&tls::Connector>) -> io::Result<Stream> {
        let stream = match (target, tls) {
            (Target::Tls(addr), Some(connector)) => Stream::Tls(Box::new(connector.connect(addr)?)),
            (Target::Tcp(addr), _) => {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Stream::Tcp(s)
            }
            (Target::Unix(path), _) => {
                let s = UnixStream::connect(path)?;
                s.set_nonblocking(true)?;
                Stream::Unix(s)
            }
            _ => return Err(io::Error::new(ErrorKind::InvalidInput, "not a stream target")),
        };
        Ok(stream)
    }

    /// Reads what is there: `Ok(None)` when the socket would block, `Ok(Some(0))` at EOF.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            Stream::Tcp(s) => nonblocking(|| s.read(buf)),
            Stream::Unix(s) => nonblocking(|| s.read(buf)),
            Stream::Tls(s) => s.recv(buf),
        }
    }

    /// Writes what the socket takes: `Ok(None)` when it would block.
    fn send(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        match self {
            Stream::Tcp(s) => nonblocking(|| s.write(buf)),
            Stream::Unix(s) => nonblocking(|| s.write(buf)),
            Stream::Tls(s) => s.send(buf),
        }
    }

    /// Pushes out bytes queued inside the client (TLS records); whether any went out.
    fn flush(&mut self) -> io::Result<bool> {
        match self {
            Stream::Tls(s) => s.flush(),
            _ => Ok(false),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
            Stream::Tls(s) => s.sock().as_fd(),
        }
    }
}

/// One connection and the message it has in flight.
struct Conn {
    stream: Stream,
    /// Bytes of the current message written so far.
    written: usize,
    /// Bytes of its echo read so far, kept in `echo[..read]`.
    read: usize,
    echo: Vec<u8>,
    started: Instant,
}

/// One non-blocking read or write: `Ok(None)` when it would block, else the bytes it moved.
fn nonblocking(mut op: impl FnMut() -> io::Result<usize>) -> io::Result<Option<usize>> {
    loop {
        match op() {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Conn {
    /// Moves the connection's messages forward until its socket would block in every direction
    /// it waits on (the edge-triggered contract), recording the latency of each finished one.
    fn advance(&mut self, message: &[u8], latencies: &mut Vec<u64>) -> io::Result<()> {
        let size = message.len();
        loop {
            let mut moved = self.stream.flush()?;
            if self.written < size {
                if let Some(n) = self.stream.send(&message[self.written..])? {
                    self.written += n;
                    moved = true;
                }
            }
            if self.read < size {
                match self.stream.recv(&mut self.echo[self.read..])? {
                    Some(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "server closed the connection")),
                    Some(n) => {
                        self.read += n;
                        moved = true;
                    }
                    None => {}
                }
            }
            if self.written == size && self.read == size {
                let now = Instant::now();
                if self.echo != message {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        "echo differs from the message sent",
                    ));
                }
                latencies.push(now.duration_since(self.started).as_nanos() as u64);
                self.written = 0;
                self.read = 0;
                self.started = now;
            } else if !moved {
                return Ok(());
            }
        }
    }
}

fn parse_args() -> Result<Options, String> {
    let mut target = None;
    let mut opts = Options {
        target: Target::Tcp(String::new()),
        size: 1024,
        conns: 10,
        duration: Duration::from_secs(5),
        max_requests: 50_000_000,
        spin: true,
        wait_go: false,
        ca: None,
        server_name: None,
        timeout_ms: 100,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-spin" {
            opts.spin = false;
            continue;
        }
        if flag == "--wait-go" {
            opts.wait_go = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {value:?}");
        match flag.as_str() {
            "--tcp" => target = Some(Target::Tcp(value.clone())),
            "--unix" => target = Some(Target::Unix(value.clone())),
            "--tls" => target = Some(Target::Tls(value.clone())),
            "--udp" => target = Some(Target::Udp(value.clone())),
            "--ca" => opts.ca = Some(value.clone()),
            "--server-name" => opts.server_name = Some(value.clone()),
            "--timeout-ms" => opts.timeout_ms = value.parse().map_err(bad)?,
            "--size" => opts.size = value.parse().map_err(bad)?,
            "--conns" => opts.conns = value.parse().map_err(bad)?,
            "--max-requests" => opts.max_requests = value.parse().map_err(bad)?,
            "--duration" => {
                let secs: f64 = value.parse().map_err(|_| format!("bad value for {flag}: {value:?}"))?;
                opts.duration = Duration::try_from_secs_f64(secs).map_err(|e| format!("{flag}: {e}"))?;
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    opts.target = target.ok_or("one of --tcp, --unix, --tls or --udp is required")?;
    if opts.size == 0 || opts.conns == 0 || opts.timeout_ms == 0 {
        return Err("--size, --conns and --timeout-ms must be positive".into());
    }
    if matches!(opts.target, Target::Tls(_)) != opts.ca.is_some() {
        return Err("--ca goes with --tls, and --tls needs it".into());
    }
    if matches!(opts.target, Target::Udp(_)) && opts.size < 8 {
        return Err("--udp needs --size of at least 8 bytes (the sequence number)".into());
    }
    Ok(opts)
}

/// The value below which `percent` % of the sorted samples lie, in microseconds.
fn percentile_us(sorted: &[u64], percent: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = (sorted.len() * percent / 100).min(sorted.len() - 1);
    sorted[index] as f64 / 1000.0
}

/// With `--wait-go`: tells the caller that every connection is set up and waits for its go
/// (any line, or the end of stdin).
fn wait_go(opts: &Options) -> io::Result<()> {
    if opts.wait_go {
        let mut out = io::stdout().lock();
        writeln!(out, "CONNECTED")?;
        out.flush()?;
        io::stdin().read_line(&mut String::new())?;
    }
    Ok(())
}

/// The host part of `HOST:PORT` (`[::1]:443` gives `::1`).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Drives the stream connections for the run's duration; returns the description of the TLS
/// session (empty without TLS).
fn run_streams(opts: &Options, stats: &mut Stats) -> io::Result<String> {
    let message: Vec<u8> = (0..opts.size).map(|i| (i % 251) as u8).collect();
    let connector = match (&opts.target, &opts.ca) {
        (Target::Tls(addr), Some(ca)) => Some(tls::Connector::new(
            ca,
            opts.server_name.as_deref().unwrap_or_else(|| host_of(addr)),
        )?),
        _ => None,
    };
    let epfd = epoll::create(CreateFlags::CLOEXEC)?;
    let mut conns = Vec::with_capacity(opts.conns);
    let mut session = String::new();
    for token in 0..opts.conns {
        let stream = Stream::connect(&opts.target, connector.as_ref())?;
        if let Stream::Tls(s) = &stream {
            session = s.describe();
        }
        let flags = EventFlags::IN | EventFlags::OUT | EventFlags::ET;
        epoll::add(&epfd, stream.fd(), EventData::new_u64(token as u64), flags)?;
        conns.push(Conn {
            stream,
            written: 0,
            read: 0,
            echo: vec![0; opts.size],
            started: Instant::now(),
        });
    }

    wait_go(opts)?;
    let start = Instant::now();
    let deadline = start + opts.duration;
    for conn in &mut conns {
        conn.started = Instant::now();
        conn.advance(&message, &mut stats.latencies)?;
    }
    let timeout = poll_timeout(opts.spin);
    let mut events = [MaybeUninit::<epoll::Event>::uninit(); 64];
    loop {
        let ready = match epoll::wait(&epfd, &mut events[..], Some(&timeout)) {
            Ok((ready, _)) => ready,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if !ready.is_empty() {
            let began = Instant::now();
            for ev in &*ready {
                conns[ev.data.u64() as usize].advance(&message, &mut stats.latencies)?;
            }
            stats.busy += began.elapsed();
        }
        let now = Instant::now();
        if now >= deadline || stats.latencies.len() as u64 >= opts.max_requests {
            // Messages still in flight are dropped: only those finished in the window count.
            stats.elapsed = now.duration_since(start);
            return Ok(session);
        }
    }
}

fn run(opts: &Options) -> io::Result<String> {
    let mut stats = Stats {
        // Bounded by --max-requests, so a fast server cannot make this grow without limit.
        latencies: Vec::with_capacity(opts.max_requests.min(1 << 22) as usize),
        elapsed: Duration::ZERO,
        busy: Duration::ZERO,
    };
    let mut extra = String::new();
    if let Target::Udp(addr) = &opts.target {
        let losses = udp::run(opts, addr, &mut stats)?;
        extra = format!(
            ", \"lost\": {}, \"stale\": {}, \"timeout_ms\": {}",
            losses.lost, losses.stale, opts.timeout_ms
        );
    } else {
        let session = run_streams(opts, &mut stats)?;
        if !session.is_empty() {
            extra = format!(", \"tls\": \"{session}\"");
        }
    }

    let latencies = &mut stats.latencies;
    let requests = latencies.len();
    latencies.sort_unstable();
    let secs = stats.elapsed.as_secs_f64();
    Ok(format!(
        "{{\"requests\": {requests}, \"seconds\": {secs:.6}, \"rps\": {:.1}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \
         \"max_us\": {:.1}, \"size\": {}, \"conns\": {}, \"client_busy\": {:.3}{extra}}}",
        requests as f64 / secs,
        percentile_us(latencies, 50),
        percentile_us(latencies, 99),
        latencies.last().map_or(0.0, |&ns| ns as f64 / 1000.0),
        opts.size,
        opts.conns,
        stats.busy.as_secs_f64() / secs,
    ))
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(opts) => opts,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("ferroloop-echoclient: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferroloop-echoclient: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A blocking echo server on an ephemeral port, one thread per connection.
    fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                thread::spawn(move || {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn options(target: Target, size: usize, conns: usize) -> Options {
        Options {
            target,
            size,
            conns,
            duration: Duration::from_millis(200),
            max_requests: 1_000_000,
            spin: false,
            wait_go: false,
            ca: None,
            server_name: None,
            timeout_ms: 20,
        }
    }

    /// The value of a numeric field of the client's JSON line.
    fn field(json: &str, name: &str) -> f64 {
        let rest = json
            .split(&format!("\"{name}\": "))
            .nth(1)
            .unwrap_or_else(|| panic!("{name} in {json}"));
        rest.split([',', '}']).next().unwrap().parse().unwrap()
    }

    #[test]
    fn large_messages_are_echoed_and_counted() {
        // Larger than the socket buffers: needs writes and reads interleaved.
        let json = run(&options(Target::Tcp(echo_server()), 300 * 1024, 3)).unwrap();
        assert!(field(&json, "requests") > 0.0, "{json}");
        assert!((0.0..=1.0).contains(&field(&json, "client_busy")), "{json}");
    }

    /// A UDP echo server that drops every `drop_every`-th datagram (0: none).
    fn udp_server(drop_every: u64) -> String {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap().to_string();
        thread::spawn(move || {
            let mut buf = vec![0; 65536];
            let mut count = 0u64;
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                count += 1;
                if drop_every == 0 || count % drop_every != 0 {
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
        });
        addr
    }

    #[test]
    fn datagrams_are_echoed_and_counted() {
        let mut opts = options(Target::Udp(udp_server(0)), 10 * 1024, 4);
        opts.timeout_ms = 10_000; // longer than the run: only a real loss could count
        let json = run(&opts).unwrap();
        assert!(field(&json, "requests") > 0.0, "{json}");
        assert!(field(&json, "lost").abs() < f64::EPSILON, "{json}");
    }

    #[test]
    fn lost_datagrams_are_resent_and_counted() {
        let mut opts = options(Target::Udp(udp_server(7)), 1024, 2);
        opts.duration = Duration::from_millis(500);
        let json = run(&opts).unwrap();
        assert!(field(&json, "requests") > 6.0, "{json}");
        assert!(field(&json, "lost") >= 1.0, "{json}");
    }

    fn tls_file(name: &str) -> String {
        format!("{}/../../tests/tls/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    /// A blocking TLS echo server (rustls) with the test certificate for localhost/127.0.0.1.
    fn tls_server() -> String {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let pem = tls_file("server.pem");
        let certs = CertificateDer::pem_file_iter(&pem)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&pem).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let config = std::sync::Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream.unwrap());
                thread::spawn(move || {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = tls.read(&mut buf) {
                        if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn tls_messages_are_echoed_and_counted() {
        let mut opts = options(Target::Tls(tls_server()), 100 * 1024, 2);
        opts.ca = Some(tls_file("ca.pem"));
        let json = run(&opts).unwrap();
        assert!(field(&json, "requests") > 0.0, "{json}");
        assert!(json.contains("\"tls\": \"TLSv1_3 "), "{json}");
    }

    #[test]
    fn tls_rejects_a_server_the_ca_did_not_sign() {
        let mut opts = options(Target::Tls(tls_server()), 1024, 1);
        opts.ca = Some(tls_file("rogue-ca.pem"));
        assert!(run(&opts).is_err());
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn percentiles_pick_from_sorted_samples() {
        let samples: Vec<u64> = (1..=100).map(|us| us * 1000).collect();
        assert!((percentile_us(&samples, 50) - 51.0).abs() < f64::EPSILON);
        assert!((percentile_us(&samples, 99) - 100.0).abs() < f64::EPSILON);
        assert!(percentile_us(&[], 99).abs() < f64::EPSILON);
    }
}
