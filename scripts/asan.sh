#!/usr/bin/env bash
# AddressSanitizer run of the pytest suite (issue 15, point 6).
#
#   scripts/asan.sh                      # every tests/**/test_*.py, one pytest process per file
#   scripts/asan.sh tests/test_tcp.py    # only these files (each still in its own process)
#
# What it does:
#  1. builds the extension with nightly rustc's -Zsanitizer=address into its own target folder
#     ($ASAN_DIR, default target/asan), never touching python/ferroloop/*.so nor .venv's install;
#  2. lays out a copy of python/ferroloop with that .so in $ASAN_DIR/site, put first on PYTHONPATH;
#  3. checks the pipeline with a canary (a deliberate heap overflow in a tiny cdylib built the
#     same way) so that a broken ASan setup cannot pass silently, and that `import ferroloop`
#     loads the ASan build;
#  4. runs pytest once per test file (a crash in one file does not hide the others), every
#     process (children too) with gcc's libasan preloaded and reports written to $ASAN_DIR/logs;
#  5. prints each file's pytest summary, the totals, and every ASan report; exits non-zero on
#     any test failure/error, any crash, or any AddressSanitizer report.
#
# Why gcc's libasan.so and not rustc's runtime: rustc links its ASan runtime only into
# executables; a cdylib gets none, and the nightly sysroot ships it only as a static archive
# (librustc-nightly_rt.asan.a), which cannot be preloaded.  CPython is not ASan-built either, so
# the runtime has to be LD_PRELOADed into the interpreter: gcc's libasan.so (libasan8, GCC 12
# here) exports every __asan_* symbol that rustc's LLVM instrumentation calls (checked below).
#
# Environment knobs:
#   ASAN_TOOLCHAIN (default nightly), ASAN_DIR (default target/asan),
#   ASAN_PYTHON (default .venv/bin/python; not PY, which the Makefile uses for a version)
#   FERROLOOP_BACKEND        passed through to the tests (epoll, poll, select, io_uring)
#   ASAN_SKIP_BUILD=1        reuse the last build in $ASAN_DIR
#   ASAN_DEBUG_ASSERTIONS=1  build with debug assertions too (debug_assert! and std's checks of
#                            unsafe preconditions, e.g. slice::from_raw_parts); use another ASAN_DIR
#   ASAN_LEAKS=1             LeakSanitizer too (see below); about 15 times slower, and tests with
#                            tight timeouts may then fail on both loops: run it on a few files
#   ASAN_EXTRA_OPTIONS       appended to ASAN_OPTIONS
#   PYTEST_ARGS              extra pytest arguments, e.g. "-x -k tcp"
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOOLCHAIN=${ASAN_TOOLCHAIN:-nightly}
ASAN_DIR=${ASAN_DIR:-$ROOT/target/asan}
PY=${ASAN_PYTHON:-$ROOT/.venv/bin/python}
SITE=$ASAN_DIR/site
LOGS=$ASAN_DIR/logs
NICE=(nice -n 10)

log() { printf '== asan: %s\n' "$*"; }
die() { printf 'asan: %s\n' "$*" >&2; exit 2; }

# --- prerequisites ----------------------------------------------------------------------------
if [ ! -x "$PY" ] || ! "$PY" -c 'import pytest' 2>/dev/null; then
    log "no venv with pytest at $PY: making it (make venv)"
    make --no-print-directory venv
fi
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
    log "installing the $TOOLCHAIN toolchain"
    rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
LIBASAN=$(gcc -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ]; then
    # Debian: libasan8 comes with gcc (libgcc-12-dev depends on it).
    log "no libasan.so: installing gcc's (libasan8)"
    apt-get update -qq && apt-get install -y -qq libasan8 >/dev/null
    LIBASAN=$(gcc -print-file-name=libasan.so)
    [ -e "$LIBASAN" ] || die "gcc's libasan.so not found"
fi
LIBASAN=$(readlink -f "$LIBASAN")
TRIPLE=$(rustup run "$TOOLCHAIN" rustc -vV | sed -n 's/^host: //p')
EXT_SUFFIX=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
log "toolchain $(rustup run "$TOOLCHAIN" rustc --version), runtime $LIBASAN, $("$PY" --version)"

