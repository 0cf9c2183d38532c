use super::*;

#[test]
fn refusals_say_why_and_what_to_use() {
    let eperm = io::Error::from(Errno::PERM);
    for (err, sysctl, says) in [
        (&eperm, Some("2"), "kernel.io_uring_disabled=2"),
        (&eperm, Some("1"), "kernel.io_uring_group"),
        (&eperm, Some("0"), "seccomp"),
        (&eperm, None, "seccomp"),
        (&io::Error::from(Errno::NOSYS), None, "5.1"),
        (&io::Error::from(Errno::NOMEM), Some("0"), "io_uring_setup failed"),
        (&eperm, Some("2"), "Operation not permitted"),
    ] {
        let msg = refused(err, sysctl).to_string();
        assert!(
            msg.contains(says) && msg.ends_with("use the epoll backend instead"),
            "{msg}"
        );
    }
    assert_eq!(refused(&eperm, Some("2")).kind(), io::ErrorKind::PermissionDenied);
}

fn nonblocking_pair() -> (std::os::unix::net::UnixStream, std::os::unix::net::UnixStream) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// A completion's data, and its buffer given back.
fn take(d: &Uring, buf: BufRef, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    assert_eq!(d.copy_out(buf, len, 0, &mut out), len);
    d.recycle(buf);
    out
}

fn wait_for(d: &Uring, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let mut events = Vec::new();
    for _ in 0..50 {
        d.wait(&mut events, Some(Duration::from_millis(20))).unwrap();
        d.take_completions(&mut out);
        if out.len() >= n {
            break;
        }
    }
    out
}

#[test]
fn multishot_receive_on_a_nonblocking_socket_waits_for_data() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let d = Uring::new().unwrap();
    let (a, mut b) = nonblocking_pair();
    d.recv_multishot(a.as_raw_fd(), 7).unwrap();
    // Nothing to read yet: no completion (not EAGAIN), the receive stays armed.
    assert_eq!(wait_for(&d, 1), vec![]);
    b.write_all(b"hello").unwrap();
    let got = wait_for(&d, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    let c = got[0];
    assert_eq!((c.tag, c.result, c.more), (7, 5, true));
    assert_eq!(take(&d, c.buffer.unwrap(), 5), b"hello");
    b.write_all(b"again").unwrap();
    let c = wait_for(&d, 1)[0];
    assert_eq!(take(&d, c.buffer.unwrap(), 5), b"again");
    drop(b);
    let c = wait_for(&d, 1)[0];
    assert_eq!((c.result, c.more, c.buffer), (0, false, None)); // EOF ends it
    assert!(d.drain_ops());
}

#[test]
fn small_receives_fill_one_buffer_one_after_the_other() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let d = Uring::new().unwrap();
    let (a, mut b) = nonblocking_pair();
    d.recv_multishot(a.as_raw_fd(), 7).unwrap();
    b.write_all(b"hello").unwrap();
    let first = wait_for(&d, 1)[0].buffer.unwrap();
    b.write_all(b"again!").unwrap();
    let second = wait_for(&d, 1)[0].buffer.unwrap();
    if d.incremental_buffers() {
        // The kernel goes on in the same buffer, after the first receive.
        assert_eq!((second.bid, second.offset), (first.bid, 5));
    } else {
        assert_eq!((first.offset, second.offset), (0, 0));
        assert_ne!(first.bid, second.bid);
    }
    // Given back in the other order: the first part stays readable until it is given back.
    assert_eq!(take(&d, second, 6), b"again!");
    assert_eq!(take(&d, first, 5), b"hello");
    drop(b);
    assert!(d.drain_ops());
}

#[test]
fn sends_complete_and_cancels_end_receives() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let d = Uring::new().unwrap();
    let (a, mut b) = nonblocking_pair();
    let data = vec![9u8; 1000];
    // SAFETY: `data` outlives the wait for the send's completion below.
    unsafe { d.send(a.as_raw_fd(), 1, data.as_ptr(), data.len()) }.unwrap();
    d.recv_multishot(a.as_raw_fd(), 2).unwrap();
    let c = wait_for(&d, 1)[0];
    assert_eq!((c.tag, c.result, c.more), (1, 1000, false));
    let mut got = vec![0u8; 1000];
    b.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
    d.cancel(2).unwrap();
    let c = wait_for(&d, 1)[0];
    assert_eq!((c.tag, c.result, c.more), (2, -Errno::CANCELED.raw_os_error(), false));
    assert!(d.drain_ops());
}

#[test]
fn dropping_the_driver_ends_operations_in_flight() {
    use std::os::fd::AsRawFd;
    let d = Uring::new().unwrap();
    let (a, _b) = nonblocking_pair();
    d.recv_multishot(a.as_raw_fd(), 3).unwrap();
    let mut events = Vec::new();
    d.wait(&mut events, Some(Duration::ZERO)).unwrap(); // submitted
    assert!(d.drain_ops());
    assert_eq!(d.lock().ops_in_flight, 0);
}

#[test]
fn user_data_never_collides_with_the_driver_tags() {
    let data = reg_data(i32::MAX, GEN_MASK);
    assert!(data < CANCEL_DATA && data >> 62 == 0);
    assert!(WAKER_DATA & OP_BIT != 0 && [WAKER_DATA, REMOVE_DATA, CANCEL_DATA].iter().all(|d| d >> 63 == 1));
    assert_eq!((data as u32 as RawFd, (data >> 32) as u32), (i32::MAX, GEN_MASK));
}
