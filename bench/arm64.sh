#!/usr/bin/env bash
# bench/arm64.sh — issue 22: the arm64 image next to the x86-64 one, and where emulation costs.
#
# From empty caches, interleaved RUNS times, for ARCH in x86_64 and arm64:
#
#   webake bake recipes/bastion-multiarch.yaml --arch ARCH --test
#
# and prints, per architecture, the median wall time of the cold bake and of each stage as
# webake reports it (bootstrap split into mmdebstrap and the initramfs build, the Ansible step,
# assembly, the boot test), and the arm64/x86-64 ratio of each. Then the raw cost of emulation
# for compute: the arm64 base's gzip on 64 MiB under qemu-aarch64-static against the host's.
#
# Usage (as root):   bench/arm64.sh [--keep]
#   --keep         keep the scratch directory (logs, images)
#   WEBAKE=path    webake binary (default: target/release/webake; built with cargo if missing)
#   BENCH_TMP=dir  where the scratch directory goes (default /var/tmp)
#   RUNS=n         rounds (default 1: a cold arm64 bake takes about 11 minutes on 2 cores)
#
# Everything lives in one scratch directory removed on exit; the user's caches and catalog are
# never touched.
set -euo pipefail

RUNS=${RUNS:-1}
. "$(dirname "$0")/lib.sh"
bench_setup arm64 "$@"
agent_arm=${WEBAKE_AGENT_BINARY_ARM64:-$REPO/target/aarch64-unknown-linux-gnu/release/webake-agent}
[ -x "$agent_arm" ] || (cd "$REPO" && cargo build --release -p webake-agent --target aarch64-unknown-linux-gnu)
cp "$agent_arm" "$SCRATCH/bin/webake-agent-arm64"

STAGES="total bootstrap mmdebstrap initramfs ansible assemble boot-test"

# bake ARCH RUN: a cold bake with its boot test; prints "stage seconds" lines.
bake() {
    local arch=$1 run=$2
    local d="$SCRATCH/$arch-$run"
    rm -rf "$d"; mkdir -p "$d"
    local t0
    t0=$(date +%s.%N)
    if ! (cd "$REPO" && "$SCRATCH/bin/webake" --data-dir "$d/data" --cache-dir "$d/cache" \
            --catalog "$d/catalog.db" bake recipes/bastion-multiarch.yaml --arch "$arch" --test \
            >"$d/out.log" 2>&1); then
        echo "bake $arch failed: see $d/out.log (--keep)" >&2; keep_scratch; exit 1
    fi
    echo "total $(seconds_since "$t0")"
    local log
    log=$(ls "$d"/data/bakes/*/bake.log)
    awk '/^<== bootstrap: done in/ {sub("s$","",$5); print "bootstrap", $5}
         /^<== 1\. .*: done in/ {sub("s$","",$NF); print "ansible", $NF}
         /^<== assemble: done in/ {sub("s$","",$5); print "assemble", $5}
         /^<== boot test: done in/ {sub("s$","",$6); print "boot-test", $6}' "$d/out.log"
    # mmdebstrap's own "success in N seconds"; the rest of the bootstrap is the initramfs build
    # (and the copy into the cache, which runs alongside it).
    awk '/\[bootstrap\] I: success in/ {print "mmdebstrap", $5}' "$log"
}

declare -A times
for i in $(seq "$RUNS"); do
    for arch in x86_64 arm64; do
        out=$(bake "$arch" "$i")
        boot=$(awk '$1=="bootstrap" {print $2}' <<<"$out")
        mm=$(awk '$1=="mmdebstrap" {print $2}' <<<"$out")
        out+=$'\n'"initramfs $(awk -v b="$boot" -v m="$mm" 'BEGIN {printf "%.1f", b - m}')"
        while read -r stage secs; do
            times[$arch,$stage]+="$secs "
        done <<<"$out"
        echo "run $i $arch: $(tr '\n' ' ' <<<"$out")" >&2
    done
done

printf '\n%-11s %10s %10s %8s\n' stage x86_64 arm64 ratio
for s in $STAGES; do
    x=$(tr ' ' '\n' <<<"${times[x86_64,$s]:-}" | grep . | median)
    a=$(tr ' ' '\n' <<<"${times[arm64,$s]:-}" | grep . | median)
    printf '%-11s %9ss %9ss %8s\n' "$s" "$x" "$a" "$(ratio "$a" "$x")"
done

# Compute under emulation: gzip of 64 MiB, the arm64 base's gzip under qemu-user vs the host's.
root=$(ls -d "$SCRATCH"/arm64-1/cache/bootstrap/*/rootfs | head -1)
head -c $((64 << 20)) /dev/urandom >"$SCRATCH/data.bin"
t0=$(date +%s.%N); gzip -c <"$SCRATCH/data.bin" >/dev/null; native=$(seconds_since "$t0")
t0=$(date +%s.%N)
qemu-aarch64-static -L "$root" "$root/usr/bin/gzip" -c <"$SCRATCH/data.bin" >/dev/null
emulated=$(seconds_since "$t0")
echo "gzip 64 MiB: host ${native}s, arm64 under qemu-user ${emulated}s ($(ratio "$emulated" "$native")x)"
