//! Extraction of crafted and ordinary ext4 images (`webake_build::extract`).
//!
//! Needs root (owners, device nodes, file capabilities), `mkfs.ext4` and `debugfs`: without
//! them every test fails saying so. Images are built with `mkfs.ext4 -d` and crafted with
//! `debugfs -w` (duplicate names, loops, an inode of no type) or by editing a directory block
//! (names with `/` or NUL, which no tool creates). Host canaries live in each test's temp
//! directory and are compared byte for byte (content, mode, type, link target) before and
//! after.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;
use webake_build::extract::{ExtractError, ExtractReport, SkipReason, extract, root_offset};

fn require_root_and_tools() {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "these tests need root (owners, device nodes, file capabilities)"
    );
    for tool in ["mkfs.ext4", "debugfs"] {
        assert!(
            webake_sys::process::which(tool).is_some(),
            "these tests need `{tool}` (e2fsprogs) on PATH"
        );
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `mkfs.ext4 -d src` into `img` (`extra` options such as `-O ^metadata_csum`).
fn mkfs(src: &Path, img: &Path, extra: &[&str]) {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096"])
        .args(extra)
        .arg("-d")
        .arg(src)
        .arg(img)
        .arg("64M"));
}

/// Run debugfs commands on `img` read-write (crafting).
fn debugfs_w(img: &Path, commands: &str) {
    let f = img.with_extension("cmds");
    std::fs::write(&f, commands).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&f)
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs -w {commands}");
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().skip(1).collect();
    assert!(errors.is_empty(), "debugfs -w {commands}: {errors:?}");
}

fn debugfs_r(img: &Path, command: &str) -> String {
    run(Command::new("debugfs").arg("-R").arg(command).arg(img))
}

/// The inode number of `path` in `img`.
fn inode_of(img: &Path, path: &str) -> u64 {
    let out = debugfs_r(img, &format!("stat {path}"));
    out.lines()
        .find_map(|l| l.strip_prefix("Inode: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no inode for {path}: {out}"))
}

/// Everything about a host path that an attack could change: type, mode, owner, content or
/// link target, recursively.
fn snapshot(p: &Path) -> BTreeMap<PathBuf, String> {
    let mut m = BTreeMap::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(q) = stack.pop() {
        let md = std::fs::symlink_metadata(&q).unwrap();
        let ft = md.file_type();
        let what = if ft.is_symlink() {
            format!("link {:?}", std::fs::read_link(&q).unwrap())
        } else if ft.is_file() {
            format!("file {}", hex::encode(std::fs::read(&q).unwrap()))
        } else if ft.is_dir() {
            for e in std::fs::read_dir(&q).unwrap() {
                stack.push(e.unwrap().path());
            }
            "dir".to_string()
        } else {
            format!("special {:?} rdev {}", ft, md.rdev())
        };
        m.insert(
            q,
            format!("{what} mode {:o} {}:{}", md.mode(), md.uid(), md.gid()),
        );
    }
    m
}

