//! A provided-buffer ring for `io_uring` receives: the kernel picks a free buffer for each
//! completion of a multishot receive, and the loop gives it back once it has copied the data out.
//!
//! # Layout
//!
//! One page-aligned allocation holds the ring (`ENTRIES` descriptors of 16 bytes, `io_uring_buf`),
//! another the buffers (`ENTRIES * BUF_SIZE` bytes, touched only as the kernel fills them). The
//! ring's tail (the `resv` field of the first descriptor) is ours to advance: each buffer given
//! back is written at `tail & mask`, then the tail is published with a release store, which is
//! what the kernel reads.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// Buffers in the ring (a power of two).
pub const ENTRIES: u16 = 64;
/// Bytes per buffer: one completion delivers at most this much.
pub const BUF_SIZE: usize = 64 * 1024;
/// The buffer group id the receives name.
pub const GROUP: u16 = 0;

const PAGE: usize = 4096;

pub struct BufRing {
    ring: *mut BufRingEntry,
    mem: *mut u8,
    /// Our copy of the tail; the published one is what the kernel sees.
    tail: u16,
}

// SAFETY: the ring and the buffers are plain memory owned by this value; the driver uses them only
// under its state lock.
unsafe impl Send for BufRing {}

fn ring_layout() -> Layout {
    Layout::from_size_align(usize::from(ENTRIES) * std::mem::size_of::<BufRingEntry>(), PAGE).expect("valid layout")
}

fn mem_layout() -> Layout {
    Layout::from_size_align(usize::from(ENTRIES) * BUF_SIZE, PAGE).expect("valid layout")
}

impl BufRing {
    /// Allocates the ring with every buffer in it (not yet registered with the kernel).
    pub fn new() -> io::Result<BufRing> {
        // SAFETY: both layouts have a non-zero size; a null result is reported.
        let (ring, mem) = unsafe { (alloc_zeroed(ring_layout()), alloc_zeroed(mem_layout())) };
        if ring.is_null() || mem.is_null() {
            // SAFETY: whichever succeeded was allocated with that layout just above.
            unsafe {
                if !ring.is_null() {
                    dealloc(ring, ring_layout());
                }
                if !mem.is_null() {
                    dealloc(mem, mem_layout());
                }
            }
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut bufs = BufRing {
            ring: ring.cast(),
            mem,
            tail: 0,
        };
        for bid in 0..ENTRIES {
            bufs.put(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    /// The ring's address, for `register_buf_ring`.
    pub fn addr(&self) -> u64 {
        self.ring as u64
    }

    /// The first `len` bytes of buffer `bid`, which the kernel filled and has not been given back.
    pub fn slice(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < ENTRIES && len <= BUF_SIZE,
            "buffer {bid} of {len} bytes is out of range"
        );
        // SAFETY: in range (checked), and the kernel does not write a buffer between handing it to
        // us in a completion and our giving it back.
        unsafe { std::slice::from_raw_parts(self.mem.add(usize::from(bid) * BUF_SIZE), len) }
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.put(bid);
        self.publish();
    }

    fn put(&mut self, bid: u16) {
        let slot = self.tail & (ENTRIES - 1);
        // SAFETY: `slot < ENTRIES`; the kernel reads descriptors only up to the published tail, so
        // this one (at the unpublished tail) is ours to write.
        unsafe {
            let entry = &mut *self.ring.add(usize::from(slot));
            entry.set_addr(self.mem.add(usize::from(bid) * BUF_SIZE) as u64);
            entry.set_len(BUF_SIZE as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lies inside the ring's first descriptor, is 2-byte aligned and
        // is only written here; the kernel reads it atomically.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast_mut().cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the driver unregisters the ring (or
        // closes the io_uring) before dropping it.
        unsafe {
            dealloc(self.ring.cast(), ring_layout());
            dealloc(self.mem, mem_layout());
        }
    }
}
