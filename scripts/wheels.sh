#!/usr/bin/env bash
# wheels.sh: build ferroloop's release wheels, one per CPython version, into dist/, and check
# that each one installs into a fresh venv of its version and runs examples/demo.py.
#
#   scripts/wheels.sh [VERSIONS...]      default: 3.11 3.12 3.13 3.14 3.15
#
# Why: a wheel built plainly here would be tagged for this machine's glibc (2.36); these are
# tagged manylinux2014 (= manylinux_2_17), so pip takes them on any x86_64 Linux with glibc
# 2.17 or newer.  How: `maturin build --zig` links through zig against glibc 2.17's symbol
# versions, and `--auditwheel check` makes maturin fail (not bundle libraries) if the .so
# needs anything beyond the manylinux2014 policy.  This script checks again: the tag in the
# file name and in the WHEEL file, and the highest GLIBC_ symbol version of the .so (objdump).
# Each wheel is then installed (--no-deps --no-index: ferroloop has no dependencies) into a
# new venv target/wheels/venv-X.Y, and demo.py is run from a directory outside the repo after
# checking that ferroloop is imported from that venv, not from the source tree.
#
# Needs: the Rust toolchain, objdump (binutils), scripts/pythons.sh for the interpreters
# (3.14/3.15 from Debian sid), and maturin + ziglang from PyPI in a tools venv made on first
# use at ${FERROLOOP_WHEEL_TOOLS:-~/.cache/ferroloop/wheel-tools} (~450 MB, mostly zig).
# Cargo builds into target/wheels (not target/release: that one stays `make dev`'s), niced.
#
# How long (2 cores shared with other work): ~4 min 15 s from an empty target/wheels with the
# tools venv still to install (first version ~75 s: all dependencies; then ~25-45 s each),
# ~2 min 15 s when the dependencies are already built (~22 s per version: pyo3 and ferroloop are
# rebuilt for each interpreter, fat LTO, codegen-units=1), plus ~5 s per venv and demo.
# Without zig the .so (Rust std, linked on this glibc 2.36) needs GLIBC_2.34 and maturin's check
# rejects manylinux2014: hence zig.
#
# Not built: a free-threaded cp314t wheel (no 3.14t interpreter here: neither pyenv nor sid
# has one, see pythons.sh); an abi3 wheel (the crate does not use pyo3's abi3 feature).
#
# Prints a table (version, wheel, max GLIBC, installs, demo) and exits non-zero if any version
# failed somewhere.  Build logs: target/wheels/build-X.Y.log.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd -P)
TOOLS=${FERROLOOP_WHEEL_TOOLS:-$HOME/.cache/ferroloop/wheel-tools}
TOOL_PKGS=('maturin>=1.16,<2' 'ziglang==0.17.1')
POLICY=manylinux2014 # its glibc: 2.17
MAX_GLIBC=2.17
OUT=$REPO/target/wheels
export CARGO_TARGET_DIR=$OUT
VERSIONS=("$@")
((${#VERSIONS[@]})) || VERSIONS=(3.11 3.12 3.13 3.14 3.15)

log() { echo "wheels.sh: $*" >&2; }

tools() { # the tools venv with maturin and zig; remade when TOOL_PKGS changes
    [[ -f $TOOLS/.stamp && $(<"$TOOLS/.stamp") == "${TOOL_PKGS[*]}" ]] && return
    log "installing ${TOOL_PKGS[*]} into $TOOLS"
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q --disable-pip-version-check "${TOOL_PKGS[@]}" >&2
    echo "${TOOL_PKGS[*]}" >"$TOOLS/.stamp"
}

ROWS=() FAILED=0
row() { ROWS+=("$(printf '%-5s  %-76s  %-11s  %-8s  %s' "$@")"); }

one() { # X.Y: build, inspect, install and run the demo; adds a row, returns 1 on failure
    local v=$1 cp=cp${1/./} py whl whls=() so glibc venv vpy where site run tmp t0=$SECONDS
    local log=$OUT/build-$v.log
    py=$("$REPO/scripts/pythons.sh" path "$v") || { row "$v" "(no interpreter)" - - -; return 1; }
    rm -f "$REPO"/dist/ferroloop-*-"$cp"-"$cp"-*.whl
    log "$v: building with $py (log: $log)"
    # PATH: maturin finds zig as `python3 -m ziglang` of the tools venv.
    if ! PATH=$TOOLS/bin:$PATH nice -n 10 "$TOOLS/bin/maturin" build --release --zig \
        --compatibility "$POLICY" --auditwheel check -i "$py" --out "$REPO/dist" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        row "$v" "(build failed: $log)" - - -
        return 1
    fi
    log "$v: built in $((SECONDS - t0))s"
    mapfile -t whls < <(compgen -G "$REPO/dist/ferroloop-*-$cp-$cp-*.whl")
    whl=${whls[0]:-}
    [[ ${#whls[@]} == 1 && ${whl##*/} == *-$cp-$cp-manylinux2014_x86_64.manylinux_2_17_x86_64.whl ]] ||
        { row "$v" "(unexpected wheel(s): ${whls[*]##*/})" - - -; return 1; }
    # The tags as the WHEEL file states them, and the .so's highest GLIBC_ symbol version.
    tmp=$(mktemp -d)
    "$py" - "$whl" "$tmp" "$cp" <<'PY' || { rm -rf "$tmp"; row "$v" "${whl##*/}: bad WHEEL (tags, bench or licences)" - - -; return 1; }
import sys, zipfile
whl, tmp, cp = sys.argv[1:]
z = zipfile.ZipFile(whl)
(wheel,) = [n for n in z.namelist() if n.endswith(".dist-info/WHEEL")]
tags = sorted(l[5:] for l in z.read(wheel).decode().splitlines() if l.startswith("Tag: "))
print("wheels.sh: WHEEL tags:", *tags, file=sys.stderr)
z.extractall(tmp, [n for n in z.namelist() if n.endswith(".so")])
# Only what a user imports (no benchmarks), and the licence files.
bench = [n for n in z.namelist() if n.startswith("ferroloop/bench/")]
licences = sorted(n.rsplit("/", 1)[1] for n in z.namelist() if ".dist-info/licenses/" in n)
print("wheels.sh: bench files:", len(bench), "licences:", *licences, file=sys.stderr)
sys.exit(tags != [f"{cp}-{cp}-manylinux2014_x86_64", f"{cp}-{cp}-manylinux_2_17_x86_64"]
         or bool(bench) or licences != ["LICENSE-APACHE", "LICENSE-MIT"])
PY
    so=$(compgen -G "$tmp/ferroloop/_ferroloop.*.so") &&
        glibc=$(objdump -T "$so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1) || glibc=
    rm -rf "$tmp"
    [[ -n $glibc && $(printf '%s\n' "${glibc#GLIBC_}" "$MAX_GLIBC" | sort -V | tail -n 1) == "$MAX_GLIBC" ]] ||
        { row "$v" "${whl##*/}" "${glibc:-?} (>$MAX_GLIBC?)" - -; return 1; }
    venv=$OUT/venv-$v
    rm -rf "$venv"
    if ! vpy=$("$REPO/scripts/pythons.sh" venv "$v" "$venv") ||
        ! "$vpy" -m pip install -q --disable-pip-version-check --no-index --no-deps \
            --force-reinstall "$whl" >&2; then
        row "$v" "${whl##*/}" "$glibc" no -
        return 1
    fi
    run=$(mktemp -d) # outside the repo: only the installed ferroloop can be imported
    where=$(cd "$run" && "$vpy" -c 'import ferroloop as f, ferroloop._ferroloop as m
print(f.__file__, m.__file__)') || true
    log "$v: imports $where"
    site=$venv/lib/python$v/site-packages/ferroloop
    if [[ $where != "$site/__init__.py $site"/_ferroloop.cpython-*.so ]] ||
        ! (cd "$run" && timeout 300 "$vpy" "$REPO/examples/demo.py") >&2; then
        rm -rf "$run"
        row "$v" "${whl##*/}" "$glibc" yes FAILED
        return 1
    fi
    rm -rf "$run"
    row "$v" "${whl##*/}" "$glibc" yes ok
}

T0=$SECONDS
mkdir -p "$OUT" "$REPO/dist"
tools
for v in "${VERSIONS[@]}"; do
    one "$v" || FAILED=1
done
echo
printf '%-5s  %-76s  %-11s  %-8s  %s\n' version wheel "max GLIBC" installs demo
printf '%s\n' "${ROWS[@]}"
echo "total: $((SECONDS - T0))s for ${#VERSIONS[@]} version(s)"
exit "$FAILED"