/// A test's temp directory with host canaries: `host/canary` (a file) and `host/dir/` (a
/// directory with a file), never to be touched by an extraction.
struct Fixture {
    t: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        require_root_and_tools();
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        std::fs::create_dir_all(host.join("dir")).unwrap();
        std::fs::write(host.join("canary"), "host canary\n").unwrap();
        std::fs::set_permissions(host.join("canary"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::write(host.join("canary2"), "second canary\n").unwrap();
        std::fs::write(host.join("dir/inside"), "inside\n").unwrap();
        Self { t }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.t.path().join(p)
    }
    fn host(&self) -> PathBuf {
        self.path("host")
    }
    fn src(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

// ---------------------------------------------------------------------------------------
// crafted disks

/// One crafted image: how to build it and what the refusal must name.
struct Crafted {
    name: &'static str,
    /// Expected escaped inner path in the error and a word of the reason.
    inner: &'static str,
    reason: &'static str,
}

/// Where the directory entry named `needle` starts in `bytes` (the name is unique there).
fn dirent_at(bytes: &[u8], needle: &str) -> usize {
    let n = needle.as_bytes();
    let hits: Vec<usize> = bytes
        .windows(n.len())
        .enumerate()
        .filter(|(_, w)| *w == n)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{needle} appears once in the image");
    let at = hits[0] - 8; // inode u32, rec_len u16, name_len u8, file_type u8, name
    assert_eq!(bytes[at + 6] as usize, n.len());
    at
}

/// Edit the directory block of an image without metadata checksums so that the entries
/// `other` and `link` (a symlink) both carry `name`, the symlink's entry first: what a crafted
/// disk looks like to a path-based extractor that creates entries in directory order.
fn make_duplicate(img: &Path, other: &str, link: &str, name: &str) {
    let mut b = std::fs::read(img).unwrap();
    let (o, l) = (dirent_at(&b, other), dirent_at(&b, link));
    let head = |b: &[u8], at: usize| (b[at..at + 4].to_vec(), b[at + 7]);
    let (oh, lh) = (head(&b, o), head(&b, l));
    let (first, second) = (o.min(l), o.max(l));
    for (at, (ino, ft)) in [(first, lh), (second, oh)] {
        b[at..at + 4].copy_from_slice(&ino);
        b[at + 7] = ft;
        b[at + 6] = name.len() as u8;
        b[at + 8..at + 8 + name.len()].copy_from_slice(name.as_bytes());
    }
    std::fs::write(img, b).unwrap();
    // debugfs now shows two entries of that name.
    let ls = debugfs_r(img, "ls -l /");
    let n = ls
        .lines()
        .filter(|l| l.ends_with(&format!(" {name}")))
        .count();
    assert_eq!(n, 2, "{ls}");
}

/// Build the crafted image `c.name` in `fx` and return its path.
fn craft(fx: &Fixture, c: &Crafted) -> PathBuf {
    let host = fx.host();
    let src = fx.src(&format!("src-{}", c.name));
    let img = fx.path(&format!("{}.img", c.name));
    match c.name {
        // `etc -> <host dir>`, then a directory `etc` with a setuid file and a subdirectory:
        // the old fix-up pass after rdump chmod'ed and mknod'ed through the symlink.
        "dir-through-symlink" => {
            std::fs::create_dir_all(src.join("zzdupdirzz/sub")).unwrap();
            std::fs::write(src.join("zzdupdirzz/inside"), "pwned\n").unwrap();
            std::fs::set_permissions(
                src.join("zzdupdirzz/inside"),
                PermissionsExt::from_mode(0o4755),
            )
            .unwrap();
            std::fs::write(src.join("zzdupdirzz/sub/new"), "pwned\n").unwrap();
            run(Command::new("mknod")
                .arg(src.join("zzdupdirzz/sub/null"))
                .args(["c", "1", "3"]));
            symlink(host.join("dir"), src.join("zzduplnkzz")).unwrap();
            mkfs(&src, &img, &["-O", "^metadata_csum"]);
            make_duplicate(&img, "zzdupdirzz", "zzduplnkzz", "etc");
        }
        // An absolute symlink to a host file, then a setuid regular file of the same name:
        // rdump wrote the file's content through the symlink and chmod'ed the target.
        "file-through-symlink" => {
            std::fs::write(src.join("zzvictimfz"), "pwned\n").unwrap();
            std::fs::set_permissions(src.join("zzvictimfz"), PermissionsExt::from_mode(0o4755))
                .unwrap();
            symlink(host.join("canary"), src.join("zzvictimlz")).unwrap();
            mkfs(&src, &img, &["-O", "^metadata_csum"]);
            make_duplicate(&img, "zzvictimfz", "zzvictimlz", "victim");
        }
        // A symlink to a host file, then a device node of the same name.
        "device-over-symlink" => {
            run(Command::new("mknod")
                .arg(src.join("zznodedevz"))
                .args(["c", "1", "3"]));
            symlink(host.join("canary2"), src.join("zznodelnkz")).unwrap();
            mkfs(&src, &img, &["-O", "^metadata_csum"]);
            make_duplicate(&img, "zznodedevz", "zznodelnkz", "node");
        }
        // A directory that contains itself.
        "loop" => {
            std::fs::create_dir_all(src.join("d")).unwrap();
            mkfs(&src, &img, &[]);
            debugfs_w(&img, "ln d d/loop\n");
        }
        // A directory with two names.
        "hard-linked-directory" => {
            std::fs::create_dir_all(src.join("d/x")).unwrap();
            mkfs(&src, &img, &[]);
            debugfs_w(&img, "ln d/x again\n");
        }
        // An inode whose mode has no file type.
        "no-type" => {
            std::fs::write(src.join("typeless"), "x").unwrap();
            mkfs(&src, &img, &[]);
            debugfs_w(&img, "sif typeless mode 0644\n");
        }
        // Names no tool creates: edit the directory block (no checksums to fix).
        "slash-in-name" | "nul-in-name" => {
            std::fs::write(src.join("zzslashQmarkerzz"), "x").unwrap();
            mkfs(&src, &img, &["-O", "^metadata_csum"]);
            let mut bytes = std::fs::read(&img).unwrap();
            let at = dirent_at(&bytes, "zzslashQmarkerzz") + 8;
            bytes[at + 7] = if c.name == "slash-in-name" { b'/' } else { 0 };
            std::fs::write(&img, bytes).unwrap();
        }
        // Found only while building (after other entries were written): what was written
        // must go again.
        "nul-in-symlink-target" => {
            std::fs::write(src.join("written-first"), "x").unwrap();
            std::fs::create_dir_all(src.join("sub")).unwrap();
            symlink("zzabcQdefzz", src.join("sub/zzlink")).unwrap();
            mkfs(&src, &img, &["-O", "^metadata_csum"]);
            let mut bytes = std::fs::read(&img).unwrap();
            let n = b"zzabcQdefzz";
            let hits: Vec<usize> = bytes
                .windows(n.len())
                .enumerate()
                .filter(|(_, w)| *w == n)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(hits.len(), 1, "the fast symlink's target is in its inode");
            bytes[hits[0] + 5] = 0;
            std::fs::write(&img, bytes).unwrap();
        }
        other => panic!("unknown crafted image {other}"),
    }
    img
}

const CRAFTED: &[Crafted] = &[
    Crafted {
        name: "dir-through-symlink",
        inner: "\"/etc\"",
        reason: "duplicate",
    },
    Crafted {
        name: "file-through-symlink",
        inner: "\"/victim\"",
        reason: "duplicate",
    },
    Crafted {
        name: "device-over-symlink",
        inner: "\"/node\"",
        reason: "duplicate",
    },
    Crafted {
        name: "loop",
        inner: "\"/d/loop\"",
        reason: "loop",
    },
    Crafted {
        name: "hard-linked-directory",
        inner: "\"/d/x\"", // listed after /again (breadth-first)
        reason: "hard-linked directory",
    },
    Crafted {
        name: "no-type",
        inner: "\"/typeless\"",
        reason: "no file type",
    },
    Crafted {
        name: "slash-in-name",
        inner: "\"/zzslash/markerzz\"",
        reason: "'/' or NUL",
    },
    Crafted {
        name: "nul-in-symlink-target",
        inner: "\"/sub/zzlink\"",
        reason: "NUL",
    },
    Crafted {
        name: "nul-in-name",
        inner: "\"/zzslash\\0markerzz\"",
        reason: "'/' or NUL",
    },
];

#[test]
fn crafted_disks_are_refused_and_never_touch_the_host() {
    let fx = Fixture::new();
    let before = snapshot(&fx.host());
    for c in CRAFTED {
        let img = craft(&fx, c);
        // Into a fresh directory (created by extract) and into an existing empty one.
        let fresh = fx.path(&format!("out-{}", c.name));
        let err = extract(&img, 0, &fresh).expect_err(c.name);
        let msg = err.to_string();
        match &err {
            ExtractError::Refused { inner, reason, .. } => {
                assert_eq!(inner, c.inner, "{}: {msg}", c.name);
                assert!(reason.contains(c.reason), "{}: {msg}", c.name);
            }
            other => panic!("{}: expected a refusal, got {other:?}", c.name),
        }
        assert!(
            msg.contains(&img.display().to_string()),
            "names the disk: {msg}"
        );
        assert!(
            !fresh.exists(),
            "{}: the created destination is removed",
            c.name
        );

        let existing = fx.path(&format!("existing-{}", c.name));
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, PermissionsExt::from_mode(0o751)).unwrap();
        assert!(extract(&img, 0, &existing).is_err());
        assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 0);
        assert_eq!(
            std::fs::metadata(&existing).unwrap().mode() & 0o7777,
            0o751,
            "{}: the caller's directory keeps its mode",
            c.name
        );
        assert_eq!(
            snapshot(&fx.host()),
            before,
            "{}: host canaries changed",
            c.name
        );
    }
}

/// The duplicate-entry images are real attacks: `debugfs rdump` (what extraction used
/// before) overwrites the host canary through one and makes it setuid. The canary is then
/// restored and the same image goes through extract.
#[test]
fn a_crafted_duplicate_fools_rdump_but_not_extract() {
    let fx = Fixture::new();
    let canary = fx.host().join("canary");
    let img = craft(&fx, &CRAFTED[1]); // victim -> host canary, then a setuid file victim
    let dump = fx.src("rdump-out");
    let _ = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", dump.display()))
        .arg(&img)
        .output()
        .unwrap();
    // Overwritten and chmod'ed (its setuid bit dropped by rdump's chown after chmod; the
    // fix-up pass that restored special bits then followed the same symlink).
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "pwned\n");
    assert_eq!(std::fs::metadata(&canary).unwrap().mode() & 0o7777, 0o755);

