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

. "$(dirname "$0")/lib.sh"
bench_setup many "$@"

# bake NAME RECIPE...: from empty caches, prints wall seconds.
bake() {
    local name=$1; shift
    local d="$SCRATCH/$name"
    rm -rf "$d"; mkdir -p "$d"
    local t0
    t0=$(date +%s.%N)
    if ! (cd "$REPO" && "$SCRATCH/bin/webake" --data-dir "$d/data" --cache-dir "$d/cache" \
            --catalog "$d/catalog.db" bake "$@" >"$d/out.log" 2>&1); then
        echo "bake $name failed: see $d/out.log (--keep)" >&2; keep_scratch; exit 1
    fi
    seconds_since "$t0"
    rm -rf "$d/cache" "$d/data"
}

one=() three=()
for i in $(seq "$RUNS"); do
    one+=("$(bake "one-$i" recipes/debian-minimal.yaml)")
    three+=("$(bake "three-$i" recipes/debian-minimal.yaml recipes/kubernetes-node.yaml recipes/bastion.yaml)")
    echo "run $i: one ${one[-1]} s, three ${three[-1]} s" >&2
done
m1=$(printf '%s\n' "${one[@]}" | median)
m3=$(printf '%s\n' "${three[@]}" | median)
r=$(ratio "$m3" "$m1")
cat <<EOF
machine: $(nproc) CPU(s), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)
webake:  $("$SCRATCH/bin/webake" --version 2>/dev/null || echo unknown)
debian-minimal alone, cold:            ${one[*]}  median ${m1} s
three recipes in one invocation, cold: ${three[*]}  median ${m3} s
ratio three/one: ${r} (target <= 1.6: $(verdict "$r" 1.6))
EOF
