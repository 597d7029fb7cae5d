//! A small Debian-like tree for tests.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

pub const STATUS: &str = "\
Package: base-files
Essential: yes
Status: install ok installed
Priority: required
Section: admin
Installed-Size: 353
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: amd64
Multi-Arch: foreign
Version: 12.4+deb12u8
Replaces: base, dpkg (<= 1.15.0), miscutils
Provides: base
Conffiles:
 /etc/debian_version 8b2ee1b4e1b2bd5e0a6ab7be7bc6a4d4
 /etc/issue f0d8e45f1d5e1e7bdb5a0a42b7d5f96c
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy of a Debian system, and
 several important miscellaneous files.

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12986
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u9
Description: GNU C Library: Shared libraries

Package: libc6
Status: install ok installed
Installed-Size: 12100
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: i386
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u9
Description: GNU C Library: Shared libraries

Package: libstdc++6
Status: install ok installed
Installed-Size: 2628
Maintainer: Debian GCC Maintainers <debian-gcc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: gcc-12 (12.2.0-14+deb12u1)
Version: 12.2.0-14+deb12u1
Description: GNU Standard C++ Library v3

Package: libpcre2-8-0
Status: hold ok installed
Installed-Size: 677
Maintainer: Matthew Vernon <matthew@debian.org>
Architecture: amd64
Source: pcre2 (10.42-1)
Version: 10.42-1+b1
Description: New Perl Compatible Regular Expression Library- 8 bit runtime files

Package: vim-tiny
Status: install ok installed
Installed-Size: 1720
Maintainer: Debian Vim Maintainers <team+vim@tracker.debian.org>
Architecture: amd64
Source: vim
Version: 2:9.0.1378-2
Description: Vi IMproved - enhanced vi editor - compact version

Package: openssh-server
Status: install ok installed
Installed-Size: 1855
Maintainer: Debian OpenSSH Maintainers <debian-ssh@lists.debian.org>
Architecture: amd64
Source: openssh
Version: 1:9.2p1-2+deb12u3
Description: secure shell (SSH) server, for secure access from remote machines

Package: linux-image-6.1.0-25-amd64
Status: install ok installed
Installed-Size: 398000
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: amd64
Source: linux-signed-amd64 (6.1.106+3)
Version: 6.1.106-3
Description: Linux 6.1 for 64-bit PCs (signed)

Package: nano
Status: deinstall ok config-files
Priority: important
Section: editors
Installed-Size: 2792
Maintainer: Jordi Mallach <jordi@debian.org>
Architecture: amd64
Version: 7.2-1+deb12u1
Config-Version: 7.2-1+deb12u1
Conffiles:
 /etc/nanorc 3b3ad6a6d8a2e1e0b5e9d2b2b7d1c6f2
Description: small, friendly text editor inspired by Pico

Package: half
Status: install ok unpacked
Installed-Size: 10
Maintainer: Nobody <nobody@example.org>
Architecture: all
Version: 1.0-1
Description: unpacked but not configured
";

/// Write `contents` to `root/rel`, creating parents.
pub fn write(root: &Path, rel: &str, contents: impl AsRef<[u8]>) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, contents).unwrap();
}

pub fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(target, p).unwrap();
}

pub fn mkdir(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel)).unwrap();
}

/// A clean, environment-agnostic Debian-like tree: lint finds nothing in it.
pub fn debian_tree(root: &Path) {
    write(root, "var/lib/dpkg/status", STATUS);
    write(
        root,
        "usr/lib/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n",
    );
    link(root, "etc/os-release", "../usr/lib/os-release");
    write(root, "boot/vmlinuz-6.1.0-25-amd64", vec![0u8; 1000]);
    write(root, "usr/lib/modules/6.1.0-25-amd64/modules.dep", "");
    mkdir(root, "usr/lib/modules/6.1.0-9-amd64");
    link(root, "lib", "usr/lib");
    write(root, "usr/lib/systemd/system/ssh.service", "[Unit]\n");
    write(root, "usr/lib/systemd/system/getty@.service", "[Unit]\n");
    write(
        root,
        "usr/lib/systemd/system/systemd-networkd.service",
        "[Unit]\n",
    );
    link(
        root,
        "etc/systemd/system/multi-user.target.wants/ssh.service",
        "/lib/systemd/system/ssh.service",
    );
    link(
        root,
        "etc/systemd/system/getty.target.wants/getty@tty1.service",
        "/usr/lib/systemd/system/getty@.service",
    );
    link(
        root,
        "etc/systemd/system/sshd.service",
        "/usr/lib/systemd/system/ssh.service",
    );
    link(
        root,
        "etc/systemd/system/network-online.target.requires/systemd-networkd.service",
        "../../../../usr/lib/systemd/system/systemd-networkd.service",
    );
    link(
        root,
        "etc/systemd/system/multi-user.target.wants/gone.service",
        "/usr/lib/systemd/system/gone.service",
    );
    write(root, "etc/hostname", "");
    write(root, "etc/machine-id", "");
    link(root, "var/lib/dbus/machine-id", "/etc/machine-id");
    link(
        root,
        "etc/resolv.conf",
        "../run/systemd/resolve/stub-resolv.conf",
    );
    write(root, "etc/ssh/sshd_config", "PermitRootLogin no\n");
    write(root, "var/lib/apt/lists/lock", "");
    mkdir(root, "var/lib/apt/lists/partial");
    write(root, "var/cache/apt/archives/lock", "");
    mkdir(root, "var/cache/apt/archives/partial");
    mkdir(root, "var/lib/cloud/seed/nocloud");
    mkdir(root, "var/lib/cloud/scripts/per-boot");
    mkdir(root, "tmp");
    mkdir(root, "root");
    write(root, "root/.bashrc", "PS1='# '\n");
    write(root, "home/admin/.profile", "umask 022\n");
    write(
        root,
        "etc/ssl/certs/ca.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    // Look-alikes that must not fire: AWS's documented example key, a short "ghp_".
    write(
        root,
        "etc/example.conf",
        "# e.g. AKIAIOSFODNN7EXAMPLE\n# tokens look like ghp_xxx\npassword_file=/run/secrets/db\n",
    );
    write(root, "usr/bin/tool", vec![7u8; 5000]);
}
