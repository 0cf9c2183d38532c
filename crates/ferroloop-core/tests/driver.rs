//! Driver behaviour, run against every backend this machine offers.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use ferroloop_core::driver::{Backend, Driver, Event, Interest};
use ferroloop_core::sources::Sources;

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
                    writable: false
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
                writable: true
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
            Some(9),
            "{b:?}: EBADF"
        );
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
    assert!(err.contains("epoll"), "{err}");
    assert_eq!("epoll".parse::<Backend>(), Ok(Backend::Epoll));
}
