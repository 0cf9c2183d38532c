//! Registered file descriptors, indexed by slab token, with a cache of what the driver watches.
//!
//! The token is what the driver reports, so a ready event reaches its handler by indexing, not by
//! hashing. The fd-to-token map is used only when the API names an fd (`add_reader(fd, ...)`).
//! [`Sources::set_interest`] calls the driver only when the interest really changes: a transport
//! that pauses and resumes reading, or a writer added while a reader exists, costs one syscall per
//! change and none otherwise.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::RawFd;

use slab::Slab;

use crate::driver::{Driver, Interest};

/// Hashes an fd with one multiplication (Fibonacci hashing). fds are small integers the kernel
/// hands out, not keys an attacker chooses, so the default `SipHash` (about 60 instructions a
/// lookup, one to three lookups per `sock_recv` wait) buys nothing here.
#[derive(Default)]
struct FdHasher(u64);

impl Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_i32(&mut self, fd: i32) {
        // NOTE: the cast keeps the bits of a negative fd; any fixed mapping would do.
        self.0 = u64::from(u32::from_ne_bytes(fd.to_ne_bytes())).wrapping_mul(FIBONACCI);
    }
}

/// 2^64 divided by the golden ratio, odd: multiplying by it spreads consecutive integers over the
/// high bits, which the hash table's probe uses.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

type FdMap = HashMap<RawFd, usize, BuildHasherDefault<FdHasher>>;

/// One registered fd and the caller's data for it.
#[derive(Debug)]
pub struct Source<S> {
    /// The fd, as the caller registered it. The caller keeps it open until the source is removed.
    pub fd: RawFd,
    /// What the driver currently watches this fd for.
    interest: Interest,
    /// The caller's state for the fd (in the binding: its `add_reader`/`add_writer` callbacks and
    /// the transport that owns it).
    pub data: S,
}

impl<S> Source<S> {
    /// What the driver currently watches the fd for; changed only through
    /// [`Sources::set_interest`].
    #[must_use]
    pub fn interest(&self) -> Interest {
        self.interest
    }
}

/// The fds a loop watches.
#[derive(Debug)]
pub struct Sources<S> {
    slab: Slab<Source<S>>,
    by_fd: FdMap,
}

impl<S> Default for Sources<S> {
    fn default() -> Self {
        Sources {
            slab: Slab::new(),
            by_fd: FdMap::default(),
        }
    }
}

impl<S> Sources<S> {
    /// No sources.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The token `fd` was inserted under, if it is registered.
    #[must_use]
    pub fn token_of(&self, fd: RawFd) -> Option<usize> {
        self.by_fd.get(&fd).copied()
    }

    /// The source a driver event's token names; `None` once it was removed.
    #[inline]
    #[must_use]
    pub fn get(&self, token: usize) -> Option<&Source<S>> {
        self.slab.get(token)
    }

    /// The source a token names, to change its data. Its interest changes only through
    /// [`Sources::set_interest`].
    #[inline]
    pub fn get_mut(&mut self, token: usize) -> Option<&mut Source<S>> {
        self.slab.get_mut(token)
    }

    /// Adds `fd` with no interest yet (the driver is not called). An fd that is already present
    /// keeps its token and data.
    pub fn insert(&mut self, fd: RawFd, data: S) -> usize {
        if let Some(token) = self.token_of(fd) {
            return token;
        }
        let token = self.slab.insert(Source {
            fd,
            interest: Interest::NONE,
            data,
        });
        self.by_fd.insert(fd, token);
        token
    }

    /// Makes the driver watch the source for `interest`, calling it only if that changes anything.
    /// On error the cached interest is left as it was, so the cache never lies.
    pub fn set_interest(&mut self, driver: &Driver, token: usize, interest: Interest) -> io::Result<()> {
        let Some(src) = self.slab.get_mut(token) else {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        };
        let old = src.interest;
        if old == interest {
            return Ok(());
        }
        if interest.is_none() {
            driver.delete(src.fd)?;
        } else if old.is_none() {
            driver.add(src.fd, token, interest)?;
        } else {
            driver.modify(src.fd, token, interest)?;
        }
        src.interest = interest;
        Ok(())
    }

    /// Makes the driver watch the source for `interest` even if the cache says it already does:
    /// for a registration that may have gone with its fd (closed, and the number reused since; a
    /// kept edge-triggered registration is not deleted when its socket is closed). epoll modifies
    /// the fd's registration or, having forgotten it, adds it again; `poll` and `select` replace
    /// it in user space.
    pub fn reregister(&mut self, driver: &Driver, token: usize, interest: Interest) -> io::Result<()> {
        let Some(src) = self.slab.get_mut(token) else {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        };
        if src.interest.is_none() || interest.is_none() {
            return self.set_interest(driver, token, interest);
        }
        driver.modify(src.fd, token, interest)?;
        src.interest = interest;
        Ok(())
    }

    /// Stops watching the source and forgets it, returning its data.
    pub fn remove(&mut self, driver: &Driver, token: usize) -> Option<S> {
        let src = self.slab.try_remove(token)?;
        if !src.interest.is_none() {
            // NOTE: a failure here means the fd is gone already, which is the state we want.
            let _ = driver.delete(src.fd);
        }
        self.by_fd.remove(&src.fd);
        Some(src.data)
    }

    /// How many fds are registered, watched or not.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// True if no fd is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every source, with its token.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Source<S>)> {
        self.slab.iter()
    }

    /// Forgets every source, deregistering each; returns their data (the loop is closing).
    pub fn drain(&mut self, driver: &Driver) -> Vec<S> {
        self.by_fd.clear();
        self.slab
            .drain()
            .map(|src| {
                if !src.interest.is_none() {
                    let _ = driver.delete(src.fd);
                }
                src.data
            })
            .collect()
    }
}
