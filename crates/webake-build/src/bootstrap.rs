//! Bootstrap a root filesystem with mmdebstrap, cached by a hash of its inputs.

use std::path::{Path, PathBuf};

use serde::Serialize;
use webake_spec::MmdebstrapBase;

use crate::digest::{sha256_file, sha256_hex};
use crate::error::{BuildError, Result};

/// Everything that determines a bootstrap's result.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapPlan {
    pub suite: String,
    pub variant: String,
    pub architecture: String,
    pub components: Vec<String>,
    pub include: Vec<String>,
    /// Resolved mirror (`None`: mmdebstrap's default for the suite).
    pub mirror: Option<String>,
    /// Where the mirror came from: recipe, environment, host apt sources, default.
    pub mirror_source: String,
    pub keyrings: Vec<PathBuf>,
    pub keyring_digests: Vec<String>,
    /// The apt sources the base installs from and lists in its own `sources.list`: the suite,
    /// and for Debian `-updates` and `-security` (empty: mmdebstrap's default mirror line).
    pub sources: Vec<webake_upstream::AptSource>,
    /// sha256 of the above (and the format version of this plan): the configuration.
    pub config_key: String,
    /// What upstream said when this base was (or is to be) built: the signed state of every
    /// source (`webake_upstream::UpstreamState`, as JSON). `None`: not checked (offline plan,
    /// pinned sources).
    pub upstream: Option<serde_json::Value>,
    /// The upstream generation (a fingerprint of what the sources offer, `pinned`, or empty
    /// when not checked).
    #[serde(default)]
    pub generation: String,
    /// The source date the base is bootstrapped with (`SOURCE_DATE_EPOCH`), once decided
    /// ([`BootstrapPlan::with_source_date`]).
    #[serde(default)]
    pub source_date: Option<i64>,
    /// Cache key: the configuration, the upstream generation it was built from
    /// ([`BootstrapPlan::for_generation`]) and its source date.
    pub key: String,
}

// v3: apt lists kept in the base (finalize removes them from the image), the initramfs is
// built once at the end of the bootstrap instead of on every trigger.
// v4: bootstrapped in the sandbox (a user namespace: no mknod), /dev populated afterwards.
// v5: Debian bases install from SUITE, SUITE-updates and SUITE-security; the key carries the
// upstream generation.
// v6: bootstrapped with SOURCE_DATE_EPOCH; the key carries the source date.
// v7: the initramfs is a layer of its own (`initramfs/`), built beside the steps; the rootfs
// has empty placeholders (crate::initramfs).
// v8: no RSA host key in the base ([`SKIP_RSA_HOST_KEY`]).
const PLAN_VERSION: &str = "webake-bootstrap-v8";

/// openssh-server's postinst makes the host keys that are missing; the RSA-3072 one is a prime
/// search of 0.3-2 s natively (seconds more under qemu-user) on the bootstrap's critical path,
/// for a key finalize removes from every image (the image makes its own on first boot). An
/// empty placeholder, put there before the remaining packages are installed and removed at the
/// end if still empty, makes the postinst skip it. The ECDSA and Ed25519 keys (milliseconds)
/// stay in the base, so `sshd -t` in a step (a role validating its sshd_config) still works.
pub const SKIP_RSA_HOST_KEY: [&str; 2] = [
    r#"--essential-hook=mkdir -p "$1/etc/ssh" && : > "$1/etc/ssh/ssh_host_rsa_key""#,
    r#"--customize-hook=k="$1/etc/ssh/ssh_host_rsa_key"; if [ -f "$k" ] && [ ! -s "$k" ]; then rm -f "$k"; fi; rmdir --ignore-fail-on-non-empty "$1/etc/ssh""#,
];

/// mmdebstrap's hook directory that runs dpkg under eatmydata (no fsync per file; the
/// bootstrap is either completed and committed, or thrown away).
pub const EATMYDATA_HOOKS: &str = "/usr/share/mmdebstrap/hooks/eatmydata";

/// Debian codenames and aliases for which the host's Debian mirror is a sensible default.
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "sid",
    "stable",
    "testing",
    "unstable",
    "oldstable",
];

/// Debian's default mirror, for the sources of a Debian suite when nothing else names one.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// The apt sources of a base: for a Debian suite the suite, `-updates` and `-security` (as the
/// recipe turns them on or off); for others (Ubuntu...) the suite on the recipe's mirror, or
/// none (mmdebstrap's default).
fn apt_sources(
    base: &MmdebstrapBase,
    mirror: Option<&str>,
    keyrings: &[PathBuf],
) -> Vec<webake_upstream::AptSource> {
    let debian = DEBIAN_SUITES.contains(&base.suite.as_str());
    let mut sources = if debian {
        let mut d =
            webake_upstream::DebianSuites::new(mirror.unwrap_or(DEBIAN_MIRROR), &base.suite);
        d.security_mirror = base.security_mirror.clone();
        d.components = base.components.clone();
        d.architectures = vec![base.arch().to_string()];
        d.signed_by = keyrings.to_vec();
        d.updates = base.updates.unwrap_or(true);
        d.security = base.security.unwrap_or(true);
        webake_upstream::debian_sources(&d)
    } else if let Some(m) = mirror {
        let mut s = webake_upstream::AptSource::new(m, &base.suite);
        s.components = base.components.clone();
        s.architectures = vec![base.arch().to_string()];
        s.signed_by = keyrings.to_vec();
        vec![s]
    } else {
        Vec::new()
    };
    if base.pinned {
        for s in &mut sources {
            s.pinned = true;
        }
    }
    sources
}

