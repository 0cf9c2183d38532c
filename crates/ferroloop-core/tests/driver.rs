//! Driver behaviour, run against every backend this machine offers.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroloop_core::driver::{Backend, Driver, Event, Interest};
use ferroloop_core::sources::Sources;
use rustix::io::Errno;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

const EBADF: i32 = Errno::BADF.raw_os_error();
const EEXIST: i32 = Errno::EXIST.raw_os_error();
const EPERM: i32 = Errno::PERM.raw_os_error();

fn backends() -> Vec<Backend> {
    let all = Backend::available();
    assert!(!all.is_empty(), "no backend available");
    all
}

fn poll(d: &Driver, timeout: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    d.wait(&mut events, Some(timeout)).unwrap();
    events
}

fn readable(token: usize) -> Event {
    Event {
        token,
        readable: true,
        writable: false,
        edge: false,
    }
}

fn writable(token: usize) -> Event {
    Event {
        token,
        readable: false,
        writable: true,
        edge: false,
    }
}

/// What a non-blocking read of `peer` gives: `Ok(0)` once the other end's file is closed.
fn peer_read(peer: &UnixStream) -> std::io::ErrorKind {
    peer.set_nonblocking(true).unwrap();
    match (&*peer).read(&mut [0u8; 1]) {
        Ok(0) => std::io::ErrorKind::UnexpectedEof,
        Ok(_) => std::io::ErrorKind::Other,
        Err(e) => e.kind(),
    }
}

/// Raises the soft limit on open fds to at least `want`; false (with the reason printed) if the
/// hard limit does not allow it. Serialised, so that two tests cannot lower each other's limit.
fn raise_fd_limit(want: u64) -> bool {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let lim = getrlimit(Resource::Nofile);
    if lim.current.is_none_or(|cur| cur >= want) {
        return true; // None: unlimited
    }
    if lim.maximum.is_some_and(|max| max < want) {
        eprintln!("skipped: needs {want} open fds, hard limit is {:?}", lim.maximum);
        return false;
    }
    let new = Rlimit {
        current: Some(want),
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: cannot raise the fd limit to {want}: {e}");
            false
        }
    }
}

/// A duplicate of `fd` numbered `min` or above.
fn dup_at_least(fd: &impl std::os::fd::AsFd, min: i32) -> OwnedFd {
    rustix::io::fcntl_dupfd_cloexec(fd, min).unwrap()
}

#[test]
fn readable_is_level_triggered() {
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let (a, mut w) = UnixStream::pair().unwrap();
        d.add(a.as_raw_fd(), 7, Interest::READABLE).unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}: nothing written yet");
        w.write_all(b"x").unwrap();
        for _ in 0..3 {
            // Not read: reported again on every wait.
            let ev = poll(&d, Duration::from_secs(5));
            assert_eq!(
                ev,
                vec![Event {
                    token: 7,
                    readable: true,
                    writable: false,
                    edge: false,
                }],
                "{b:?}"
            );
        }
        let mut buf = [0u8; 1];
        (&a).read_exact(&mut buf).unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}: drained");
    }
}

#[test]
fn writable_and_modify() {
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let (a, _peer) = UnixStream::pair().unwrap();
        d.add(a.as_raw_fd(), 1, Interest::WRITABLE).unwrap();
        assert_eq!(
            poll(&d, Duration::from_secs(5)),
            vec![Event {
                token: 1,
                readable: false,
                writable: true,
                edge: false,
            }]
        );
        d.modify(a.as_raw_fd(), 1, Interest::READABLE).unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}");
        d.delete(a.as_raw_fd()).unwrap();
        d.delete(a.as_raw_fd()).unwrap(); // deleting twice is not an error
    }
}

#[test]
fn hangup_wakes_reader_and_writer() {
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let (a, peer) = UnixStream::pair().unwrap();
        d.add(a.as_raw_fd(), 3, Interest::READABLE).unwrap();
        drop(peer);
        let ev = poll(&d, Duration::from_secs(5));
        assert_eq!(ev.len(), 1, "{b:?}");
        assert!(ev[0].readable, "{b:?}: EOF must wake a reader");
    }
}

