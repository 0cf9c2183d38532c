//! `--udp`: datagram echo. `--conns` sockets, each connected to the server, send one `--size`-byte
//! datagram and wait for its echo before sending the next.
//!
//! UDP may lose a datagram (a full receive buffer drops it), and a client that waited for it
//! would hang. So each request carries a sequence number in its first 8 bytes; a request whose
//! echo has not come back after `--timeout-ms` is counted as lost and sent again under a new
//! number, and an echo that arrives for an older number is counted as stale and ignored. A
//! request's latency runs from its first sending, so it includes the time lost to a re-send.

use std::io::{self, ErrorKind};
use std::mem::MaybeUninit;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::io::Errno;

use crate::{nonblocking, Options, Stats};

/// Bytes of a datagram that carry its sequence number.
const SEQ_BYTES: usize = 8;

struct Peer {
    sock: UdpSocket,
    /// The sequence number of the datagram in flight, written into `message`.
    seq: u64,
    message: Vec<u8>,
    /// When the current request was first sent, and when it was last (re-)sent.
    first_sent: Instant,
    last_sent: Instant,
}

impl Peer {
    /// Sends the current message. A datagram the kernel will not take now (a full send buffer)
    /// counts as sent and lost: the timeout sends it again.
    fn send(&mut self, now: Instant) -> io::Result<()> {
        self.message[..SEQ_BYTES].copy_from_slice(&self.seq.to_le_bytes());
        self.last_sent = now;
        match nonblocking(|| self.sock.send(&self.message)) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(Errno::NOBUFS.raw_os_error()) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What a run of the datagram client counted besides the latencies.
#[derive(Default)]
pub struct Losses {
    /// Requests re-sent after `--timeout-ms` without an echo.
    pub lost: u64,
    /// Echoes that arrived for a request already re-sent.
    pub stale: u64,
}

pub fn run(opts: &Options, addr: &str, stats: &mut Stats) -> io::Result<Losses> {
    let epfd = epoll::create(CreateFlags::CLOEXEC)?;
    let mut peers = Vec::with_capacity(opts.conns);
    let now = Instant::now();
    for token in 0..opts.conns {
        let sock = UdpSocket::bind(if addr.starts_with('[') {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        })?;
        sock.connect(addr)?;
        sock.set_nonblocking(true)?;
        epoll::add(
            &epfd,
            sock.as_fd(),
            EventData::new_u64(token as u64),
            EventFlags::IN | EventFlags::ET,
        )?;
        // Sequence numbers never repeat across sockets, so a stray datagram cannot match.
        let message = (0..opts.size).map(|i| (i % 251) as u8).collect();
        peers.push(Peer {
            sock,
            seq: (token as u64) << 40,
            message,
            first_sent: now,
            last_sent: now,
        });
    }

    let mut losses = Losses::default();
    let mut buf = vec![0u8; opts.size.max(64 * 1024) + 1];
    let timeout = Duration::from_millis(opts.timeout_ms);
    crate::wait_go(opts)?;
    let start = Instant::now();
    let deadline = start + opts.duration;
    for peer in &mut peers {
        peer.first_sent = start;
        peer.send(start)?;
    }
    let wait = crate::poll_timeout(opts.spin);
    let mut events = [MaybeUninit::<epoll::Event>::uninit(); 64];
    let mut next_check = start + timeout;
    loop {
        let ready = match epoll::wait(&epfd, &mut events[..], Some(&wait)) {
            Ok((ready, _)) => ready,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if !ready.is_empty() {
            let began = Instant::now();
            for ev in &*ready {
                let peer = &mut peers[ev.data.u64() as usize];
                // Edge-triggered: read until the socket would block.
                while let Some(n) = nonblocking(|| peer.sock.recv(&mut buf))? {
                    let seq = u64::from_le_bytes(buf[..SEQ_BYTES.min(n)].try_into().unwrap_or([0; 8]));
                    if n == opts.size && seq == peer.seq {
                        if buf[..n] != peer.message[..] {
                            return Err(io::Error::new(
                                ErrorKind::InvalidData,
                                "echo differs from the datagram sent",
                            ));
                        }
                        let now = Instant::now();
                        stats
                            .latencies
                            .push(now.duration_since(peer.first_sent).as_nanos() as u64);
                        peer.seq += 1;
                        peer.first_sent = now;
                        peer.send(now)?;
                    } else if n == opts.size && seq < peer.seq && seq >> 40 == peer.seq >> 40 {
                        losses.stale += 1;
                    } else {
                        return Err(io::Error::new(
                            ErrorKind::InvalidData,
                            format!("unexpected datagram of {n} bytes"),
                        ));
                    }
                }
            }
            stats.busy += began.elapsed();
        }
        let now = Instant::now();
        if now >= next_check {
            for peer in &mut peers {
                if now.duration_since(peer.last_sent) >= timeout {
                    losses.lost += 1;
                    peer.seq += 1;
                    peer.send(now)?;
                }
            }
            // Checked every tenth of the timeout: a re-send is at most 10% late.
            next_check = now + timeout / 10;
        }
        if now >= deadline || stats.latencies.len() as u64 >= opts.max_requests {
            stats.elapsed = now.duration_since(start);
            return Ok(losses);
        }
    }
}
