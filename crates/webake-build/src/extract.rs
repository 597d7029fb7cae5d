//! Extraction of an ext2/3/4 filesystem from a disk image into a directory, offline (no
//! mount, no loop device), such that nothing in the image decides where the host writes.
//!
//! The image comes from outside (a base AMI's snapshot, a disk handed to `webake lint` or
//! `webake test`) and may be crafted. `debugfs rdump` writes by path and follows symlinks it
//! has just created: a symlink `etc -> /` followed by a second entry `etc` holding files wrote
//! into the host. Here debugfs only *reads*:
//!
//! 1. **List** every directory by inode number, one `debugfs` run per tree level
//!    (`ls -l <ino>`: names come escaped, so a newline in a name cannot forge an entry). Names
//!    with `/` or NUL, empty names, duplicate names in one directory, a directory reached twice
//!    (a loop or a hard-linked directory) and an inode of no known file type are refused here,
//!    before anything is written.
//! 2. **Stat** every inode in one batched run (`stat <ino>`: times, device numbers, the names
//!    of extended attributes, whether a symlink is "fast").
//! 3. **Fetch** in one batched run: regular files and long symlinks are dumped *by inode
//!    number* into a staging directory webake creates (`dump <ino> <ino>`, relative to it),
//!    fast symlinks are read as hex (`inode_dump -b`), kept extended attributes as hex
//!    (`ea_get -x`). A name from the image never reaches debugfs as a host path.
//! 4. **Build** the tree through [`webake_sys::Tree`] (every path resolved inside the
//!    destination, final components never followed): staged files are hard-linked into place
//!    (no copy), then symlinks, device nodes, FIFOs, sockets and hard links are created, and
//!    owner (before the mode, which keeps setuid/setgid), mode, extended attributes and times
//!    set; directories last, deepest first, so their times stick.
//!
//! The output of a batched run is split by comment lines carrying a random nonce (debugfs
//! echoes `#...` lines of its command file verbatim), so the one field debugfs prints raw (a
//! fast symlink's target in `stat`) cannot forge the start of another inode's section; within
//! a `stat` section that field is the last one and nothing after it is read. debugfs's
//! standard error goes to a file: any message there (an unreadable inode, a checksum error)
//! fails the extraction, since debugfs itself exits 0 after failed commands.
//!
//! The destination must be an empty directory (or absent: it is created); it is mode 0700
//! while being filled. On error it is emptied again (removed if this created it). Kept:
//! directories, regular files (sparse regions become data), symlinks (any length), character
//! and block devices, FIFOs, sockets, hard links, owner, mode with setuid/setgid/sticky,
//! access and modification times (nanoseconds), and extended attributes in `security.*`,
//! `user.*` and `system.posix_acl_*` (file capabilities, SELinux labels, ACLs). Skipped and
//! listed in [`ExtractReport::skipped_xattrs`]: `trusted.*` (privileged, meaningful only to
//! the kernel that set them), `system.data` (ext4's inline data, not an attribute), names in
//! other namespaces or with unusual characters, attributes on symlinks and `user.*` on device
//! nodes/FIFOs/sockets (the kernel refuses both), and attributes other than capabilities and
//! ACLs that the host refuses (an SELinux label its policy does not know). Not kept: inode flags (`chattr`:
//! immutable, append-only, ...), creation and change times.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::fmt;
use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use webake_sys::process::{Cmd, ProcessError, capture};
use webake_sys::{Tree, TreeError};

/// GPT type of the x86-64 root partition (what webake assembles).
pub const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// GPT "Linux filesystem data" (most other images).
pub const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Commands per debugfs run: bounds the output held in memory (a `stat` is ~1 KiB).
const BATCH: usize = 8192;
/// Name of the staging directory inside the destination (renamed if the image has it too).
const STAGING: &str = ".webake-extract";
/// errno EOPNOTSUPP (= ENOTSUP on Linux).
const EOPNOTSUPP: i32 = 95;
/// ext4's inline-data inode flag (`EXT4_INLINE_DATA_FL`).
const INLINE_DATA_FL: u32 = 0x1000_0000;
/// Size of ext4's `i_block`: a symlink target shorter than this may live in the inode.
const I_BLOCK_BYTES: usize = 60;

/// Why an extraction failed. Every variant names the disk; paths inside the image are shown
/// escaped (`"/etc/a\nb"`), as they come from the image.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{disk}: {source}")]
    Command {
        disk: PathBuf,
        #[source]
        source: ProcessError,
    },
    #[error("{disk}: debugfs reported errors: {messages}")]
    Debugfs { disk: PathBuf, messages: String },
    #[error("{disk}: unexpected output of `{command}`: {detail}")]
    Output {
        disk: PathBuf,
        command: String,
        detail: String,
    },
    /// The image holds something this refuses to extract (a duplicate entry, a bad name, a
    /// loop, an inode of unknown type).
    #[error("{disk}: refusing {inner}: {reason}")]
    Refused {
        disk: PathBuf,
        inner: String,
        reason: String,
    },
    #[error("{disk}: the destination {dest} {why}")]
    Destination {
        disk: PathBuf,
        dest: PathBuf,
        why: String,
    },
    #[error("{disk}: {op} {inner} in {dest}: {source}")]
    Write {
        disk: PathBuf,
        dest: PathBuf,
        inner: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{disk}: {detail}")]
    PartitionTable { disk: PathBuf, detail: String },
}

type Result<T, E = ExtractError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A path inside the image as shown in messages: quoted, control characters escaped.
fn shown(inner: &Path) -> String {
    format!("{:?}", Path::new("/").join(inner))
}

/// Byte offset of the root filesystem in a raw disk: the x86-64 root partition, else the
/// largest Linux partition (GPT or MBR), else the whole disk (no partition table).
pub fn root_offset(disk: &Path) -> Result<u64> {
    let Ok(out) = capture(&Cmd::new("sfdisk").arg("--json").arg(disk)) else {
        return Ok(0); // no partition table: a filesystem on the whole disk
    };
    root_offset_of(&out).map_err(|detail| ExtractError::PartitionTable {
        disk: disk.to_path_buf(),
        detail,
    })
}