#[test]
fn waker_interrupts_wait_from_another_thread() {
    for b in backends() {
        let d = Arc::new(Driver::new(b).unwrap());
        let waker = Arc::clone(d.waker());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            waker.wake().unwrap();
        });
        // The wake is consumed by the driver and reports no event.
        assert!(poll(&d, Duration::from_secs(30)).is_empty(), "{b:?}");
        t.join().unwrap();
        // Woken once: the next wait times out instead of returning at once again.
        d.waker().wake().unwrap();
        d.waker().wake().unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty());
    }
}

#[test]
fn bad_fds_are_errors() {
    for b in backends() {
        let d = Driver::new(b).unwrap();
        assert!(d.add(-1, 0, Interest::READABLE).is_err(), "{b:?}");
        let (a, _p) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        drop(a);
        assert_eq!(
            d.add(fd, 0, Interest::READABLE).unwrap_err().raw_os_error(),
            Some(EBADF),
            "{b:?}"
        );
    }
}

#[test]
fn add_twice_is_eexist_and_modify_adds_unknown_fds() {
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let (a, mut w) = UnixStream::pair().unwrap();
        d.add(a.as_raw_fd(), 1, Interest::READABLE).unwrap();
        let err = d.add(a.as_raw_fd(), 2, Interest::READABLE).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EEXIST), "{b:?}");
        let waker_fd = d.waker().raw_fd();
        let err = d.add(waker_fd, 2, Interest::READABLE).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EEXIST), "{b:?}: the waker is registered");
        // Modifying an fd the driver does not know adds it (epoll: the NOENT case).
        let (c, mut cw) = UnixStream::pair().unwrap();
        d.modify(c.as_raw_fd(), 3, Interest::READABLE).unwrap();
        w.write_all(b"x").unwrap();
        cw.write_all(b"x").unwrap();
        let mut ev = poll(&d, Duration::from_secs(5));
        ev.sort_by_key(|e| e.token);
        assert_eq!(ev, vec![readable(1), readable(3)], "{b:?}");
    }
}

#[test]
fn regular_files_are_refused_by_epoll_and_always_ready_otherwise() {
    let path = std::env::temp_dir().join(format!("ferroloop-driver-test-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let added = d.add(file.as_raw_fd(), 4, Interest::BOTH);
        if b == Backend::Epoll {
            // epoll_ctl refuses files that cannot block; asyncio's add_reader raises PermissionError.
            assert_eq!(added.unwrap_err().raw_os_error(), Some(EPERM));
            continue;
        }
        // poll and select follow POSIX: a regular file is always readable and writable. io_uring's
        // POLL_ADD does the same (the kernel's default mask for a file without a poll method).
        added.unwrap();
        let all = Event {
            token: 4,
            readable: true,
            writable: true,
            edge: false,
        };
        assert_eq!(poll(&d, Duration::ZERO), vec![all], "{b:?}");
        assert_eq!(poll(&d, Duration::ZERO), vec![all], "{b:?}: level-triggered");
    }
}

#[test]
fn two_thousand_sockets_at_once() {
    const PAIRS: usize = 2_000;
    if !raise_fd_limit(2 * PAIRS as u64 + 512) {
        return;
    }
    let pairs: Vec<(UnixStream, UnixStream)> = (0..PAIRS).map(|_| UnixStream::pair().unwrap()).collect();
    // Above FD_SETSIZE (1024): select's sets grow to the highest fd instead of overflowing.
    assert!(pairs.last().unwrap().0.as_raw_fd() > 1024);
    for b in backends() {
        let d = Driver::new(b).unwrap();
        for (token, (a, _)) in pairs.iter().enumerate() {
            d.add(a.as_raw_fd(), token, Interest::READABLE).unwrap();
        }
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}");
        // 200 ready, under epoll's batch of 256, so one wait reports them all.
        let ready: Vec<usize> = (0..PAIRS).step_by(10).collect();
        for &token in &ready {
            (&pairs[token].1).write_all(b"x").unwrap();
        }
        let mut ev = poll(&d, Duration::from_secs(5));
        ev.sort_by_key(|e| e.token);
        assert_eq!(ev, ready.iter().map(|&t| readable(t)).collect::<Vec<_>>(), "{b:?}");
        for &token in &ready {
            (&pairs[token].0).read_exact(&mut [0u8; 1]).unwrap();
        }
        for (a, _) in &pairs {
            d.delete(a.as_raw_fd()).unwrap();
        }
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}");
    }
}