/// The GRUB EFI platform and package of a non-x86 architecture.
fn efi_grub_package(debian_arch: &str) -> Option<(&'static str, &'static str)> {
    (debian_arch == "arm64").then_some(("arm64-efi", "grub-efi-arm64-bin"))
}

impl BootstrapPlan {
    pub fn new(
        base: &MmdebstrapBase,
        recipe_dir: &Path,
        env_mirror: Option<String>,
        host_sources: &HostSources,
    ) -> Result<Self> {
        let (mirror, mirror_source) = if let Some(m) = &base.mirror {
            (Some(m.clone()), "recipe".to_string())
        } else if let Some(m) = env_mirror.filter(|m| !m.is_empty()) {
            (Some(m), "environment (WEBAKE_MIRROR)".to_string())
        } else if DEBIAN_SUITES.contains(&base.suite.as_str()) {
            match &host_sources.debian_mirror {
                Some(m) => (
                    Some(m.clone()),
                    format!("host apt sources ({})", host_sources.origin),
                ),
                None => (None, "mmdebstrap default".to_string()),
            }
        } else {
            (None, "mmdebstrap default".to_string())
        };
        let mut keyrings = Vec::new();
        let mut keyring_digests = Vec::new();
        for k in &base.keyrings {
            let p = if Path::new(k).is_absolute() {
                PathBuf::from(k)
            } else {
                recipe_dir.join(k)
            };
            keyring_digests.push(sha256_file(&p)?);
            keyrings.push(p);
        }
        let mut include = base.include.clone();
        // The image's own GRUB modules make its EFI loader where the host has none of its
        // platform (assemble::grub_modules): arm64 on an x86-64 host.
        if let Some(pkg) = efi_grub_package(base.arch())
            && !Path::new("/usr/lib/grub")
                .join(pkg.0)
                .join("linux.mod")
                .is_file()
        {
            include.push(pkg.1.to_string());
        }
        include.sort();
        include.dedup();
        let sources = apt_sources(base, mirror.as_deref(), &keyrings);
        let mut plan = Self {
            suite: base.suite.clone(),
            variant: base.variant.clone(),
            architecture: base.arch().to_string(),
            components: base.components.clone(),
            include,
            mirror,
            mirror_source,
            keyrings,
            keyring_digests,
            sources,
            config_key: String::new(),
            upstream: None,
            generation: String::new(),
            source_date: None,
            key: String::new(),
        };
        let lines: Vec<String> = plan.sources.iter().map(|s| s.one_line()).collect();
        let keyed = serde_json::json!({
            "v": PLAN_VERSION,
            "suite": plan.suite, "variant": plan.variant, "arch": plan.architecture,
            "components": plan.components, "include": plan.include, "mirror": plan.mirror,
            "keyrings": plan.keyring_digests, "sources": lines,
        });
        plan.config_key = sha256_hex(keyed.to_string().as_bytes());
        plan.key = plan.config_key.clone();
        Ok(plan)
    }

    /// This configuration built from the upstream generation `fingerprint` (the digest of the
    /// sources' package indexes), recording `upstream` (the state it was checked in).
    pub fn for_generation(mut self, fingerprint: &str, upstream: serde_json::Value) -> Self {
        self.generation = fingerprint.to_string();
        self.upstream = Some(upstream);
        self.rekey();
        self
    }

    /// This plan bootstrapped with the source date `t` (part of the key: mmdebstrap and the
    /// packages' scripts write it into the tree).
    pub fn with_source_date(mut self, t: i64) -> Self {
        self.source_date = Some(t);
        self.rekey();
        self
    }

    fn rekey(&mut self) {
        let mut k = format!("{}\n{}\n", self.config_key, self.generation);
        if let Some(t) = self.source_date {
            k.push_str(&format!("source-date {t}\n"));
        }
        self.key = sha256_hex(k.as_bytes());
    }

    /// This configuration as the cached generation `key`, built in the upstream state
    /// `upstream` (any serializable form of it).
    pub fn with_key(mut self, key: &str, upstream: &impl Serialize) -> Self {
        self.key = key.to_string();
        self.upstream = serde_json::to_value(upstream).ok();
        self
    }

    /// Are all sources pinned (snapshots): upstream never moves?
    pub fn pinned(&self) -> bool {
        !self.sources.is_empty() && self.sources.iter().all(|s| s.pinned)
    }

