//! The write queue of a stream transport: chunks kept as the caller gave them, sent with `writev`.
//!
//! A transport first tries to send a write at once; only what the kernel did not take is queued.
//! Queued chunks are never copied or merged: an immutable chunk (a Python `bytes`) is kept as it
//! is, with an offset into the first one, and a flush hands up to [`MAX_IOVECS`] of them to one
//! vectored write. This is what lets a `data_received` that answers with many small writes, or
//! one large write to a slow peer, cost one syscall per writable event.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

/// At most this many chunks go to one vectored write (Linux's `IOV_MAX` is 1024).
pub const MAX_IOVECS: usize = 64;

/// Unsent chunks and how much of the first one was already sent.
#[derive(Debug)]
pub struct WriteQueue<B> {
    chunks: VecDeque<B>,
    /// Bytes of `chunks[0]` already sent.
    offset: usize,
    /// Unsent bytes in total.
    len: usize,
}

impl<B> Default for WriteQueue<B> {
    fn default() -> Self {
        WriteQueue {
            chunks: VecDeque::new(),
            offset: 0,
            len: 0,
        }
    }
}

impl<B: AsRef<[u8]>> WriteQueue<B> {
    /// An empty queue.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `chunk`, of which the first `sent` bytes were already written.
    pub fn push(&mut self, chunk: B, sent: usize) {
        let size = chunk.as_ref().len();
        debug_assert!(sent <= size);
        if sent >= size {
            return;
        }
        if self.chunks.is_empty() {
            self.offset = sent;
        } else {
            assert_eq!(sent, 0, "only the first queued chunk may be partly sent");
        }
        self.len += size - sent;
        self.chunks.push_back(chunk);
    }

    /// Unsent bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if every queued byte was sent.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes as much as one call of `write` takes, given up to [`MAX_IOVECS`] slices, and drops
    /// what was written. Returns the bytes written and the chunks that are done with (so that the
    /// caller chooses where they are dropped).
    pub fn flush(&mut self, write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>) -> io::Result<(usize, Vec<B>)> {
        if self.is_empty() {
            return Ok((0, Vec::new()));
        }
        let n = {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                let bytes = chunk.as_ref();
                iov[i] = IoSlice::new(if i == 0 { &bytes[self.offset..] } else { bytes });
                count += 1;
            }
            write(&iov[..count])?
        };
        Ok((n, self.advance(n)))
    }

    /// The first unsent chunk and how much of it was already sent.
    #[must_use]
    pub fn front(&self) -> Option<(&B, usize)> {
        self.chunks.front().map(|c| (c, self.offset))
    }

    /// Marks `n` bytes as sent (by a write made elsewhere, e.g. an `io_uring` send of
    /// [`front`](Self::front)), returning the chunks that are now completely sent.
    pub fn consume(&mut self, n: usize) -> Vec<B> {
        self.advance(n)
    }

    /// Marks `n` bytes as sent, returning the chunks that are now completely sent.
    fn advance(&mut self, mut n: usize) -> Vec<B> {
        let mut done = Vec::new();
        self.len -= n.min(self.len);
        while let Some(front) = self.chunks.front() {
            let left = front.as_ref().len() - self.offset;
            if n < left {
                self.offset += n;
                break;
            }
            n -= left;
            self.offset = 0;
            done.extend(self.chunks.pop_front());
        }
        done
    }

    /// Removes every chunk (the connection is lost).
    pub fn clear(&mut self) -> Vec<B> {
        self.len = 0;
        self.offset = 0;
        self.chunks.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(limit: usize, out: &mut Vec<u8>) -> impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize> + '_ {
        move |iov| {
            let mut n = 0;
            for s in iov {
                let take = s.len().min(limit - n);
                out.extend_from_slice(&s[..take]);
                n += take;
            }
            Ok(n)
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = WriteQueue::new();
        q.push(b"hello".to_vec(), 2);
        q.push(b" world".to_vec(), 0);
        assert_eq!(q.len(), 9);
        let mut out = Vec::new();
        let (n, done) = q.flush(sink(4, &mut out)).unwrap();
        assert_eq!((n, done.len()), (4, 1));
        assert_eq!(out, b"llo ");
        assert_eq!(q.len(), 5);
        let (n, done) = q.flush(sink(100, &mut out)).unwrap();
        assert_eq!((n, done.len()), (5, 1));
        assert_eq!(out, b"llo world");
        assert!(q.is_empty());
    }

    #[test]
    fn fully_sent_chunks_are_not_queued() {
        let mut q = WriteQueue::new();
        q.push(b"abc".to_vec(), 3);
        q.push(Vec::new(), 0);
        assert!(q.is_empty());
        assert_eq!(q.flush(|_| panic!("nothing to write")).unwrap().0, 0);
    }

    #[test]
    fn one_flush_takes_at_most_max_iovecs_chunks() {
        let mut q = WriteQueue::new();
        for _ in 0..MAX_IOVECS + 10 {
            q.push(vec![1u8], 0);
        }
        let (n, _) = q.flush(|iov| Ok(iov.len())).unwrap();
        assert_eq!(n, MAX_IOVECS);
        assert_eq!(q.len(), 10);
    }

    #[test]
    fn errors_leave_the_queue_untouched() {
        let mut q = WriteQueue::new();
        q.push(b"data".to_vec(), 1);
        let err = q
            .flush(|_| Err(io::Error::from(io::ErrorKind::WouldBlock)))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(q.len(), 3);
        assert_eq!(q.clear().len(), 1);
        assert!(q.is_empty());
    }
}