#[test]
fn fds_above_fd_setsize_are_watched() {
    if !raise_fd_limit(4096) {
        return;
    }
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let (a, mut w) = UnixStream::pair().unwrap();
        // select() as C programs use it cannot watch this fd (FD_SET would write past the fd_set);
        // ferroloop's select driver sizes its sets to it.
        let high = dup_at_least(&a, 3000);
        d.add(high.as_raw_fd(), 9, Interest::READABLE).unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}");
        w.write_all(b"x").unwrap();
        assert_eq!(poll(&d, Duration::from_secs(5)), vec![readable(9)], "{b:?}");
    }
}

#[test]
fn fd_closed_while_registered() {
    // A number no other test allocates, so that no other thread reuses it once closed.
    const HIGH: i32 = 12_000;
    if !raise_fd_limit(HIGH as u64 + 64) {
        return;
    }
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let (a, _peer) = UnixStream::pair().unwrap();
        let high = dup_at_least(&a, HIGH);
        drop(a); // `high` is now the file's only fd, so closing it closes the file
        let fd = high.as_raw_fd();
        d.add(fd, 5, Interest::READABLE).unwrap();
        drop(high);
        let ev = poll(&d, Duration::ZERO);
        if matches!(b, Backend::Epoll | Backend::IoUring) {
            // epoll: the kernel drops the registration with the last reference to the file.
            // io_uring: the poll is armed at this wait, after the close, and fails with EBADF; the
            // registration goes quiet as epoll's does (`fd_closed_while_armed` covers the other
            // order).
            assert!(ev.is_empty(), "{b:?}");
        } else {
            // POLLNVAL / EBADF: reported to the token, so the caller's next syscall fails and it
            // deletes the fd, instead of waits that return at once with nothing to show.
            let all = Event {
                token: 5,
                readable: true,
                writable: true,
                edge: false,
            };
            assert_eq!(ev, vec![all], "{b:?}");
        }
        d.delete(fd).unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}");
    }
}

