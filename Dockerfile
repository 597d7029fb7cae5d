# webake in a container: the image the Kubernetes Job/CronJob and the Tekton tasks run
# (docs/kubernetes.md). Build from the repository root:
#
#   docker build -t registry.example.com/platform/webake:1.4.0 .
#
# Only plain Dockerfile instructions are used (no BuildKit-only RUN --mount), so kaniko, buildah
# and docker build it alike.

# Build stage: the official Rust image on Debian 12 (bookworm) — the same Debian release as the
# runtime stage, so the binaries link against the glibc they run with. The workspace needs
# Rust >= 1.94 (rust-version in Cargo.toml). Override with --build-arg RUST_IMAGE=... to pin a
# digest.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# cmake and clang: aws-lc-sys (the TLS crypto of the AWS SDK) builds C code with them.
# gcc-aarch64-linux-gnu: the linker of the arm64 agent (static, .cargo/config.toml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add aarch64-unknown-linux-gnu
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p webake -p webake-agent \
 && cargo build --release --locked -p webake-agent --target aarch64-unknown-linux-gnu \
 && install -D -m 0755 target/release/webake /out/webake \
 && install -D -m 0755 target/release/webake-agent /out/webake-agent \
 && install -D -m 0755 target/aarch64-unknown-linux-gnu/release/webake-agent /out/webake-agent-arm64

FROM ${RUNTIME_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# What a bake runs, by stage:
#   bootstrap        mmdebstrap (+ debian-archive-keyring, already in the base image),
#                    dpkg-dev (dpkg-architecture, for mmdebstrap's eatmydata hook)
#   provision        ansible (host-mode ansible provisioner), git (roles from git)
#   assemble         fdisk (sfdisk), e2fsprogs (mkfs.ext4 -d), dosfstools (mkfs.vfat),
#                    mtools (mmd/mcopy into the ESP), grub-efi-amd64-bin (grub-mkimage),
#                    grub-pc-bin (GRUB for BIOS: hybrid and BIOS-only disks),
#                    qemu-utils (qemu-img: reading qcow2 images as a base; webake writes its qcow2 itself), zstd
#   boot test        qemu-system-x86 + ovmf (UEFI firmware) + seabios (BIOS), openssh-client (the
#                    test copy's RSA host key under emulation). qemu-utils is installed in the
#                    same step: installing qemu-system-x86 alone can remove a newer qemu-img.
#   rollout          git, openssh-client (ssh remotes), ca-certificates (https: forge, AWS)
#   step sandbox     slirp4netns: user-mode outbound networking of the steps (docs/security.md)
#   arm64 images     qemu-user-static + arch-test (bootstrap and steps emulated, registered in
#                    the sandbox's own binfmt_misc), qemu-system-arm + qemu-efi-aarch64 (boot
#                    test); the arm64 agent is /usr/local/bin/webake-agent-arm64
#   process reaping  tini: webake starts mmdebstrap, ansible and qemu; orphaned grandchildren
#                    must be reaped by PID 1.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates \
      git \
      openssh-client \
      mmdebstrap dpkg-dev \
      e2fsprogs \
      fdisk \
      dosfstools \
      mtools \
      grub-efi-amd64-bin \
      grub-pc-bin \
      qemu-utils \
      qemu-system-x86 \
      ovmf \
      seabios \
      ansible \
      zstd \
      slirp4netns \
      qemu-user-static arch-test \
      qemu-system-arm qemu-efi-aarch64 \
      tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

COPY --from=build /out/webake /usr/local/bin/webake
COPY --from=build /out/webake-agent /usr/local/bin/webake-agent
COPY --from=build /out/webake-agent-arm64 /usr/local/bin/webake-agent-arm64

# State lives on volumes: data/ (catalog, artifacts) and cache/ (bootstrap and layer cache) on one
# persistent volume; scratch work on another. The scratch directory must not be the container's
# own root filesystem: that is an overlay, and overlayfs refuses an overlay as its upper layer.
ENV WEBAKE_DATA_DIR=/var/lib/webake/data \
    WEBAKE_CACHE_DIR=/var/lib/webake/cache \
    TMPDIR=/var/tmp/webake
RUN mkdir -p /var/lib/webake/data /var/lib/webake/cache /var/tmp/webake /workspace
VOLUME ["/var/lib/webake", "/var/tmp/webake"]

# Bakes run as root: chroot, mount namespaces and mkfs need it (the pod is privileged anyway).
USER root
WORKDIR /workspace
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "/usr/local/bin/webake"]
CMD ["--help"]

LABEL org.opencontainers.image.title="webake" \
      org.opencontainers.image.description="Bake, test, publish and roll out machine images" \
      org.opencontainers.image.licenses="Apache-2.0"
