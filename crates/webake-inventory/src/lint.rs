//! Hygiene lint of a root tree: what makes an image environment-specific, and leaked secrets.
//!
//! Structural rules look at fixed paths. Secret rules read files; symlinks are never followed,
//! the walk stays on the root's file system, and only the first [`MAX_SCAN_BYTES`] of each
//! regular file are read.
//!
//! - Pattern rules (`secret-aws-key`, `secret-private-key`, `secret-token`) scan text files
//!   (no NUL byte in the first 8 KiB) under `etc/`, `root/`, `home/`, `opt/`, `srv/`,
//!   `usr/local/`, `tmp/` and `var/`, except `var/lib/dpkg/`, `var/lib/apt/lists/`,
//!   `var/cache/apt/` and `var/log/journal/`: where provisioning writes, not packaged files
//!   (whose documentation is full of example keys). `/etc/ssh/ssh_host_*` is left to
//!   `ssh-host-keys`.
//! - `secret-value` (the bake's own secret values, [`LintConfig::extra_secrets`]) searches the
//!   whole tree, binary files included: a literal search is cheap and a role may template a
//!   secret anywhere (a unit file in `/usr/lib/systemd/system`).

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;

use regex::bytes::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::root::{self, Root};

/// Bytes read from each file by the secret rules.
pub const MAX_SCAN_BYTES: u64 = 8 * 1024 * 1024;

/// Extra secret values shorter than this are ignored: they would match everywhere.
pub const MIN_EXTRA_SECRET_LEN: usize = 4;

const BINARY_SNIFF: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

macro_rules! rules {
    ($($variant:ident = $id:literal, $sev:ident, $doc:literal;)*) => {
        /// A lint rule. Its id (kebab-case) is what `allow` lists and findings carry.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Rule {
            $(#[doc = $doc] #[serde(rename = $id)] $variant,)*
        }

        impl Rule {
            pub const ALL: &'static [Rule] = &[$(Rule::$variant),*];

            pub fn id(self) -> &'static str {
                match self { $(Rule::$variant => $id,)* }
            }

            pub fn severity(self) -> Severity {
                match self { $(Rule::$variant => Severity::$sev,)* }
            }

            pub fn description(self) -> &'static str {
                match self { $(Rule::$variant => $doc,)* }
            }
        }
    };
}

rules! {
    SshHostKeys = "ssh-host-keys", Error,
        "SSH host keys in /etc/ssh: every instance would share them; generate them at first boot.";
    MachineId = "machine-id", Error,
        "A non-empty /etc/machine-id (or a regular /var/lib/dbus/machine-id): instances would share it.";
    BakedHostname = "baked-hostname", Error,
        "A hostname in /etc/hostname (other than localhost): the agent sets it at boot.";
    RoleHostname = "role-hostname", Warning,
        "A role set a hostname during the bake (recorded in /var/lib/webake/offline-state): it is environment-specific and not kept.";
    BuilderResolvConf = "builder-resolv-conf", Error,
        "/etc/resolv.conf is the build host's.";
    AptLists = "apt-lists", Warning,
        "Package index files in /var/lib/apt/lists: stale at once and tens of MiB.";
    AptCache = "apt-cache", Warning,
        "Downloaded .deb files or package caches in /var/cache/apt.";
    CloudInitState = "cloud-init-state", Warning,
        "cloud-init instance state or logs from the build: run `cloud-init clean --logs`.";
    ShellHistory = "shell-history", Warning,
        "Shell or REPL history files of root or users.";
    StagingDir = "staging-dir", Error,
        "A provisioning staging directory was left behind.";
    SecretAwsKey = "secret-aws-key", Error,
        "An AWS access key id (AKIA/ASIA) or aws_secret_access_key.";
    SecretPrivateKey = "secret-private-key", Error,
        "A PEM private key (SSH host keys have their own rule).";
    SecretToken = "secret-token", Error,
        "A GitHub, GitLab or Slack token.";
    SecretValue = "secret-value", Error,
        "One of the bake's secret values (LintConfig::extra_secrets) appears in a file.";
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl FromStr for Rule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Rule::ALL
            .iter()
            .copied()
            .find(|r| r.id() == s)
            .ok_or_else(|| Error::UnknownRule(s.to_owned()))
    }
}

