#!/usr/bin/env bash
# bench/freshness-check.sh — what the upstream freshness check (issue 17) costs when nothing
# moved upstream, against the real Debian mirror.
#
# The check fetches the InRelease of bookworm, bookworm-updates and bookworm-security,
# verifies each with gpgv and the Debian archive keyring, checks Date/Valid-Until, records the
# Packages index digests, and compares with a state recorded a moment before (so upstream is
# unchanged): the verdict must be "up to date". Target (issue 17): at most 2 s.
#
# Also reported (informational): the candidate computation over all three suites for the
# packages of a dpkg status file (downloads and decompresses the ~9 MB main Packages.xz).
#
# Usage:  bench/freshness-check.sh
#   RUNS=n           checks to time (default 5)
#   MIRROR=url       main archive (default http://deb.debian.org/debian)
#   SECURITY=url     security archive (default http://deb.debian.org/debian-security)
#   SUITE=name       default bookworm
#   STATUS=file      dpkg status for the candidates run (default /var/lib/dpkg/status)
#   TARGET=seconds   default 2
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
SUITE=${SUITE:-bookworm}
STATUS=${STATUS:-/var/lib/dpkg/status}
TARGET=${TARGET:-2}

cargo build -q -p webake-upstream --example check
check=target/debug/examples/check
scratch=$(mktemp -d "${TMPDIR:-/tmp}/webake-bench-freshness.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
args=(--mirror "$MIRROR" --security-mirror "$SECURITY" --suite "$SUITE")

echo "== recording the upstream state ($MIRROR, $SECURITY; $SUITE, $SUITE-updates, $SUITE-security)"
"$check" "${args[@]}" --state-out "$scratch/state.json"

echo "== $RUNS freshness checks against the recorded state (upstream unchanged)"
times=()
for i in $(seq "$RUNS"); do
    # Wall clock of the whole process (start, HTTP, three gpgv runs, compare, exit) and the
    # library's own time for check + verdict.
    start=$(date +%s.%N)
    out=$("$check" "${args[@]}" --state-in "$scratch/state.json" --status "$STATUS")
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    verdict=$(grep -E '^(up to date|upstream moved|[0-9]+ packages have updates)' <<<"$out")
    t=$(sed -n 's/^total (check + verdict): \([0-9.]*\) s$/\1/p' <<<"$out")
    printf '  run %d: %s s in the library, %.3f s for the process; %s\n' "$i" "$t" "$wall" "$verdict"
    times+=("$wall")
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(sed -n "$(( (RUNS + 1) / 2 ))p" <<<"$sorted")
max=$(tail -1 <<<"$sorted")
printf 'freshness check, unchanged upstream: median %.3f s, max %.3f s (target <= %s s)\n' \
    "$median" "$max" "$TARGET"

echo "== candidates over all three suites for $(grep -c '^Package:' "$STATUS") packages of $STATUS"
"$check" "${args[@]}" --status "$STATUS" --candidates | grep -E '^(check|candidates):'

if (( $(echo "$max > $TARGET" | bc) )); then
    echo "FAIL: slowest check took $max s, over the $TARGET s target" >&2
    exit 1
fi
echo "ok: within the $TARGET s target"
