//! One iteration of the loop, as asyncio's `_run_once`: the wait for I/O, the queueing of what
//! became ready (fds, completions, due timers), and the run of the callbacks queued before it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ferroloop_core::clock::{monotonic_ns, monotonic_resolution_ns};
use ferroloop_core::driver::{Driver, Event};
use pyo3::prelude::*;

use super::ops::restart_starved;
use super::{closed_error, LoopCore, Ready, State};
use crate::glue::loop_time;
use crate::glue::{self, os_error};
use crate::handle::Handle;
use crate::owner::{IoOp, Owner};
use crate::transport::is_exit;

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: the longest single wait, 24 hours.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How long an iteration may wait for I/O: not at all if callbacks are ready or the loop is
/// stopping, else until the first timer is due (forever if there is none); with the time read
/// to work that out, if it was read.
fn wait_timeout(s: &State, stopping: bool) -> (Option<Duration>, Option<u64>) {
    if !s.ready.is_empty() || stopping {
        return (Some(Duration::ZERO), None);
    }
    match s.timers.next_deadline() {
        Some(d) => {
            let now = monotonic_ns();
            (
                Some(Duration::from_nanos(d.saturating_sub(now)).min(MAX_WAIT)),
                Some(now),
            )
        }
        None => (None, None),
    }
}

impl State {
    /// Begins the pass of an iteration that has nothing to wait for and nothing to queue, if
    /// this one is such: callbacks are ready (so the wait would not block), the look for I/O may
    /// be left out (`State::quiet`), and no timer, completion or starved receive is pending. Its
    /// pass then begins in this one borrow; `None` sends the iteration down the general path
    /// (`wait_for_io`, `queue_ready`). A chain of callbacks or task steps with no I/O and no
    /// timer, the micro benchmarks' rows, takes this path on every iteration.
    fn quick_pass(&mut self) -> Option<usize> {
        let quick = !self.ready.is_empty()
            && self.timers.is_empty()
            && self.ops.is_empty()
            && self.starved.is_empty()
            && self.driver.as_deref().is_some_and(|d| self.quiet(d));
        quick.then(|| self.ready.begin_pass())
    }
}

impl LoopCore {
    /// `_run_core`: iterations until `stop()`.
    pub(super) fn run_core(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.stats.run_started();
        let result = loop {
            if let Err(e) = Self::run_once(slf) {
                break Err(e);
            }
            if this.stopping.load(Ordering::Relaxed) {
                break Ok(());
            }
        };
        this.stopping.store(false, Ordering::Relaxed);
        this.stats.run_ended();
        result
    }