/// One problem found in the tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Finding {
    /// Path inside the image, absolute (`/etc/machine-id`).
    pub path: String,
    pub rule: Rule,
    pub severity: Severity,
    /// What was found; never contains a secret (values are redacted).
    pub message: String,
}

impl fmt::Display for Finding {
    /// `error[machine-id] /etc/machine-id: machine-id is set; ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}] {}: {}",
            self.severity, self.rule, self.path, self.message
        )
    }
}

/// What to check besides the built-in rules.
#[derive(Debug, Clone, Default)]
pub struct LintConfig {
    /// Rule ids to skip.
    pub allow: Vec<String>,
    /// Literal values that must appear nowhere in the scanned files (the bake's secret
    /// environment values). Values shorter than [`MIN_EXTRA_SECRET_LEN`] bytes are ignored.
    pub extra_secrets: Vec<String>,
    /// The build host's `/etc/resolv.conf` bytes; `builder-resolv-conf` only runs with them.
    pub builder_resolv_conf: Option<Vec<u8>>,
}

/// Lint the tree at `root`. Findings are sorted by path, then rule.
/// Fails on an unknown rule id in `allow`, or when the tree cannot be read.
pub fn lint(root: &Path, config: &LintConfig) -> Result<Vec<Finding>> {
    let allow: BTreeSet<Rule> = config
        .allow
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_>>()?;
    let r = Root::open(root)?;
    let mut out = Findings {
        list: Vec::new(),
        allow: &allow,
    };
    let on = |rule: Rule| !allow.contains(&rule);
    if on(Rule::SshHostKeys) {
        ssh_host_keys(&r, &mut out)?;
    }
    if on(Rule::MachineId) {
        machine_id(&r, &mut out)?;
    }
    if on(Rule::BakedHostname) {
        hostname(&r, &mut out)?;
    }
    if on(Rule::RoleHostname) {
        role_hostname(&r, &mut out)?;
    }
    if on(Rule::BuilderResolvConf)
        && let Some(builder) = &config.builder_resolv_conf
    {
        resolv_conf(&r, builder, &mut out)?;
    }
    if on(Rule::AptLists) {
        apt_lists(&r, &mut out)?;
    }
    if on(Rule::AptCache) {
        apt_cache(&r, &mut out)?;
    }
    if on(Rule::CloudInitState) {
        cloud_init(&r, &mut out)?;
    }
    if on(Rule::ShellHistory) {
        shell_history(&r, &mut out)?;
    }
    if on(Rule::StagingDir) {
        staging(&r, &mut out)?;
    }
    secrets(&r, config, &mut out)?;
    out.list.sort();
    out.list.dedup();
    Ok(out.list)
}

struct Findings<'a> {
    list: Vec<Finding>,
    allow: &'a BTreeSet<Rule>,
}

impl Findings<'_> {
    fn add(&mut self, rule: Rule, path: impl Into<String>, message: impl Into<String>) {
        if !self.allow.contains(&rule) {
            self.list.push(Finding {
                path: path.into(),
                rule,
                severity: rule.severity(),
                message: message.into(),
            });
        }
    }
}

fn ssh_host_keys(r: &Root, out: &mut Findings) -> Result<()> {
    for (name, meta) in r.list("etc/ssh")? {
        let name = name.to_string_lossy();
        if is_ssh_host_key_name(&name) && !meta.is_dir() {
            out.add(
                Rule::SshHostKeys,
                format!("/etc/ssh/{name}"),
                "SSH host key baked into the image; remove it and let sshd-keygen or cloud-init create one per instance",
            );
        }
    }
    Ok(())
}

