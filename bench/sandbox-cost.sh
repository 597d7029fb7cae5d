#!/usr/bin/env bash
# bench/sandbox-cost.sh — what the step sandbox (issue 14) costs, next to the floor.
#
# A bake step runs in a user namespace with idmapped layers, its own network (slirp4netns),
# a private /proc/sys copy, pivot_root, seccomp. This bench bakes a recipe of STEPS trivial
# shell steps (`true`) on a cached base, with --no-cache so every step runs, RUNS times, once
# with the default outbound network and once with `network: {outbound: false}`, and reports
# the median time of one step as webake reports it (overlay, sandbox, command, layer commit).
# In the same run it times the floor: the same `true` in the same base tree through a plain
# `chroot`, and through `unshare --mount --pid --fork chroot` (roughly the sandbox webake had
# before issue 14: namespaces and a chroot, no user namespace, no network).
#
# Targets (issue 14): the sandbox adds at most 0.3 s per step, and at most 1 s to a cold bake
# (one sandbox for the bootstrap, one per step: the per-step overhead times the steps of the
# README example, plus one).
#
# Usage (as root):  bench/sandbox-cost.sh
#   WEBAKE=path    webake binary (default target/release/webake, else target/debug/webake)
#   STEPS=n        trivial steps per bake (default 10)
#   RUNS=n         bakes per variant (default 3)
#   BENCH_TMP=dir  scratch parent (default /var/tmp); everything is removed on exit
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
STEPS=${STEPS:-10}
RUNS=${RUNS:-3}
WEBAKE=${WEBAKE:-target/release/webake}
[ -x "$WEBAKE" ] || WEBAKE=target/debug/webake
[ -x "$WEBAKE" ] || { echo "build webake first (cargo build --release -p webake)" >&2; exit 1; }
scratch=$(mktemp -d "${BENCH_TMP:-/var/tmp}/webake-bench-sandbox.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cp "$WEBAKE" "$scratch/webake"
wb() { "$scratch/webake" --data-dir "$scratch/data" --cache-dir "$scratch/cache" --catalog "$scratch/catalog.db" "$@"; }

recipe() { # name network-outbound
    {
        echo "version: 1"
        echo "image: {name: $1}"
        sed -n '/^base:/,/^disk:/p' recipes/debian-minimal.yaml | sed '$d'
        echo "network: {outbound: $2}"
        echo "provisioners:"
        for i in $(seq 1 "$STEPS"); do echo "  - shell: {name: step$i, inline: [\"true\"]}"; done
    } > "$scratch/$1.yaml"
}
recipe net true
recipe nonet false

echo "== bootstrapping the base once (not measured)"
wb bake "$scratch/net.yaml" > "$scratch/warm.log" 2>&1 || { tail -20 "$scratch/warm.log"; exit 1; }

per_step() { # recipe -> median seconds of one step over RUNS bakes
    for _ in $(seq 1 "$RUNS"); do
        wb bake --no-cache --json "$scratch/$1.yaml" 2>/dev/null
    done | python3 -c '
import json, sys, statistics
times = []
dec = json.JSONDecoder()
text = sys.stdin.read()
i = 0
while i < len(text):
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    obj, i = dec.raw_decode(text, i)
    times += [s["seconds"] for s in obj.get("steps", []) if s["name"].startswith(tuple(f"{n}. " for n in range(1, 1000)))]
print(f"{statistics.median(times):.3f} {len(times)}")
'
}

root=$(ls -d "$scratch"/cache/bootstrap/*/rootfs | head -1)
floor() { # command... -> median seconds of STEPS*RUNS runs
    python3 - "$@" <<'PY'
import statistics, subprocess, sys, time
ts = []
for _ in range(30):
    t = time.perf_counter()
    subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ts.append(time.perf_counter() - t)
print(f"{statistics.median(ts):.3f}")
PY
}

echo "== measuring ($RUNS bakes x $STEPS steps per variant; floors: 30 runs each)"
read -r net n1 < <(per_step net)
read -r nonet n2 < <(per_step nonet)
chroot_floor=$(floor chroot "$root" /bin/true)
unshare_floor=$(floor unshare --mount --pid --fork chroot "$root" /bin/true)

printf '\n%-58s %8s\n' "one trivial step (median)" "seconds"
printf '%-58s %8s\n' "webake step, outbound network (slirp4netns) [$n1 steps]" "$net"
printf '%-58s %8s\n' "webake step, no network [$n2 steps]" "$nonet"
printf '%-58s %8s\n' "floor: chroot ROOT true" "$chroot_floor"
printf '%-58s %8s\n' "floor: unshare -m -p -f chroot ROOT true" "$unshare_floor"
python3 - "$net" "$unshare_floor" <<'PY'
import sys
step, floor = map(float, sys.argv[1:])
over = step - floor
# The README example: a bootstrap and two steps, each in one sandbox.
print(f"\nsandbox overhead per step: {over:.3f} s (target <= 0.3 s): {'met' if over <= 0.3 else 'NOT met'}")
print(f"added to a cold bake of the README example (3 sandboxes): {3 * over:.2f} s (target <= 1 s): {'met' if 3 * over <= 1 else 'NOT met'}")
PY
echo "(webake's per-step time includes mounting the overlay and committing the layer; the floors do neither)"