#[test]
fn add_during_a_blocked_wait_is_seen() {
    for b in backends() {
        let d = Arc::new(Driver::new(b).unwrap());
        let (a, mut w) = UnixStream::pair().unwrap();
        w.write_all(b"x").unwrap();
        let waiter = {
            let d = Arc::clone(&d);
            std::thread::spawn(move || {
                let start = Instant::now();
                let first = poll(&d, Duration::from_secs(30));
                (first, start.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        d.add(a.as_raw_fd(), 6, Interest::READABLE).unwrap();
        let (first, elapsed) = waiter.join().unwrap();
        // epoll reports the fd in the blocked wait itself; poll and select wake it with no events
        // (it polled a copy of the registrations) and report the fd on the next wait.
        assert!(
            elapsed < Duration::from_secs(10),
            "{b:?}: the add must end the wait, took {elapsed:?}"
        );
        let seen = if first.is_empty() {
            poll(&d, Duration::ZERO)
        } else {
            first
        };
        assert_eq!(seen, vec![readable(6)], "{b:?}");
    }
}

#[test]
fn sources_skip_unchanged_interest() {
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let mut sources = Sources::new();
        let (a, mut w) = UnixStream::pair().unwrap();
        let token = sources.insert(a.as_raw_fd(), "data");
        assert_eq!(sources.insert(a.as_raw_fd(), "other"), token, "same fd, same token");
        assert_eq!(sources.token_of(a.as_raw_fd()), Some(token));
        sources.set_interest(&d, token, Interest::READABLE).unwrap();
        sources.set_interest(&d, token, Interest::READABLE).unwrap();
        w.write_all(b"x").unwrap();
        assert_eq!(poll(&d, Duration::from_secs(5))[0].token, token);
        sources.set_interest(&d, token, Interest::NONE).unwrap();
        assert!(
            poll(&d, Duration::ZERO).is_empty(),
            "{b:?}: interest none means not watched"
        );
        assert_eq!(sources.remove(&d, token), Some("data"));
        assert!(sources.is_empty());
        assert_eq!(sources.token_of(a.as_raw_fd()), None);
    }
}

#[test]
fn unknown_backend_name_is_explained() {
    let err = "kqueue2".parse::<Backend>().unwrap_err();
    assert!(err.contains("epoll, poll, select, io_uring"), "{err}");
    for &b in Backend::ALL {
        assert_eq!(b.name().parse::<Backend>(), Ok(b));
    }
    assert_eq!(Backend::ALL[0], Backend::default(), "epoll stays the default");
    assert_eq!(Backend::default(), Backend::Epoll);
}

#[test]
fn delete_during_a_blocked_wait_is_not_reported() {
    for b in backends() {
        let d = Arc::new(Driver::new(b).unwrap());
        let (a, mut w) = UnixStream::pair().unwrap();
        d.add(a.as_raw_fd(), 8, Interest::READABLE).unwrap();
        let waiter = {
            let d = Arc::clone(&d);
            std::thread::spawn(move || poll(&d, Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(50));
        d.delete(a.as_raw_fd()).unwrap();
        // poll and select still watch their copy of the registrations and return for this write;
        // the fd is gone from the table by then, so it is not reported. epoll forgot it at once and
        // returns for the wake below.
        w.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        d.waker().wake().unwrap();
        assert!(waiter.join().unwrap().is_empty(), "{b:?}");
    }
}

#[test]
fn fd_closed_while_armed() {
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let (a, peer) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        d.add(fd, 1, Interest::READABLE).unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}"); // io_uring: the poll is armed now
        drop(a);
        if b == Backend::IoUring {
            // The armed poll holds a reference to the file, so closing the fd does not close it.
            assert_eq!(peer_read(&peer), std::io::ErrorKind::WouldBlock);
        } else {
            assert_eq!(peer_read(&peer), std::io::ErrorKind::UnexpectedEof, "{b:?}");
        }
        // delete releases the file at once, not at the next wait.
        d.delete(fd).unwrap();
        assert_eq!(peer_read(&peer), std::io::ErrorKind::UnexpectedEof, "{b:?}");
    }
}

#[test]
fn delete_then_close_closes_the_file_at_once() {
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let (a, peer) = UnixStream::pair().unwrap();
        d.add(a.as_raw_fd(), 1, Interest::READABLE).unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}");
        d.delete(a.as_raw_fd()).unwrap();
        drop(a);
        assert_eq!(peer_read(&peer), std::io::ErrorKind::UnexpectedEof, "{b:?}");
    }
}

#[test]
fn stale_readiness_never_reaches_a_new_registration() {
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let (a, mut w) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        d.add(fd, 1, Interest::READABLE).unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}");
        // io_uring: the armed poll completes here and its CQE waits in the ring, tagged token 1.
        w.write_all(b"x").unwrap();
        d.modify(fd, 2, Interest::READABLE).unwrap();
        assert_eq!(poll(&d, Duration::from_secs(5)), vec![readable(2)], "{b:?}: once, as 2");
        (&a).read_exact(&mut [0u8; 1]).unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}");
        w.write_all(b"x").unwrap();
        d.delete(fd).unwrap();
        d.add(fd, 3, Interest::WRITABLE).unwrap();
        assert_eq!(poll(&d, Duration::from_secs(5)), vec![writable(3)], "{b:?}");
    }
}