fn is_ssh_host_key_name(name: &str) -> bool {
    name.starts_with("ssh_host_") && (name.ends_with("_key") || name.ends_with("_key.pub"))
}

fn machine_id(r: &Root, out: &mut Findings) -> Result<()> {
    if let Some(bytes) = r.read("etc/machine-id", 4096)? {
        let id = String::from_utf8_lossy(&bytes);
        let id = id.trim();
        if !id.is_empty() && id != "uninitialized" {
            out.add(
                Rule::MachineId,
                "/etc/machine-id",
                "machine-id is set; truncate it to empty so systemd generates one at first boot",
            );
        }
    }
    if let Some(found) = r.lstat("var/lib/dbus/machine-id")?
        && found.meta.is_file()
        && found.meta.len() > 0
    {
        out.add(
            Rule::MachineId,
            "/var/lib/dbus/machine-id",
            "a D-Bus machine id is set; remove it or make it a symlink to /etc/machine-id",
        );
    }
    Ok(())
}

fn hostname(r: &Root, out: &mut Findings) -> Result<()> {
    if let Some(bytes) = r.read("etc/hostname", 4096)? {
        let name = String::from_utf8_lossy(&bytes);
        let name = name.trim();
        if !name.is_empty() && name != "localhost" && name != "localhost.localdomain" {
            out.add(
                Rule::BakedHostname,
                "/etc/hostname",
                format!("hostname {name:?} is baked in; leave /etc/hostname empty or absent"),
            );
        }
    }
    Ok(())
}

/// Hostnames a role set through the offline tools (`hostnamectl`, `hostname`): finalize
/// removes /etc/hostname, so the image does not keep them, but the role expects it to.
fn role_hostname(r: &Root, out: &mut Findings) -> Result<()> {
    let Some(bytes) = r.read(crate::offline::OFFLINE_STATE, 16 * 1024 * 1024)? else {
        return Ok(());
    };
    let recs =
        crate::offline::parse_offline_state(&String::from_utf8_lossy(&bytes), |_| false, |_| false);
    let mut names: Vec<&str> = recs
        .iter()
        .filter(|r| r.kind == "hostname" && !r.value.is_empty())
        .map(|r| r.value.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        out.add(
            Rule::RoleHostname,
            format!("/{}", crate::offline::OFFLINE_STATE),
            format!(
                "a role set the hostname {name:?} during the bake: a hostname is environment-specific; it is not kept in the image (the agent sets it at boot from instance metadata)"
            ),
        );
    }
    Ok(())
}

fn resolv_conf(r: &Root, builder: &[u8], out: &mut Findings) -> Result<()> {
    if builder.trim_ascii().is_empty() {
        return Ok(());
    }
    let Some(found) = r.lstat("etc/resolv.conf")? else {
        return Ok(());
    };
    if found.meta.file_type().is_symlink() {
        let target = fs::read_link(&found.host_path).at(&found.host_path)?;
        if target.to_string_lossy().contains("systemd/resolve/") {
            return Ok(());
        }
    }
    if let Some(bytes) = r.read("etc/resolv.conf", 1024 * 1024)?
        && bytes.trim_ascii() == builder.trim_ascii()
    {
        out.add(
            Rule::BuilderResolvConf,
            "/etc/resolv.conf",
            "resolv.conf is the build host's; empty it or link it to /run/systemd/resolve/stub-resolv.conf",
        );
    }
    Ok(())
}

fn apt_lists(r: &Root, out: &mut Findings) -> Result<()> {
    let mut count = 0;
    let mut bytes = 0;
    for (name, meta) in r.list("var/lib/apt/lists")? {
        if meta.is_file() && name != "lock" {
            count += 1;
            bytes += meta.len();
        }
    }
    if count > 0 {
        out.add(
            Rule::AptLists,
            "/var/lib/apt/lists",
            format!(
                "{count} package index files ({bytes} bytes) left; remove them after installing"
            ),
        );
    }
    Ok(())
}