/// [`root_offset`] from `sfdisk --json` output.
fn root_offset_of(json: &str) -> Result<u64, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("sfdisk --json output: {e}"))?;
    let parts = v
        .pointer("/partitiontable/partitions")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    let ty = |p: &serde_json::Value| {
        p.get("type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_ascii_uppercase()
    };
    let num = |p: &serde_json::Value, k: &str| p.get(k).and_then(|s| s.as_u64()).unwrap_or(0);
    let chosen = parts.iter().find(|p| ty(p) == ROOT_X86_64).or_else(|| {
        parts
            .iter()
            .filter(|p| ty(p) == LINUX_DATA || ty(p) == "83")
            .max_by_key(|p| num(p, "size"))
    });
    let sector = v
        .pointer("/partitiontable/sectorsize")
        .and_then(|s| s.as_u64())
        .unwrap_or(512);
    match chosen {
        Some(p) => Ok(num(p, "start") * sector),
        None => Err("no Linux root partition in the partition table".into()),
    }
}

/// Why an extended attribute was not carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// `trusted.*`: privileged, meaningful only to the kernel that set them.
    Trusted,
    /// `system.data`: ext4's inline data, not an attribute.
    Internal,
    /// Another namespace, or a name with characters other than `[A-Za-z0-9._@+:-]`.
    Unsupported,
    /// Attributes on a symlink.
    OnSymlink,
    /// `user.*` on a device node, FIFO or socket.
    UserOnSpecial,
    /// The host refused it (an SELinux label unknown to the host's policy, `user.*` where the
    /// destination filesystem has no support); never for capabilities or ACLs.
    HostRefused,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trusted => "trusted.*",
            Self::Internal => "ext4 internal",
            Self::Unsupported => "unsupported name",
            Self::OnSymlink => "on a symlink",
            Self::UserOnSpecial => "user.* on a device node, FIFO or socket",
            Self::HostRefused => "refused by the host",
        })
    }
}

/// An extended attribute left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedXattr {
    /// The path inside the image, escaped as in messages.
    pub inner: String,
    /// The name as debugfs shows it.
    pub name: String,
    pub reason: SkipReason,
}

/// What [`extract`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Directories below the root.
    pub directories: u64,
    /// Regular files (inodes; extra names are counted in `hard_links`).
    pub files: u64,
    pub symlinks: u64,
    /// Device nodes, FIFOs and sockets.
    pub specials: u64,
    /// Names beyond the first of an inode.
    pub hard_links: u64,
    /// Bytes of regular file content.
    pub bytes: u64,
    /// Extended attributes set.
    pub xattrs: u64,
    pub skipped_xattrs: Vec<SkippedXattr>,
    /// debugfs runs.
    pub debugfs_runs: u64,
}

impl fmt::Display for ExtractReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} directories, {} files ({} bytes), {} symlinks, {} device nodes/FIFOs/sockets, \
             {} hard links, {} extended attributes",
            self.directories,
            self.files,
            self.bytes,
            self.symlinks,
            self.specials,
            self.hard_links,
            self.xattrs
        )?;
        if !self.skipped_xattrs.is_empty() {
            let mut by: BTreeMap<SkipReason, usize> = BTreeMap::new();
            for s in &self.skipped_xattrs {
                *by.entry(s.reason).or_default() += 1;
            }
            let parts: Vec<String> = by.iter().map(|(r, n)| format!("{n} {r}")).collect();
            write!(f, "; skipped attributes: {}", parts.join(", "))?;
        }
        Ok(())
    }
}

/// Extract the ext2/3/4 filesystem at byte `offset` of `image` (a raw disk or a filesystem
/// image) into `dest`, which must be an empty directory or absent. See the module docs for
/// what is kept and refused. On error, `dest` is left empty (removed if this created it).
pub fn extract(image: &Path, offset: u64, dest: &Path) -> Result<ExtractReport> {
    let disk = image;
    let abs = std::path::absolute(image).map_err(io(image))?;
    let mut device = abs.into_os_string();
    if device.as_bytes().contains(&b'?') {
        return Err(ExtractError::PartitionTable {
            disk: disk.to_path_buf(),
            detail: "a disk path containing `?` cannot be given to debugfs".into(),
        });
    }
    device.push(format!("?offset={offset}"));
    let mut guard = Destination::claim(disk, dest)?;
    let tree = Tree::open(dest).map_err(|e| write_err(disk, dest, e))?;
    let mut dbg = Debugfs::new(disk, device, &guard.staging)?;

    let listing = list(&dbg)?;
    if let Some(name) = staging_clash(&listing) {
        let fresh = dest.join(name);
        std::fs::rename(&guard.staging, &fresh).map_err(io(&fresh))?;
        guard.staging = fresh;
        dbg.work = guard.staging.clone();
    }
    let inodes: Vec<u64> = {
        let mut v: Vec<u64> = listing.first.keys().copied().collect();
        v.push(listing.root.ino);
        v.sort_unstable();
        v
    };
    let stats = stat_all(&dbg, &inodes)?;
    let fetched = fetch(&dbg, &listing, &stats)?;
    let mut report = build(
        &tree,
        disk,
        dest,
        &guard.staging,
        &listing,
        &stats,
        &fetched,
    )?;
    report.debugfs_runs = dbg.runs.get();
    guard.remove_staging()?;
    finish_root(disk, dest, &listing.root, &stats, &fetched, &mut report)?;
    guard.disarm();
    Ok(report)
}

/// The destination while it is being filled: private (0700), with the staging directory
/// inside (same filesystem, so staged files can be hard-linked into place). Dropped without
/// [`Destination::finish`], it empties `dest` again (removes it if it created it) and
/// restores its mode.
struct Destination {
    dest: PathBuf,
    staging: PathBuf,
    created: bool,
    mode: u32,
    armed: bool,
}

impl Destination {
    fn claim(disk: &Path, dest: &Path) -> Result<Self> {
        let refuse = |why: &str| ExtractError::Destination {
            disk: disk.to_path_buf(),
            dest: dest.to_path_buf(),
            why: why.to_string(),
        };
        let (created, mode) = match std::fs::symlink_metadata(dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(dest)
                    .map_err(io(dest))?;
                (true, 0o700)
            }
            Err(e) => return Err(io(dest)(e)),
            Ok(md) if md.file_type().is_symlink() => {
                return Err(refuse("is a symlink; it must be an empty directory"));
            }
            Ok(md) if !md.is_dir() => return Err(refuse("is not a directory")),
            Ok(md) => {
                let mut rd = std::fs::read_dir(dest).map_err(io(dest))?;
                if rd.next().is_some() {
                    return Err(refuse("is not empty; extraction needs an empty directory"));
                }
                (false, md.mode() & 0o7777)
            }
        };
        let guard = Self {
            dest: dest.to_path_buf(),
            staging: dest.join(STAGING),
            created,
            mode,
            armed: true,
        };
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700)).map_err(io(dest))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&guard.staging)
            .map_err(io(&guard.staging))?;
        Ok(guard)
    }

    /// Remove the staging directory (the tree stays).
    fn remove_staging(&self) -> Result<()> {
        std::fs::remove_dir_all(&self.staging).map_err(io(&self.staging))
    }

    /// Keep the tree.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // std's remove_dir_all never follows symlinks.
        if self.created {
            let _ = std::fs::remove_dir_all(&self.dest);
            return;
        }
        if let Ok(rd) = std::fs::read_dir(&self.dest) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = match e.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                    _ => std::fs::remove_file(&p),
                };
            }
        }
        let _ = std::fs::set_permissions(&self.dest, std::fs::Permissions::from_mode(self.mode));
    }
}