    std::fs::write(&canary, "host canary\n").unwrap();
    std::fs::set_permissions(&canary, PermissionsExt::from_mode(0o644)).unwrap();
    let before = snapshot(&fx.host());
    let err = extract(&img, 0, &fx.path("out")).unwrap_err();
    assert!(err.to_string().contains("duplicate"), "{err}");
    assert_eq!(snapshot(&fx.host()), before);
}

#[test]
fn the_destination_must_be_an_empty_directory() {
    let fx = Fixture::new();
    let src = fx.src("src");
    std::fs::write(src.join("f"), "x").unwrap();
    let img = fx.path("plain.img");
    mkfs(&src, &img, &[]);

    let busy = fx.src("busy");
    std::fs::write(busy.join("keep"), "mine").unwrap();
    let err = extract(&img, 0, &busy).unwrap_err();
    assert!(
        matches!(err, ExtractError::Destination { .. }) && err.to_string().contains("not empty"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(busy.join("keep")).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    let link = fx.path("link");
    symlink(fx.src("empty"), &link).unwrap();
    let err = extract(&img, 0, &link).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_eq!(std::fs::read_dir(fx.path("empty")).unwrap().count(), 0);

    let file = fx.path("file");
    std::fs::write(&file, "x").unwrap();
    let err = extract(&img, 0, &file).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");

    // Not a filesystem at all: an error, nothing left behind.
    let junk = fx.path("junk.img");
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    let out = fx.path("out");
    let err = extract(&junk, 0, &out).unwrap_err();
    // debugfs's own message (its standard error is kept apart and reported).
    assert!(
        matches!(err, ExtractError::Debugfs { .. })
            && err.to_string().contains("junk.img")
            && err.to_string().contains("Bad magic number"),
        "{err}"
    );
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------
// differential: mkfs.ext4 -d SRC, extract, compare with SRC

/// `security.capability` v2 for cap_net_raw+ep.
const CAP_NET_RAW: &[u8] = &[
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
/// A POSIX ACL (user::rw-, user:1000:r--, group::r--, mask::r--, other::---) in the
/// kernel's xattr format.
fn acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// A source tree with every kind of entry extraction must carry over.
fn rich_source(fx: &Fixture) -> PathBuf {
    let src = fx.src("rich");
    let p = |s: &str| src.join(s);
    let mode =
        |s: &str, m: u32| std::fs::set_permissions(p(s), PermissionsExt::from_mode(m)).unwrap();
    let own = |s: &str, u: u32, g: u32| std::os::unix::fs::lchown(p(s), Some(u), Some(g)).unwrap();
    for d in ["d/sub", "sticky", "sgid", "private"] {
        std::fs::create_dir_all(p(d)).unwrap();
    }
    mode("sticky", 0o1777);
    mode("sgid", 0o2775);
    own("sgid", 0, 50);
    mode("private", 0o700);
    own("private", 1000, 1000);
    std::fs::write(p("plain"), "plain\n").unwrap();
    std::fs::write(p("empty"), "").unwrap();
    std::fs::write(p("suid"), "#!/bin/sh\n").unwrap();
    mode("suid", 0o4755);
    std::fs::write(p("sgid/prog"), "prog").unwrap();
    own("sgid/prog", 0, 50);
    mode("sgid/prog", 0o2755);
    std::fs::write(p("owned"), "owned").unwrap();
    own("owned", 1234, 5678);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(p("d/big"), &big).unwrap();
    {
        let f = std::fs::File::create(p("d/sparse")).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::io::{Seek, Write};
        let mut f = f;
        f.seek(std::io::SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
    }
    std::fs::write(p("sp ace\nnew line"), "odd name").unwrap();
    std::fs::write(
        src.join(OsStr::from_bytes(b"caf\xe9 back\\slash")),
        "latin-1",
    )
    .unwrap();
    // Hard links: a file with three names, a FIFO with two (a symlink with two is made in
    // the image: mkfs -d copies hard-linked symlinks apart).
    std::fs::write(p("h1"), "hard").unwrap();
    std::fs::hard_link(p("h1"), p("d/h2")).unwrap();
    std::fs::hard_link(p("h1"), p("d/sub/h3")).unwrap();
    symlink("plain", p("rel")).unwrap();
    symlink(fx.host().join("canary"), p("abs-to-host")).unwrap();
    symlink(fx.host().join("dir"), p("abs-dir-to-host")).unwrap();
    let long = format!("/{}", "long-target-component/".repeat(12));
    assert!(long.len() > 60);
    symlink(&long, p("long")).unwrap();
    // A fast symlink whose target looks like debugfs output (printed raw by `stat`).
    symlink(
        "x\ndebugfs: stat <2>\nDevice major/minor number: 1:3",
        p("mimic"),
    )
    .unwrap();
    run(Command::new("mknod").arg(p("null")).args(["c", "1", "3"]));
    run(Command::new("mknod")
        .arg(p("loopdev"))
        .args(["b", "7", "0"]));
    run(Command::new("mknod")
        .arg(p("bignum"))
        .args(["c", "259", "65536"]));
    run(Command::new("mkfifo").arg(p("fifo")));
    std::fs::hard_link(p("fifo"), p("d/fifo2")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(p("sock")).unwrap());
    mode("null", 0o666);
    own("loopdev", 0, 6);
    // Extended attributes.
    let set = |s: &str, n: &str, v: &[u8]| {
        webake_sys::fsutil::set_xattr(&p(s), &CString::new(n).unwrap(), v).unwrap()
    };
    std::fs::write(p("ping"), "ping").unwrap();
    mode("ping", 0o755);
    set("ping", "security.capability", CAP_NET_RAW);
    set("plain", "user.note", b"hello \"world\"\n\x00\xff");
    set("plain", "trusted.secret", b"host only");
    set("d", "user.dir", b"on a directory");
    set("owned", "system.posix_acl_access", &acl());
    // Times (set last: everything above changes them).
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_500_000_000, 0);
    let at = std::time::UNIX_EPOCH + std::time::Duration::new(1_400_000_000, 0);
    let times = std::fs::FileTimes::new().set_modified(t).set_accessed(at);
    std::fs::File::options()
        .write(true)
        .open(p("plain"))
        .unwrap()
        .set_times(times)
        .unwrap();
    std::fs::File::open(p("d/sub"))
        .unwrap()
        .set_times(times)
        .unwrap();
    src
}

/// Per path: `%y %m %U %G %s %l` as find prints them (sizes of directories left out: they
/// depend on the filesystem), plus sha256 of regular files, rdev, mtime and xattrs.
fn listing(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let out = Command::new("find")
        .arg(".")
        .arg("-printf")
        .arg("%p\\0%y %m %U %G %s %l\\0")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success());
    let fields: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    let mut m = BTreeMap::new();
    for pair in fields.chunks(2).filter(|c| c.len() == 2) {
        let (path, info) = (pair[0], String::from_utf8_lossy(pair[1]).into_owned());
        if path.starts_with(b"./lost+found") {
            continue; // only in the image
        }
        let host = root.join(OsStr::from_bytes(path));
        let md = std::fs::symlink_metadata(&host).unwrap();
        let mut line = if md.is_dir() {
            let mut f: Vec<&str> = info.split(' ').collect();
            f[4] = "-";
            f.join(" ")
        } else {
            info
        };
        if md.is_file() {
            let data = std::fs::read(&host).unwrap();
            line.push_str(&format!(
                " sha256={}",
                hex::encode(sha2::Sha256::digest(&data))
            ));
        }
        let ft = md.file_type();
        if ft.is_char_device() || ft.is_block_device() {
            line.push_str(&format!(" rdev={:x}", md.rdev()));
        }
        if !ft.is_symlink() {
            // Seconds: mkfs -d drops nanoseconds (checked apart, set in the image).
            line.push_str(&format!(" mtime={}", md.mtime()));
        }
        let mut xattrs = webake_sys::fsutil::xattrs(&host).unwrap();
        xattrs.sort();
        for (n, v) in xattrs {
            line.push_str(&format!(" {}={}", n.to_string_lossy(), hex::encode(v)));
        }
        m.insert(path.to_vec(), line);
    }
    m
}

/// The rich source tree in an image, with nanoseconds and a time past 2038 (the epoch bits of
/// the extra word), which mkfs -d does not produce, and one more hard link.
fn rich_image(fx: &Fixture, src: &Path) -> PathBuf {
    let img = fx.path("rich.img");
    mkfs(src, &img, &[]);
    debugfs_w(
        &img,
        &format!(
            "sif /plain mtime_extra {}\nsif /plain atime_extra {}\nsif /empty mtime_extra {}\n\
             ln /rel /d/rel-again\n",
            123_456_789u32 << 2,
            987_654_321u32 << 2,
            1 | (5 << 2)
        ),
    );
    img
}

/// The listing of the source, changed as `rich_image` changed the image and without what is
/// not carried over.
fn expected_listing(src: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut want = listing(src);
    let rel = want[&b"./rel"[..]].clone();
    want.insert(b"./d/rel-again".to_vec(), rel);
    // /empty's time was moved past 2038 in the image.
    let empty = want.get_mut(&b"./empty"[..]).unwrap();
    let secs: i64 = empty.rsplit("mtime=").next().unwrap().parse().unwrap();
    *empty = empty.replace(
        &format!("mtime={secs}"),
        &format!("mtime={}", secs + (1 << 32)),
    );
    // trusted.* is not carried over (and reported).
    for v in want.values_mut() {
        if let Some(i) = v.find(" trusted.secret=") {
            let end = v[i + 1..].find(' ').map(|e| i + 1 + e).unwrap_or(v.len());
            v.replace_range(i..end, "");
        }
    }
    want
}

fn strip_dir_mtime(m: &BTreeMap<Vec<u8>, String>) -> BTreeMap<Vec<u8>, String> {
    m.iter()
        .map(|(k, v)| {
            let v = if v.starts_with("d ") {
                v.split(' ')
                    .filter(|f| !f.starts_with("mtime="))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// Every path of the source is extracted with the same listing; directory times are those
/// of the image.
fn assert_listing_matches(src: &Path, img: &Path, dest: &Path) {
    let want = expected_listing(src);
    let got = listing(dest);
    // mkfs -d does not keep the times of directories it fills; compare those apart.
    let (want_cmp, got_cmp) = (strip_dir_mtime(&want), strip_dir_mtime(&got));
    for (k, v) in &want_cmp {
        assert_eq!(
            got_cmp.get(k),
            Some(v),
            "{:?} differs (source vs extracted)",
            OsString::from_vec(k.clone())
        );
    }
    assert_eq!(
        want_cmp.keys().collect::<Vec<_>>(),
        got_cmp.keys().collect::<Vec<_>>()
    );
    // Directory times are those of the image (as debugfs shows them).
    let stat = debugfs_r(img, "stat /d/sub");
    let mt = stat
        .lines()
        .find_map(|l| l.trim().strip_prefix("mtime: 0x"))
        .unwrap();
    let secs = i64::from_str_radix(&mt[..8], 16).unwrap();
    assert_eq!(std::fs::metadata(dest.join("d/sub")).unwrap().mtime(), secs);
}

/// Explicit checks of what matters most: times, modes, owners, special files, hard links.
fn assert_metadata_kept(src: &Path, dest: &Path) {
    let md = |s: &str| std::fs::symlink_metadata(dest.join(s)).unwrap();
    assert_eq!(
        (md("plain").mtime(), md("plain").mtime_nsec()),
        (1_500_000_000, 123_456_789)
    );
    let empty_src = std::fs::metadata(src.join("empty")).unwrap().mtime();
    assert_eq!(
        (md("empty").mtime(), md("empty").mtime_nsec()),
        (empty_src + (1 << 32), 5)
    );
    assert_eq!(md("suid").mode() & 0o7777, 0o4755);
    assert_eq!(md("sgid/prog").mode() & 0o7777, 0o2755);
    assert_eq!((md("sgid/prog").uid(), md("sgid/prog").gid()), (0, 50));
    assert_eq!(md("sticky").mode() & 0o7777, 0o1777);
    assert_eq!((md("owned").uid(), md("owned").gid()), (1234, 5678));
    assert!(md("null").file_type().is_char_device());
    assert_eq!(md("null").rdev(), 0x103);
    assert!(md("loopdev").file_type().is_block_device());
    assert!(md("fifo").file_type().is_fifo());
    assert!(md("sock").file_type().is_socket());
    assert_eq!(md("h1").ino(), md("d/h2").ino());
    assert_eq!(md("h1").ino(), md("d/sub/h3").ino());
    assert_eq!(md("h1").nlink(), 3);
    assert_eq!(md("rel").ino(), md("d/rel-again").ino());
    assert_eq!(md("fifo").ino(), md("d/fifo2").ino());
}

/// Symlink targets as written (never resolved on the host), capabilities kept, trusted.*
/// skipped and reported, the counts of the report, no staging directory left.
fn assert_links_xattrs_and_report(fx: &Fixture, dest: &Path, report: &ExtractReport) {
    assert_eq!(
        std::fs::read_link(dest.join("abs-to-host")).unwrap(),
        fx.host().join("canary")
    );
    assert_eq!(
        std::fs::read_link(dest.join("mimic")).unwrap().as_os_str(),
        "x\ndebugfs: stat <2>\nDevice major/minor number: 1:3"
    );
    assert!(
        std::fs::read_link(dest.join("long"))
            .unwrap()
            .as_os_str()
            .len()
            > 60
    );
    let caps = webake_sys::fsutil::xattrs(&dest.join("ping")).unwrap();
    assert!(
        caps.iter()
            .any(|(n, v)| n.as_bytes() == b"security.capability" && v == CAP_NET_RAW),
        "{caps:?}"
    );
    assert!(
        !webake_sys::fsutil::xattrs(&dest.join("plain"))
            .unwrap()
            .iter()
            .any(|(n, _)| n.as_bytes().starts_with(b"trusted."))
    );
    assert!(
        report
            .skipped_xattrs
            .iter()
            .any(|s| s.name == "trusted.secret"
                && s.reason == SkipReason::Trusted
                && s.inner == "\"/plain\""),
        "{report:?}"
    );
    assert_eq!(report.files, 11, "{report}");
    assert_eq!(report.symlinks, 5, "{report}");
    assert_eq!(report.specials, 5, "{report}");
    assert_eq!(report.hard_links, 4, "{report}");
    assert!(report.xattrs >= 4, "{report}");
    // Nothing of the staging directory is left.
    assert!(!std::fs::read_dir(dest).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".webake-extract")
    }),);
}

#[test]
fn a_tree_round_trips_through_mkfs_and_extract() {
    let fx = Fixture::new();
    let src = rich_source(&fx);
    let img = rich_image(&fx, &src);
    let before = snapshot(&fx.host());
    let dest = fx.path("out");
    let report = extract(&img, 0, &dest).unwrap();
    assert_eq!(snapshot(&fx.host()), before, "host canaries changed");
    // Before anything reads it (reading moves the access time).
    let plain = std::fs::metadata(dest.join("plain")).unwrap();
    assert_eq!(
        (plain.atime(), plain.atime_nsec()),
        (1_400_000_000, 987_654_321)
    );

    assert_listing_matches(&src, &img, &dest);
    assert_metadata_kept(&src, &dest);
    assert_links_xattrs_and_report(&fx, &dest, &report);
}

/// A partitioned disk: the root partition is found with sfdisk and extracted at its offset.
#[test]
fn a_partitioned_disk_is_extracted_at_its_root_partition() {
    let fx = Fixture::new();
    let src = fx.src("rootsrc");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "webake\n").unwrap();
    let fs = fx.path("root.ext4");
    mkfs(&src, &fs, &[]);
    let disk = fx.path("disk.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(80 << 20).unwrap();
    drop(f);
    let script = "label: gpt\nstart=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=10240, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n";
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    run(Command::new("dd")
        .arg(format!("if={}", fs.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=512", "seek=10240", "conv=notrunc", "status=none"]));
    let off = root_offset(&disk).unwrap();
    assert_eq!(off, 10240 * 512);
    let dest = fx.path("out");
    extract(&disk, off, &dest).unwrap();
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/hostname")).unwrap(),
        "webake\n"
    );
    // A bare filesystem has no partition table: offset 0.
    assert_eq!(root_offset(&fs).unwrap(), 0);
}

/// An image whose root has an entry named like the staging directory still extracts.
#[test]
fn an_entry_named_like_the_staging_directory() {
    let fx = Fixture::new();
    let src = fx.src("src");
    std::fs::create_dir_all(src.join(".webake-extract")).unwrap();
    std::fs::write(src.join(".webake-extract/f"), "mine").unwrap();
    std::fs::write(src.join("g"), "g").unwrap();
    let img = fx.path("s.img");
    mkfs(&src, &img, &[]);
    let dest = fx.path("out");
    extract(&img, 0, &dest).unwrap();
    assert_eq!(
        std::fs::read_to_string(dest.join(".webake-extract/f")).unwrap(),
        "mine"
    );
    let names: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, vec![".webake-extract", "g", "lost+found"]);
    let _ = inode_of(&img, "/g");
}