# --- 1. build ---------------------------------------------------------------------------------
# --target: RUSTFLAGS then apply to the target crates only, not to build scripts and proc-macros
# (which would otherwise be built with ASan too and fail to load into rustc).
# The release profile without fat LTO (quicker to build, same code checked), with line tables so
# that the reports name files and lines; frame pointers for ASan's fast unwinder.
SO=$ASAN_DIR/$TRIPLE/release/lib_ferroloop.so
if [ "${ASAN_SKIP_BUILD:-0}" != 1 ]; then
    log "building the extension with -Zsanitizer=address into $ASAN_DIR"
    profile_env=(
        CARGO_PROFILE_RELEASE_LTO=false
        CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
        CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
    )
    if [ "${ASAN_DEBUG_ASSERTIONS:-0}" = 1 ]; then
        profile_env+=(CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true)
    fi
    env "${profile_env[@]}" \
        CARGO_TARGET_DIR="$ASAN_DIR" \
        PYO3_PYTHON="$PY" \
        RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes" \
        "${NICE[@]}" cargo "+$TOOLCHAIN" build --release --locked \
        -p ferroloop-py --lib --target "$TRIPLE"
fi
[ -f "$SO" ] || die "no ASan build at $SO"
nm -D --undefined-only "$SO" | grep ' U __asan_init' >/dev/null || die "$SO is not ASan-instrumented"
missing=$(comm -23 \
    <(nm -D --undefined-only "$SO" | awk '$2 ~ /^__asan/ {print $2}' | sort -u) \
    <(nm -D --defined-only "$LIBASAN" | awk '{print $3}' | sort -u))
[ -z "$missing" ] || die "$LIBASAN lacks symbols the build needs: $missing"

# --- 2. a site folder with the ASan build -----------------------------------------------------
rm -rf "$SITE"
mkdir -p "$SITE"
cp -r python/ferroloop "$SITE/"
find "$SITE" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
cp "$SO" "$SITE/ferroloop/_ferroloop$EXT_SUFFIX"

# --- the run's environment --------------------------------------------------------------------
# ASAN_OPTIONS, each for a reason:
#   detect_leaks=0             CPython (not ASan-built) does not free everything at exit: LeakSanitizer
#                              would report the interpreter's own blocks, and a leak is no memory
#                              error: leaks are a separate run, ASAN_LEAKS=1 (below)
#   allocator_may_return_null=1  a huge allocation returns NULL (Python's MemoryError), as without
#                              ASan, instead of ASan aborting the process on it
#   log_path=...               every report, also of child interpreters and of processes whose
#                              stderr a test captures, is written to a file per process (PID
#                              suffix) that this script collects, instead of being lost in a pipe
#   abort_on_error=0, exitcode=66  a process with a report exits with 66 (not 1, which tests
#                              and pytest use for their own failures)
#   handle_segv=1, handle_abort=1  a crash (SIGSEGV/SIGBUS, abort) also gets an ASan report with
#                              the native stack, in the log file
#   symbolize=1                reports with function/file:line (gcc's libasan symbolizes itself)
# PYTHONMALLOC=malloc: Python objects are then plain malloc blocks, so that a PyObject the
#   extension uses after its last reference is gone (or frees twice) is a heap-use-after-free /
#   double-free that ASan sees, instead of a slot recycled inside pymalloc's arenas.
ASAN_OPTS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=0:exitcode=66"
ASAN_OPTS+=":handle_segv=1:handle_abort=1:symbolize=1"
CANARY_OPTS=$ASAN_OPTS
# ASAN_LEAKS=1: LeakSanitizer on as well (a separate run, slower). With PYTHONMALLOC=malloc a
#   Python object the extension keeps one reference too many to, once nothing else points to it,
#   is an unreachable malloc block: LSan reports it at exit.  CPython 3.11 leaves little else
#   unreachable.  What the extension leaves by design is PyO3's per-class member tables
#   (PyMemberDef arrays built once when the module creates its types, never freed: 80 bytes per
#   class), suppressed by frame (create_type_object).  Options added for this mode:
#   fast_unwind_on_malloc=0, malloc_context_size=16  CPython has no frame pointers, so the fast
#       unwinder stops inside CPython (e.g. at _PyLong_New) and never reaches the extension's
#       frame; the slow (DWARF) unwinder does, up to 16 frames deep
#   exitcode=0  LD_PRELOAD reaches every child program too (tr, cat, sh...), and their own
#       leaks at exit must not change their exit status (tests compare it); reports are found
#       in the log files instead, and a leak counts only if its stack has a frame of the
#       extension (a Rust source file, *.rs); the others (CPython, child programs) are listed.
LSAN_SUPP=$ASAN_DIR/lsan.supp
mkdir -p "$ASAN_DIR"
printf '%s\n' '# PyO3: the PyMemberDef table of each pyclass type, made once at import' \
    'leak:create_type_object' >"$LSAN_SUPP"