fn write_err(disk: &Path, dest: &Path, e: TreeError) -> ExtractError {
    ExtractError::Write {
        disk: disk.to_path_buf(),
        dest: dest.to_path_buf(),
        inner: format!("{:?}", e.inner),
        op: e.op,
        source: e.source,
    }
}

// ---------------------------------------------------------------------------------------
// debugfs runs

/// Runs batches of read-only debugfs commands against one filesystem, in the staging
/// directory (command file, standard error, dumped files).
struct Debugfs<'a> {
    disk: &'a Path,
    /// `ABSOLUTE_DISK?offset=N`.
    device: OsString,
    work: PathBuf,
    /// Random, per extraction: the section separators in debugfs's output.
    nonce: String,
    runs: std::cell::Cell<u64>,
}

impl<'a> Debugfs<'a> {
    fn new(disk: &'a Path, device: OsString, work: &Path) -> Result<Self> {
        let mut b = [0u8; 16];
        let urandom = Path::new("/dev/urandom");
        std::fs::File::open(urandom)
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(io(urandom))?;
        Ok(Self {
            disk,
            device,
            work: work.to_path_buf(),
            nonce: format!("webake-{}", hex::encode(b)),
            runs: std::cell::Cell::new(0),
        })
    }

    fn output_err(&self, command: &str, detail: impl Into<String>) -> ExtractError {
        ExtractError::Output {
            disk: self.disk.to_path_buf(),
            command: command.to_string(),
            detail: detail.into(),
        }
    }

    /// Run `commands` (in chunks of [`BATCH`]); the output lines of each, in order.
    fn batch(&self, commands: &[String]) -> Result<Vec<Vec<String>>> {
        let mut out = Vec::with_capacity(commands.len());
        for chunk in commands.chunks(BATCH) {
            out.extend(self.run(chunk)?);
        }
        Ok(out)
    }

    fn run(&self, commands: &[String]) -> Result<Vec<Vec<String>>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut script = String::new();
        for (i, c) in commands.iter().enumerate() {
            let _ = writeln!(script, "#{} {i}\n{c}", self.nonce);
        }
        let cmd_file = self.work.join("commands");
        std::fs::write(&cmd_file, script).map_err(io(&cmd_file))?;
        let err_file = self.work.join("stderr");
        let err = std::fs::File::create(&err_file).map_err(io(&err_file))?;
        let cmd = Cmd::new("debugfs")
            .arg("-f")
            .arg("commands")
            .arg(&self.device)
            .cwd(&self.work)
            .pass_fd(2, Arc::new(err.into()));
        self.runs.set(self.runs.get() + 1);
        let res = capture(&cmd);
        let stderr = std::fs::read_to_string(&err_file).map_err(io(&err_file))?;
        let messages: Vec<&str> = stderr
            .lines()
            .enumerate()
            // The banner (`debugfs 1.47.0 (5-Feb-2023)`).
            .filter(|(i, l)| !(*i == 0 && l.starts_with("debugfs ")))
            .map(|(_, l)| l)
            .filter(|l| !l.trim().is_empty())
            .collect();
        let stdout = match res {
            Ok(s) if messages.is_empty() => s,
            Err(source) if messages.is_empty() => {
                return Err(ExtractError::Command {
                    disk: self.disk.to_path_buf(),
                    source,
                });
            }
            _ => {
                const SHOWN: usize = 20;
                let mut m = messages
                    .iter()
                    .take(SHOWN)
                    .copied()
                    .collect::<Vec<_>>()
                    .join("; ");
                if messages.len() > SHOWN {
                    let _ = write!(m, "; and {} more", messages.len() - SHOWN);
                }
                return Err(ExtractError::Debugfs {
                    disk: self.disk.to_path_buf(),
                    messages: m,
                });
            }
        };
        split_sections(&stdout, &self.nonce, commands)
            .map_err(|(c, detail)| self.output_err(&c, detail))
    }
}

/// Split debugfs's output into the output of each command: every section starts with the
/// nonce comment `#NONCE i` and the echo `debugfs: COMMAND` (dropped).
fn split_sections(
    stdout: &str,
    nonce: &str,
    commands: &[String],
) -> std::result::Result<Vec<Vec<String>>, (String, String)> {
    let marker = |k: usize| format!("#{nonce} {k}");
    let mut next = marker(0);
    let mut sections: Vec<Vec<String>> = Vec::with_capacity(commands.len());
    for line in stdout.lines() {
        if sections.len() < commands.len() && line == next {
            sections.push(Vec::new());
            next = marker(sections.len());
            continue;
        }
        match sections.last_mut() {
            Some(s) => s.push(line.to_string()),
            None if line.is_empty() => {}
            None => {
                return Err((
                    commands[0].clone(),
                    format!("output before the first command: {line:?}"),
                ));
            }
        }
    }
    if sections.len() != commands.len() {
        let c = commands.get(sections.len()).cloned().unwrap_or_default();
        return Err((
            c,
            format!(
                "{} of {} commands produced output (debugfs stopped?)",
                sections.len(),
                commands.len()
            ),
        ));
    }
    for (s, c) in sections.iter_mut().zip(commands) {
        if s.first().map(String::as_str) != Some(format!("debugfs: {c}").as_str()) {
            return Err((
                c.clone(),
                format!("missing the command echo, got {:?}", s.first()),
            ));
        }
        s.remove(0);
    }
    Ok(sections)
}

// ---------------------------------------------------------------------------------------
// listing

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl Kind {
    fn of(mode: u32) -> Option<Self> {
        Some(match mode & 0o170000 {
            0o040000 => Self::Dir,
            0o100000 => Self::File,
            0o120000 => Self::Symlink,
            0o020000 => Self::Char,
            0o060000 => Self::Block,
            0o010000 => Self::Fifo,
            0o140000 => Self::Socket,
            _ => return None,
        })
    }

    fn is_special(self) -> bool {
        matches!(self, Self::Char | Self::Block | Self::Fifo | Self::Socket)
    }
}

