#!/usr/bin/env bash
# bench/boot-test-vs-qemu.sh — issue 25: `webake test` against plain qemu, same disk, same run.
#
# Bakes the README example (recipes/debian-minimal.yaml) into a scratch catalog, then RUNS
# times, interleaved:
#
#   webake   `webake test IMAGE` (wall clock: KVM probe, throw-away copy, harness injection,
#            boot to multi-user, checks, power-off, results read back; the checks' VM boots
#            the disk's kernel directly while a second VM proves the firmware path up to
#            that kernel, docs/boot-test.md)
#   full     `webake test IMAGE --full-boot` (the checks' VM itself goes through OVMF and GRUB)
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

. "$(dirname "$0")/lib.sh"
bench_setup boot "$@"

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
    local t0
    t0=$(date +%s.%N)
    "${W[@]}" test "$IMG" "$@" >"$SCRATCH/test.out" 2>"$SCRATCH/test.log" || { echo "webake test failed: $SCRATCH/test.log" >&2; keep_scratch; exit 1; }
    seconds_since "$t0"
}

# key_wait: seconds from the first-boot host key generation starting to the checks running,
# in the last webake test's progress lines ("?" when a milestone is missing).
key_wait() {
    local k c
    k=$(sed -n 's/.*| generating the SSH host keys.*(\([0-9.]*\)s)$/\1/p' "$SCRATCH/test.log" | head -1)
    c=$(sed -n 's/.*| checks running (\([0-9.]*\)s)$/\1/p' "$SCRATCH/test.log" | head -1)
    if [ -n "$k" ] && [ -n "$c" ]; then awk -v k="$k" -v c="$c" 'BEGIN {printf "%.1f", c - k}'; else echo "?"; fi
}

w=() f=() q=() kw=()
for i in $(seq "$RUNS"); do
    f+=("$(webake_test --full-boot)")
    q+=("$(plain_qemu)")
    w+=("$(webake_test)")
    kw+=("$(key_wait)")
    echo "run $i: webake test ${w[-1]} s (host keys to checks ${kw[-1]} s), webake test --full-boot ${f[-1]} s, plain qemu to login ${q[-1]} s" >&2
done
mw=$(printf '%s\n' "${w[@]}" | median)
mf=$(printf '%s\n' "${f[@]}" | median)
mq=$(printf '%s\n' "${q[@]}" | median)
r=$(ratio "$mw" "$mq")
cat <<EOF
machine: $(nproc) CPU(s), load $(cut -d' ' -f1-3 /proc/loadavg); qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}')
webake test:                 ${w[*]}  median ${mw} s
webake test --full-boot:     ${f[*]}  median ${mf} s
plain qemu (TCG) to login:   ${q[*]}  median ${mq} s
ratio webake/qemu: ${r} (target <= 0.8: $(verdict "$r" 0.8))
webake test, from the first-boot host key generation starting to the checks: ${kw[*]} s
last plain boot:
$(cat "$SCRATCH/milestones")
last webake test:
$(grep -E '^    \| (uefi: )?(firmware|kernel|initramfs|systemd|generating|multi-user|checks)|<== boot test' "$SCRATCH/test.log" | sort -u)
EOF
