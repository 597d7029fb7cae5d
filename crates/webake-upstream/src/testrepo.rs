//! Test support (feature `test-support`): a real, signed apt repository served over HTTP on
//! 127.0.0.1 by the test process itself.
//!
//! Packages are built with `dpkg-deb --build` (each ships a `changelog.Debian.gz` and a marker
//! file `usr/share/webake-test/NAME.version` holding its version), indexed with `apt-ftparchive`,
//! signed with a throwaway ed25519 key made by `gpg --quick-gen-key` in a private GNUPGHOME,
//! and laid out like a Debian mirror: `dists/SUITE/{InRelease,Release,Release.gpg}`,
//! `dists/SUITE/main/binary-amd64/{Packages,Packages.xz,Packages.gz,by-hash/SHA256/…}`,
//! `pool/SUITE/*.deb`. The keyring to trust is [`TestRepo::keyring`] (binary, as `gpg
//! --export` writes it).
//!
//! ```no_run
//! use webake_upstream::testrepo::{DebSpec, TestRepo};
//! let repo = TestRepo::start()?;
//! repo.add("stable", &DebSpec::new("hello", "1.0-1"))?;
//! repo.publish("stable")?;
//! let source = repo.source("stable"); // http://127.0.0.1:PORT stable main amd64, signed-by
//! # Ok::<(), webake_upstream::testrepo::FixtureError>(())
//! ```
//!
//! Everything lives in one temporary directory; dropping the repo stops the server, kills the
//! gpg-agents it started (`gpgconf --kill all` on its own homes) and removes the directory.
//! Needs `dpkg-deb`, `apt-ftparchive` (apt-utils), `gpg`, `gpgconf`, `xz`, `gzip`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::sources::AptSource;

/// What went wrong building or serving the fixture.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("test repository: {command}: {message}")]
    Command { command: String, message: String },
    #[error("test repository: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = FixtureError> = std::result::Result<T, E>;

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> FixtureError + '_ {
    move |source| FixtureError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Run a fixture command; a missing program or a failure names the command.
fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| FixtureError::Command {
        command: command.clone(),
        message: format!(
            "cannot run it ({e}); the test repository needs dpkg-deb, apt-ftparchive \
             (apt-utils), gpg, gpgconf, xz and gzip"
        ),
    })?;
    if !out.status.success() {
        return Err(FixtureError::Command {
            command,
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// A binary package to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebSpec {
    pub name: String,
    pub version: String,
    /// `amd64` (default) or `all`.
    pub architecture: String,
    /// `Source:` field; `None`: the source package is named like the binary.
    pub source: Option<String>,
    pub depends: Option<String>,
    /// Distribution of the changelog entry (`stable-security`...).
    pub distribution: String,
    /// Change lines of the newest changelog entry (without the leading `  * `).
    pub changes: Vec<String>,
    /// Make `usr/share/doc/NAME` a symlink to this directory instead (no changelog shipped).
    pub doc_link: Option<String>,
}

impl DebSpec {
    pub fn new(name: &str, version: &str) -> Self {
        DebSpec {
            name: name.to_owned(),
            version: version.to_owned(),
            architecture: "amd64".to_owned(),
            source: None,
            depends: None,
            distribution: "unstable".to_owned(),
            changes: vec![format!("Test release {version}.")],
            doc_link: None,
        }
    }

    /// The source package name.
    pub fn source_name(&self) -> &str {
        self.source.as_deref().unwrap_or(&self.name)
    }

    /// `NAME_VERSION_ARCH.deb`, the version without its epoch (as Debian names files).
    pub fn file_name(&self) -> String {
        let version = self
            .version
            .split_once(':')
            .map_or(self.version.as_str(), |(_, v)| v);
        format!("{}_{}_{}.deb", self.name, version, self.architecture)
    }
}

/// Who signs a publication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Signer {
    /// The repository's key (in [`TestRepo::keyring`]).
    #[default]
    RepoKey,
    /// Another throwaway key, not in the keyring: a bad signature for the checker.
    ForeignKey,
}

/// How to publish a suite.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// `Date:`; default now.
    pub date: Option<Timestamp>,
    /// `Valid-Until:`; default none.
    pub valid_until: Option<Timestamp>,
    pub signer: Signer,
    /// Change a byte of the signed text after signing (the signature no longer verifies).
    pub tamper: bool,
}