/// One line of `ls -l`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LsLine {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    name: Vec<u8>,
}

/// Parse a line of debugfs `ls -l`:
/// `%c%6u%c %6o (%d)  %5d  %5d   %5llu %2d-%s-%4d %02d:%02d NAME` with NAME escaped (bytes
/// below 32, from 127 and `\` as `\xNN`). `None` for blank lines and unused slots (inode 0).
fn parse_ls_line(line: &str) -> std::result::Result<Option<LsLine>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let mut rest = line;
    let mut tok = [""; 8];
    for (i, t) in tok.iter_mut().enumerate() {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        *t = &rest[..end];
        rest = &rest[end..];
        if i == 0 && *t == "0" {
            return Ok(None); // an empty directory slot
        }
    }
    let bad = |what: &str| format!("{what} in ls line {line:?}");
    let ino: u64 = tok[0].parse().map_err(|_| bad("inode"))?;
    let mode = u32::from_str_radix(tok[1], 8).map_err(|_| bad("mode"))?;
    if !(tok[2].starts_with('(') && tok[2].ends_with(')')) {
        return Err(bad("file type"));
    }
    // inode_uid() printed with %d: values from 2^31 show negative.
    let uid = tok[3].parse::<i64>().map_err(|_| bad("uid"))? as u32;
    let gid = tok[4].parse::<i64>().map_err(|_| bad("gid"))? as u32;
    let size: u64 = tok[5].parse().map_err(|_| bad("size"))?;
    if tok[7].len() != 5 || tok[7].as_bytes()[2] != b':' {
        return Err(bad("time"));
    }
    let name = rest.strip_prefix(' ').ok_or_else(|| bad("name"))?;
    let name = unescape_name(name).ok_or_else(|| bad("escape"))?;
    Ok(Some(LsLine {
        ino,
        mode,
        uid,
        gid,
        size,
        name,
    }))
}

/// Undo debugfs's `print_filename` escaping (`\xNN`).
fn unescape_name(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) != Some(&b'x') {
                return None;
            }
            let h = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// An entry of the image below the root.
#[derive(Debug, Clone)]
struct Entry {
    /// Relative path inside the tree.
    inner: PathBuf,
    ino: u64,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
}

#[derive(Debug, Clone, Copy)]
struct RootDir {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The whole tree, breadth-first (parents before children).
struct Listing {
    entries: Vec<Entry>,
    /// The first entry (index) of every inode.
    first: HashMap<u64, usize>,
    root: RootDir,
    root_names: HashSet<Vec<u8>>,
}

/// List the tree level by level (one debugfs run per level), validating as it goes.
fn list(dbg: &Debugfs<'_>) -> Result<Listing> {
    let refuse = |inner: &Path, reason: String| ExtractError::Refused {
        disk: dbg.disk.to_path_buf(),
        inner: shown(inner),
        reason,
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut first: HashMap<u64, usize> = HashMap::new();
    let mut dirs_seen: HashMap<u64, PathBuf> = HashMap::from([(2, PathBuf::new())]);
    let mut root: Option<RootDir> = None;
    let mut root_names = HashSet::new();
    let mut level: Vec<(u64, PathBuf)> = vec![(2, PathBuf::new())];
    while !level.is_empty() {
        let commands: Vec<String> = level.iter().map(|(i, _)| format!("ls -l <{i}>")).collect();
        let outputs = dbg.batch(&commands)?;
        let mut next = Vec::new();
        for (((dir_ino, dir), out), command) in level.iter().zip(outputs).zip(&commands) {
            let mut names: HashSet<Vec<u8>> = HashSet::new();
            let mut dot = false;
            for line in &out {
                let e = parse_ls_line(line).map_err(|d| dbg.output_err(command, d))?;
                let Some(e) = e else { continue };
                if e.name == b"." {
                    dot = true;
                    if *dir_ino == 2 && e.ino == 2 {
                        root = Some(RootDir {
                            ino: 2,
                            mode: e.mode,
                            uid: e.uid,
                            gid: e.gid,
                        });
                    }
                    continue;
                }
                if e.name == b".." {
                    continue;
                }
                let shown_name = Path::new(std::ffi::OsStr::from_bytes(&e.name));
                if e.name.is_empty() {
                    return Err(refuse(dir, "an entry with an empty name".into()));
                }
                if e.name.contains(&b'/') || e.name.contains(&0) {
                    return Err(refuse(
                        &dir.join(shown_name),
                        "a name containing '/' or NUL".into(),
                    ));
                }
                let inner = dir.join(OsString::from_vec(e.name.clone()));
                if !names.insert(e.name.clone()) {
                    return Err(refuse(
                        &inner,
                        "a duplicate entry: this name appears twice in its directory".into(),
                    ));
                }
                let Some(kind) = Kind::of(e.mode) else {
                    return Err(refuse(
                        &inner,
                        format!(
                            "inode {} has mode {:o}, of no file type debugfs can tell",
                            e.ino, e.mode
                        ),
                    ));
                };
                if kind == Kind::Dir {
                    if let Some(other) = dirs_seen.insert(e.ino, inner.clone()) {
                        return Err(refuse(
                            &inner,
                            format!(
                                "directory inode {} is also at {} (a loop or a hard-linked directory)",
                                e.ino,
                                shown(&other)
                            ),
                        ));
                    }
                    next.push((e.ino, inner.clone()));
                }
                if *dir_ino == 2 {
                    root_names.insert(e.name.clone());
                }
                first.entry(e.ino).or_insert(entries.len());
                entries.push(Entry {
                    inner,
                    ino: e.ino,
                    kind,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    size: e.size,
                });
            }
            if !dot {
                return Err(dbg.output_err(
                    command,
                    format!("no `.` entry in the listing of {}", shown(dir)),
                ));
            }
        }
        level = next;
    }
    let root = root
        .filter(|r| Kind::of(r.mode) == Some(Kind::Dir))
        .ok_or_else(|| {
            dbg.output_err(
                "ls -l <2>",
                "the root directory (inode 2) is not a directory: not an ext2/3/4 filesystem?",
            )
        })?;
    Ok(Listing {
        entries,
        first,
        root,
        root_names,
    })
}

/// A staging name the image's root does not use, if the default one is taken.
fn staging_clash(listing: &Listing) -> Option<String> {
    if !listing.root_names.contains(STAGING.as_bytes()) {
        return None;
    }
    (1..)
        .map(|n| format!("{STAGING}-{n}"))
        .find(|n| !listing.root_names.contains(n.as_bytes()))
}

// ---------------------------------------------------------------------------------------
// stat

/// What `stat <ino>` tells beyond `ls -l`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stat {
    flags: u32,
    atime: (i64, i64),
    mtime: (i64, i64),
    device: Option<(u32, u32)>,
    fast_link: bool,
    /// Extended attribute names as printed (escaped by debugfs).
    xattrs: Vec<String>,
}

/// Parse one `stat <ino>` section. A fast symlink's target is printed raw and last: nothing
/// from its line on is read.
fn parse_stat(ino: u64, lines: &[String]) -> std::result::Result<Stat, String> {
    let mut st = Stat::default();
    let (mut saw_inode, mut saw_atime, mut saw_mtime) = (false, false, false);
    let mut in_xattrs = false;
    for line in lines {
        if in_xattrs {
            if let Some(rest) = line.strip_prefix("  ") {
                let name = rest.split(" (").next().unwrap_or_default();
                st.xattrs.push(name.to_string());
                continue;
            }
            in_xattrs = false;
        }
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("Inode: ") {
            if saw_inode {
                continue;
            }
            saw_inode = true;
            let n: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("inode line {line:?}"))?;
            if n != ino {
                return Err(format!("stat of inode {ino} shows inode {n}"));
            }
            if let Some(f) = rest.split("Flags: 0x").nth(1) {
                st.flags =
                    u32::from_str_radix(f.trim(), 16).map_err(|_| format!("flags in {line:?}"))?;
            }
        } else if let Some(rest) = t.strip_prefix("atime: ") {
            if !saw_atime {
                st.atime = parse_time(rest).ok_or_else(|| format!("atime {line:?}"))?;
                saw_atime = true;
            }
        } else if let Some(rest) = t.strip_prefix("mtime: ") {
            if !saw_mtime {
                st.mtime = parse_time(rest).ok_or_else(|| format!("mtime {line:?}"))?;
                saw_mtime = true;
            }
        } else if t == "Extended attributes:" && st.xattrs.is_empty() {
            in_xattrs = true;
        } else if let Some((_, rest)) = t.split_once("Device major/minor number: ") {
            if st.device.is_none() {
                let n = rest.split_whitespace().next().unwrap_or_default();
                let (a, b) = n
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .ok_or_else(|| format!("device numbers {line:?}"))?;
                st.device = Some((a, b));
            }
        } else if t.starts_with("Fast link dest: ") {
            st.fast_link = true;
            break;
        }
    }
    if !(saw_inode && saw_mtime && saw_atime) {
        return Err(format!(
            "no inode/atime/mtime lines in the stat of inode {ino}"
        ));
    }
    Ok(st)
}

