#!/usr/bin/env bash
# bench/many-recipes.sh — issue 25: several recipes in one invocation against one alone.
#
# From empty caches (bootstrap, layers and package downloads), interleaved RUNS times:
#
#   one     webake bake recipes/debian-minimal.yaml
#   three   webake bake recipes/debian-minimal.yaml recipes/kubernetes-node.yaml \
#                       recipes/bastion.yaml            (one invocation, --jobs default)
#
# and prints the medians and their ratio. Target (issue 25): three <= 1.6 x one. The three
# recipes share one base (the same mmdebstrap configuration): it is bootstrapped once, the
# other bakes wait for it; their steps and assemblies then run concurrently.
#
# Usage (as root):   bench/many-recipes.sh [--keep]
#   --keep         keep the scratch directory (logs, images)
#   WEBAKE=path    webake binary (default: target/release/webake; built with cargo if missing)
#   BENCH_TMP=dir  where the scratch directory goes (default /var/tmp)
#   RUNS=n         pairs, interleaved (default 3)
#
# Everything lives in one scratch directory removed on exit; the user's caches and catalog are
# never touched. The binary is copied first, so a rebuild during the run changes nothing.
set -euo pipefail

KEEP=0
for a in "$@"; do
    case "$a" in
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
case "$RUNS" in ''|*[!0-9]*|0) echo "RUNS must be a positive number" >&2; exit 2 ;; esac
WEBAKE_SRC=${WEBAKE:-$REPO/target/release/webake}
if [ ! -x "$WEBAKE_SRC" ]; then
    (cd "$REPO" && cargo build --release -p webake -p webake-agent)
fi

SCRATCH=$(mktemp -d "${BENCH_TMP:-/var/tmp}/webake-bench-many.XXXXXX")
cleanup() { [ "$KEEP" = 1 ] && echo "kept $SCRATCH" >&2 || rm -rf "$SCRATCH"; }
trap cleanup EXIT
mkdir -p "$SCRATCH/bin"
cp "$WEBAKE_SRC" "$SCRATCH/bin/webake"
cp "$(dirname "$WEBAKE_SRC")/webake-agent" "$SCRATCH/bin/webake-agent"

# bake NAME RECIPE...: from empty caches, prints wall seconds.
bake() {
    local name=$1; shift
    local d="$SCRATCH/$name"
    rm -rf "$d"; mkdir -p "$d"
    local t0 t1
    t0=$(date +%s.%N)
    if ! (cd "$REPO" && "$SCRATCH/bin/webake" --data-dir "$d/data" --cache-dir "$d/cache" \
            --catalog "$d/catalog.db" bake "$@" >"$d/out.log" 2>&1); then
        echo "bake $name failed: see $d/out.log (--keep)" >&2; KEEP=1; exit 1
    fi
    t1=$(date +%s.%N)
    rm -rf "$d/cache" "$d/data"
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f\n", b - a}'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

one=() three=()
for i in $(seq "$RUNS"); do
    one+=("$(bake "one-$i" recipes/debian-minimal.yaml)")
    three+=("$(bake "three-$i" recipes/debian-minimal.yaml recipes/kubernetes-node.yaml recipes/bastion.yaml)")
    echo "run $i: one ${one[-1]} s, three ${three[-1]} s" >&2
done
m1=$(printf '%s\n' "${one[@]}" | median)
m3=$(printf '%s\n' "${three[@]}" | median)
ratio=$(awk -v a="$m3" -v b="$m1" 'BEGIN {printf "%.3f", a / b}')
cat <<EOF
machine: $(nproc) CPU(s), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)
webake:  $("$SCRATCH/bin/webake" --version 2>/dev/null || echo unknown)
debian-minimal alone, cold:            ${one[*]}  median ${m1} s
three recipes in one invocation, cold: ${three[*]}  median ${m3} s
ratio three/one: ${ratio} (target <= 1.6: $(awk -v r="$ratio" 'BEGIN {print (r <= 1.6) ? "met" : "NOT met"}'))
EOF
