//! Creating asyncio's own C `Future` and `Task` objects without going through Python code.
//!
//! Every task and future costs one `create_task`/`create_future` call and one `get_debug` call
//! (the C `Future.__init__` asks the loop), so all three are Rust. The constructors are called
//! through vectorcall with interned keyword names: no argument tuple or kwargs dict is built.
//! The classes are looked up at each call where asyncio's `create_task`/`create_future` find them.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyString, PyTuple};

static FUTURE: AsyncioGlobal = AsyncioGlobal::new("asyncio.futures", "Future");
static TASK: AsyncioGlobal = AsyncioGlobal::new("asyncio.tasks", "Task");
static KW_LOOP: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
static ASYNCIO_CREATE_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// asyncio's `BaseEventLoop.create_task` (a plain function: pass the loop first).
pub fn asyncio_create_task(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    Ok(ASYNCIO_CREATE_TASK
        .get_or_try_init(py, || {
            py.import("asyncio.base_events")?
                .getattr("BaseEventLoop")?
                .getattr("create_task")
                .map(Bound::unbind)
        })?
        .bind(py))
}

/// The global `name` of the asyncio module `module`, read at each call as asyncio's own code
/// reads it (`tasks.Task(...)`, `futures.Future(...)`), so that code replacing it (with
/// `tasks._PyTask`, say) is seen.
///
/// The value found is kept, borrowed from the module's dict (which a module never swaps), for as
/// long as the dict is unchanged: on 3.11 while its version tag is the same, on 3.12+ until a
/// dict watcher reports a change. A lookup in the dict cost ~200 instructions per task or future.
/// The free-threaded build, where a borrowed pointer could go stale under us, looks up each time.
struct AsyncioGlobal {
    module_name: &'static str,
    name: &'static str,
    module: PyOnceLock<Py<PyModule>>,
    /// The module's dict, borrowed (the module, kept in `module`, holds it).
    dict: AtomicPtr<ffi::PyObject>,
    /// The value last found, borrowed from `dict`; null when not known to be current.
    #[cfg_attr(Py_GIL_DISABLED, allow(dead_code))]
    cached: AtomicPtr<ffi::PyObject>,
    /// 3.11: `ma_version_tag` of `dict` when `cached` was read. 3.12+: bumped by each change to
    /// `dict`, so that a change during a lookup is not missed.
    #[cfg_attr(Py_GIL_DISABLED, allow(dead_code))]
    version: AtomicU64,
}

impl AsyncioGlobal {
    const fn new(module_name: &'static str, name: &'static str) -> Self {
        Self {
            module_name,
            name,
            module: PyOnceLock::new(),
            dict: AtomicPtr::new(std::ptr::null_mut()),
            cached: AtomicPtr::new(std::ptr::null_mut()),
            version: AtomicU64::new(0),
        }
    }

    fn get<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        #[cfg(not(Py_GIL_DISABLED))]
        {
            let cached = self.cached.load(Ordering::Relaxed);
            if !cached.is_null() && self.unchanged() {
                // SAFETY: the dict, unchanged since `cached` was read from it, still holds it.
                return Ok(unsafe { Bound::from_borrowed_ptr(py, cached) });
            }
        }
        let module = self
            .module
            .get_or_try_init(py, || py.import(self.module_name).map(Bound::unbind))?
            .bind(py);
        let dict = module.dict();
        self.dict.store(dict.as_ptr(), Ordering::Relaxed);
        let version = self.watch(py, &dict);
        match dict.get_item(PyString::intern(py, self.name))? {
            Some(value) => {
                #[cfg(not(Py_GIL_DISABLED))]
                if version.is_some() && version == self.current_version() {
                    self.cached.store(value.as_ptr(), Ordering::Relaxed);
                }
                #[cfg(Py_GIL_DISABLED)]
                let _ = version;
                Ok(value)
            }
            // Deleted: the module's own `AttributeError` (or its `__getattr__`).
            None => module.as_any().getattr(self.name),
        }
    }

    /// Whether the dict is unchanged since `cached` was read.
    #[cfg(not(Py_GIL_DISABLED))]
    #[inline]
    #[allow(clippy::unused_self)]
    fn unchanged(&self) -> bool {
        #[cfg(not(Py_3_12))]
        return self.current_version() == Some(self.version.load(Ordering::Relaxed));
        // The watcher clears `cached` on any change.
        #[cfg(Py_3_12)]
        true
    }

    /// The version to compare after the lookup (None: do not cache), after making sure that
    /// changes to `dict` are seen.
    #[allow(clippy::unnecessary_wraps, clippy::unused_self)]
    fn watch(&self, py: Python<'_>, dict: &Bound<'_, PyDict>) -> Option<u64> {
        #[cfg(all(Py_3_12, not(Py_GIL_DISABLED)))]
        {
            let id = watcher::id(py)?;
            // SAFETY: `dict` is a live dict; the watcher id is ours.
            if unsafe { ffi::PyDict_Watch(id, dict.as_ptr()) } != 0 {
                drop(PyErr::take(py));
                return None;
            }
        }
        #[cfg(not(Py_3_12))]
        self.version.store(dict_version(dict.as_ptr()), Ordering::Relaxed);
        let _ = (py, dict);
        self.current_version()
    }

    #[allow(clippy::unnecessary_wraps, clippy::unused_self)]
    fn current_version(&self) -> Option<u64> {
        #[cfg(all(Py_3_12, not(Py_GIL_DISABLED)))]
        return Some(self.version.load(Ordering::Relaxed));
        #[cfg(not(Py_3_12))]
        return Some(dict_version(self.dict.load(Ordering::Relaxed)));
        #[cfg(Py_GIL_DISABLED)]
        None
    }
}