/// `0x6b0ddb07:00000000 -- Mon ...` (seconds, and with large inodes the extra word: two
/// epoch bits and nanoseconds << 2) or `0x6b0ddb07 -- ...`.
fn parse_time(s: &str) -> Option<(i64, i64)> {
    let word = s.split_whitespace().next()?;
    let (sec, extra) = match word.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (word, None),
    };
    let sec = u32::from_str_radix(sec.strip_prefix("0x")?, 16).ok()? as i32 as i64;
    let extra = match extra {
        Some(e) => u32::from_str_radix(e, 16).ok()?,
        None => 0,
    };
    let sec = sec + (((extra & 3) as i64) << 32);
    let nsec = (extra >> 2) as i64;
    (nsec < 1_000_000_000).then_some((sec, nsec))
}

fn stat_all(dbg: &Debugfs<'_>, inodes: &[u64]) -> Result<HashMap<u64, Stat>> {
    let commands: Vec<String> = inodes.iter().map(|i| format!("stat <{i}>")).collect();
    let outputs = dbg.batch(&commands)?;
    let mut stats = HashMap::with_capacity(inodes.len());
    for ((ino, out), command) in inodes.iter().zip(outputs).zip(&commands) {
        let st = parse_stat(*ino, &out).map_err(|d| dbg.output_err(command, d))?;
        stats.insert(*ino, st);
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------------------
// fetch

/// Which extended attributes are carried over, or why not.
fn xattr_policy(name: &str, kind: Kind) -> std::result::Result<(), SkipReason> {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._@+:-".contains(&c));
    if !plain {
        return Err(SkipReason::Unsupported);
    }
    if name.starts_with("trusted.") {
        return Err(SkipReason::Trusted);
    }
    if name == "system.data" {
        return Err(SkipReason::Internal);
    }
    let kept = name.starts_with("security.")
        || name.starts_with("user.")
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default";
    if !kept {
        return Err(SkipReason::Unsupported);
    }
    if kind == Kind::Symlink {
        return Err(SkipReason::OnSymlink);
    }
    if kind.is_special() && name.starts_with("user.") {
        return Err(SkipReason::UserOnSpecial);
    }
    Ok(())
}

/// What the fetch run produced.
#[derive(Default)]
struct Fetched {
    /// Symlink targets by inode.
    targets: HashMap<u64, Vec<u8>>,
    /// Kept extended attributes by inode, in the order stat listed them.
    xattrs: HashMap<u64, Vec<(CString, Vec<u8>)>>,
    /// Skipped ones by inode (reported for the first path of the inode).
    skipped: HashMap<u64, Vec<(String, SkipReason)>>,
}

enum Fetch {
    Dump,
    FastLink(u64, usize),
    Xattr(u64, String),
}

fn fetch(dbg: &Debugfs<'_>, listing: &Listing, stats: &HashMap<u64, Stat>) -> Result<Fetched> {
    let mut commands = Vec::new();
    let mut what = Vec::new();
    let mut out = Fetched::default();
    let mut kinds: Vec<(u64, Kind, usize)> = listing
        .first
        .iter()
        .map(|(ino, i)| (*ino, listing.entries[*i].kind, *i))
        .collect();
    kinds.push((listing.root.ino, Kind::Dir, usize::MAX));
    kinds.sort_unstable_by_key(|k| k.0);
    for (ino, kind, idx) in kinds {
        let st = &stats[&ino];
        let size = listing.entries.get(idx).map(|e| e.size).unwrap_or(0);
        match kind {
            Kind::File => {
                commands.push(format!("dump <{ino}> {ino}"));
                what.push(Fetch::Dump);
            }
            Kind::Symlink if st.fast_link && st.flags & INLINE_DATA_FL == 0 => {
                commands.push(format!("inode_dump -b <{ino}>"));
                what.push(Fetch::FastLink(ino, size as usize));
            }
            Kind::Symlink => {
                commands.push(format!("dump <{ino}> {ino}"));
                what.push(Fetch::Dump);
            }
            _ => {}
        }
        for name in &st.xattrs {
            match xattr_policy(name, kind) {
                Ok(()) => {
                    commands.push(format!("ea_get -x <{ino}> {name}"));
                    what.push(Fetch::Xattr(ino, name.clone()));
                }
                Err(r) => out.skipped.entry(ino).or_default().push((name.clone(), r)),
            }
        }
    }
    let outputs = dbg.batch(&commands)?;
    for ((w, lines), command) in what.into_iter().zip(outputs).zip(&commands) {
        let bad = |d: String| dbg.output_err(command, d);
        match w {
            Fetch::Dump => {
                if let Some(l) = lines.iter().find(|l| !l.trim().is_empty()) {
                    return Err(bad(format!("unexpected output {l:?}")));
                }
            }
            Fetch::FastLink(ino, size) => {
                let block = parse_hexdump(&lines).ok_or_else(|| bad("not a hex dump".into()))?;
                if size == 0 || size >= I_BLOCK_BYTES || block.len() < size {
                    return Err(bad(format!(
                        "fast symlink of {size} bytes, {} bytes dumped",
                        block.len()
                    )));
                }
                out.targets.insert(ino, block[..size].to_vec());
            }
            Fetch::Xattr(ino, name) => {
                let value = parse_ea_hex(&name, &lines).map_err(bad)?;
                let cname = CString::new(name).map_err(|_| bad("a NUL in a name".into()))?;
                out.xattrs.entry(ino).or_default().push((cname, value));
            }
        }
    }
    Ok(out)
}

/// `inode_dump -b`: lines `OOOO  hhhh hhhh ...  ascii` (octal offsets), `*` for repeats of the
/// previous line, a blank line at the end. `None` if that is not what came.
fn parse_hexdump(lines: &[String]) -> Option<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut last: Vec<u8> = Vec::new();
    let mut repeat = false;
    let mut any = false;
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        if line.trim() == "*" {
            repeat = true;
            continue;
        }
        let (off, rest) = line.split_once("  ")?;
        let off = usize::from_str_radix(off, 8).ok()?;
        if repeat {
            while buf.len() < off && !last.is_empty() {
                buf.extend_from_slice(&last);
            }
            repeat = false;
        }
        if buf.len() != off {
            return None;
        }
        let mut row = Vec::with_capacity(16);
        for group in rest.split(' ') {
            if group.is_empty() {
                break; // the double space before the ASCII column
            }
            if group.len() % 2 != 0 {
                return None;
            }
            for i in (0..group.len()).step_by(2) {
                row.push(u8::from_str_radix(group.get(i..i + 2)?, 16).ok()?);
            }
        }
        buf.extend_from_slice(&row);
        last = row;
        any = true;
    }
    if repeat {
        while buf.len() < I_BLOCK_BYTES && !last.is_empty() {
            buf.extend_from_slice(&last);
        }
    }
    any.then_some(buf)
}

