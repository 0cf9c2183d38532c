#!/usr/bin/env bash
# Miri on the pure-Rust parts of ferroloop-core (issue 15, point 6): the unit tests of the ready
# queue (ready.rs), the timer queue (timer.rs), the write queue (writeq.rs), the clock (clock.rs)
# and the io_uring provided-buffer ring's bookkeeping (driver/bufring.rs: raw-pointer code over
# plain heap memory; its tests make no syscall). The drivers (epoll/poll/select/io_uring
# syscalls) are left out: Miri cannot run them. sources.rs (the slab of registered fds) has no
# unit test of its own; its one test (tests/driver.rs) goes through a real driver.
#
# Under Miri rustix uses its libc backend (its PollFlags are a C short, not a u16): the core
# compiles on both (driver/uring/mod.rs's poll_mask).
#
#   scripts/miri.sh                       # Stacked Borrows (Miri's default aliasing model)
#   MIRI_MODELS="sb tb" scripts/miri.sh   # then Tree Borrows too
#   scripts/miri.sh timer::               # other test-name filters instead of the default ones
#
# Needs the nightly toolchain with the miri and rust-src components (added if missing: they come
# from the Rust registries). The first run builds Miri's sysroot (~3 minutes).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOOLCHAIN=${MIRI_TOOLCHAIN:-nightly}
export CARGO_TARGET_DIR=${MIRI_TARGET_DIR:-$ROOT/target/miri}

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
    rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
for c in miri rust-src; do
    if ! rustup "+$TOOLCHAIN" component list --installed | grep "^$c" >/dev/null; then
        rustup "+$TOOLCHAIN" component add "$c"
    fi
done
echo "== $(cargo "+$TOOLCHAIN" miri --version)"
cargo "+$TOOLCHAIN" miri setup >/dev/null 2>&1 || cargo "+$TOOLCHAIN" miri setup

FILTERS=("$@")
((${#FILTERS[@]})) || FILTERS=(ready:: timer:: writeq:: clock:: driver::bufring::)

for model in ${MIRI_MODELS:-sb}; do
    case $model in
    sb) flags="" ;;
    tb) flags="-Zmiri-tree-borrows" ;;
    *)
        echo "miri: unknown model $model (sb, tb)" >&2
        exit 2
        ;;
    esac
    echo "== miri ($model): ${FILTERS[*]}"
    MIRIFLAGS="${MIRIFLAGS:-} $flags" nice -n 10 \
        cargo "+$TOOLCHAIN" miri test -p ferroloop-core --lib -- "${FILTERS[@]}"
done