    /// Environment for mmdebstrap (on top of the sandbox's): no initramfs is built while the
    /// packages are installed (the kernel's postinst sees `INITRD=No`; the initramfs is built
    /// once, beside the steps: crate::initramfs).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("INITRD".to_string(), "No".to_string())];
        if let Some(t) = self.source_date {
            env.push(("SOURCE_DATE_EPOCH".to_string(), t.to_string()));
        }
        env
    }

    /// mmdebstrap's argument list (without the program name) for `target`.
    pub fn args(&self, target: &Path, package_cache: Option<&Path>) -> Vec<String> {
        let mut a = vec![
            "--mode=root".to_string(),
            format!("--variant={}", self.variant),
            format!("--architectures={}", self.architecture),
            format!("--components={}", self.components.join(",")),
            "--aptopt=Acquire::Retries \"3\"".to_string(),
            "--aptopt=APT::Install-Recommends \"false\"".to_string(),
            // The package lists stay in the cached base, so a first `apt-get update` in a
            // provisioner only revalidates them; finalize removes them from the image.
            "--skip=cleanup/apt/lists".to_string(),
        ];
        // (The hook's extract script needs dpkg-architecture, from dpkg-dev.)
        if Path::new(EATMYDATA_HOOKS).is_dir()
            && webake_sys::process::which("dpkg-architecture").is_some()
        {
            a.push(format!("--hook-dir={EATMYDATA_HOOKS}"));
        }
        a.extend(SKIP_RSA_HOST_KEY.map(String::from));
        if !self.include.is_empty() {
            a.push(format!("--include={}", self.include.join(",")));
        }
        for k in &self.keyrings {
            a.push(format!("--keyring={}", k.display()));
        }
        if let Some(cache) = package_cache {
            // Share downloaded .debs between bakes; never leave them in the tree.
            let c = cache.display();
            a.push("--skip=essential/unlink".to_string());
            a.push(format!("--setup-hook=mkdir -p \"$1/var/cache/apt/archives/\" && find '{c}' -maxdepth 1 -name '*.deb' -exec cp -l {{}} \"$1/var/cache/apt/archives/\" \\; 2>/dev/null || true"));
            a.push(format!("--customize-hook=find \"$1/var/cache/apt/archives/\" -maxdepth 1 -name '*.deb' -exec cp -ln {{}} '{c}/' \\; 2>/dev/null; rm -f \"$1\"/var/cache/apt/archives/*.deb"));
        }
        a.push(self.suite.clone());
        a.push(target.display().to_string());
        if let (true, Some(m)) = (self.sources.is_empty(), &self.mirror) {
            a.push(format!(
                "deb {} {} {}",
                m,
                self.suite,
                self.components.join(" ")
            ));
        }
        // One sources.list line each (mmdebstrap writes them into the image too); the keyrings
        // go through --keyring, so no signed-by here.
        for src in &self.sources {
            a.push(format!(
                "deb {} {} {}",
                src.uri,
                src.suite,
                src.components.join(" ")
            ));
        }
        a
    }
}

/// `sh -ec SCRIPT webake-bootstrap MEM DEST BYTES LAYER MMDEBSTRAP-ARGS...`, in the sandbox.
///
/// 1. mmdebstrap: with MEM set, into `MEM/rootfs` on a tmpfs of at most BYTES mounted at MEM
///    (in the sandbox's mount namespace; dpkg's many small writes are several times faster
///    there), else straight into DEST (the caller passes the target among the arguments).
/// 2. Each kernel without an initramfs (and a generator in the tree) gets an empty placeholder
///    `boot/initrd.img-V`, and its real initramfs starts building in the background, chrooted
///    into an overlay over the tree (the tree itself stays as it is: the copy reads it, steps
///    run on it).
/// 3. With MEM, the tree is copied to DEST: `usr/lib` (half of a Debian tree) and the rest at
///    once, on two CPUs, unless a file in `usr/lib` is hard-linked from outside it (two copies
///    would not keep the link: one `cp` then).
/// 4. `webake: tree ready: V...` ([`crate::initramfs::READY`]): DEST is complete; the caller
///    goes on with the steps while the script waits for the initramfs and copies it into
///    LAYER/boot (crate::initramfs).
pub const BOOTSTRAP_SCRIPT: &str = r#"mem=$1; dest=$2; size=$3; layer=$4; shift 4
if [ -n "$mem" ]; then
    mkdir -p "$mem" "$dest"
    mount -t tmpfs -o "size=$size,mode=0755" webake-bootstrap "$mem"
    root=$mem/rootfs; work=$mem/initramfs
else
    root=$dest; work=$layer.work