/// `ea_get -x <ino> NAME`: `NAME (LEN) = hh hh ...`.
fn parse_ea_hex(name: &str, lines: &[String]) -> std::result::Result<Vec<u8>, String> {
    let line = lines
        .iter()
        .find(|l| !l.trim().is_empty())
        .ok_or("no value printed")?;
    let rest = line
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix(" ("))
        .ok_or_else(|| format!("unexpected line {line:?}"))?;
    let (len, rest) = rest
        .split_once(')')
        .ok_or_else(|| format!("unexpected line {line:?}"))?;
    let len: usize = len.parse().map_err(|_| format!("length in {line:?}"))?;
    let hexes = rest.trim_start().strip_prefix('=').unwrap_or(rest);
    let value: Vec<u8> = hexes
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("hex value in {line:?}"))?;
    if value.len() != len {
        return Err(format!("{} bytes printed of {len}", value.len()));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------
// build

fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (major as u64, minor as u64);
    ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
}

fn build(
    tree: &Tree,
    disk: &Path,
    dest: &Path,
    staging: &Path,
    listing: &Listing,
    stats: &HashMap<u64, Stat>,
    fetched: &Fetched,
) -> Result<ExtractReport> {
    let w = |e: TreeError| write_err(disk, dest, e);
    let mut report = ExtractReport::default();
    for (idx, e) in listing.entries.iter().enumerate() {
        let inner = e.inner.as_path();
        let first = listing.first[&e.ino];
        if first != idx {
            // Another name of an inode already in place. (Directories never: refused.)
            report.hard_links += 1;
            if e.kind == Kind::File {
                tree.link_in(&staging.join(e.ino.to_string()), inner)
                    .map_err(w)?;
            } else {
                tree.hard_link(&listing.entries[first].inner, inner)
                    .map_err(w)?;
            }
            continue;
        }
        let st = &stats[&e.ino];
        match e.kind {
            Kind::Dir => {
                // Owner, mode, attributes and times once its content is in place.
                tree.create_dir_all(inner, 0o700).map_err(w)?;
                report.directories += 1;
                continue;
            }
            Kind::File => {
                let staged = staging.join(e.ino.to_string());
                let len = std::fs::symlink_metadata(&staged)
                    .map_err(io(&staged))?
                    .len();
                if len != e.size {
                    return Err(ExtractError::Output {
                        disk: disk.to_path_buf(),
                        command: format!("dump <{}> {}", e.ino, e.ino),
                        detail: format!(
                            "{} bytes dumped for {} of {} bytes",
                            len,
                            shown(inner),
                            e.size
                        ),
                    });
                }
                tree.link_in(&staged, inner).map_err(w)?;
                report.files += 1;
                report.bytes += e.size;
            }
            Kind::Symlink => {
                let target = match fetched.targets.get(&e.ino) {
                    Some(t) => t.clone(),
                    None => {
                        let staged = staging.join(e.ino.to_string());
                        std::fs::read(&staged).map_err(io(&staged))?
                    }
                };
                if target.is_empty() || target.contains(&0) || target.len() as u64 != e.size {
                    return Err(ExtractError::Refused {
                        disk: disk.to_path_buf(),
                        inner: shown(inner),
                        reason: format!(
                            "a symlink whose target ({} bytes of {}) is empty or holds NUL",
                            target.len(),
                            e.size
                        ),
                    });
                }
                tree.symlink(Path::new(&OsString::from_vec(target)), inner)
                    .map_err(w)?;
                report.symlinks += 1;
            }
            Kind::Char | Kind::Block | Kind::Fifo | Kind::Socket => {
                let dev = match (e.kind, st.device) {
                    (Kind::Char | Kind::Block, Some((a, b))) => makedev(a, b),
                    (Kind::Char | Kind::Block, None) => {
                        return Err(ExtractError::Output {
                            disk: disk.to_path_buf(),
                            command: format!("stat <{}>", e.ino),
                            detail: format!("no device numbers for {}", shown(inner)),
                        });
                    }
                    _ => 0,
                };
                tree.mknod(inner, (e.mode & 0o170000) | 0o600, dev)
                    .map_err(w)?;
                report.specials += 1;
            }
        }
        set_attributes(tree, e, st, fetched, &mut report).map_err(w)?;
    }
    // Directories deepest first, after their content.
    for e in listing.entries.iter().rev().filter(|e| e.kind == Kind::Dir) {
        set_attributes(tree, e, &stats[&e.ino], fetched, &mut report).map_err(w)?;
    }
    Ok(report)
}

