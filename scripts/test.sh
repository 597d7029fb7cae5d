#!/usr/bin/env bash
# Run every test (as root: bakes use chroots, mount namespaces and qemu).
# Tests that need root, KVM/qemu, mmdebstrap or a Python validator fail with a message
# naming what is missing; none is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/target/pyenv/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
python3 scripts/long-functions.py 120 crates  # no function over 120 lines (ARCHITECTURE.md)
# Two test threads: a bake uses both cores for a while; more threads only thrash.
cargo test --locked --workspace --no-fail-fast -- --test-threads=2
scripts/fuzz-short.sh  # ~30 s libFuzzer run of the recipe parser (fuzz/README.md)