fi
mmdebstrap "$@"
versions=
if [ -x "$root/usr/sbin/update-initramfs" ] || [ -x "$root/usr/bin/dracut" ]; then
    for k in "$root"/boot/vmlinuz-*; do
        [ -e "$k" ] || continue
        v=${k##*/vmlinuz-}
        [ -e "$root/boot/initrd.img-$v" ] || versions="$versions $v"
    done
fi
job=
if [ -n "$versions" ]; then
    for v in $versions; do : > "$root/boot/initrd.img-$v"; done
    mkdir -p "$work/upper" "$work/work" "$work/tree"
    mount -t overlay -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/work,userxattr" webake-initramfs "$work/tree"
    mount --rbind /proc "$work/tree/proc"
    mount --rbind /dev "$work/tree/dev"
    mount --rbind /sys "$work/tree/sys"
    echo "I: building the initramfs of$versions beside the copy and the steps"
    ( for v in $versions; do
          if [ -x "$work/tree/usr/sbin/update-initramfs" ]; then
              chroot "$work/tree" update-initramfs -c -k "$v"
          else
              chroot "$work/tree" dracut --force --kver "$v" "/boot/initrd.img-$v"
          fi
      done ) &
    job=$!
fi
if [ -n "$mem" ]; then
    echo "I: copying the tree into the cache..."
    chown --reference="$root" "$dest"
    chmod --reference="$root" "$dest"
    split=no
    if [ -d "$root/usr/lib" ] && [ ! -L "$root/usr" ] && [ ! -L "$root/usr/lib" ]; then
        split=yes
        cross=$( { find "$root/usr/lib" -xdev -type f -links +1 -printf 'l %i\n'
                   find "$root" -xdev -path "$root/usr/lib" -prune -o -type f -links +1 -printf 'o %i\n'; } |
                 awk '{ s[$2] = s[$2] $1 } END { for (i in s) if (s[i] ~ /l/ && s[i] ~ /o/) { print i; exit } }')
        [ -z "$cross" ] || split=no
    fi
    rc=0
    if [ "$split" = yes ]; then
        echo "I: usr/lib and the rest at once"
        mkdir "$dest/usr"
        cp -a --sparse=always "$root/usr/lib" "$dest/usr/" &
        lib=$!
        find "$root" -mindepth 1 -maxdepth 1 ! -name usr \
            -exec cp -a --sparse=always -t "$dest/" {} + || rc=$?
        find "$root/usr" -mindepth 1 -maxdepth 1 ! -name lib \
            -exec cp -a --sparse=always -t "$dest/usr/" {} + || rc=$?
        wait "$lib" || rc=$?
        chown --reference="$root/usr" "$dest/usr"
        chmod --reference="$root/usr" "$dest/usr"
        touch -h -r "$root/usr" "$dest/usr"
    else
        cp -a --sparse=always "$root/." "$dest/" || rc=$?
    fi
    [ "$rc" = 0 ] || { echo "E: copying the tree into the cache failed" >&2; exit 1; }
fi
echo "webake: tree ready:$versions"
if [ -n "$job" ]; then
    rc=0
    wait "$job" || rc=$?
    # (proc and sys hold mounts the sandbox locked: detached, not unmounted one by one)
    umount -R "$work/tree/dev"
    umount -l "$work/tree/sys"
    umount -l "$work/tree/proc"
    umount "$work/tree" || umount -l "$work/tree"
    [ "$rc" = 0 ] || { echo "E: building the initramfs failed (exit $rc)" >&2; exit "$rc"; }
    mkdir -p "$layer/boot"
    for v in $versions; do
        f=$work/upper/boot/initrd.img-$v
        [ -s "$f" ] || { echo "E: /boot/initrd.img-$v was not written" >&2; exit 1; }
        cp -a "$f" "$layer/boot/"
    done
    for d in "" /boot; do
        chown --reference="$root$d" "$layer$d"
        chmod --reference="$root$d" "$layer$d"
        touch -h -r "$root$d" "$layer$d"
    done
    rm -rf "$work"
    echo "I: initramfs built"
fi
if [ -n "$mem" ]; then
    umount "$mem"
    rmdir "$mem"
fi"#;

/// How large a tmpfs the bootstrap may use, if it should run in memory at all: half of the
/// available memory, at most 16 GiB, when at least 4 GiB are available. `WEBAKE_BOOTSTRAP_TMPFS=0`
/// turns it off (bootstrap directly into the cache directory).
/// mmdebstrap's `/dev` of a root filesystem: (name, mode, device (major, minor) or symlink
/// target). mmdebstrap creates it with mknod when it runs as real root; in webake's sandbox
/// (a user namespace, no mknod) it cannot, so webake creates it afterwards as the host, in
/// the finished tree.
const DEV_NODES: &[(&str, u32, (u64, u64))] = &[
    ("console", 0o666, (5, 1)),
    ("full", 0o666, (1, 7)),
    ("null", 0o666, (1, 3)),
    ("ptmx", 0o666, (5, 2)),
    ("random", 0o666, (1, 8)),
    ("tty", 0o666, (5, 0)),
    ("urandom", 0o666, (1, 9)),
    ("zero", 0o666, (1, 5)),
];
const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stderr", "/proc/self/fd/2"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
];

/// Give a bootstrapped tree mmdebstrap's device nodes (see [`DEV_NODES`]), path-safely.
pub fn populate_dev(root: &Path) -> Result<()> {
    let t = webake_sys::Tree::open(root)?;
    let dev = Path::new("dev");
    t.create_dir_all(dev, 0o755)?;
    for d in ["pts", "shm"] {
        t.create_dir_all(&dev.join(d), 0o755)?;
    }
    for (name, mode, (major, minor)) in DEV_NODES {
        let p = dev.join(name);
        t.mknod(
            &p,
            libc::S_IFCHR | mode,
            libc::makedev(*major as u32, *minor as u32),
        )?;
        t.chmod(&p, *mode)?;
    }
    for (name, target) in DEV_LINKS {
        t.symlink(Path::new(target), &dev.join(name))?;
    }
    Ok(())
}

pub fn tmpfs_budget() -> Option<u64> {
    if matches!(
        std::env::var("WEBAKE_BOOTSTRAP_TMPFS").as_deref(),
        Ok("0") | Ok("no") | Ok("never") | Ok("false")
    ) {
        return None;
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let avail_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let avail = avail_kib * 1024;
    (avail >= 4 << 30).then(|| (avail / 2).min(16 << 30))
}

/// The host's apt configuration, as far as it names a Debian mirror.
#[derive(Debug, Clone, Default)]
pub struct HostSources {
    pub debian_mirror: Option<String>,
    pub origin: String,
}

impl HostSources {
    /// Read `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*` (one-line and deb822).
    pub fn read(etc_apt: &Path) -> Self {
        let mut files = vec![etc_apt.join("sources.list")];
        if let Ok(rd) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
            let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            more.sort();
            files.extend(more);
        }
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            if let Some(m) = parse_debian_mirror(&text) {
                return Self {
                    debian_mirror: Some(m),
                    origin: f.display().to_string(),
                };
            }
        }
        Self::default()
    }
}

