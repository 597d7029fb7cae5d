#!/usr/bin/env bash
# bench/bake-vs-mkosi.sh — the benchmark of issue 9: webake against mkosi on one machine.
#
# Bakes the same reference image — Debian bookworm, linux-image-cloud-amd64, systemd,
# openssh-server, chrony + jq installed by a shell step, four small ansible-free "roles"
# (bench/recipe/roles/: two file steps, two shell scripts), a UEFI GPT disk, qcow2 — with
# webake (bench/recipe/bench-node.yaml) and with Debian's mkosi (bench/mkosi/), and prints
# wall-clock times (and CPU seconds) and the ratios issue 9 asks for:
#
#   cold       webake with an empty cache dir   vs  mkosi with no package cache and no
#              incremental state (measured both plain and with --incremental, which also
#              writes its cache image; the ratio uses the plain run, the faster of the two)
#   unchanged  webake re-bake with every layer cached (it still exports, finalizes and
#              assembles the disk); `webake bake --dry-run` is timed too but is not a bake;
#              mkosi --incremental re-run with nothing changed
#   one role   the first role's input file changed (an appended comment line):
#              webake rebuilds that layer and the later ones; mkosi --incremental reuses its
#              cached post-package image and redoes extra trees, postinst and the disk
#
# Targets (issue 9): webake cold <= 0.8 x mkosi cold; one role changed <= 0.2 x webake cold;
# unchanged inputs <= 1 s. The script prints whether each is met; it never retries a failed or
# slow phase (every run counts).
#
# Usage (as root, from anywhere):   bench/bake-vs-mkosi.sh [--keep]
#   --keep            keep the scratch directory (logs, images) instead of deleting it
#   WEBAKE=path       webake binary (default: target/release/webake; built with cargo if missing)
#   MIRROR=url        Debian mirror for both tools (default http://deb.debian.org/debian, the
#                     host's apt mirror)
#   BENCH_TMP=dir     where the scratch directory goes (default /var/tmp)
#   RUNS=n            cold bakes per tool, interleaved; the ratio uses the medians (default 3)
#
# Everything the bench creates lives in one scratch directory (webake --data-dir, --cache-dir,
# --catalog; mkosi output, workspace and package cache; logs) removed by a trap on EXIT; the
# user's webake caches and catalog are never touched. It installs mkosi with apt if missing.
# The webake binary is copied into the scratch directory first, so a rebuild of target/ during
# the run cannot change what is measured. The cold bakes are repeated RUNS times per tool,
# interleaved, and compared by their medians; the other phases run once. On a shared machine
# the numbers are noisy; docs/benchmarks.md records the last run and its caveats.
#
# Environment facts this script works around (docs/benchmarks.md has details):
#   - mkosi 14 runs its chroot commands with systemd-nspawn, which needs systemd as PID 1: it
#     asks the system bus for a scope unit ("Failed to open system bus") and refuses to clean
#     up its propagation directory when /run is not a tmpfs ("Attempted to remove disk file
#     system under /run/systemd/nspawn/propagate"). mkosi is therefore run with
#     --nspawn-keep-unit, in a private mount namespace with a tmpfs on /run/systemd/nspawn
#     (the tmpfs is visible to mkosi only).
#   - mkosi 14 --incremental re-uses its cached disk and changes the root file system UUID
#     with `tune2fs -U random`, which e2fsprogs 1.47 refuses ("This operation requires a
#     freshly checked filesystem") unless the file system has metadata_csum_seed; mkosi's
#     mkfs.ext4 gets an MKE2FS_CONFIG that adds that feature.
#   - mkosi 14 makes a bootable disk by mounting the ESP (vfat). On a kernel without vfat the
#     bootable build fails at "Mounting image…" ("unknown filesystem type 'vfat'"); the script
#     checks /proc/filesystems first and then builds the same disk with --bootable=no (no ESP,
#     no initrd, no systemd-boot/UKI) — less work than webake does — and says so. The mkosi
#     numbers are then a lower bound for a bootable mkosi image.
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
MIRROR=${MIRROR:-http://deb.debian.org/debian}
RUNS=${RUNS:-3}
case "$RUNS" in ''|*[!0-9]*|0) echo "RUNS must be a positive number" >&2; exit 2 ;; esac
WEBAKE_SRC=${WEBAKE:-$REPO/target/release/webake}