/// Owner (before the mode: chown clears setuid/setgid), mode, extended attributes (after the
/// chown, which clears file capabilities), times.
fn set_attributes(
    tree: &Tree,
    e: &Entry,
    st: &Stat,
    fetched: &Fetched,
    report: &mut ExtractReport,
) -> std::result::Result<(), TreeError> {
    let inner = e.inner.as_path();
    tree.chown(inner, e.uid, e.gid)?;
    if e.kind != Kind::Symlink {
        tree.chmod(inner, e.mode & 0o7777)?;
    }
    for (name, value) in fetched.xattrs.get(&e.ino).into_iter().flatten() {
        match tree.set_xattr(inner, name, value) {
            Ok(()) => report.xattrs += 1,
            Err(err) if host_may_refuse(name, &err.source) => {
                report.skipped_xattrs.push(SkippedXattr {
                    inner: shown(inner),
                    name: name.to_string_lossy().into_owned(),
                    reason: SkipReason::HostRefused,
                });
            }
            Err(err) => return Err(err),
        }
    }
    for (name, reason) in fetched.skipped.get(&e.ino).into_iter().flatten() {
        report.skipped_xattrs.push(SkippedXattr {
            inner: shown(inner),
            name: name.clone(),
            reason: *reason,
        });
    }
    tree.set_times(inner, st.atime, st.mtime)
}

/// An attribute the host may refuse without failing the extraction (reported instead): a
/// label its security module does not know (`security.selinux` on an SELinux host), `user.*`
/// where the destination does not support it. File capabilities and ACLs are never optional.
fn host_may_refuse(name: &std::ffi::CStr, e: &std::io::Error) -> bool {
    let essential = name.to_bytes() == b"security.capability"
        || name.to_bytes().starts_with(b"system.posix_acl_");
    let refusal = matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied
            | std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::Unsupported
    ) || e.raw_os_error() == Some(EOPNOTSUPP);
    !essential && refusal
}

fn system_time((sec, nsec): (i64, i64)) -> SystemTime {
    let base = if sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(sec as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs())
    };
    base + Duration::from_nanos(nsec as u64)
}

