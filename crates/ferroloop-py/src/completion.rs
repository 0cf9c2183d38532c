//! The loop's side of the completion model (`io_uring`): a table of the operations in flight,
//! each with the owner its completions go to and the memory the kernel may still use.
//!
//! An operation's tag is its index in the table. An entry stays until the operation's last
//! completion (no `more` flag), so an index is never reused while the kernel may still post for
//! it, and a send's bytes stay alive as long as the kernel may read them. Completions reach their
//! owner through the ready queue, as [`IoOp::Done`](crate::owner::IoOp::Done), in the order they
//! were reaped.

use std::collections::HashMap;

use ferroloop_core::driver::{BufRef, Completion, Driver};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{PyTraverseError, PyVisit};
use slab::Slab;

use crate::buffers::MAX_READ;
use crate::owner::{Buffers, Done, Owner};

struct OpEntry {
    owner: Owner,
    /// A send's bytes, which the kernel reads until the send completes.
    keep: Option<Py<PyBytes>>,
}

#[derive(Default)]
pub struct OpTable {
    ops: Slab<OpEntry>,
    /// Reused across iterations.
    completions: Vec<Completion>,
    batch: Vec<(Owner, Done)>,
    /// Operation -> its entry in `batch`, which received data and may take more.
    open: HashMap<usize, usize>,
}

impl OpTable {
    /// Whether no operation is in flight (then no completion can come).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Reserves an entry for an operation of `owner`; its index is the operation's tag.
    pub fn insert(&mut self, owner: Owner, keep: Option<Py<PyBytes>>) -> usize {
        self.ops.insert(OpEntry { owner, keep })
    }

    /// Forgets an entry whose operation could not be started.
    pub fn abandon(&mut self, op: usize) -> Option<(Owner, Option<Py<PyBytes>>)> {
        self.ops.try_remove(op).map(|e| (e.owner, e.keep))
    }

    /// Takes the driver's completions and hands each to its owner through `push`, in the order
    /// they were reaped (data an operation received several times in this batch, merged, at the
    /// place of its first part). Entries of finished operations are returned, to be dropped
    /// outside the state borrow.
    pub fn dispatch(
        &mut self,
        py: Python<'_>,
        driver: &Driver,
        mut push: impl FnMut(Owner, Done),
    ) -> Vec<(Owner, Option<Py<PyBytes>>)> {
        if self.ops.is_empty() {
            // No operation in flight, so no completion: nothing to do (every iteration of a
            // readiness backend comes here).
            return Vec::new();
        }
        driver.take_completions(&mut self.completions);
        let mut finished = Vec::new();
        for c in self.completions.drain(..) {
            let op = c.tag as usize;
            let Some(entry) = self.ops.get(op) else {
                // NOTE: cannot happen (entries outlive their operations); a buffer is not lost.
                recycle(driver, c.buffer);
                continue;
            };
            let owner = entry.owner.clone_ref(py);
            if !c.more {
                let e = self.ops.remove(op);
                finished.push((e.owner, e.keep));
            }
            let received = match (c.buffer, usize::try_from(c.result)) {
                (Some(buf), Ok(len)) if len > 0 => Some((buf, len)),
                _ => None,
            };
            // At most MAX_READ bytes in one delivery, as one read of asyncio's takes at most that.
            let open = self.open.get(&op).copied().filter(|&i| {
                let so_far = usize::try_from(self.batch[i].1.result).unwrap_or(MAX_READ);
                received.is_some_and(|(_, len)| so_far + len <= MAX_READ)
            });
            if let (Some((buf, len)), Some(i)) = (received, open) {
                let done = &mut self.batch[i].1;
                done.buffers.push(buf, len);
                done.result = done.result.saturating_add(c.result);
                done.more = c.more;
                if !c.more {
                    self.open.remove(&op);
                }
                continue;
            }
            let mut buffers = Buffers::None;
            if let Some((buf, len)) = received {
                buffers.push(buf, len);
                if c.more {
                    self.open.insert(op, self.batch.len());
                }
            } else {
                // An end or an error: what follows is not merged into what came before.
                self.open.remove(&op);
                recycle(driver, c.buffer);
            }
            let done = Done {
                op,
                result: c.result,
                more: c.more,
                buffers,
            };
            self.batch.push((owner, done));
        }
        self.open.clear();
        for (owner, done) in self.batch.drain(..) {
            push(owner, done);
        }
        finished
    }

    /// Empties the table (the loop is closing, after the driver ended every operation).
    pub fn drain(&mut self) -> Vec<(Owner, Option<Py<PyBytes>>)> {
        self.ops.drain().map(|e| (e.owner, e.keep)).collect()
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for (_, e) in &self.ops {
            e.owner.traverse(visit)?;
            visit.call(&e.keep)?;
        }
        Ok(())
    }
}

/// Gives an unused buffer back to the kernel.
fn recycle(driver: &Driver, buffer: Option<BufRef>) {
    if let (Some(buf), Some(u)) = (buffer, driver.uring()) {
        u.recycle(buf);
    }
}
