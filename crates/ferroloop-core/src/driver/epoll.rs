//! The Linux `epoll` driver: level-triggered, and edge-triggered where asked ([`Interest::edge`]).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::io::Errno;

use super::{borrow, Event, Interest};
use crate::waker::Waker;

/// The token the waker's eventfd is registered under; never handed out by a slab.
const WAKER_TOKEN: u64 = u64::MAX;
/// Set in the event data of an edge-triggered registration, beside the token: its reports say
/// so ([`Event::edge`]). Below `WAKER_TOKEN`'s bits, far above any slab index.
const EDGE_TAG: u64 = 1 << 62;
/// How many events one `epoll_wait` may return; more stay pending for the next wait.
const MAX_EVENTS: usize = 256;
/// The longest wait `epoll_wait` takes (`i32::MAX` milliseconds); longer waits are cut to it.
const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// An epoll fd with the waker's eventfd registered under `WAKER_TOKEN`.
#[derive(Debug)]
pub struct Epoll {
    epfd: OwnedFd,
    waker: Arc<Waker>,
}

fn flags(interest: Interest) -> EventFlags {
    let mut f = EventFlags::empty();
    if interest.readable {
        f |= EventFlags::IN;
    }
    if interest.writable {
        f |= EventFlags::OUT;
    }
    if interest.edge {
        f |= EventFlags::ET;
    }
    f
}

fn data(token: usize, interest: Interest) -> EventData {
    let tag = if interest.edge { EDGE_TAG } else { 0 };
    EventData::new_u64(token as u64 | tag)
}

impl Epoll {
    /// A new close-on-exec epoll fd, with a new waker registered.
    pub fn new() -> io::Result<Epoll> {
        let epfd = epoll::create(CreateFlags::CLOEXEC)?;
        let waker = Arc::new(Waker::new()?);
        epoll::add(&epfd, &*waker, EventData::new_u64(WAKER_TOKEN), EventFlags::IN)?;
        Ok(Epoll { epfd, waker })
    }

    /// [`Driver::add`](super::Driver::add) on this backend.
    pub fn add(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        epoll::add(&self.epfd, borrow(fd)?, data(token, interest), flags(interest))?;
        Ok(())
    }

    /// [`Driver::modify`](super::Driver::modify) on this backend; an fd epoll forgot (closed and
    /// its number reused) is added again.
    pub fn modify(&self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        let data = data(token, interest);
        match epoll::modify(&self.epfd, borrow(fd)?, data, flags(interest)) {
            // NOTE: the fd was closed and its number reused since it was added: epoll dropped the
            // old registration with the close, so add the new file under the same token.
            Err(Errno::NOENT) => epoll::add(&self.epfd, borrow(fd)?, data, flags(interest))?,
            other => other?,
        }
        Ok(())
    }

    /// [`Driver::delete`](super::Driver::delete) on this backend.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        match epoll::delete(&self.epfd, borrow(fd)?) {
            Ok(()) | Err(Errno::NOENT | Errno::BADF) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Driver::wait`](super::Driver::wait) on this backend, appending what is ready to `out`.
    pub fn wait(&self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        // NOTE: without epoll_pwait2, rustix passes milliseconds as a C int: cap the wait there.
        let ts = super::timespec(timeout.map(|d| d.min(MAX_TIMEOUT)));
        // NOTE: a stack buffer, so that a loop iteration allocates nothing here.
        let mut buf = [MaybeUninit::<epoll::Event>::uninit(); MAX_EVENTS];
        let (ready, _) = match epoll::wait(&self.epfd, &mut buf[..], ts.as_ref()) {
            Ok(r) => r,
            Err(Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        out.reserve(ready.len());
        for ev in &*ready {
            let data = ev.data.u64();
            if data == WAKER_TOKEN {
                self.waker.drain();
                continue;
            }
            let f = ev.flags;
            out.push(Event {
                token: (data & !EDGE_TAG) as usize,
                edge: data & EDGE_TAG != 0,
                // As selectors.EpollSelector: any condition but OUT wakes a reader, any but IN a writer.
                readable: !(f - EventFlags::OUT).is_empty(),
                writable: !(f - EventFlags::IN).is_empty(),
            });
        }
        Ok(())
    }

    /// The waker registered with this driver.
    pub fn waker(&self) -> &Arc<Waker> {
        &self.waker
    }

    /// The epoll fd itself.
    #[allow(dead_code)]
    pub fn raw_fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }
}