/// The root directory's owner, mode, attributes and times go on `dest` itself (a directory
/// this checked and made private, so plain path operations are fine).
fn finish_root(
    disk: &Path,
    dest: &Path,
    root: &RootDir,
    stats: &HashMap<u64, Stat>,
    fetched: &Fetched,
    report: &mut ExtractReport,
) -> Result<()> {
    let st = &stats[&root.ino];
    std::os::unix::fs::lchown(dest, Some(root.uid), Some(root.gid)).map_err(io(dest))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(root.mode & 0o7777))
        .map_err(io(dest))?;
    for (name, value) in fetched.xattrs.get(&root.ino).into_iter().flatten() {
        match webake_sys::fsutil::set_xattr(dest, name, value) {
            Ok(()) => report.xattrs += 1,
            Err(e) if host_may_refuse(name, &e) => report.skipped_xattrs.push(SkippedXattr {
                inner: "\"/\"".into(),
                name: name.to_string_lossy().into_owned(),
                reason: SkipReason::HostRefused,
            }),
            Err(source) => {
                return Err(ExtractError::Write {
                    disk: disk.to_path_buf(),
                    dest: dest.to_path_buf(),
                    inner: "\"/\"".into(),
                    op: "setxattr",
                    source,
                });
            }
        }
    }
    for (name, reason) in fetched.skipped.get(&root.ino).into_iter().flatten() {
        report.skipped_xattrs.push(SkippedXattr {
            inner: "\"/\"".into(),
            name: name.clone(),
            reason: *reason,
        });
    }
    let times = std::fs::FileTimes::new()
        .set_accessed(system_time(st.atime))
        .set_modified(system_time(st.mtime));
    std::fs::File::open(dest)
        .and_then(|f| f.set_times(times))
        .map_err(io(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn ls_lines_parse_with_escaped_names() {
        let l =
            parse_ls_line("     12  100644 (1)      0      0       3 30-Nov-2026 20:22 a b\\x0ac")
                .unwrap()
                .unwrap();
        assert_eq!(
            l,
            LsLine {
                ino: 12,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                size: 3,
                name: b"a b\nc".to_vec()
            }
        );
        let l =
            parse_ls_line("     13  104755 (1)   1000  65534       1  1-Jan-1970 00:00  lead\\x5c")
                .unwrap()
                .unwrap();
        assert_eq!((l.uid, l.gid, l.mode), (1000, 65534, 0o104755));
        assert_eq!(l.name, b" lead\\");
        // uid >= 2^31 printed negative by %d.
        let l = parse_ls_line("     14  100644 (1)     -2      0       1  1-Jan-1970 00:00 x")
            .unwrap()
            .unwrap();
        assert_eq!(l.uid, u32::MAX - 1);
        assert_eq!(parse_ls_line("").unwrap(), None);
        assert_eq!(
            parse_ls_line("      0       0 (0)      0      0       0                   junk")
                .unwrap(),
            None
        );
        assert!(parse_ls_line("     12  100644 (1) 0 0 3 30-Nov-2026 20:22 bad\\q").is_err());
    }

    #[test]
    fn sections_split_on_the_nonce_only() {
        let cmds = s(&["stat <12>", "stat <13>"]);
        let out = "#N 0\ndebugfs: stat <12>\nFast link dest: \"x\n#M 1\ndebugfs: stat <13>\"\n#N 1\ndebugfs: stat <13>\nInode: 13\n";
        let secs = split_sections(out, "N", &cmds).unwrap();
        assert_eq!(secs.len(), 2);
        assert_eq!(secs[1], s(&["Inode: 13"]));
        assert!(secs[0].contains(&"debugfs: stat <13>\"".to_string()));
        // A missing section is an error.
        assert!(split_sections("#N 0\ndebugfs: stat <12>\n", "N", &cmds).is_err());
        // Output before the first marker is an error.
        assert!(split_sections("junk\n#N 0\ndebugfs: stat <12>\n", "N", &cmds[..1]).is_err());
    }

    #[test]
    fn stat_stops_at_a_fast_link_target() {
        let lines = s(&[
            "Inode: 22   Type: symlink    Mode:  0777   Flags: 0x0",
            " ctime: 0x6b0ddb07:00000000 -- Mon Nov 30 20:22:31 2026",
            " atime: 0x6b0ddb07:00000004 -- Mon Nov 30 20:22:31 2026",
            " mtime: 0x6b0ddb07:00000001 -- Mon Nov 30 20:22:31 2026",
            "Fast link dest: \"a",
            "Device major/minor number: 01:03 (hex 01:03)",
            " mtime: 0x00000000:00000000 -- forged",
        ]);
        let st = parse_stat(22, &lines).unwrap();
        assert!(st.fast_link);
        assert_eq!(st.device, None);
        assert_eq!(st.atime, (0x6b0ddb07, 1));
        assert_eq!(st.mtime, (0x6b0ddb07 + (1 << 32), 0));
        assert!(parse_stat(23, &lines).is_err());
    }

    #[test]
    fn stat_reads_devices_and_xattr_names() {
        let lines = s(&[
            "Inode: 15   Type: character special    Mode:  0644   Flags: 0x0",
            "atime: 0x00000010 -- Thu Jan  1 00:00:16 1970",
            "mtime: 0x00000020 -- Thu Jan  1 00:00:32 1970",
            "Extended attributes:",
            "  security.capability (20) = 01 00 00 02 ",
            "  user.note (13) = \"hello \\\"world\\\"\"",
            "Inode checksum: 0x7eb130d2",
            "(New-style) Device major/minor number: 259:65536 (hex 103:10000)",
        ]);
        let st = parse_stat(15, &lines).unwrap();
        assert_eq!(st.device, Some((259, 65536)));
        assert_eq!(st.xattrs, vec!["security.capability", "user.note"]);
        assert_eq!((st.atime, st.mtime), ((16, 0), (32, 0)));
        assert_eq!(makedev(259, 65536), 0x1001_0300);
        assert_eq!(makedev(1, 3), 0x103);
    }

    #[test]
    fn hexdumps_with_repeats() {
        let lines = s(&[
            "0000  6161 6161 6161 6161 6161 6161 6161 6161  aaaaaaaaaaaaaaaa",
            "*",
            "0060  0000 0000 0000 0000 0000 0000            ............",
            "",
        ]);
        let b = parse_hexdump(&lines).unwrap();
        assert_eq!(b.len(), 60);
        assert_eq!(&b[..48], &[b'a'; 48][..]);
        let lines = s(&[
            "0000  610a 6201 ff22 0000 0000 0000 0000 0000  a.b..\"..........",
            "0020  0000 0000 0000 0000 0000 0000 0000 0000  ................",
            "*",
            "",
        ]);
        let b = parse_hexdump(&lines).unwrap();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[..6], b"a\nb\x01\xff\"");
        assert_eq!(parse_hexdump(&[]), None);
    }

    #[test]
    fn ea_values_and_policy() {
        let v = parse_ea_hex("user.note", &s(&["user.note (3) = 68 65 22 ", ""])).unwrap();
        assert_eq!(v, b"he\"");
        assert!(parse_ea_hex("user.note", &s(&["user.note (4) = 68 65 22 "])).is_err());
        assert_eq!(parse_ea_hex("user.e", &s(&["user.e (0) = "])).unwrap(), b"");
        assert_eq!(xattr_policy("security.capability", Kind::File), Ok(()));
        assert_eq!(
            xattr_policy("trusted.overlay.opaque", Kind::Dir),
            Err(SkipReason::Trusted)
        );
        assert_eq!(
            xattr_policy("system.data", Kind::File),
            Err(SkipReason::Internal)
        );
        assert_eq!(
            xattr_policy("security.selinux", Kind::Symlink),
            Err(SkipReason::OnSymlink)
        );
        assert_eq!(
            xattr_policy("user.x", Kind::Fifo),
            Err(SkipReason::UserOnSpecial)
        );
        assert_eq!(
            xattr_policy("user.a b", Kind::File),
            Err(SkipReason::Unsupported)
        );
        assert_eq!(
            xattr_policy("gnu.x", Kind::File),
            Err(SkipReason::Unsupported)
        );
        let einval = std::io::Error::from_raw_os_error(22);
        assert!(host_may_refuse(c"security.selinux", &einval));
        assert!(host_may_refuse(
            c"user.x",
            &std::io::Error::from_raw_os_error(EOPNOTSUPP)
        ));
        assert!(!host_may_refuse(c"security.capability", &einval));
        assert!(!host_may_refuse(c"system.posix_acl_access", &einval));
        assert!(!host_may_refuse(
            c"security.selinux",
            &std::io::Error::from_raw_os_error(28)
        ));
    }

    #[test]
    fn root_partition_choice() {
        let gpt = r#"{"partitiontable":{"label":"gpt","sectorsize":512,"partitions":[
            {"node":"d1","start":2048,"size":131072,"type":"C12A7328-F81F-11D2-BA4B-00A0C93EC93B"},
            {"node":"d2","start":133120,"size":4000000,"type":"4f68bce3-e8cd-4db1-96e7-fbcaf984b709"}]}}"#;
        assert_eq!(root_offset_of(gpt).unwrap(), 133120 * 512);
        let mbr = r#"{"partitiontable":{"label":"dos","partitions":[
            {"node":"d1","start":2048,"size":1000,"type":"83"},
            {"node":"d2","start":4096,"size":9000,"type":"83"}]}}"#;
        assert_eq!(root_offset_of(mbr).unwrap(), 4096 * 512);
        assert!(root_offset_of(r#"{"partitiontable":{"partitions":[]}}"#).is_err());
    }

    #[test]
    fn time_decoding() {
        assert_eq!(parse_time("0xffffffff:00000000 -- x"), Some((-1, 0)));
        assert_eq!(
            parse_time("0x00000001:00000009 -- x"),
            Some((1 + (1 << 32), 2))
        );
        assert_eq!(
            system_time((-1, 500_000_000)),
            SystemTime::UNIX_EPOCH - Duration::from_millis(500)
        );
    }
}