struct GpgHome {
    dir: PathBuf,
}

impl GpgHome {
    fn create(dir: PathBuf, uid: &str) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_at(&dir))?;
        let home = GpgHome { dir };
        home.gpg(&["--quick-gen-key", uid, "ed25519", "sign", "never"])?;
        Ok(home)
    }

    fn gpg(&self, args: &[&str]) -> Result<Vec<u8>> {
        run(Command::new("gpg")
            .arg("--homedir")
            .arg(&self.dir)
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args))
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        // The agent gpg started for this home (only this one).
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.dir)
            .args(["--kill", "all"])
            .output();
    }
}

/// A minimal static file server: GET and HEAD under one root, one connection at a time,
/// `Connection: close`. Records the request paths.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(root: PathBuf) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_at(Path::new("127.0.0.1:0")))?;
        let addr = listener
            .local_addr()
            .map_err(io_at(Path::new("127.0.0.1:0")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, log) = (stop.clone(), log.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &root, &log);
                    }
                }
            })
        };
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
            log,
        })
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the blocking accept.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(stream: TcpStream, root: &Path, log: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.take(16 * 1024));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Headers: read up to the blank line.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut stream = reader.into_inner().into_inner();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if let Ok(mut l) = log.lock() {
        l.push(path.to_owned());
    }
    let file = (!path.split('/').any(|p| p == ".." || p == "."))
        .then(|| root.join(path.trim_start_matches('/')))
        .filter(|f| f.is_file())
        .and_then(|f| std::fs::read(f).ok());
    let (status, body) = match (method, file) {
        ("GET" | "HEAD", Some(body)) => ("200 OK", body),
        ("GET" | "HEAD", None) => ("404 Not Found", b"not found\n".to_vec()),
        _ => ("405 Method Not Allowed", Vec::new()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&body);
    }
    let _ = stream.flush();
}

/// A signed apt repository on loopback. See the module docs.
pub struct TestRepo {
    // Field order is drop order: server first, then the gpg agents, then the files.
    server: Server,
    gpg: GpgHome,
    foreign: GpgHome,
    archive: PathBuf,
    keyring: PathBuf,
    dir: tempfile::TempDir,
}

