//! The load generator of ferroloop's echo benchmark (`python -m ferroloop.bench`).
//!
//! Opens `--conns` connections to an echo server over TCP or a UNIX socket. Each connection
//! sends one `--size`-byte message, waits until the whole echo is back, checks it, and only then
//! sends the next one (no pipelining), for `--duration` seconds or `--max-requests` messages,
//! whichever comes first. It prints one JSON line: the number of requests, the measured time,
//! requests per second and latency percentiles, where a request's latency runs from its first
//! byte written to its last byte read.
//!
//! # Implementation
//!
//! One thread and one edge-triggered epoll set, so that the client costs one core however many
//! connections it drives and never competes with the server for another one. Each connection
//! writes and reads at the same time (a large message is echoed back while it is still being
//! sent; waiting for the write to finish first could deadlock once both socket buffers are
//! full). By default the client polls epoll with a zero timeout, so its own wake-up latency stays
//! out of the measurement (`--no-spin` lets it sleep).

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

const USAGE: &str = "usage: ferroloop-echoclient (--tcp HOST:PORT | --unix PATH) [--size BYTES] \
                     [--conns N] [--duration SECONDS] [--max-requests N] [--no-spin]";

/// How long one epoll wait may sleep with `--no-spin`; bounds how late the deadline is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(10);

struct Options {
    target: Target,
    size: usize,
    conns: usize,
    duration: Duration,
    max_requests: u64,
    spin: bool,
}

enum Target {
    Tcp(String),
    Unix(String),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(target: &Target) -> io::Result<Stream> {
        let stream = match target {
            Target::Tcp(addr) => {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Stream::Tcp(s)
            }
            Target::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_nonblocking(true)?;
                Stream::Unix(s)
            }
        };
        Ok(stream)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
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
            let mut moved = false;
            if self.written < size {
                if let Some(n) = nonblocking(|| self.stream.write(&message[self.written..]))? {
                    self.written += n;
                    moved = true;
                }
            }
            if self.read < size {
                match nonblocking(|| self.stream.read(&mut self.echo[self.read..]))? {
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
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-spin" {
            opts.spin = false;
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
    opts.target = target.ok_or("one of --tcp or --unix is required")?;
    if opts.size == 0 || opts.conns == 0 {
        return Err("--size and --conns must be positive".into());
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

fn run(opts: &Options) -> io::Result<String> {
    let message: Vec<u8> = (0..opts.size).map(|i| (i % 251) as u8).collect();
    let epfd = epoll::create(CreateFlags::CLOEXEC)?;
    let mut conns = Vec::with_capacity(opts.conns);
    for token in 0..opts.conns {
        let stream = Stream::connect(&opts.target)?;
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

    // Bounded by --max-requests, so a fast server cannot make this grow without limit.
    let mut latencies = Vec::with_capacity(opts.max_requests.min(1 << 22) as usize);
    let start = Instant::now();
    let deadline = start + opts.duration;
    for conn in &mut conns {
        conn.started = Instant::now();
        conn.advance(&message, &mut latencies)?;
    }
    let timeout = if opts.spin { Duration::ZERO } else { IDLE_WAIT };
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: timeout.as_nanos() as _,
    };
    let mut events = [MaybeUninit::<epoll::Event>::uninit(); 64];
    let elapsed = loop {
        let ready = match epoll::wait(&epfd, &mut events[..], Some(&timeout)) {
            Ok((ready, _)) => ready,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in &*ready {
            conns[ev.data.u64() as usize].advance(&message, &mut latencies)?;
        }
        let now = Instant::now();
        if now >= deadline || latencies.len() as u64 >= opts.max_requests {
            // Messages still in flight are dropped: only those finished in the window count.
            break now.duration_since(start);
        }
    };

    let requests = latencies.len();
    latencies.sort_unstable();
    let secs = elapsed.as_secs_f64();
    Ok(format!(
        "{{\"requests\": {requests}, \"seconds\": {secs:.6}, \"rps\": {:.1}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \
         \"max_us\": {:.1}, \"size\": {}, \"conns\": {}}}",
        requests as f64 / secs,
        percentile_us(&latencies, 50),
        percentile_us(&latencies, 99),
        latencies.last().map_or(0.0, |&ns| ns as f64 / 1000.0),
        opts.size,
        opts.conns,
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

    #[test]
    fn large_messages_are_echoed_and_counted() {
        let opts = Options {
            target: Target::Tcp(echo_server()),
            size: 300 * 1024, // larger than the socket buffers: needs writes and reads interleaved
            conns: 3,
            duration: Duration::from_millis(200),
            max_requests: 1_000_000,
            spin: false,
        };
        let json = run(&opts).unwrap();
        let requests: u64 = json
            .split("\"requests\": ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(requests > 0, "{json}");
    }

    #[test]
    fn percentiles_pick_from_sorted_samples() {
        let samples: Vec<u64> = (1..=100).map(|us| us * 1000).collect();
        assert!((percentile_us(&samples, 50) - 51.0).abs() < f64::EPSILON);
        assert!((percentile_us(&samples, 99) - 100.0).abs() < f64::EPSILON);
        assert!(percentile_us(&[], 99).abs() < f64::EPSILON);
    }
}
