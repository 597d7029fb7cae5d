#!/usr/bin/env bash
# bench/boot-test-vs-qemu.sh — issue 25: `webake test` against plain qemu, same disk, same run.
#
# Bakes the README example (recipes/debian-minimal.yaml) into a scratch catalog, then RUNS
# times, interleaved:
#
#   webake   `webake test IMAGE` (wall clock: KVM probe, throw-away copy, harness injection,
#            boot to multi-user, checks, power-off, results read back)
#   qemu     plain qemu-system-x86_64, TCG, OVMF (a fresh copy of the variable store), the
#            image's raw disk (snapshot=on), no network: wall clock until the serial console
#            shows `login:`
#
# and prints the medians, their ratio and, for the last plain boot, when the firmware, GRUB,
# the kernel, the initramfs and systemd started. Target (issue 25): webake <= 0.8 x qemu.
#
# Usage (as root):  bench/boot-test-vs-qemu.sh [--keep]
#   WEBAKE=path    webake binary (default target/release/webake; built with cargo if missing)
#   BENCH_TMP=dir  scratch directory parent (default /var/tmp)
#   RUNS=n         pairs (default 3)
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
[ -x "$WEBAKE_SRC" ] || (cd "$REPO" && cargo build --release -p webake -p webake-agent)

SCRATCH=$(mktemp -d "${BENCH_TMP:-/var/tmp}/webake-bench-boot.XXXXXX")
cleanup() { [ "$KEEP" = 1 ] && echo "kept $SCRATCH" >&2 || rm -rf "$SCRATCH"; }
trap cleanup EXIT
mkdir -p "$SCRATCH/bin"
cp "$WEBAKE_SRC" "$SCRATCH/bin/webake"
cp "$(dirname "$WEBAKE_SRC")/webake-agent" "$SCRATCH/bin/webake-agent"
W=("$SCRATCH/bin/webake" --data-dir "$SCRATCH/data" --cache-dir "$SCRATCH/cache" --catalog "$SCRATCH/catalog.db")

(cd "$REPO" && "${W[@]}" bake --json recipes/debian-minimal.yaml >"$SCRATCH/bake.json" 2>"$SCRATCH/bake.log")
IMG=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["image"]["id"])' "$SCRATCH/bake.json")
RAW=$(python3 -c 'import json,sys; print([a["path"] for a in json.load(open(sys.argv[1]))["image"]["artifacts"] if a["format"]=="raw"][0])' "$SCRATCH/bake.json")
CODE=/usr/share/OVMF/OVMF_CODE_4M.fd VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
[ -f "$CODE" ] || { CODE=/usr/share/OVMF/OVMF_CODE.fd; VARS=/usr/share/OVMF/OVMF_VARS.fd; }

# plain_qemu: seconds until "login:", the milestones on stderr.
plain_qemu() {
    cp "$VARS" "$SCRATCH/vars.fd"
    python3 - "$SCRATCH/milestones" qemu-system-x86_64 -accel tcg -machine q35 -m 1024 -smp 2 \
        -display none -nodefaults -serial stdio -cpu max \
        -drive "if=pflash,format=raw,readonly=on,file=$CODE" \
        -drive "if=pflash,format=raw,file=$SCRATCH/vars.fd" \
        -drive "if=virtio,format=raw,file=$RAW,snapshot=on" <<'EOF'
import subprocess, sys, time
marks = ["BdsDxe", "Welcome to GRUB", "Linux version", "Run /init", "systemd[1]: Detected"]
t0 = time.time(); seen = []; buf = b""
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
while True:
    b = p.stdout.read1(4096)
    if not b:
        break
    buf += b
    for m in marks:
        if m.encode() in buf and m not in [s for s, _ in seen]:
            seen.append((m, time.time() - t0))
    if b"login:" in buf:
        t = time.time() - t0
        p.kill(); p.wait()
        with open(sys.argv[1], "w") as f:
            for m, s in seen:
                f.write(f"  {s:6.2f} s  {m}\n")
            f.write(f"  {t:6.2f} s  login:\n")
        print(f"{t:.1f}")
        sys.exit(0)
    buf = buf[-256:]
p.wait(); sys.exit("qemu exited before a login prompt")
EOF
}

webake_test() {
    local t0 t1
    t0=$(date +%s.%N)
    "${W[@]}" test "$IMG" >"$SCRATCH/test.out" 2>"$SCRATCH/test.log" || { echo "webake test failed: $SCRATCH/test.log" >&2; KEEP=1; exit 1; }
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f\n", b - a}'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
w=() q=()
for i in $(seq "$RUNS"); do
    w+=("$(webake_test)")
    q+=("$(plain_qemu)")
    echo "run $i: webake test ${w[-1]} s, plain qemu to login ${q[-1]} s" >&2
done
mw=$(printf '%s\n' "${w[@]}" | median)
mq=$(printf '%s\n' "${q[@]}" | median)
ratio=$(awk -v a="$mw" -v b="$mq" 'BEGIN {printf "%.3f", a / b}')
cat <<EOF
machine: $(nproc) CPU(s), load $(cut -d' ' -f1-3 /proc/loadavg); qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}')
webake test:                 ${w[*]}  median ${mw} s
plain qemu (TCG) to login:   ${q[*]}  median ${mq} s
ratio webake/qemu: ${ratio} (target <= 0.8: $(awk -v r="$ratio" 'BEGIN {print (r <= 0.8) ? "met" : "NOT met"}'))
last plain boot:
$(cat "$SCRATCH/milestones")
last webake test:
$(grep -E '^    \| (firmware|kernel|initramfs|systemd|multi-user|checks)|<== boot test' "$SCRATCH/test.log" | sort -u)
EOF