if [ "${ASAN_LEAKS:-0}" = 1 ]; then
    ASAN_OPTS=${ASAN_OPTS/detect_leaks=0/detect_leaks=1}
    ASAN_OPTS=${ASAN_OPTS/exitcode=66/exitcode=0}
    ASAN_OPTS+=":fast_unwind_on_malloc=0:malloc_context_size=16"
fi
[ -z "${ASAN_EXTRA_OPTIONS:-}" ] || ASAN_OPTS+=":$ASAN_EXTRA_OPTIONS"
asan_env() { # asan_env LOGPREFIX CMD...  (ASAN_RUN_OPTS overrides ASAN_OPTS)
    local prefix=$1
    shift
    env LD_PRELOAD="$LIBASAN" ASAN_OPTIONS="${ASAN_RUN_OPTS:-$ASAN_OPTS}:log_path=$prefix" \
        LSAN_OPTIONS="suppressions=$LSAN_SUPP:print_suppressions=0" \
        PYTHONMALLOC=malloc PYTHONPATH="$SITE" PYTHONDONTWRITEBYTECODE=1 "$@"
}

rm -rf "$LOGS"
mkdir -p "$LOGS"

# --- 3. canary and import check ---------------------------------------------------------------
CANARY=$ASAN_DIR/canary
mkdir -p "$CANARY"
cat >"$CANARY/canary.rs" <<'EOF'
// A deliberate heap-buffer-overflow: proves that an ASan report from a Rust cdylib loaded into
// this CPython reaches the log files (i.e. that a clean run means something).
#[no_mangle]
pub extern "C" fn canary_overflow(i: usize) -> u8 {
    let v = vec![1u8; 8];
    let p = v.as_ptr();
    unsafe { std::ptr::read_volatile(p.add(i)) }
}
EOF
rustup run "$TOOLCHAIN" rustc --edition 2021 -O -Zsanitizer=address --crate-type cdylib \
    --target "$TRIPLE" -o "$CANARY/libcanary.so" "$CANARY/canary.rs"
set +e
ASAN_RUN_OPTS=$CANARY_OPTS asan_env "$LOGS/canary" "$PY" -c \
    "import ctypes; ctypes.CDLL('$CANARY/libcanary.so').canary_overflow(8)" 2>/dev/null
canary_rc=$?
set -e
if [ $canary_rc -ne 66 ] || ! grep -qs 'ERROR: AddressSanitizer: heap-buffer-overflow' "$LOGS"/canary.*; then
    die "canary: ASan did not report the deliberate overflow (exit $canary_rc): the setup is broken"
fi
rm -f "$LOGS"/canary.*
log "canary: deliberate heap-buffer-overflow reported (exit 66): ASan works"

loaded=$(asan_env "$LOGS/import" "$PY" -c \
    'import ferroloop, ferroloop._ferroloop as m; print(ferroloop.__file__); print(m.__file__)')
