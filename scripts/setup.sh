#!/usr/bin/env bash
# Set up a Debian 12 machine for webake (run as root).
#   scripts/setup.sh           host tools + release build of webake and webake-agent
#   scripts/setup.sh --test    also the test-only tools (Python validators, moto) and a test build
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" != 0 ]; then
  echo "setup: webake bakes in chroots and mount namespaces; run this (and webake) as root" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# security.debian.org may be unreachable on isolated build machines: an update that can read
# the main mirror is enough.
apt-get update -q || echo "setup: apt-get update reported errors (continuing with what it could read)" >&2

# qemu-system-x86 from bookworm replaces a newer qemu-utils (e.g. from backports) and qemu-img
# would vanish: install both at the same (bookworm) version.
qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
packages=(
  mmdebstrap dpkg-dev e2fsprogs fdisk dosfstools mtools util-linux
  grub-efi-amd64-bin grub-pc-bin grub-common
  qemu-system-x86 "qemu-utils=${qemu_version}" ovmf seabios
  ansible git ca-certificates zstd python3 python3-venv
  slirp4netns iproute2
  openssh-client  # the boot test under emulation: the test copy's RSA host key (docs/boot-test.md)
  diffoscope-minimal  # webake verify: what differs inside the files of a non-reproduced disk
  # arm64 images on x86-64 (docs/bake.md#other-architectures): qemu-user for the bootstrap and
  # steps (registered in the sandbox's own binfmt_misc only; this package registers nothing
  # without binfmt-support or a running systemd-binfmt), arch-test for mmdebstrap, the arm64
  # boot test (qemu-system-aarch64, AAVMF), and the cross linker of the arm64 agent.
  "qemu-user-static=${qemu_version}" arch-test
  "qemu-system-arm=${qemu_version}" qemu-efi-aarch64
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross
)
if [ "$want_test" = 1 ]; then
  # The escape suite checks the host's firewall before and after a bake.
  packages+=(nftables)
  packages+=(apt-utils gnupg)  # webake-upstream tests: apt-ftparchive, gpg (a signed apt repo on loopback)
fi
apt-get install -y -q --no-install-recommends --allow-downgrades "${packages[@]}"

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install Rust >= 1.94 (rustup) first" >&2
  exit 1
fi

# The agent of arm64 images: cross-compiled (static; .cargo/config.toml names the linker).
arm_target=aarch64-unknown-linux-gnu
if [ "$(uname -m)" = x86_64 ] && command -v rustup >/dev/null; then
  rustup target add "$arm_target"
fi
agent_profile=release
[ "$want_test" = 1 ] && agent_profile=dev

if [ "$want_test" = 1 ]; then
  # Test-only Python tools in a venv under target/ (never the system Python).
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install -q --disable-pip-version-check \
    -r crates/webake-inventory/requirements-test.txt \
    -r crates/webake-pipeline/requirements-test.txt \
    -r crates/webake-aws/requirements-test.txt
  cargo build --locked --workspace --all-targets
else
  cargo build --locked --release -p webake -p webake-agent
fi
if [ "$(uname -m)" = x86_64 ]; then
  cargo build --locked --profile "$agent_profile" -p webake-agent --target "$arm_target"
fi
[ "$want_test" = 1 ] || echo "setup: done; webake is target/release/webake"

