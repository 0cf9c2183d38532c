//! Emits `PyO3`'s version cfgs (`Py_3_12`, `Py_GIL_DISABLED`, ...).
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