/// `ma_version_tag` of a dict (PEP 509): a new value after every change of the dict.
#[cfg(not(Py_3_12))]
fn dict_version(dict: *mut ffi::PyObject) -> u64 {
    // SAFETY: `dict` is a live dict (the module dict of a module kept alive by a static).
    unsafe { (*dict.cast::<ffi::PyDictObject>()).ma_version_tag }
}

/// The dict watcher (3.12+) that forgets the cached values of a module dict that changes.
#[cfg(all(Py_3_12, not(Py_GIL_DISABLED)))]
mod watcher {
    use std::ffi::c_int;
    use std::sync::atomic::Ordering;

    use pyo3::ffi;
    use pyo3::prelude::*;
    use pyo3::sync::PyOnceLock;

    type Callback = unsafe extern "C" fn(c_int, *mut ffi::PyObject, *mut ffi::PyObject, *mut ffi::PyObject) -> c_int;

    extern "C" {
        // Not declared by pyo3-ffi. `int PyDict_AddWatcher(PyDict_WatchCallback callback)`.
        fn PyDict_AddWatcher(callback: Callback) -> c_int;
    }

    static ID: PyOnceLock<Option<c_int>> = PyOnceLock::new();

    /// Our watcher's id, registered at first use; None if the interpreter has no free watcher slot.
    pub fn id(py: Python<'_>) -> Option<c_int> {
        *ID.get_or_init(py, || {
            // SAFETY: registers a callback with the signature CPython expects.
            let id = unsafe { PyDict_AddWatcher(on_change) };
            if id < 0 {
                drop(PyErr::take(py));
                return None;
            }
            Some(id)
        })
    }

    /// Called (with the GIL held) before any change to a watched dict, and at its deallocation.
    unsafe extern "C" fn on_change(
        _event: c_int,
        dict: *mut ffi::PyObject,
        _key: *mut ffi::PyObject,
        _new_value: *mut ffi::PyObject,
    ) -> c_int {
        for global in [&super::FUTURE, &super::TASK] {
            if global.dict.load(Ordering::Relaxed) == dict {
                global.cached.store(std::ptr::null_mut(), Ordering::Relaxed);
                global.version.fetch_add(1, Ordering::Relaxed);
            }
        }
        0
    }
}

/// The most positional arguments `call_with_loop` passes (`Task(coro, loop=...)`).
const MAX_POSITIONAL: usize = 1;

/// Calls `callable(*positional, loop=loop_)`.
fn call_with_loop<'py>(
    callable: &Bound<'py, PyAny>,
    positional: &[&Bound<'py, PyAny>],
    loop_: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let kwnames = KW_LOOP.get_or_init(py, || PyTuple::new(py, ["loop"]).expect("a one-string tuple").unbind());
    // On the stack: this runs for every task and future (a `Vec` was a malloc and a free each).
    let mut args = [std::ptr::null_mut::<ffi::PyObject>(); MAX_POSITIONAL + 1];
    assert!(positional.len() <= MAX_POSITIONAL, "call_with_loop: too many arguments");
    for (slot, a) in args.iter_mut().zip(positional) {
        *slot = a.as_ptr();
    }
    args[positional.len()] = loop_.as_ptr();
    // SAFETY: `args` holds borrowed pointers kept alive by the `Bound`s above for the whole call:
    // `positional.len()` positional arguments followed by one keyword value named by `kwnames`.
    // The result is a new reference or null with an exception set.
    unsafe {
        let res = ffi::PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), positional.len(), kwnames.as_ptr());
        Bound::from_owned_ptr_or_err(py, res)
    }
}

/// `futures.Future(loop=loop_)`, as `BaseEventLoop.create_future` makes it.
pub fn new_future<'py>(loop_: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    let future = FUTURE.get(py)?;
    call_with_loop(&future, &[], loop_)
}

/// `tasks.Task(coro, loop=loop_, **kwargs)`, as `BaseEventLoop.create_task` makes it when no
/// task factory is set.
pub fn new_task<'py>(
    loop_: &Bound<'py, PyAny>,
    coro: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    let task = TASK.get(py)?;
    match kwargs.filter(|k| !k.is_empty()) {
        None => call_with_loop(&task, &[coro], loop_),
        Some(kwargs) => {
            let kwargs = kwargs.copy()?;
            kwargs.set_item("loop", loop_)?;
            task.call((coro,), Some(&kwargs))
        }
    }
}