fn apt_cache(r: &Root, out: &mut Findings) -> Result<()> {
    let debs: Vec<u64> = r
        .list("var/cache/apt/archives")?
        .into_iter()
        .filter(|(n, m)| m.is_file() && n.to_string_lossy().ends_with(".deb"))
        .map(|(_, m)| m.len())
        .collect();
    if !debs.is_empty() {
        out.add(
            Rule::AptCache,
            "/var/cache/apt/archives",
            format!(
                "{} downloaded .deb files ({} bytes); run apt-get clean",
                debs.len(),
                debs.iter().sum::<u64>()
            ),
        );
    }
    for (name, meta) in r.list("var/cache/apt")? {
        let name = name.to_string_lossy();
        if meta.is_file() && name.ends_with(".bin") {
            out.add(
                Rule::AptCache,
                format!("/var/cache/apt/{name}"),
                "apt package cache left; run apt-get clean",
            );
        }
    }
    Ok(())
}

fn cloud_init(r: &Root, out: &mut Findings) -> Result<()> {
    for (name, _) in r.list("var/lib/cloud")? {
        let name = name.to_string_lossy();
        // `seed` is deliberate configuration; `scripts` ships (empty) with the package.
        if name != "seed" && name != "scripts" {
            out.add(
                Rule::CloudInitState,
                format!("/var/lib/cloud/{name}"),
                "cloud-init state from the build; run cloud-init clean",
            );
        }
    }
    for log in ["cloud-init.log", "cloud-init-output.log"] {
        if let Some(found) = r.lstat(&format!("var/log/{log}"))?
            && found.meta.is_file()
            && found.meta.len() > 0
        {
            out.add(
                Rule::CloudInitState,
                format!("/var/log/{log}"),
                "cloud-init log from the build; run cloud-init clean --logs",
            );
        }
    }
    Ok(())
}

const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".histfile",
    ".sh_history",
    ".ash_history",
    ".python_history",
    ".node_repl_history",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".lesshst",
    ".viminfo",
];

fn shell_history(r: &Root, out: &mut Findings) -> Result<()> {
    let mut homes = vec!["root".to_owned()];
    for (name, meta) in r.list("home")? {
        if meta.is_dir() {
            homes.push(format!("home/{}", name.to_string_lossy()));
        }
    }
    for home in homes {
        for file in HISTORY_FILES {
            if let Some(found) = r.lstat(&format!("{home}/{file}"))?
                && found.meta.is_file()
                && found.meta.len() > 0
            {
                out.add(
                    Rule::ShellHistory,
                    format!("/{home}/{file}"),
                    "history file left from the build; it may hold commands with secrets",
                );
            }
        }
    }
    Ok(())
}

fn staging(r: &Root, out: &mut Findings) -> Result<()> {
    for dir in ["tmp", "var/tmp"] {
        for (name, _) in r.list(dir)? {
            let name = name.to_string_lossy();
            if name.starts_with("webake-") || name.starts_with("packer-provisioner-") {
                out.add(
                    Rule::StagingDir,
                    format!("/{dir}/{name}"),
                    "provisioning staging directory left behind",
                );
            }
        }
    }
    if r.lstat("var/lib/webake-staging")?.is_some() {
        out.add(
            Rule::StagingDir,
            "/var/lib/webake-staging",
            "webake staging directory left behind",
        );
    }
    Ok(())
}

// ---- secrets ---------------------------------------------------------------------------

const SCAN_ROOTS: &[&str] = &[
    "etc",
    "root",
    "home",
    "opt",
    "srv",
    "usr/local",
    "tmp",
    "var",
];
const SCAN_SKIP: &[&str] = &[
    "var/lib/dpkg",
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/log/journal",
];