printf '%s\n' "$loaded"
case "$loaded" in
*"$SITE/ferroloop/_ferroloop$EXT_SUFFIX"*) ;;
*) die "import ferroloop did not load the ASan build from $SITE" ;;
esac

# --- 4. the suite, one pytest process per file ------------------------------------------------
if [ $# -gt 0 ]; then
    files=("$@")
else
    mapfile -t files < <(find tests -name 'test_*.py' | sort)
fi
read -r -a pytest_args <<<"${PYTEST_ARGS:-}"
log "running ${#files[@]} test files (backend ${FERROLOOP_BACKEND:-default}); reports go to $LOGS"
failed_files=()
report_files=()
for f in "${files[@]}"; do
    name=$(basename "$f" .py)
    [ -n "$(dirname "$f" | sed 's|^tests/\?||')" ] && name="$(dirname "$f" | sed 's|^tests/||; s|/|_|g')_$name"
    set +e
    asan_env "$LOGS/$name" "${NICE[@]}" "$PY" -m pytest "$f" -q -p no:cacheprovider \
        --junitxml="$LOGS/$name.xml" "${pytest_args[@]}" >"$LOGS/$name.out" 2>&1
    rc=$?
    set -e
    summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error|deselected|xfailed|xpassed)|no tests ran' \
        "$LOGS/$name.out" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//' || true)
    mapfile -t reports < <(compgen -G "$LOGS/$name.[0-9]*" || true)
    printf '%-44s rc=%-3s %s\n' "$f" "$rc" "${summary:-(no pytest summary: crashed?)}"
    if [ ${#reports[@]} -gt 0 ]; then
        report_files+=("${reports[@]}")
        printf '    ASan output from %d process(es): %s\n' "${#reports[@]}" "${reports[*]}"
    fi
    if [ $rc -ne 0 ] || [ -z "$summary" ]; then
        failed_files+=("$f")
        grep -E "^(FAILED|ERROR) tests/" "$LOGS/$name.out" | sed 's/^/    /' || true
    fi
done

# --- 5. totals and reports --------------------------------------------------------------------
"$PY" - "$LOGS" <<'EOF'
import glob, sys
import xml.etree.ElementTree as ET
t = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for path in glob.glob(sys.argv[1] + "/*.xml"):
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        continue
    for suite in root.iter("testsuite"):
        for k in t:
            t[k] += int(suite.get(k, 0))
passed = t["tests"] - t["failures"] - t["errors"] - t["skipped"]
# junit counts xfailed tests as skipped.
print(f"asan totals: {passed} passed, {t['failures']} failed, {t['skipped']} skipped, {t['errors']} errors")
EOF
status=0
errors=()
other_leaks=()
for r in "${report_files[@]}"; do
    if grep -q 'ERROR: AddressSanitizer' "$r"; then
        errors+=("$r")
    elif grep -q 'ERROR: LeakSanitizer' "$r"; then
        # A leak is the extension's when a frame of its stack is in a Rust source file.
        if awk '/^(Direct|Indirect) leak/ {b = 1} /^$/ {b = 0} b && /\.rs:[0-9]+/ {f = 1} END {exit !f}' "$r"; then
            errors+=("$r")
        else
            other_leaks+=("$r")
        fi
    fi
done
[ ${#other_leaks[@]} -eq 0 ] ||
    log "leaks with no frame in the extension (CPython's or a child program's; not counted): ${other_leaks[*]}"
for r in "${report_files[@]}"; do
    case " ${other_leaks[*]} " in *" $r "*) continue ;; esac
    printf -- '----- %s\n' "$r"
    head -c 20000 "$r"
done
if [ ${#errors[@]} -gt 0 ]; then
    log "FAIL: ${#errors[@]} AddressSanitizer report(s) (leaks: only those with a frame in the extension): ${errors[*]}"
    status=1
fi
if [ ${#failed_files[@]} -gt 0 ]; then
    log "FAIL: pytest failed in ${#failed_files[@]} file(s): ${failed_files[*]} (output in $LOGS/*.out)"
    status=1
fi
[ $status -ne 0 ] || log "OK: no AddressSanitizer report, no test failure"
exit $status