/// The first non-security Debian mirror URI in apt sources text (one-line or deb822).
pub fn parse_debian_mirror(text: &str) -> Option<String> {
    let usable = |uri: &str, suites: &str| {
        (uri.starts_with("http://") || uri.starts_with("https://"))
            && !uri.contains("security")
            && suites.split_whitespace().any(|s| {
                DEBIAN_SUITES
                    .iter()
                    .any(|d| s == *d || s.starts_with(&format!("{d}-updates")))
            })
    };
    // one-line format: deb [opts] URI SUITE COMPONENTS...
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("deb ") {
            let rest = rest.trim();
            let rest = if rest.starts_with('[') {
                rest.split_once(']').map(|(_, r)| r.trim()).unwrap_or("")
            } else {
                rest
            };
            let mut it = rest.split_whitespace();
            if let (Some(uri), Some(suite)) = (it.next(), it.next())
                && usable(uri, suite)
            {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    // deb822: paragraphs with Types/URIs/Suites
    for para in text.split("\n\n") {
        let mut types = "";
        let mut uris = "";
        let mut suites = "";
        for line in para.lines() {
            if let Some((k, v)) = line.split_once(':') {
                match k.trim() {
                    "Types" => types = v.trim(),
                    "URIs" => uris = v.trim(),
                    "Suites" => suites = v.trim(),
                    _ => {}
                }
            }
        }
        if types.split_whitespace().any(|t| t == "deb")
            && let Some(uri) = uris.split_whitespace().find(|u| usable(u, suites))
        {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// A finished bootstrap in the cache: `<bootstrap_dir>/<key>/rootfs` + `meta.json`.
pub fn cached_rootfs(bootstrap_dir: &Path, key: &str) -> Option<PathBuf> {
    let entry = bootstrap_dir.join(key);
    // meta.json is written before the entry is renamed into place: without it the entry is
    // not ours or not complete, and is ignored.
    (entry.join("meta.json").is_file() && entry.join("rootfs").is_dir())
        .then(|| entry.join("rootfs"))
}

pub fn staging_name(key: &str, bake_id: &str) -> String {
    format!(".staging-{}-{bake_id}", &key[..16.min(key.len())])
}

/// Move a finished staging entry into place. If another bake won the race, keep theirs.
pub fn commit_entry(staging: &Path, dest: &Path) -> Result<()> {
    // A directory at `dest` without meta.json is a half-written or corrupt entry (e.g. a
    // process killed while copying into the cache by hand): it is never used; replace it.
    if dest.is_dir() && !dest.join("meta.json").is_file() {
        std::fs::remove_dir_all(dest).map_err(|e| BuildError::io(dest, e))?;
    }
    match std::fs::rename(staging, dest) {
        Ok(()) => Ok(()),
        Err(e) if dest.is_dir() && matches!(e.raw_os_error(), Some(39) | Some(17)) => {
            // ENOTEMPTY / EEXIST: an identical entry was committed concurrently.
            std::fs::remove_dir_all(staging).map_err(|e| BuildError::io(staging, e))
        }
        Err(e) => Err(BuildError::io(dest, e)),
    }
}

/// Stage 1 of a bake: the base root filesystem. A cached bootstrap (or the base the caller
/// prepared, e.g. from an AMI) is used as it is; otherwise mmdebstrap builds it, and its
/// initramfs is built beside the steps (crate::initramfs). Returns the base: the tree the
/// steps run on, and the layers the export merges.
pub(crate) fn base_stage(run: &mut crate::bake::Run<'_>) -> Result<crate::initramfs::Base> {
    use crate::bake::BasePlan;
    use crate::initramfs::Base;
    let step = "bootstrap";
    let t = std::time::Instant::now();
    let req = run.req;
    let (key, detail, base) = match &req.plan.base {
        BasePlan::Prepared {
            key,
            rootfs,
            description,
        } => {
            if !rootfs.is_dir() {
                return Err(BuildError::Invalid(format!(
                    "the prepared base {} is missing (was the cache cleared during the bake?)",
                    rootfs.display()
                ))
                .in_step(step));
            }
            (
                key,
                format!("{description}: cached base {}", &key[..12]),
                Base::in_tree(rootfs.clone()),
            )
        }
        BasePlan::Mmdebstrap(bs) => {
            let cached = || {
                cached_rootfs(&req.workspace.bootstrap_dir(), &bs.key).filter(|_| !req.refresh_base)
            };
            let root = match cached() {
                Some(root) => root,
                None => {
                    // Another bake of this base (a recipe baked next to this one) may be
                    // bootstrapping it: wait for it rather than bootstrap twice.
                    let lock = crate::workspace::EntryLock::acquire(
                        &req.workspace.cache_dir,
                        "bootstrap",
                        &bs.key,
                        &req.cancel,
                        &mut || {
                            req.reporter.output(
                                step,
                                "waiting for a concurrent bake that bootstraps the same base",
                            )
                        },
                    )
                    .map_err(|e| e.in_step(step))?;
                    match cached() {
                        Some(root) => root,
                        None => return bootstrap(run, bs, t, lock),
                    }
                }
            };
            (
                &bs.key,
                format!("cached base {} ({})", &bs.key[..12], bs.suite),
                Base::cached(root),
            )
        }
    };
    run.started(step, &detail);
    crate::steps::touch(&req.workspace.bootstrap_dir().join(key));
    run.finished(step, t, crate::reporter::CacheStatus::Hit, key.clone());
    Ok(base)
}

/// mmdebstrap, in the sandbox, into a staging entry committed to the cache. With kernels to
/// build an initramfs for, the entry is committed incomplete (no `meta.json`, `lock` held)
/// and completed by the initramfs job.
fn bootstrap(
    run: &mut crate::bake::Run<'_>,
    bs: &BootstrapPlan,
    t: std::time::Instant,
    lock: crate::workspace::EntryLock,
) -> Result<crate::initramfs::Base> {
    let step = "bootstrap";
    let req = run.req;
    let why = if req.refresh_base {
        "refresh requested".to_string()
    } else {
        format!("no cached base for key {}", &bs.key[..12])
    };
    run.started(
        step,
        &format!(
            "mmdebstrap {} {} (mirror: {}; {why})",
            bs.suite,
            bs.variant,
            bs.mirror.as_deref().unwrap_or("default")
        ),
    );
    let staging = req
        .workspace
        .bootstrap_dir()
        .join(staging_name(&bs.key, &req.bake_id));
    let cleanup = webake_sys::fsutil::RemoveOnDrop::new(&staging);
    crate::workspace::mkdir_p(&staging)?;
    let target = staging.join("rootfs");
    let sbx = run.scratch.join("bootstrap-sandbox");
    let cmd = bootstrap_command(req, bs, &staging, &target, &sbx)?;
    // Until the tree is ready; the initramfs may still be building then (crate::initramfs).
    let (proc, versions) = crate::initramfs::run_until_ready(run, step, &cmd)?;
    populate_dev(&target).map_err(|e| e.in_step(step))?;
    let meta = serde_json::json!({"key": bs.key, "plan": bs, "bake_id": req.bake_id, "created": crate::steps::now_secs()});
    let proc = match proc {
        Some(p) if !versions.is_empty() => p,
        rest => {
            if let Some(p) = rest {
                p.wait(&req.cancel)
                    .map_err(|e| BuildError::from(e).in_step(step))?;
            }
            let meta_path = staging.join("meta.json");
            std::fs::write(&meta_path, meta.to_string())
                .map_err(|e| BuildError::io(&meta_path, e))?;
            let dest = commit(req, bs, &staging)?;
            let _ = cleanup.keep();
            run.finished(step, t, crate::reporter::CacheStatus::Miss, why);
            return Ok(crate::initramfs::Base::cached(dest.join("rootfs")));
        }
    };
    let dest = commit(req, bs, &staging)?;
    let _ = cleanup.keep();
    run.finished(step, t, crate::reporter::CacheStatus::Miss, why);
    if dest.join("meta.json").is_file() {
        // A complete entry won the race: use it.
        drop(proc);
        return Ok(crate::initramfs::Base::cached(dest.join("rootfs")));
    }
    crate::initramfs::start(run, &dest, versions, meta, lock, proc)
}

/// Commit a bootstrap's staging entry (replacing the entry with `--refresh-base`).
fn commit(
    req: &crate::bake::BakeRequest<'_>,
    bs: &BootstrapPlan,
    staging: &Path,
) -> Result<PathBuf> {
    let dest = req.workspace.bootstrap_dir().join(&bs.key);
    if req.refresh_base {
        webake_sys::fsutil::remove_dir_all_if_exists(&dest)
            .map_err(|e| BuildError::io(&dest, e))?;
    }
    commit_entry(staging, &dest)?;
    Ok(dest)
}

/// The sandboxed bootstrap ([`BOOTSTRAP_SCRIPT`]): in memory when there is room (the tmpfs is
/// gone with the sandbox), else straight into the cache. mmdebstrap runs from the host's
/// installation, read-only, in the sandbox: its maintainer scripts (and the initramfs build)
/// are as untrusted as any step's. `sbx`: the sandbox's own directory (outside the entry,
/// which is renamed while the sandbox still builds the initramfs).
fn bootstrap_command(
    req: &crate::bake::BakeRequest<'_>,
    bs: &BootstrapPlan,
    staging: &Path,
    target: &Path,
    sbx: &Path,
) -> Result<webake_sys::Cmd> {
    use webake_sys::sandbox::{Bind, Power, SandboxSpec, View};
    let merged;
    let bs = match keyring_dir(bs, staging)? {
        Some(dir) => {
            merged = BootstrapPlan {
                keyrings: vec![dir],
                ..bs.clone()
            };
            &merged
        }
        None => bs,
    };
    let layer = staging.join(crate::initramfs::LAYER);
    let (mem, mmdebstrap_target) = match tmpfs_budget() {
        Some(bytes) => (
            Some((staging.join("mem"), bytes)),
            staging.join("mem/rootfs"),
        ),
        None => (None, target.to_path_buf()),
    };
    let mut argv = vec![
        "sh".to_string(),
        "-ec".into(),
        BOOTSTRAP_SCRIPT.into(),
        "webake-bootstrap".into(),
        mem.as_ref()
            .map(|(m, _)| m.display().to_string())
            .unwrap_or_default(),
        target.display().to_string(),
        mem.as_ref().map(|(_, b)| b.to_string()).unwrap_or_default(),
        layer.display().to_string(),
    ];
    argv.extend(bs.args(&mmdebstrap_target, None));
    crate::workspace::mkdir_p(sbx)?;
    let mut spec = SandboxSpec::host_tools(sbx, argv);
    spec.view = View::Host {
        tree: None,
        image_at: "/image".into(),
    };
    spec.power = Power::Mounts;
    spec.network = req.network.clone();
    spec.env.extend(bs.env());
    // A foreign architecture: mmdebstrap's arch-test, the maintainer scripts and the initramfs
    // build run under qemu-user, registered in the sandbox only.
    spec.emulate(&bs.architecture)
        .map_err(|hint| BuildError::MissingTool {
            tool: "qemu-user".into(),
            hint,
        })?;
    for (path, readonly) in
        std::iter::once((staging, false)).chain(bs.keyrings.iter().map(|k| (k.as_path(), true)))
    {
        spec.binds.push(Bind {
            source: path.to_path_buf(),
            target: path.to_path_buf(),
            readonly,
        });
    }
    spec.command(&req.helper_exe)
        .map_err(|e| BuildError::io(sbx, e))
}

/// apt as run by mmdebstrap trusts one keyring file and one directory: several keyrings (a
/// Debian archive and a local repository) are copied into `<staging>/keyrings/` and that
/// directory is passed instead (apt's `TrustedParts`: `.gpg` binary, `.asc` armored).
fn keyring_dir(bs: &BootstrapPlan, staging: &Path) -> Result<Option<PathBuf>> {
    if bs.keyrings.len() < 2 {
        return Ok(None);
    }
    let dir = staging.join("keyrings");
    crate::workspace::mkdir_p(&dir)?;
    for (i, k) in bs.keyrings.iter().enumerate() {
        let data = std::fs::read(k).map_err(|e| BuildError::io(k, e))?;
        let ext = if data.starts_with(b"-----BEGIN PGP") {
            "asc"
        } else {
            "gpg"
        };
        let stem = k
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = dir.join(format!("{i:02}-{stem}.{ext}"));
        std::fs::write(&to, &data).map_err(|e| BuildError::io(&to, e))?;
    }
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MmdebstrapBase {
        MmdebstrapBase {
            suite: "bookworm".into(),
            variant: "apt".into(),
            architecture: Some("amd64".into()),
            components: vec!["main".into()],
            include: vec!["systemd-sysv".into(), "linux-image-cloud-amd64".into()],
            mirror: None,
            keyrings: vec![],
            updates: None,
            security: None,
            security_mirror: None,
            pinned: false,
        }
    }

    #[test]
    fn mirror_precedence_recipe_env_host_default() {
        let host = HostSources {
            debian_mirror: Some("http://host.example/debian".into()),
            origin: "x".into(),
        };
        let mut b = base();
        let p = BootstrapPlan::new(
            &b,
            Path::new("."),
            Some("http://env.example/debian".into()),
            &host,
        )
        .unwrap();
        assert_eq!(p.mirror.as_deref(), Some("http://env.example/debian"));
        let p = BootstrapPlan::new(&b, Path::new("."), None, &host).unwrap();
        assert_eq!(p.mirror.as_deref(), Some("http://host.example/debian"));
        b.mirror = Some("http://recipe.example/debian".into());
        let p = BootstrapPlan::new(
            &b,
            Path::new("."),
            Some("http://env.example/debian".into()),
            &host,
        )
        .unwrap();
        assert_eq!(p.mirror.as_deref(), Some("http://recipe.example/debian"));
        let mut ubuntu = base();
        ubuntu.suite = "noble".into();
        let p = BootstrapPlan::new(&ubuntu, Path::new("."), None, &host).unwrap();
        assert_eq!(
            p.mirror, None,
            "a Debian host mirror is never used for another distribution"
        );
    }

    #[test]
    fn key_depends_on_inputs_not_on_include_order() {
        let host = HostSources::default();
        let a = BootstrapPlan::new(&base(), Path::new("."), None, &host).unwrap();
        let mut b2 = base();
        b2.include.reverse();
        let b = BootstrapPlan::new(&b2, Path::new("."), None, &host).unwrap();
        assert_eq!(a.key, b.key);
        b2.include.push("openssh-server".into());
        let c = BootstrapPlan::new(&b2, Path::new("."), None, &host).unwrap();
        assert_ne!(a.key, c.key);
    }

    #[test]
    fn args_end_with_suite_target_and_the_three_debian_sources() {
        let host = HostSources {
            debian_mirror: Some("http://deb.example/debian".into()),
            origin: "x".into(),
        };
        let p = BootstrapPlan::new(&base(), Path::new("."), None, &host).unwrap();
        let a = p.args(Path::new("/t"), None);
        let n = a.len();
        assert_eq!(a[n - 5], "bookworm");
        assert_eq!(a[n - 4], "/t");
        assert_eq!(a[n - 3], "deb http://deb.example/debian bookworm main");
        assert_eq!(
            a[n - 2],
            "deb http://deb.example/debian bookworm-updates main"
        );
        assert_eq!(
            a[n - 1],
            "deb http://deb.debian.org/debian-security bookworm-security main"
        );
        // Turned off per recipe, and pinned: the key says so.
        let mut b = base();
        b.updates = Some(false);
        b.security = Some(false);
        let only = BootstrapPlan::new(&b, Path::new("."), None, &host).unwrap();
        assert_eq!(only.sources.len(), 1);
        assert_ne!(only.config_key, p.config_key);
        assert!(!only.pinned());
        b.pinned = true;
        let pinned = BootstrapPlan::new(&b, Path::new("."), None, &host).unwrap();
        assert!(pinned.pinned());
        // A generation keys the same configuration anew.
        let g = p.clone().for_generation("abc", serde_json::json!({}));
        assert_eq!(g.config_key, p.config_key);
        assert_ne!(g.key, p.key);
        assert!(a.contains(&"--include=linux-image-cloud-amd64,systemd-sysv".to_string()));
        assert!(a.contains(&"--variant=apt".to_string()));
        assert!(a.contains(&"--skip=cleanup/apt/lists".to_string()));
        assert!(
            !a.iter().any(|x| x.contains("initramfs")),
            "the initramfs is built beside the steps, not by mmdebstrap"
        );
        for hook in SKIP_RSA_HOST_KEY {
            assert!(a.iter().any(|x| x == hook), "{a:?}");
        }
        assert!(p.env().contains(&("INITRD".to_string(), "No".to_string())));
    }

    /// The bootstrap script with a stand-in mmdebstrap and chroot, in a private mount
    /// namespace (root): the tree is copied whole (attributes, symlinks, hard links; in two
    /// parts, or in one when a hard link spans them), each kernel gets an empty placeholder,
    /// and its initramfs, built after the tree is ready, lands in the layer; in memory or not.
    #[test]
    fn bootstrap_script_copies_the_tree_then_builds_the_initramfs_into_its_layer() {
        assert!(
            nix_is_root(),
            "this test needs root (a tmpfs and an overlay in a private mount namespace); CI runs as root"
        );
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        let fake = fake_bootstrap_tools(&bin);
        let listing = |root: &Path| {
            let o = std::process::Command::new("find")
                .arg(root)
                .args(["-mindepth", "1", "-printf", "%P %y %m %U %G %s %l %n %T@\n"])
                .output()
                .unwrap();
            let mut l: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.starts_with("boot ") && !l.starts_with("boot/initrd.img-"))
                .map(str::to_string)
                .collect();
            l.sort();
            l
        };
        let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
        for (cross, in_memory, split) in [
            (false, true, true),
            (true, true, false),
            (false, false, false),
        ] {
            let case = t.path().join(format!("cross-{cross}-mem-{in_memory}"));
            let (mem, dest, layer, reference) = (
                case.join("mem"),
                case.join("rootfs"),
                case.join("initramfs"),
                case.join("ref"),
            );
            std::fs::create_dir_all(&case).unwrap();
            let env_cross = if cross { "1" } else { "" };
            let made = std::process::Command::new(&fake)
                .arg(&reference)
                .env("CROSS", env_cross)
                .status()
                .unwrap();
            assert!(made.success());
            let (mem_arg, size, target) = if in_memory {
                (mem.display().to_string(), "64M", mem.join("rootfs"))
            } else {
                (String::new(), "", dest.clone())
            };
            let out = std::process::Command::new("unshare")
                .args([
                    "-m",
                    "sh",
                    "-ec",
                    BOOTSTRAP_SCRIPT,
                    "webake-bootstrap",
                    &mem_arg,
                ])
                .arg(&dest)
                .arg(size)
                .arg(&layer)
                .arg(&target)
                .env("PATH", &path)
                .env("CROSS", env_cross)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{out:?}");
            assert_eq!(
                said.contains("usr/lib and the rest at once"),
                split,
                "{said}"
            );
            let ready = said
                .find("webake: tree ready: 1.0-test\n")
                .expect("the ready line");
            assert!(said[ready..].contains("I: initramfs built"), "{said}");
            assert_eq!(
                listing(&dest),
                listing(&reference),
                "cross {cross}, in memory {in_memory}"
            );
            assert_eq!(
                std::fs::metadata(dest.join("boot/initrd.img-1.0-test"))
                    .unwrap()
                    .len(),
                0,
                "the tree has an empty placeholder"
            );
            assert_eq!(
                std::fs::read_to_string(layer.join("boot/initrd.img-1.0-test")).unwrap(),
                "initramfs of 1.0-test\n"
            );
            let in_layer: Vec<String> = listing(&layer);
            assert!(
                in_layer.is_empty(),
                "only boot/initrd.img-* in the layer: {in_layer:?}"
            );
            assert!(!mem.exists(), "the tmpfs mount point is left");
            assert!(
                !case.join("initramfs.work").exists(),
                "the overlay's dirs are left"
            );
        }
    }

    /// A stand-in mmdebstrap (a small tree with a kernel and initramfs-tools, `$CROSS`: a hard
    /// link across usr/lib) and chroot (`update-initramfs -c -k V` as initramfs-tools writes
    /// it) in `bin`; returns the mmdebstrap.
    fn fake_bootstrap_tools(bin: &Path) -> PathBuf {
        std::fs::create_dir_all(bin).unwrap();
        let exe = |p: &Path, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(p, body).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let fake = bin.join("mmdebstrap");
        exe(
            &fake,
            "#!/bin/sh\nset -e\nr=$1\nmkdir -p $r/usr/lib/x $r/usr/bin $r/usr/sbin $r/usr/share/doc $r/etc $r/var/tmp $r/boot $r/proc $r/dev $r/sys\n\
             ln -s usr/lib $r/lib\necho lib > $r/usr/lib/x/f\necho a > $r/usr/bin/a\nln $r/usr/bin/a $r/usr/bin/b\n\
             echo d > $r/.dot\nchmod 0710 $r/usr\nchmod 1777 $r/var/tmp\ntruncate -s 1M $r/usr/share/doc/sparse\n\
             echo k > $r/boot/vmlinuz-1.0-test\nprintf '#!/bin/sh\\n' > $r/usr/sbin/update-initramfs\nchmod 755 $r/usr/sbin/update-initramfs\n\
             [ -z \"$CROSS\" ] || ln $r/usr/lib/x/f $r/etc/f\n\
             find $r -exec touch -h -d @1000000000 {} +\n",
        );
        // `chroot ROOT update-initramfs -c -k V`, the way initramfs-tools writes it.
        exe(
            &bin.join("chroot"),
            "#!/bin/sh\nset -e\n[ \"$2 $3 $4\" = 'update-initramfs -c -k' ]\nsleep 0.3\n\
             echo \"initramfs of $5\" > \"$1/boot/initrd.img-$5.new\"\nmv \"$1/boot/initrd.img-$5.new\" \"$1/boot/initrd.img-$5\"\n\
             mkdir -p \"$1/var/tmp/mkinitramfs_x\"\n",
        );
        fake
    }

    fn nix_is_root() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
        })
    }

    #[test]
    fn parses_host_sources_in_both_formats() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            parse_debian_mirror(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let one = "# comment\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            parse_debian_mirror(one).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            parse_debian_mirror("deb http://security.debian.org/ bookworm-security main\n"),
            None
        );
    }
}