static AWS_KEY_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b").expect("valid regex"));
static AWS_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)aws_secret_access_key["']?\s*[:=]\s*["']?[A-Za-z0-9/+]{40}\b"#)
        .expect("valid regex")
});
static PRIVATE_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----").expect("valid regex")
});
static TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82}|glpat-[A-Za-z0-9_-]{20}|xox[abprs]-[A-Za-z0-9-]{10,})\b",
    )
    .expect("valid regex")
});

struct Scanner<'a> {
    aws: bool,
    private_key: bool,
    token: bool,
    extra: Option<(Regex, Vec<&'a [u8]>)>,
}

fn secrets(r: &Root, config: &LintConfig, out: &mut Findings) -> Result<()> {
    let on = |rule| !out.allow.contains(&rule);
    let extra: Vec<&[u8]> = config
        .extra_secrets
        .iter()
        .map(|s| s.as_bytes())
        .filter(|s| s.len() >= MIN_EXTRA_SECRET_LEN)
        .collect();
    let scanner = Scanner {
        aws: on(Rule::SecretAwsKey),
        private_key: on(Rule::SecretPrivateKey),
        token: on(Rule::SecretToken),
        extra: (on(Rule::SecretValue) && !extra.is_empty()).then(|| {
            let alternation = extra
                .iter()
                .map(|s| regex::escape(&String::from_utf8_lossy(s)))
                .collect::<Vec<_>>()
                .join("|");
            let re = regex::bytes::RegexBuilder::new(&alternation)
                .size_limit(64 * 1024 * 1024)
                .build()
                .expect("escaped literals always compile");
            (re, extra)
        }),
    };
    if !(scanner.aws || scanner.private_key || scanner.token || scanner.extra.is_some()) {
        return Ok(());
    }
    let patterns = scanner.aws || scanner.private_key || scanner.token;
    if scanner.extra.is_some() {
        // Extra secret values are searched in the whole tree; patterns only in their scope.
        walk_files(r, r.path().to_owned(), &[], |path| {
            let image_path = root::image_path(r.path(), path);
            scan_file(
                r,
                path,
                &scanner,
                patterns && in_pattern_scope(&image_path),
                out,
            )
        })?;
    } else {
        let skip: Vec<PathBuf> = SCAN_SKIP.iter().map(|s| r.host(s)).collect();
        for top in SCAN_ROOTS {
            // Resolve the parents inside the root, but never follow the scope directory itself.
            let Some(found) = r.lstat(top)? else { continue };
            if found.meta.is_dir() {
                walk_files(r, found.host_path, &skip, |path| {
                    scan_file(r, path, &scanner, true, out)
                })?;
            }
        }
    }
    Ok(())
}

fn in_pattern_scope(image_path: &str) -> bool {
    let under = |dir: &str| {
        image_path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(dir))
            .is_some_and(|rest| rest.starts_with('/'))
    };
    SCAN_ROOTS.iter().any(|d| under(d)) && !SCAN_SKIP.iter().any(|d| under(d))
}

/// Call `f` on every non-empty regular file under `start`, never following symlinks,
/// staying on the root's file system, and not entering the `skip` directories.
fn walk_files(
    r: &Root,
    start: PathBuf,
    skip: &[PathBuf],
    mut f: impl FnMut(&Path) -> Result<()>,
) -> Result<()> {
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        for (name, meta) in root::list_dir(&dir)? {
            let path = dir.join(&name);
            if meta.is_dir() {
                if meta.dev() == r.dev() && !skip.contains(&path) {
                    stack.push(path);
                }
            } else if meta.is_file() && meta.len() > 0 {
                f(&path)?;
            }
        }
    }
    Ok(())
}