impl TestRepo {
    /// Make the keys and start serving an empty archive.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("webake-testrepo.")
            .tempdir()
            .map_err(io_at(&std::env::temp_dir()))?;
        let archive = dir.path().join("archive");
        std::fs::create_dir_all(&archive).map_err(io_at(&archive))?;
        let gpg = GpgHome::create(
            dir.path().join("gnupg"),
            "webake test repository <repo@webake.invalid>",
        )?;
        let foreign = GpgHome::create(
            dir.path().join("gnupg-foreign"),
            "someone else <foreign@webake.invalid>",
        )?;
        let keyring = dir.path().join("keyring.gpg");
        let key = gpg.gpg(&["--export"])?;
        std::fs::write(&keyring, key).map_err(io_at(&keyring))?;
        let server = Server::start(archive.clone())?;
        Ok(TestRepo {
            server,
            gpg,
            foreign,
            archive,
            keyring,
            dir,
        })
    }

    /// `http://127.0.0.1:PORT` (the archive root).
    pub fn uri(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// `file:///…/archive`: the same archive without the server (for sandboxes without the
    /// host's loopback).
    pub fn file_uri(&self) -> String {
        format!("file://{}", self.archive.display())
    }

    /// The archive root on disk.
    pub fn archive_dir(&self) -> &Path {
        &self.archive
    }

    /// The binary keyring with the repository's public key.
    pub fn keyring(&self) -> &Path {
        &self.keyring
    }

    /// A scratch directory inside the fixture (removed with it).
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The source for `suite`: `main`, `amd64`, signed by [`Self::keyring`], over HTTP.
    pub fn source(&self, suite: &str) -> AptSource {
        AptSource {
            uri: self.uri(),
            suite: suite.to_owned(),
            components: vec!["main".to_owned()],
            architectures: vec!["amd64".to_owned()],
            signed_by: vec![self.keyring.clone()],
            pinned: false,
        }
    }

    /// Paths requested from the server so far (`/dists/stable/InRelease`...).
    pub fn requests(&self) -> Vec<String> {
        self.server
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Stop serving: the port is closed from now on (an unreachable mirror).
    pub fn go_offline(&mut self) {
        self.server.shutdown();
    }

    /// Build `spec` with `dpkg-deb --build` into `out_dir`; returns the .deb path.
    pub fn build_deb(&self, spec: &DebSpec, out_dir: &Path) -> Result<PathBuf> {
        let tree = tempfile::Builder::new()
            .prefix("deb.")
            .tempdir_in(self.dir.path())
            .map_err(io_at(self.dir.path()))?;
        let root = tree.path();
        let write = |rel: &str, data: &[u8]| -> Result<()> {
            let p = root.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io_at(parent))?;
            }
            std::fs::write(&p, data).map_err(io_at(&p))
        };
        let mut control = format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: webake tests <tests@webake.invalid>\n\
             Section: misc\nPriority: optional\n",
            spec.name, spec.version, spec.architecture
        );
        if let Some(s) = &spec.source {
            control.push_str(&format!("Source: {s}\n"));
        }
        if let Some(d) = &spec.depends {
            control.push_str(&format!("Depends: {d}\n"));
        }
        control.push_str(&format!(
            "Description: webake test package {}\n a tiny package built by the test.\n",
            spec.name
        ));
        write("DEBIAN/control", control.as_bytes())?;
        write(
            &format!("usr/share/webake-test/{}.version", spec.name),
            format!("{}\n", spec.version).as_bytes(),
        )?;
        let doc = root.join("usr/share/doc");
        std::fs::create_dir_all(&doc).map_err(io_at(&doc))?;
        match &spec.doc_link {
            Some(target) => std::os::unix::fs::symlink(target, doc.join(&spec.name))
                .map_err(io_at(&doc.join(&spec.name)))?,
            None => {
                let changes: String = spec.changes.iter().map(|c| format!("  * {c}\n")).collect();
                let changelog = format!(
                    "{} ({}) {}; urgency=medium\n\n{changes}\n -- webake tests <tests@webake.invalid>  \
                     Mon, 30 Nov 2026 12:00:00 +0000\n\n{} (0.1-1) unstable; urgency=low\n\n  * Initial \
                     release.\n\n -- webake tests <tests@webake.invalid>  Sun, 01 Nov 2026 12:00:00 +0000\n",
                    spec.source_name(),
                    spec.version,
                    spec.distribution,
                    spec.source_name(),
                );
                let gz = crate::tool::run_ok(
                    Command::new("gzip").arg("-9nc"),
                    changelog.as_bytes(),
                    1 << 20,
                    "changelog",
                )
                .map_err(|e| FixtureError::Command {
                    command: "gzip -9nc".into(),
                    message: e.to_string(),
                })?;
                write(
                    &format!("usr/share/doc/{}/changelog.Debian.gz", spec.name),
                    &gz,
                )?;
            }
        }
        std::fs::create_dir_all(out_dir).map_err(io_at(out_dir))?;
        let deb = out_dir.join(spec.file_name());
        run(Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(root)
            .arg(&deb))?;
        Ok(deb)
    }

    /// Build `spec` into `pool/SUITE/`, replacing other versions of the same package and
    /// architecture there (a suite carries one version of a package). Not visible to clients
    /// until [`Self::publish`].
    pub fn add(&self, suite: &str, spec: &DebSpec) -> Result<PathBuf> {
        let pool = self.archive.join("pool").join(suite);
        if pool.is_dir() {
            let prefix = format!("{}_", spec.name);
            let suffix = format!("_{}.deb", spec.architecture);
            for e in std::fs::read_dir(&pool).map_err(io_at(&pool))? {
                let e = e.map_err(io_at(&pool))?;
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) && n.ends_with(&suffix) {
                    std::fs::remove_file(e.path()).map_err(io_at(&e.path()))?;
                }
            }
        }
        self.build_deb(spec, &pool)
    }

    /// Where [`Self::add`] put (or would put) a package.
    pub fn deb_path(&self, suite: &str, spec: &DebSpec) -> PathBuf {
        self.archive.join("pool").join(suite).join(spec.file_name())
    }

    /// Index and sign `suite` now, with the repository key and no Valid-Until.
    pub fn publish(&self, suite: &str) -> Result<()> {
        self.publish_with(suite, &Publish::default())
    }

    /// Index and sign `suite` as `how` says.
    pub fn publish_with(&self, suite: &str, how: &Publish) -> Result<()> {
        let pool_rel = format!("pool/{suite}");
        let pool = self.archive.join(&pool_rel);
        std::fs::create_dir_all(&pool).map_err(io_at(&pool))?;
        let dists = self.archive.join("dists").join(suite);
        let bin = dists.join("main/binary-amd64");
        std::fs::create_dir_all(&bin).map_err(io_at(&bin))?;

        let packages = run(Command::new("apt-ftparchive")
            .current_dir(&self.archive)
            .args(["-a", "amd64", "packages"])
            .arg(&pool_rel))?;
        let by_hash = bin.join("by-hash/SHA256");
        std::fs::create_dir_all(&by_hash).map_err(io_at(&by_hash))?;
        for (name, data) in [
            ("Packages", packages.clone()),
            ("Packages.xz", compress("xz", &packages)?),
            ("Packages.gz", compress("gzip", &packages)?),
        ] {
            let p = bin.join(name);
            std::fs::write(&p, &data).map_err(io_at(&p))?;
            let h = by_hash.join(hex::encode(Sha256::digest(&data)));
            std::fs::write(&h, &data).map_err(io_at(&h))?;
        }

        for old in ["Release", "InRelease", "Release.gpg"] {
            let p = dists.join(old);
            if p.exists() {
                std::fs::remove_file(&p).map_err(io_at(&p))?;
            }
        }
        let fmt = |t: Timestamp| t.strftime("%a, %d %b %Y %H:%M:%S UTC").to_string();
        let mut cmd = Command::new("apt-ftparchive");
        cmd.current_dir(&dists);
        let field = |k: &str, v: &str| format!("APT::FTPArchive::Release::{k}={v}");
        for (k, v) in [
            ("Origin", "webake-test"),
            ("Suite", suite),
            ("Codename", suite),
            ("Components", "main"),
            ("Architectures", "amd64"),
            ("Acquire-By-Hash", "yes"),
        ] {
            cmd.arg("-o").arg(field(k, v));
        }
        let date = fmt(how.date.unwrap_or_else(Timestamp::now));
        cmd.arg("-o").arg(field("Date", &date));
        let mut release = String::from_utf8_lossy(&run(cmd.args(["release", "."]))?).into_owned();
        if let Some(v) = how.valid_until {
            // apt-ftparchive only offers ValidTime (seconds after Date); write the field as is.
            let date_line = format!("Date: {date}\n");
            release = release.replacen(
                &date_line,
                &format!("{date_line}Valid-Until: {}\n", fmt(v)),
                1,
            );
        }
        let release_path = dists.join("Release");
        std::fs::write(&release_path, &release).map_err(io_at(&release_path))?;

        let signer = match how.signer {
            Signer::RepoKey => &self.gpg,
            Signer::ForeignKey => &self.foreign,
        };
        let rel = release_path.to_string_lossy().into_owned();
        let inrelease = dists.join("InRelease");
        let detached = dists.join("Release.gpg");
        signer.gpg(&[
            "--clearsign",
            "--digest-algo",
            "SHA512",
            "-o",
            &inrelease.to_string_lossy(),
            &rel,
        ])?;
        signer.gpg(&[
            "--detach-sign",
            "--armor",
            "-o",
            &detached.to_string_lossy(),
            &rel,
        ])?;
        if how.tamper {
            let text = std::fs::read_to_string(&inrelease).map_err(io_at(&inrelease))?;
            let tampered = text.replacen("Origin: webake-test", "Origin: webake-tesT", 1);
            std::fs::write(&inrelease, tampered).map_err(io_at(&inrelease))?;
        }
        Ok(())
    }
}

fn compress(program: &str, data: &[u8]) -> Result<Vec<u8>> {
    let flags = if program == "gzip" { "-9nc" } else { "-c" };
    crate::tool::run_ok(Command::new(program).arg(flags), data, 1 << 30, "index").map_err(|e| {
        FixtureError::Command {
            command: format!("{program} {flags}"),
            message: e.to_string(),
        }
    })
}