    /// One loop iteration. Errors are what must stop `run_forever`: `SystemExit`,
    /// `KeyboardInterrupt`, an exception from a signal handler, or a failing wait.
    pub(super) fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (now, ntodo) = if let Some(ntodo) = this.state.with(py, State::quick_pass)? {
            (monotonic_ns(), ntodo)
        } else {
            let events = this.wait_for_io(py)?;
            let now = this.queue_ready(py, events)?;
            (now, this.state.with(py, |s| s.ready.begin_pass())?)
        };
        this.stats.iteration_began(now);
        let ran = Self::run_ready(slf, ntodo)?;
        this.stats.iteration_ended(ran);
        Ok(())
    }

    /// Drops cancelled timers, then waits for I/O: not at all if callbacks are ready or the loop
    /// is stopping, else until the first timer is due. Returns the events (the state's reusable
    /// buffer, to be given back by `queue_ready`).
    fn wait_for_io(&self, py: Python<'_>) -> PyResult<Vec<Event>> {
        let stopping = self.stopping.load(Ordering::Relaxed);
        // The common case (callbacks ready, no cancelled timer, no starved receive) takes one
        // borrow: the wait that does not block runs inside it (it runs no Python code), so the
        // driver's `Arc` is not cloned and no empty `Vec` is made and dropped.
        let (driver, mut events, purged, waited) = self.state.with(py, |s| {
            let purged = s.timers.has_cancelled().then(|| {
                let purged = s.timers.purge_cancelled(|t| t.bind(py).as_super().get().is_cancelled());
                for t in &purged {
                    t.get().unschedule();
                }
                purged
            });
            if !s.starved.is_empty() {
                restart_starved(s);
            }
            let (timeout, _) = wait_timeout(s, stopping);
            let mut events = std::mem::take(&mut s.events);
            if timeout == Some(Duration::ZERO) {
                let waited = match s.driver.as_deref() {
                    Some(d) if s.quiet(d) => {
                        events.clear();
                        Ok(())
                    }
                    Some(d) => d.wait(&mut events, timeout).map_err(|e| os_error(&e)),
                    None => Err(closed_error()),
                };
                (None, events, purged, Some(waited))
            } else {
                (s.driver.clone(), events, purged, None)
            }
        })?;
        // Outside the borrow: the last reference to a timer frees it.
        for t in purged.into_iter().flatten() {
            Handle::release(t.into_bound(py).into_super());
        }
        // Python-level signal handlers (KeyboardInterrupt on SIGINT) run after a wait that may
        // have blocked, as they would when asyncio's select() returns EINTR. After a wait that
        // does not block they are the interpreter's to run, before the next callback's bytecode,
        // as with asyncio's select(timeout=0).
        let waited = match (waited, driver) {
            (Some(waited), _) => waited,
            (None, Some(driver)) => self
                .look_then_wait(py, &driver, &mut events)
                .and_then(|()| py.check_signals()),
            (None, None) => Err(closed_error()),
        };
        if let Err(e) = waited {
            events.clear();
            self.state.with(py, |s| s.events = events)?;
            return Err(e);
        }
        Ok(events)
    }

    /// Waits for I/O when the iteration may block: first a look that does not block, and only if
    /// it finds nothing, the blocking wait (detached, so other threads run meanwhile).
    ///
    /// A busy loop mostly finds I/O already pending, so the look saves detaching (releasing and
    /// re-taking the GIL) around a wait that would not have blocked; a loop with nothing to do
    /// pays one more `epoll_wait`, just before it sleeps anyway. Measured on
    /// `unix bufproto 1KiB` (paired runs against uvloop): server CPU per request 1.075x of
    /// uvloop's without the look, 1.099x with it.
    fn look_then_wait(&self, py: Python<'_>, driver: &Driver, events: &mut Vec<Event>) -> PyResult<()> {
        driver.wait(events, Some(Duration::ZERO)).map_err(|e| os_error(&e))?;
        if !events.is_empty() || driver.has_completions() {
            return Ok(());
        }
        // A signal that interrupted the look would otherwise not be handled until the blocking
        // wait ends: run its Python handler now. The handler, or another thread, may have queued
        // callbacks or stopped the loop (the look may even have consumed the wake-up of a
        // `call_soon_threadsafe`, which queues before it wakes): work out the timeout again.
        py.check_signals()?;
        let stopping = self.stopping.load(Ordering::Relaxed);
        let (timeout, now) = self.state.with(py, |s| wait_timeout(s, stopping))?;
        if timeout == Some(Duration::ZERO) {
            return Ok(());
        }
        // The wait ends where the next iteration reads the clock (`Stats::iteration_began`).
        self.stats.wait_begins(now.unwrap_or_else(monotonic_ns));
        py.detach(|| driver.wait(events, timeout)).map_err(|e| os_error(&e))
    }

    /// Queues the callbacks of ready fds, then the due timers: as asyncio's `_run_once`, those
    /// due before `time() + _clock_resolution` (`end_time`), read after the wait.
    ///
    /// Returns the time read after the wait (nanoseconds).
    fn queue_ready(&self, py: Python<'_>, mut events: Vec<Event>) -> PyResult<u64> {
        // Due means `deadline < end_time`, i.e. `deadline <= end_time - 1` in whole nanoseconds.
        let now = monotonic_ns();
        let last_due = now + monotonic_resolution_ns() - 1;
        let stale = self.state.with(py, |s| {
            if events.is_empty() && s.timers.is_empty() && s.ops.is_empty() {
                // Nothing became ready (the common case of an iteration with callbacks ready).
                s.events = events;
                return None;
            }
            let mut stale: Vec<Py<Handle>> = Vec::new();
            for ev in events.drain(..) {
                let Some(src) = s.sources.get_mut(ev.token) else {
                    continue;
                };
                if ev.edge && !src.interest().edge {
                    // From a kept registration whose socket was closed with its file still open
                    // (a dup, a child): the token is another source's now (see `Event::edge`).
                    continue;
                }
                let mut changed = false;
                let entry = &mut src.data;
                for (ready, slot) in [(ev.readable, &mut entry.reader), (ev.writable, &mut entry.writer)] {
                    let Some(h) = slot.as_ref().filter(|_| ready) else {
                        continue;
                    };
                    if h.get().is_cancelled() {
                        // asyncio's _process_events: a cancelled reader or writer is removed.
                        stale.extend(slot.take());
                        changed = true;
                    } else {
                        s.ready.push(Ready::Native(h.clone_ref(py)));
                    }
                }
                if let Some(owner) = &entry.owner {
                    if ev.readable && entry.owner_interest.readable {
                        s.ready.push(Ready::Io(owner.clone_ref(py), IoOp::Read, None));
                    }
                    if ev.writable && entry.owner_interest.writable {
                        s.ready.push(Ready::Io(owner.clone_ref(py), IoOp::Write, None));
                    }
                }
                if changed {
                    let interest = entry.interest();
                    let unused = entry.is_unused();
                    if let Some(d) = s.driver.as_deref() {
                        if unused {
                            s.sources.remove(d, ev.token);
                        } else {
                            // NOTE: a failure means the fd is gone; the next add reports it.
                            let _ = s.sources.set_interest(d, ev.token, interest);
                        }
                    }
                }
            }
            s.events = events;
            let finished = match s.driver.clone() {
                Some(d) => {
                    let ready = &mut s.ready;
                    s.ops.dispatch(py, &d, |owner, done| {
                        if let Owner::Stream(t) = &owner {
                            if !done.buffers.as_slice().is_empty() {
                                t.get().data_queued();
                            }
                        }
                        ready.push(Ready::Io(owner, IoOp::Done(done), None));
                    })
                }
                None => Vec::new(),
            };
            let mut due = 0;
            while let Some(t) = s.timers.pop_due(last_due) {
                t.get().unschedule();
                s.ready.push(Ready::Native(t.into_bound(py).into_super().unbind()));
                due += 1;
            }
            self.stats.timers.add(due);
            Some((stale, finished))
        })?;
        drop(stale);
        Ok(now)
    }

    /// Debug mode: warns, as asyncio does for a slow handle, when an owner's work that started at
    /// `t0` took `slow_callback_duration` or longer.
    fn report_slow_io(slf: &Bound<'_, Self>, owner: &Owner, method: &'static str, t0: f64) -> PyResult<()> {
        let py = slf.py();
        let dt = loop_time() - t0;
        let threshold: f64 = slf.getattr(pyo3::intern!(py, "slow_callback_duration"))?.extract()?;
        if dt >= threshold {
            glue::helper(py, "report_slow_io")?.call1((owner.object(py), method, dt))?;
        }
        Ok(())
    }

    /// Runs the `ntodo` callbacks queued when the pass began; what they schedule runs in the next
    /// iteration. Returns how many were taken from the queue.
    fn run_ready(slf: &Bound<'_, Self>, ntodo: usize) -> PyResult<u64> {
        let py = slf.py();
        let this = slf.get();
        let debug = this.debug();
        for _ in 0..ntodo {
            let Some(item) = this.state.with(py, |s| s.ready.pop())? else {
                break;
            };
            match item {
                // `into_bound`: dropping a `Bound` is a plain decref, where dropping a `Py` first
                // reads thread-local state (is the thread attached?).
                Ready::Native(h) => {
                    let h = h.into_bound(py);
                    let ran = if h.get().is_cancelled() {
                        Ok(())
                    } else {
                        this.stats.callbacks.add(1);
                        if debug {
                            glue::helper(py, "run_handle_debug")?.call1((slf, &h)).map(drop)
                        } else {
                            Handle::run(&h)
                        }
                    };
                    Handle::release(h);
                    ran?;
                }
                Ready::Io(owner, op, context) => {
                    this.stats.io_events.add(1);
                    // Debug mode times each dispatch as asyncio's `_run_once` times the
                    // transports' `_read_ready` handles; otherwise nothing is done.
                    let started = debug.then(|| (op.method_name(), loop_time()));
                    let result = owner.run(py, op, context);
                    if let Some((method, t0)) = started {
                        // A SystemExit/KeyboardInterrupt leaves at once, as from asyncio's handle.
                        if !matches!(&result, Err(err) if is_exit(py, err)) {
                            Self::report_slow_io(slf, &owner, method, t0)?;
                        }
                    }
                    if let Err(err) = result {
                        if is_exit(py, &err) {
                            return Err(err);
                        }
                        // Nothing a transport raises may stop the loop: report it as asyncio
                        // reports an exception from a callback.
                        glue::helper(py, "report_call_error")?.call1((
                            slf,
                            owner.object(py),
                            (),
                            glue::exc_value(py, &err),
                        ))?;
                    }
                }
                Ready::Foreign(obj) => {
                    let obj = &obj.into_bound(py);
                    if obj.getattr("_cancelled")?.is_truthy()? {
                        continue;
                    }
                    this.stats.callbacks.add(1);
                    if debug {
                        glue::helper(py, "run_handle_debug")?.call1((slf, obj))?;
                    } else {
                        obj.call_method0("_run")?;
                    }
                }
            }
        }
        Ok(ntodo as u64)
    }
}