log() { printf '\n### %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------
if [ ! -x "$WEBAKE_SRC" ]; then
    log "building webake (release)"
    (cd "$REPO" && cargo build --release -p webake -p webake-agent)
fi
if ! command -v mkosi >/dev/null; then
    log "installing mkosi"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 mkosi >&2
fi

# --- scratch directory and cleanup ---------------------------------------------------------
W=$(mktemp -d "${BENCH_TMP:-/var/tmp}/webake-bench.XXXXXX")
NSPAWN_DIR_EXISTED=0; [ -d /run/systemd/nspawn ] && NSPAWN_DIR_EXISTED=1   # see mkosi_run
cleanup() {
    local rc=$?
    # mkosi_run creates the (empty) mount point for its private tmpfs if it was missing.
    [ "$NSPAWN_DIR_EXISTED" = 1 ] || rmdir /run/systemd/nspawn 2>/dev/null || true
    # mkosi attaches loop devices to its images; a failed build can leave one behind.
    for f in $(find "$W" -xdev -type f -size +1M 2>/dev/null); do
        for dev in $(losetup -j "$f" -O NAME -n 2>/dev/null); do losetup -d "$dev" || true; done
    done
    if [ "$KEEP" = 1 ]; then
        echo "kept $W" >&2
    else
        rm -rf --one-file-system "$W"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$W/bin" "$W/logs" "$W/webake" "$W/mkosi-incr"
cp "$WEBAKE_SRC" "$W/bin/webake"
[ -x "$(dirname "$WEBAKE_SRC")/webake-agent" ] && cp "$(dirname "$WEBAKE_SRC")/webake-agent" "$W/bin/"
cp -r "$REPO/bench/recipe" "$W/recipe"
RECIPE=$W/recipe/bench-node.yaml
CHANGED_ROLE=roles/sshd_hardening/50-hardening.conf   # the first role after the package step

export WEBAKE_DATA_DIR=$W/webake/data WEBAKE_CACHE_DIR=$W/webake/cache
export WEBAKE_CATALOG=$W/webake/catalog.db WEBAKE_MIRROR=$MIRROR

# A mkosi project directory: bench/mkosi/mkosi.default plus the roles from the recipe copy
# (file roles -> mkosi.extra/, shell roles -> mkosi.postinst, in the recipe's order).
stage_mkosi() { # DIR
    local d=$1
    rm -rf "$d/project"
    mkdir -p "$d/project/mkosi.extra/etc/ssh/sshd_config.d" "$d/project/mkosi.extra/etc/sysctl.d"
    cp "$REPO/bench/mkosi/mkosi.default" "$d/project/"
    install -m 0644 "$W/recipe/roles/sshd_hardening/50-hardening.conf" \
        "$d/project/mkosi.extra/etc/ssh/sshd_config.d/50-hardening.conf"
    install -m 0644 "$W/recipe/roles/sysctl/90-node.conf" "$d/project/mkosi.extra/etc/sysctl.d/90-node.conf"
    {
        echo '#!/bin/sh'
        echo 'set -e'
        for r in chrony network; do
            echo "( # role $r"
            grep -v '^#!' "$W/recipe/roles/$r/apply.sh"
            echo ')'
        done
    } > "$d/project/mkosi.postinst"
    chmod 0755 "$d/project/mkosi.postinst"
}

MKOSI_BOOTABLE=yes
MKOSI_NOTE="bootable UEFI disk (systemd-boot, UKI, dracut initrd)"
if ! grep -qw vfat /proc/filesystems; then
    MKOSI_BOOTABLE=no
    MKOSI_NOTE="NOT bootable: this kernel has no vfat, mkosi 14 must mount the ESP; built with Bootable=no (no ESP, initrd or boot loader) — a lower bound"
fi

# mkosi 14 --incremental gives every re-used cached disk a new root UUID with `tune2fs -U
# random`, which e2fsprogs 1.47 refuses on a metadata_csum file system that was not just
# fsck'ed; with metadata_csum_seed it is allowed. mkosi's mkfs.ext4 reads this config.
sed 's/^\(\s*features = .*metadata_csum\),/\1,metadata_csum_seed,/' /etc/mke2fs.conf > "$W/mke2fs.conf"
grep -q metadata_csum_seed "$W/mke2fs.conf" || { echo "could not add metadata_csum_seed to mke2fs.conf" >&2; exit 1; }

mkosi_run() { # DIR [mkosi args...]
    local d=$1; shift
    MKE2FS_CONFIG=$W/mke2fs.conf unshare --mount --propagation private sh -ec '
        mkdir -p /run/systemd/nspawn
        mount -t tmpfs -o mode=0755 bench-nspawn /run/systemd/nspawn
        cd "$1"; shift
        exec mkosi "$@"' mkosi-bench "$d/project" \
        --nspawn-keep-unit --bootable="$MKOSI_BOOTABLE" --mirror="$MIRROR" \
        --cache="$d/pkgcache" --output-dir="$d/out" --workspace-dir="$d" "$@" build
}

# --- timing --------------------------------------------------------------------------------
declare -A T CPU RC
# CPU seconds (user + sys) of all waited-for descendants so far: a second, less load-sensitive
# measure on a shared machine (kernel writeback and other tenants' work are not in it).
# (`times` must run in this shell, not in a $(...) subshell, hence the file.)
child_cpu() { # VAR
    times > "$W/.times"
    printf -v "$1" '%s' "$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, k, /[ms]/); printf "%.2f", u[1] * 60 + u[2] + k[1] * 60 + k[2] }' "$W/.times")"
}
timed() { # NAME CMD... — wall time into T[NAME], CPU time into CPU[NAME], exit code into RC[NAME]
    local name=$1; shift
    log "$name: $*"
    local s e c0 c1
    child_cpu c0
    s=$(date +%s.%N)
    set +e
    "$@" > "$W/logs/$name.log" 2>&1
    RC[$name]=$?
    set -e
    e=$(date +%s.%N)
    child_cpu c1
    T[$name]=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }')
    CPU[$name]=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.1f", b - a }')
    echo "    ${T[$name]} s wall, ${CPU[$name]} s CPU, load $(cut -d' ' -f1 /proc/loadavg) (exit ${RC[$name]})" >&2
    if [ "${RC[$name]}" != 0 ]; then tail -n 15 "$W/logs/$name.log" | sed 's/^/    | /' >&2; fi
}
webake_bake() { "$W/bin/webake" bake "$RECIPE" "$@"; }

# --- the run ---------------------------------------------------------------------------------
log "machine: $(nproc) cores, $(free -h | awk '/^Mem:/ {print $2}') RAM, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
log "webake $(cd "$REPO" && git rev-parse --short HEAD) ($WEBAKE_SRC), $(mkosi --version), mirror $MIRROR"
log "mkosi image: $MKOSI_NOTE"

# Cold: RUNS pairs, webake then mkosi plain, interleaved so that a change in the machine's load
# hits both tools alike; the ratio uses the medians. Run 1 of webake seeds the cache the later
# phases use; the other runs get their own directories, deleted right after.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
cold_w=(); cold_m=(); cpu_w=(); cpu_m=()
for i in $(seq 1 "$RUNS"); do
    if [ "$i" = 1 ]; then
        timed webake_cold_1 webake_bake
    else
        mkdir -p "$W/webake-$i"
        timed "webake_cold_$i" env WEBAKE_DATA_DIR="$W/webake-$i/data" WEBAKE_CACHE_DIR="$W/webake-$i/cache" \
            WEBAKE_CATALOG="$W/webake-$i/catalog.db" "$W/bin/webake" bake "$RECIPE"
        rm -rf --one-file-system "$W/webake-$i"
    fi
    # A fresh directory per run: mkosi's package cache lives in it.
    mkdir -p "$W/mkosi-plain-$i"
    stage_mkosi "$W/mkosi-plain-$i"
    timed "mkosi_cold_$i" mkosi_run "$W/mkosi-plain-$i" --force
    [ "$i" = 1 ] || rm -rf --one-file-system "$W/mkosi-plain-$i"
    cold_w+=("${T[webake_cold_$i]}"); cpu_w+=("${CPU[webake_cold_$i]}")
    cold_m+=("${T[mkosi_cold_$i]}"); cpu_m+=("${CPU[mkosi_cold_$i]}")
    RC[webake_cold]=$(( ${RC[webake_cold]:-0} | ${RC[webake_cold_$i]} ))
    RC[mkosi_cold]=$(( ${RC[mkosi_cold]:-0} | ${RC[mkosi_cold_$i]} ))
done
T[webake_cold]=$(median "${cold_w[@]}"); CPU[webake_cold]=$(median "${cpu_w[@]}")
T[mkosi_cold]=$(median "${cold_m[@]}"); CPU[mkosi_cold]=$(median "${cpu_m[@]}")
timed webake_unchanged webake_bake
timed webake_dry_run webake_bake --dry-run
stage_mkosi "$W/mkosi-incr"
timed mkosi_cold_incremental mkosi_run "$W/mkosi-incr" --incremental --force
timed mkosi_unchanged_incremental mkosi_run "$W/mkosi-incr" --incremental --force

# One role changed: the same edit for both tools.
echo "# changed by bench/bake-vs-mkosi.sh at $(date -u +%FT%TZ)" >> "$W/recipe/$CHANGED_ROLE"
timed webake_role_changed webake_bake
stage_mkosi "$W/mkosi-incr"
timed mkosi_role_changed_incremental mkosi_run "$W/mkosi-incr" --incremental --force

# --- report --------------------------------------------------------------------------------
for f in "$W"/logs/webake_*.log; do
    grep -q '<== ' "$f" || continue
    echo "--- $(basename "$f" .log): webake steps"
    grep -E '^(<==|image |  (raw|qcow2) )' "$f" | sed 's/^/    /'
done
echo "--- artifacts"
find "$W/webake/data" "$W/mkosi-plain-1/out" "$W/mkosi-incr/out" -type f \( -name '*.qcow2' -o -name '*.raw' -o -name 'image*' -o -name '*cache-pre-inst' \) \
    -printf '    %10s  %p\n' 2>/dev/null | sed "s|$W/||" || true

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
# Judged on the unrounded quotient A/B (or A alone with B=1): 0.2022 is NOT within 0.20.
met() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { if (b <= 0) print "n/a"; else print (a / b <= t) ? "MET" : "NOT MET" }'; }
ok() { [ "${RC[$1]}" = 0 ] && echo "" || echo " (FAILED, exit ${RC[$1]})"; }

cold_ratio=$(ratio "${T[webake_cold]}" "${T[mkosi_cold]}")
role_ratio=$(ratio "${T[webake_role_changed]}" "${T[webake_cold]}")
cat <<EOF

=== bake vs mkosi ($(date -u +%FT%TZ), $(nproc) cores, load now $(cut -d' ' -f1-3 /proc/loadavg))
mkosi image: $MKOSI_NOTE

phase                    webake: wall s (CPU s)     mkosi: wall s (CPU s)
cold (median of $RUNS)       ${T[webake_cold]} (${CPU[webake_cold]})$(ok webake_cold)        ${T[mkosi_cold]} (${CPU[mkosi_cold]})$(ok mkosi_cold) plain; ${T[mkosi_cold_incremental]} (${CPU[mkosi_cold_incremental]})$(ok mkosi_cold_incremental) --incremental, seeds its cache
  cold runs, in order    webake: ${cold_w[*]}   mkosi: ${cold_m[*]}
unchanged inputs         ${T[webake_unchanged]} (${CPU[webake_unchanged]})$(ok webake_unchanged)        ${T[mkosi_unchanged_incremental]} (${CPU[mkosi_unchanged_incremental]})$(ok mkosi_unchanged_incremental) --incremental
  (webake --dry-run)     ${T[webake_dry_run]} (${CPU[webake_dry_run]})$(ok webake_dry_run)
one role changed         ${T[webake_role_changed]} (${CPU[webake_role_changed]})$(ok webake_role_changed)        ${T[mkosi_role_changed_incremental]} (${CPU[mkosi_role_changed_incremental]})$(ok mkosi_role_changed_incremental) --incremental

ratios
  webake cold / mkosi cold             $cold_ratio   target <= 0.80: $(met "${T[webake_cold]}" "${T[mkosi_cold]}" 0.8)
  webake role changed / webake cold    $role_ratio   target <= 0.20: $(met "${T[webake_role_changed]}" "${T[webake_cold]}" 0.2)
  webake unchanged                     ${T[webake_unchanged]} s  target <= 1 s: $(met "${T[webake_unchanged]}" 1 1)
  webake role changed / mkosi role changed (incremental)   $(ratio "${T[webake_role_changed]}" "${T[mkosi_role_changed_incremental]}")
  webake unchanged / mkosi unchanged (incremental)         $(ratio "${T[webake_unchanged]}" "${T[mkosi_unchanged_incremental]}")
  CPU time: webake cold / mkosi cold   $(ratio "${CPU[webake_cold]}" "${CPU[mkosi_cold]}")   (not a target; less sensitive to other tenants)
logs: $W/logs$( [ "$KEEP" = 1 ] || echo ' (deleted on exit; --keep keeps them)')
EOF
