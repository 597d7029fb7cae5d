#!/usr/bin/env bash
# Short fuzz run of the recipe parser (fuzz/fuzz_targets/recipe.rs: webake_spec::parse_str on
# arbitrary bytes), for CI. Fails on a panic, a broken invariant, a stack overflow, a runaway
# allocation or a slow input, and prints the saved input (see fuzz/README.md).
#
# Only the machine's stable toolchain exists. cargo-fuzz's coverage instrumentation and libFuzzer
# build on stable as they are, without a sanitizer (`-s none`, the default here: ~35% less build
# CPU and ~3x the executions of ASan). AddressSanitizer needs rustc's unstable -Zsanitizer, which
# RUSTC_BOOTSTRAP=1 unlocks on stable: WEBAKE_FUZZ_SANITIZER=address turns it on (the parser is
# safe Rust; ASan only adds checks of the little unsafe code in its dependencies).
#
# Environment: WEBAKE_FUZZ_SECS (default 30; 0 skips the run), WEBAKE_FUZZ_SANITIZER (none |
# address, default none). Extra arguments go to libFuzzer, e.g. `scripts/fuzz-short.sh -jobs=2`.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${WEBAKE_FUZZ_SECS:-30}"
sanitizer="${WEBAKE_FUZZ_SANITIZER:-none}"
CARGO_FUZZ_VERSION=0.13.2

if [ "$secs" = 0 ]; then
    echo "fuzz-short: skipped (WEBAKE_FUZZ_SECS=0)"
    exit 0
fi

case "$sanitizer" in
    none) ;;
    address) export RUSTC_BOOTSTRAP=1 ;; # -Zsanitizer=address on the stable toolchain
    *) echo "fuzz-short: WEBAKE_FUZZ_SANITIZER must be none or address" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-short: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# libFuzzer writes what it finds to the first corpus directory: keep that out of the repo and
# read the committed seeds (fuzz/corpus/recipe) from the second.
work=fuzz/target/corpus/recipe
artifacts=fuzz/artifacts/recipe
mkdir -p "$work" "$artifacts"
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT

# -O -a: optimized, with debug assertions and overflow checks.
build=(-O -a -s "$sanitizer")
cargo fuzz build "${build[@]}" recipe

status=0
cargo fuzz run "${build[@]}" recipe "$work" fuzz/corpus/recipe -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -dict=fuzz/recipe.dict -print_final_stats=1 "$@" || status=$?

found=$(find "$artifacts" -type f -newer "$stamp" | sort)
if [ "$status" -ne 0 ] || [ -n "$found" ]; then
    echo "fuzz-short: FAILED (exit $status): the recipe parser crashed or broke an invariant" >&2
    for f in $found; do
        echo "fuzz-short: crashing input: $PWD/$f" >&2
        echo "fuzz-short:   reproduce: ${RUSTC_BOOTSTRAP:+RUSTC_BOOTSTRAP=1 }cargo fuzz run ${build[*]} recipe $f" >&2
    done
    exit 1
fi
echo "fuzz-short: recipe parser fuzzed for ${secs}s (sanitizer: $sanitizer), no crash"
