//! A provided-buffer ring for `io_uring` receives: the kernel picks a free buffer for each
//! completion of a multishot receive, and the loop gives it back once it has copied the data out.
//!
//! Where the kernel offers it (`IOU_PBUF_RING_INC`, Linux 6.12), buffers are consumed
//! incrementally: a 1 KiB message takes 1 KiB of a buffer, not all 64 KiB, and the next receive
//! goes on in the same buffer. The ring then tracks, per buffer, how far it is filled, how many
//! of its parts are out (handed to the loop, not yet given back) and whether the kernel is done
//! with it ([`BufRing::consume`]); the buffer goes back to the kernel when it is done and no part
//! is out. (The loop may copy the parts of one buffer in another order than the kernel filled
//! them: receives of one operation are merged.) Without it, 64 connections with one small message each took every
//! buffer, and receives ran out of buffers (`ENOBUFS`) at a few hundred connections.
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
use rustix::param::page_size;

use super::BufRef;

/// Buffers in the ring (a power of two).
pub const ENTRIES: u16 = 64;
/// Bytes per buffer: one completion delivers at most this much.
pub const BUF_SIZE: usize = 64 * 1024;
/// The buffer group id the receives name.
pub const GROUP: u16 = 0;

/// The ring of buffer descriptors and the buffers it hands the kernel (see the module docs). It must
/// stay allocated while the kernel may use it: until it is unregistered or the ring closed.
pub struct BufRing {
    ring: *mut BufRingEntry,
    mem: *mut u8,
    /// Our copy of the tail; the published one is what the kernel sees.
    tail: u16,
    /// Registered for incremental consumption.
    incremental: bool,
    uses: Vec<Use>,
}

/// How a buffer the kernel took is used.
#[derive(Clone, Copy, Default)]
struct Use {
    /// Bytes the kernel filled so far.
    filled: u32,
    /// Parts handed out in completions, not yet given back.
    out: u32,
    /// The kernel will not put more into it.
    done: bool,
}

// SAFETY: the ring and the buffers are plain memory owned by this value; the driver uses them only
// under its state lock.
unsafe impl Send for BufRing {}

/// Page-aligned: the kernel refuses a ring that is not, and a page is not 4 KiB everywhere (64 KiB
/// on some arm64 and ppc64 kernels).
fn ring_layout() -> Layout {
    Layout::from_size_align(usize::from(ENTRIES) * std::mem::size_of::<BufRingEntry>(), page_size())
        .expect("valid layout")
}

fn mem_layout() -> Layout {
    Layout::from_size_align(usize::from(ENTRIES) * BUF_SIZE, page_size()).expect("valid layout")
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
            incremental: false,
            uses: vec![Use::default(); usize::from(ENTRIES)],
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

    /// The ring was registered for incremental consumption (see the module docs).
    pub fn set_incremental(&mut self, incremental: bool) {
        self.incremental = incremental;
    }

    /// Whether the ring was registered for incremental consumption.
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// Where a completion's `len` bytes in buffer `bid` lie; `more` is the completion's
    /// `IORING_CQE_F_BUF_MORE` (the kernel goes on filling the buffer). Called once per
    /// completion, in the order the kernel posted them; each result is given back once
    /// ([`BufRing::recycle`]).
    pub fn consume(&mut self, bid: u16, len: usize, more: bool) -> BufRef {
        let Some(u) = self.uses.get_mut(usize::from(bid)) else {
            return BufRef { bid, offset: 0 };
        };
        let offset = if self.incremental { u.filled } else { 0 };
        u.filled = offset.saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
        u.out += 1;
        u.done = !(self.incremental && more);
        BufRef { bid, offset }
    }

    /// The `len` bytes of a completion's data in buffer `buf.bid` from `buf.offset`, which the
    /// kernel filled and does not write again (it may still fill the rest of the buffer).
    pub fn slice(&self, buf: BufRef, len: usize) -> &[u8] {
        let offset = buf.offset as usize;
        assert!(
            buf.bid < ENTRIES && offset.checked_add(len).is_some_and(|end| end <= BUF_SIZE),
            "buffer {} from {offset}, {len} bytes, is out of range",
            buf.bid
        );
        // SAFETY: in range (checked); the kernel does not write this part of the buffer between
        // handing it to us in a completion and our giving the buffer back.
        unsafe { std::slice::from_raw_parts(self.mem.add(usize::from(buf.bid) * BUF_SIZE + offset), len) }
    }

    /// Gives back a part of buffer `buf.bid`; the buffer returns to the kernel once the kernel is
    /// done with it and no part is out.
    pub fn recycle(&mut self, buf: BufRef) {
        let Some(u) = self.uses.get_mut(usize::from(buf.bid)) else {
            return;
        };
        u.out = u.out.saturating_sub(1);
        if u.out == 0 && u.done {
            *u = Use::default();
            self.put(buf.bid);
            self.publish();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_goes_back_when_the_kernel_is_done_and_every_part_is_back() {
        let mut ring = BufRing::new().unwrap();
        ring.set_incremental(true);
        let start = ring.tail;
        let first = ring.consume(3, 5, true);
        let second = ring.consume(3, 7, false); // the kernel is done with buffer 3
        assert_eq!((first.offset, second.offset), (0, 5));
        ring.recycle(second); // the first part is still out: the buffer stays ours
        assert_eq!(ring.tail, start);
        ring.recycle(first);
        assert_eq!(ring.tail, start.wrapping_add(1));
        // Filled again from its start.
        assert_eq!(ring.consume(3, 1, false).offset, 0);
    }

    #[test]
    fn without_incremental_consumption_each_completion_has_a_whole_buffer() {
        let mut ring = BufRing::new().unwrap();
        let start = ring.tail;
        let part = ring.consume(9, 100, true);
        assert_eq!(part.offset, 0);
        ring.recycle(part);
        assert_eq!(ring.tail, start.wrapping_add(1));
    }
}