#[test]
fn registrations_outlive_the_thread_that_made_them() {
    for b in backends() {
        let (a, mut w) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        // io_uring completes a request as task work of the thread that submitted it: here the
        // waker's poll and the socket's poll are submitted by a thread that then exits.
        let d = std::thread::spawn(move || {
            let d = Driver::new(b).unwrap();
            d.add(fd, 1, Interest::READABLE).unwrap();
            assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}");
            d
        })
        .join()
        .unwrap();
        w.write_all(b"x").unwrap();
        assert_eq!(poll(&d, Duration::from_secs(5)), vec![readable(1)], "{b:?}");
        (&a).read_exact(&mut [0u8; 1]).unwrap();
        let waker = Arc::clone(d.waker());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            waker.wake().unwrap();
        });
        let start = Instant::now();
        assert!(poll(&d, Duration::from_secs(30)).is_empty(), "{b:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{b:?}: the wake must end the wait"
        );
        t.join().unwrap();
    }
}

#[test]
fn modify_replaces_an_armed_poll() {
    for b in backends() {
        let d = Driver::new(b).unwrap();
        let (a, mut w) = UnixStream::pair().unwrap();
        d.add(a.as_raw_fd(), 1, Interest::READABLE).unwrap();
        assert!(poll(&d, Duration::ZERO).is_empty(), "{b:?}");
        d.modify(a.as_raw_fd(), 2, Interest::WRITABLE).unwrap();
        w.write_all(b"x").unwrap();
        // Readable too by now, but only writability is watched.
        assert_eq!(poll(&d, Duration::from_secs(5)), vec![writable(2)], "{b:?}");
        assert_eq!(poll(&d, Duration::ZERO), vec![writable(2)], "{b:?}: level-triggered");
    }
}

#[test]
fn io_uring_is_available_or_says_why() {
    let available = Backend::available().contains(&Backend::IoUring);
    match Driver::new(Backend::IoUring) {
        Ok(d) => {
            assert_eq!(d.backend(), Backend::IoUring);
            assert!(available);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("use the epoll backend instead"), "{msg}");
            assert!(!available, "{msg}");
            eprintln!("io_uring is not available here: {msg}");
        }
    }
}

#[test]
fn wakes_racing_a_drain_are_never_lost() {
    // Regression test: Waker::drain used to clear `pending` and then read the eventfd, so a wake
    // landing between the two had its write consumed by that read and left `pending` set over an
    // empty eventfd: every later wake was skipped and a blocked wait was never woken again.
    // (io_uring's poll reports the wake-up itself, not the eventfd's state afterwards.)
    for b in backends() {
        let d = Arc::new(Driver::new(b).unwrap());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hammers: Vec<_> = (0..2)
            .map(|_| {
                let (waker, stop) = (Arc::clone(d.waker()), Arc::clone(&stop));
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        waker.wake().unwrap();
                    }
                })
            })
            .collect();
        let start = Instant::now();
        let mut stuck = None;
        while stuck.is_none() && start.elapsed() < Duration::from_secs(2) {
            let t = Instant::now();
            poll(&d, Duration::from_secs(1));
            stuck = (t.elapsed() >= Duration::from_secs(1)).then_some(start.elapsed());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in hammers {
            h.join().unwrap();
        }
        assert_eq!(stuck, None, "{b:?}: the waker stopped waking");
    }
}