fn scan_file(r: &Root, path: &Path, s: &Scanner, patterns: bool, out: &mut Findings) -> Result<()> {
    let bytes = match root::read_regular(path, MAX_SCAN_BYTES) {
        Ok(b) => b,
        // Replaced by a symlink or removed meanwhile: not ours to read.
        Err(Error::Io { source, .. })
            if source.raw_os_error() == Some(libc::ELOOP)
                || source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let image_path = root::image_path(r.path(), path);
    if let Some((re, values)) = &s.extra
        && let Some(m) = re.find(&bytes)
    {
        let idx = values.iter().position(|v| *v == m.as_bytes()).unwrap_or(0);
        out.add(
            Rule::SecretValue,
            image_path.clone(),
            format!(
                "contains the value of extra secret #{} at line {}",
                idx + 1,
                line_of(&bytes, m.start())
            ),
        );
    }
    let sniff = &bytes[..bytes.len().min(BINARY_SNIFF)];
    if !patterns || sniff.contains(&0) {
        return Ok(());
    }
    if s.aws {
        let key_id = AWS_KEY_ID
            .find_iter(&bytes)
            .find(|m| !m.as_bytes().ends_with(b"EXAMPLE"));
        if let Some(m) = key_id {
            out.add(
                Rule::SecretAwsKey,
                image_path.clone(),
                format!(
                    "AWS access key id {} at line {}",
                    redact(m.as_bytes()),
                    line_of(&bytes, m.start())
                ),
            );
        }
        let secret = AWS_SECRET
            .find_iter(&bytes)
            .find(|m| !m.as_bytes().ends_with(b"EXAMPLEKEY"));
        if let Some(m) = secret {
            out.add(
                Rule::SecretAwsKey,
                image_path.clone(),
                format!(
                    "aws_secret_access_key with a value at line {}",
                    line_of(&bytes, m.start())
                ),
            );
        }
    }
    if s.private_key
        && !is_ssh_host_key_path(&image_path)
        && let Some(m) = PRIVATE_KEY.find(&bytes)
    {
        out.add(
            Rule::SecretPrivateKey,
            image_path.clone(),
            format!(
                "{} at line {}",
                String::from_utf8_lossy(m.as_bytes()).trim_matches('-'),
                line_of(&bytes, m.start())
            ),
        );
    }
    if s.token
        && let Some(m) = TOKEN.find(&bytes)
    {
        out.add(
            Rule::SecretToken,
            image_path,
            format!(
                "token {} at line {}",
                redact(m.as_bytes()),
                line_of(&bytes, m.start())
            ),
        );
    }
    Ok(())
}

fn is_ssh_host_key_path(p: &str) -> bool {
    p.strip_prefix("/etc/ssh/")
        .is_some_and(is_ssh_host_key_name)
}

fn line_of(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset].iter().filter(|b| **b == b'\n').count() + 1
}

/// The recognizable prefix of a secret, never the secret: `ghp_…`, `AKIA…`.
fn redact(secret: &[u8]) -> String {
    let s = String::from_utf8_lossy(secret);
    let keep = [
        "github_pat_",
        "glpat-",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "xoxa-",
        "xoxb-",
        "xoxp-",
        "xoxr-",
        "xoxs-",
    ]
    .iter()
    .find(|p| s.starts_with(*p))
    .map_or(4, |p| p.len());
    format!("{}…", s.chars().take(keep).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_round_trip() {
        for r in Rule::ALL {
            assert_eq!(r.id().parse::<Rule>().unwrap(), *r);
            assert_eq!(serde_json::to_string(r).unwrap(), format!("\"{}\"", r.id()));
        }
        assert!("nope".parse::<Rule>().is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(redact(b"ghp_abcdefgh"), "ghp_…");
        assert_eq!(redact(b"AKIAABCDEFGHIJKLMNOP"), "AKIA…");
        assert_eq!(redact(b"github_pat_xyz"), "github_pat_…");
        assert_eq!(redact(b"glpat-ab_cdefgh"), "glpat-…");
    }
}
