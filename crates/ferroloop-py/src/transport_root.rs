//! `TransportRoot`: the native class that puts `asyncio.BaseTransport` under every Rust
//! transport, so that a ferroloop transport is an instance of asyncio's transport classes.
//!
//! asyncio's `BaseTransport` is a Python class with `__slots__ = ('_extra',)`: a Python class
//! cannot inherit from it and from a native class at once (their layouts conflict), and a `PyO3`
//! class can only extend a class whose layout is known when it is compiled. So this module makes,
//! at run time, a native subclass of `BaseTransport` with the same layout (`TransportRoot`), and
//! tells `PyO3` that layout (`BaseTransportLayout`); the Rust transports extend it. The Python
//! faces then add asyncio's `Transport`, `ReadTransport`, ... as further bases, which share
//! `BaseTransport`'s layout, so the class a user checks is in the MRO and the Rust methods come
//! before asyncio's.
//!
//! The root must have its own `tp_dealloc`, `tp_traverse` and `tp_clear`: inherited, they would
//! be `CPython`'s `subtype_*` functions, which start again from the instance's most derived type
//! and would recurse through the Rust class. The root handles the one slot asyncio declares.
//!
//! The layout assumption is a version risk: it is checked when the class is made (a mismatch
//! fails `import ferroloop` with the reason) and by `tests/test_compat.py`.

use std::ffi::{c_int, c_void};
use std::mem::size_of;
use std::ptr;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::impl_::pycell::{PyClassObjectBase, PyStaticClassObject};
use pyo3::impl_::pyclass::{PyClassBaseType, PyClassImpl};
use pyo3::impl_::pyclass_init::PyNativeTypeInitializer;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::type_object::{PyLayout, PySizedLayout};
use pyo3::types::{PyTuple, PyType};
use pyo3::PyTypeInfo;

/// The instance layout of `asyncio.BaseTransport`: the object header, then its `_extra` slot.
#[repr(C)]
pub struct BaseTransportLayout {
    ob_base: ffi::PyObject,
    extra: *mut ffi::PyObject,
}

/// The marker `PyO3` knows the root class by (`#[pyclass(extends = TransportRoot)]`).
pub struct TransportRoot;

static ROOT: PyOnceLock<Py<PyType>> = PyOnceLock::new();

// SAFETY: `type_object_raw` returns a type object whose instances have `BaseTransportLayout`
// (checked against `BaseTransport.__basicsize__` when the type is made).
unsafe impl PyTypeInfo for TransportRoot {
    fn type_object_raw(py: Python<'_>) -> *mut ffi::PyTypeObject {
        let root = ROOT.get_or_init(py, || match make_root(py) {
            Ok(root) => root,
            Err(err) => panic!("ferroloop: cannot derive its transports from asyncio.BaseTransport: {err}"),
        });
        root.as_ptr().cast()
    }
}

// SAFETY: instances of the root type start with exactly this layout.
unsafe impl PyLayout<TransportRoot> for BaseTransportLayout {}
impl PySizedLayout<TransportRoot> for BaseTransportLayout {}

impl PyClassBaseType for TransportRoot {
    type LayoutAsBase = PyClassObjectBase<BaseTransportLayout>;
    type BaseNativeType = TransportRoot;
    type Initializer = PyNativeTypeInitializer<TransportRoot>;
    // Immutable, as every native base is (PyO3 does not name the type outside itself).
    type PyClassMutability = <PyAny as PyClassBaseType>::PyClassMutability;
    type Layout<T: PyClassImpl> = PyStaticClassObject<T>;
}

fn make_root(py: Python<'_>) -> PyResult<Py<PyType>> {
    let base = py
        .import("asyncio.transports")?
        .getattr("BaseTransport")?
        .cast_into::<PyType>()?;
    let basicsize: usize = base.getattr("__basicsize__")?.extract()?;
    let slots = base.getattr("__slots__")?;
    if basicsize != size_of::<BaseTransportLayout>() || !slots.eq(("_extra",))? {
        return Err(PyTypeError::new_err(format!(
            "asyncio.BaseTransport has __slots__ {} and __basicsize__ {basicsize}, expected \
             ('_extra',) and {}",
            slots.repr()?,
            size_of::<BaseTransportLayout>()
        )));
    }
    let mut type_slots = [
        ffi::PyType_Slot {
            slot: ffi::Py_tp_dealloc,
            pfunc: root_dealloc as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_traverse,
            pfunc: root_traverse as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_clear,
            pfunc: root_clear as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: 0,
            pfunc: ptr::null_mut(),
        },
    ];
    let mut spec = ffi::PyType_Spec {
        // Static: CPython 3.11 keeps a pointer to the name.
        name: c"ferroloop._ferroloop.TransportRoot".as_ptr(),
        basicsize: size_of::<BaseTransportLayout>() as c_int,
        itemsize: 0,
        flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_BASETYPE | ffi::Py_TPFLAGS_HAVE_GC) as _,
        slots: type_slots.as_mut_ptr(),
    };
    let bases = PyTuple::new(py, [base])?;
    // SAFETY: the spec and its slots are valid for the call; the name is static.
    let root = unsafe { ffi::PyType_FromSpecWithBases(&raw mut spec, bases.as_ptr()) };
    // SAFETY: a new reference or null with an exception set.
    let root = unsafe { Bound::from_owned_ptr_or_err(py, root)? };
    Ok(root.cast_into::<PyType>()?.unbind())
}

/// Frees the `_extra` slot and the memory. `PyO3`'s dealloc of a Rust transport calls this last
/// and drops the reference to the type itself; a bare root instance drops it here.
unsafe extern "C" fn root_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls this with an instance of the root or a subclass, attached.
    unsafe {
        let tp = ffi::Py_TYPE(obj);
        ffi::PyObject_GC_UnTrack(obj.cast());
        root_clear(obj);
        let own = ffi::PyType_GetSlot(tp, ffi::Py_tp_dealloc) == root_dealloc as *mut c_void;
        let free = ffi::PyType_GetSlot(tp, ffi::Py_tp_free);
        let free: ffi::freefunc = std::mem::transmute(free);
        free(obj.cast());
        if own {
            ffi::Py_DECREF(tp.cast());
        }
    }
}

/// Visits `_extra` and the instance's type: `PyO3` leaves the type to the nearest heap-type base
/// with another traverse function, which is this one.
unsafe extern "C" fn root_traverse(obj: *mut ffi::PyObject, visit: ffi::visitproc, arg: *mut c_void) -> c_int {
    // SAFETY: `obj` has the root's layout; the GC is running, nothing is freed meanwhile.
    unsafe {
        let extra = (*obj.cast::<BaseTransportLayout>()).extra;
        if !extra.is_null() {
            let r = visit(extra, arg);
            if r != 0 {
                return r;
            }
        }
        visit(ffi::Py_TYPE(obj).cast(), arg)
    }
}

unsafe extern "C" fn root_clear(obj: *mut ffi::PyObject) -> c_int {
    // SAFETY: `obj` has the root's layout; the slot holds a strong reference or null.
    unsafe {
        let slot = &raw mut (*obj.cast::<BaseTransportLayout>()).extra;
        let extra = std::mem::replace(&mut *slot, ptr::null_mut());
        if !extra.is_null() {
            ffi::Py_DECREF(extra);
        }
    }
    0
}