#[test]
fn edge_registrations_report_each_change_once_on_epoll_and_are_refused_elsewhere() {
    for backend in backends() {
        let d = Driver::new(backend).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        if !d.reports_edges() {
            let err = d.add(a.as_raw_fd(), 3, Interest::READABLE_EDGE).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::Unsupported, "{backend:?}");
            d.add(a.as_raw_fd(), 3, Interest::READABLE).unwrap();
            let err = d.modify(a.as_raw_fd(), 3, Interest::READABLE_EDGE).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::Unsupported, "{backend:?}");
            continue;
        }
        let edge = Event {
            edge: true,
            ..readable(3)
        };
        d.add(a.as_raw_fd(), 3, Interest::READABLE_EDGE).unwrap();
        assert_eq!(poll(&d, Duration::ZERO), vec![], "{backend:?}: nothing arrived yet");
        b.write_all(b"x").unwrap();
        assert_eq!(poll(&d, Duration::from_secs(5)), vec![edge], "{backend:?}");
        // Still readable (nothing was read), but nothing new arrived: no report.
        assert_eq!(poll(&d, Duration::ZERO), vec![], "{backend:?}");
        b.write_all(b"y").unwrap();
        assert_eq!(poll(&d, Duration::from_secs(5)), vec![edge], "{backend:?}: new data");
        // Level-triggered again: reported while readable, without the edge mark.
        d.modify(a.as_raw_fd(), 3, Interest::READABLE).unwrap();
        assert_eq!(poll(&d, Duration::ZERO), vec![readable(3)], "{backend:?}");
        assert_eq!(poll(&d, Duration::ZERO), vec![readable(3)], "{backend:?}");
    }
}

#[test]
fn an_edge_registration_outlives_its_fd_while_a_dup_keeps_the_file() {
    // Why `Event::edge` exists: epoll keys a registration on the fd *and* its file, and drops it
    // only when the file is closed. A socket closed while registered, its file kept open by a
    // `dup`, goes on reporting under its old token (once per change: no report storm).
    let d = Driver::new(Backend::Epoll).unwrap();
    let (a, mut b) = UnixStream::pair().unwrap();
    let registered = dup_at_least(&a, 100);
    d.add(registered.as_raw_fd(), 9, Interest::READABLE_EDGE).unwrap();
    drop(registered);
    b.write_all(b"x").unwrap();
    let stale = Event {
        edge: true,
        ..readable(9)
    };
    assert_eq!(poll(&d, Duration::from_secs(5)), vec![stale]);
    assert_eq!(poll(&d, Duration::ZERO), vec![]);
    drop(a);
}

#[test]
fn reregister_watches_a_new_file_on_a_reused_number() {
    // A kept registration whose fd was closed (epoll forgot it) and whose number now names
    // another socket: the cache says "watched", so only `reregister` makes the driver watch it.
    for backend in backends() {
        if backend == Backend::IoUring {
            continue; // an armed poll keeps the old file open: not this case
        }
        let d = Driver::new(backend).unwrap();
        let mut sources = Sources::new();
        let (a, _a_peer) = UnixStream::pair().unwrap();
        let mut first = dup_at_least(&a, 150);
        let fd = first.as_raw_fd();
        let interest = if d.reports_edges() {
            Interest::READABLE_EDGE
        } else {
            Interest::READABLE
        };
        let token = sources.insert(fd, ());
        sources.set_interest(&d, token, interest).unwrap();
        let (b, mut b_peer) = UnixStream::pair().unwrap();
        // The number now names `b`'s file; `a`'s had no other fd in this epoll's view.
        drop(a);
        rustix::io::dup2(&b, &mut first).unwrap();
        sources.set_interest(&d, token, interest).unwrap();
        b_peer.write_all(b"x").unwrap();
        let reported = poll(&d, Duration::from_millis(50));
        if d.reports_edges() {
            assert_eq!(reported, vec![], "{backend:?}: the cache alone watches nothing");
        }
        sources.reregister(&d, token, interest).unwrap();
        let got = poll(&d, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "{backend:?}: {got:?}");
        assert_eq!(got[0].token, token, "{backend:?}");
        assert!(got[0].readable, "{backend:?}");
        drop(b);
    }
}
