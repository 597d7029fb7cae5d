//! The freshness check against real signed apt repositories served on loopback by the test
//! (`webake_upstream::testrepo`): .debs built with dpkg-deb, indexed with apt-ftparchive,
//! signed with throwaway gpg keys, verified with gpgv.

use std::net::TcpListener;
use std::path::PathBuf;

use jiff::{SignedDuration, Timestamp};
use webake_inventory::Package;
use webake_upstream::testrepo::{DebSpec, Publish, Signer, TestRepo};
use webake_upstream::{
    AptSource, Client, ClientOptions, DebianSuites, Error, Freshness, SourceChange, UpstreamState,
    compare, debian_sources, freshness, newest_changelog_entry, security_tracker_url,
};

/// A Debian-shaped upstream: `stable` and `stable-updates` on one host, `stable-security` on
/// another (its own server and key), as `debian_sources` derives them.
struct Upstream {
    main: TestRepo,
    security: TestRepo,
}

impl Upstream {
    fn start() -> Upstream {
        let main = TestRepo::start().expect("main test repository");
        let security = TestRepo::start().expect("security test repository");
        main.add("stable", &DebSpec::new("hello", "1.0-1")).unwrap();
        let mut libfoo = DebSpec::new("libfoo1", "2.0-1");
        libfoo.source = Some("foo".into());
        main.add("stable", &libfoo).unwrap();
        main.add("stable", &DebSpec::new("bystander", "1.0-1"))
            .unwrap();
        main.publish("stable").unwrap();
        main.publish("stable-updates").unwrap();
        security.publish("stable-security").unwrap();
        Upstream { main, security }
    }

    fn sources(&self) -> Vec<AptSource> {
        let mut d = DebianSuites::new(self.main.uri(), "stable");
        d.security_mirror = Some(self.security.uri());
        d.signed_by = vec![
            self.main.keyring().to_owned(),
            self.security.keyring().to_owned(),
        ];
        debian_sources(&d)
    }
}

/// What an image baked from `stable` has installed (hello, libfoo1; not bystander).
fn installed() -> Vec<Package> {
    let p = |name: &str, version: &str, source: &str| Package {
        name: name.into(),
        version: version.into(),
        architecture: "amd64".into(),
        source: source.into(),
        source_version: version.into(),
        installed_size_kib: None,
    };
    vec![p("hello", "1.0-1", "hello"), p("libfoo1", "2.0-1", "foo")]
}

fn client() -> Client {
    Client::new(ClientOptions::default())
}

fn closed_port_uri() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn later(secs: i64) -> Option<Timestamp> {
    Some(Timestamp::now() + SignedDuration::from_secs(secs))
}

#[test]
fn default_sources_check_and_nothing_changed() {
    let up = Upstream::start();
    let sources = up.sources();
    assert_eq!(
        sources.iter().map(|s| s.suite.as_str()).collect::<Vec<_>>(),
        ["stable", "stable-updates", "stable-security"]
    );
    assert_eq!(
        sources[2].uri,
        up.security.uri(),
        "security from its own host"
    );

    let c = client();
    let first = c.check(&sources).unwrap();
    assert_eq!(first.sources.len(), 3);
    for s in &first.sources {
        let r = s.release.as_ref().expect("fetched");
        assert!(r.acquire_by_hash);
        assert_eq!(r.indexes.len(), 1);
        assert_eq!(r.indexes[0].file, "main/binary-amd64/Packages.xz");
        assert_eq!(r.inrelease_sha256.len(), 64);
    }
    assert_eq!(
        first.sources.iter().map(|s| s.security).collect::<Vec<_>>(),
        [false, false, true]
    );

    // Nothing published: same InRelease.
    let second = c.check(&sources).unwrap();
    let cmp = compare(&first, &second);
    assert!(cmp.is_unchanged(), "{cmp:?}");
    assert!(
        cmp.sources
            .iter()
            .all(|s| s.change == SourceChange::Unchanged)
    );
    assert_eq!(first.fingerprint(), second.fingerprint());

    // Re-signed with a new Date, same packages: still unchanged (but visible as re-signed).
    up.main
        .publish_with(
            "stable-updates",
            &Publish {
                date: later(2),
                ..Publish::default()
            },
        )
        .unwrap();
    let third = c.check(&sources).unwrap();
    let cmp = compare(&first, &third);
    assert!(cmp.is_unchanged());
    assert!(matches!(
        cmp.sources[1].change,
        SourceChange::Resigned { .. }
    ));
    assert_eq!(first.fingerprint(), third.fingerprint());

    let verdict = freshness(&c, &first, &third, &installed()).unwrap();
    assert!(matches!(verdict, Freshness::UpToDate { .. }), "{verdict:?}");

    // The state goes into metadata as JSON and comes back equal.
    let json = serde_json::to_string(&third).unwrap();
    let back: UpstreamState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, third);
}

#[test]
fn newer_installed_packages_are_candidates_security_marked() {
    let up = Upstream::start();
    let c = client();
    let before = c.check(&up.sources()).unwrap();

    let hello2 = DebSpec::new("hello", "1.0-2");
    up.main.add("stable-updates", &hello2).unwrap();
    up.main
        .publish_with(
            "stable-updates",
            &Publish {
                date: later(1),
                ..Publish::default()
            },
        )
        .unwrap();
    let mut foo_fix = DebSpec::new("libfoo1", "2.0-1+deb12u1");
    foo_fix.source = Some("foo".into());
    foo_fix.distribution = "stable-security".into();
    foo_fix.changes = vec!["Fix CVE-2026-0001: overflow in foo_parse().".into()];
    let foo_deb = up.security.add("stable-security", &foo_fix).unwrap();
    up.security
        .publish_with(
            "stable-security",
            &Publish {
                date: later(1),
                ..Publish::default()
            },
        )
        .unwrap();

    let after = c.check(&up.sources()).unwrap();
    let cmp = compare(&before, &after);
    assert!(!cmp.is_unchanged());
    let changes: Vec<&SourceChange> = cmp.sources.iter().map(|s| &s.change).collect();
    assert_eq!(changes[0], &SourceChange::Unchanged);
    assert!(
        matches!(changes[1], SourceChange::Moved { indexes, .. } if indexes == &["main/amd64"])
    );
    assert!(matches!(changes[2], SourceChange::Moved { .. }));
    assert_eq!(cmp.moved().len(), 2);

    let Freshness::Updates { candidates, .. } =
        freshness(&c, &before, &after, &installed()).unwrap()
    else {
        panic!("expected updates");
    };
    let summary: Vec<(&str, &str, &str, &str, bool, &str)> = candidates
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.installed.as_str(),
                c.candidate.as_str(),
                c.suite.as_str(),
                c.security,
                c.source.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("hello", "1.0-1", "1.0-2", "stable-updates", false, "hello"),
            (
                "libfoo1",
                "2.0-1",
                "2.0-1+deb12u1",
                "stable-security",
                true,
                "foo"
            ),
        ]
    );
    assert_eq!(candidates[1].uri, up.security.uri());
    // Over every source (not only the moved ones) the answer is the same.
    assert_eq!(c.candidates(&installed(), &after).unwrap(), candidates);
    // Indexes were fetched by hash.
    assert!(
        up.security
            .requests()
            .iter()
            .any(|r| r.contains("/by-hash/SHA256/")),
        "{:?}",
        up.security.requests()
    );

    // What the reviewer sees: the newest changelog entry of the new .deb, and the tracker.
    let entry = newest_changelog_entry(&foo_deb).unwrap();
    assert_eq!(entry.source, "foo");
    assert_eq!(entry.version, "2.0-1+deb12u1");
    assert_eq!(entry.distributions, "stable-security");
    assert_eq!(
        entry.changes,
        "  * Fix CVE-2026-0001: overflow in foo_parse()."
    );
    assert_eq!(
        security_tracker_url(&candidates[1].source).unwrap(),
        "https://security-tracker.debian.org/tracker/foo"
    );
}

#[test]
fn a_new_package_not_installed_moves_the_state_but_is_no_candidate() {
    let up = Upstream::start();
    let c = client();
    let before = c.check(&up.sources()).unwrap();
    // A newer bystander (not installed) and a brand-new package.
    up.main
        .add("stable-updates", &DebSpec::new("bystander", "1.0-2"))
        .unwrap();
    up.main
        .add("stable-updates", &DebSpec::new("newcomer", "0.1-1"))
        .unwrap();
    up.main
        .publish_with(
            "stable-updates",
            &Publish {
                date: later(1),
                ..Publish::default()
            },
        )
        .unwrap();
    let after = c.check(&up.sources()).unwrap();
    let verdict = freshness(&c, &before, &after, &installed()).unwrap();
    let Freshness::NoImageUpdates { comparison } = &verdict else {
        panic!("expected no image updates: {verdict:?}");
    };
    assert_eq!(comparison.moved().len(), 1);
    assert_eq!(comparison.moved()[0].suite, "stable-updates");
    assert_ne!(before.fingerprint(), after.fingerprint());
}

#[test]
fn bad_signatures_are_refused_naming_the_source() {
    let up = Upstream::start();
    let c = client();
    up.security
        .publish_with(
            "stable-security",
            &Publish {
                signer: Signer::ForeignKey,
                ..Publish::default()
            },
        )
        .unwrap();
    let e = c.check(&up.sources()).unwrap_err();
    let Error::BadSignature {
        source_id, detail, ..
    } = &e
    else {
        panic!("expected a bad signature, got {e}");
    };
    assert_eq!(source_id.suite, "stable-security");
    assert_eq!(source_id.uri, up.security.uri());
    assert!(detail.contains("not in the keyring"), "{detail}");
    assert!(
        e.to_string().starts_with(&format!(
            "apt source {} stable-security: InRelease signature",
            up.security.uri()
        )),
        "{e}"
    );

    // Signed by the right key, then altered.
    up.security
        .publish_with(
            "stable-security",
            &Publish {
                tamper: true,
                ..Publish::default()
            },
        )
        .unwrap();
    let e = c.check(&up.sources()).unwrap_err();
    assert!(
        matches!(&e, Error::BadSignature { detail, .. } if detail.contains("BAD signature")),
        "{e}"
    );

    // The right key, but the source trusts another keyring only.
    up.security.publish("stable-security").unwrap();
    let mut wrong = up.security.source("stable-security");
    wrong.signed_by = vec![up.main.keyring().to_owned()];
    let e = c.check(&[wrong]).unwrap_err();
    assert!(matches!(e, Error::BadSignature { .. }), "{e}");

    // A missing keyring is its own error.
    let mut missing = up.security.source("stable-security");
    missing.signed_by = vec![PathBuf::from("/nonexistent/keyring.gpg")];
    let e = c.check(&[missing]).unwrap_err();
    assert!(matches!(e, Error::Keyring { .. }), "{e}");
}

#[test]
fn expired_and_future_releases_are_refused() {
    let up = Upstream::start();
    let c = client();
    let hour = SignedDuration::from_hours(1);
    up.main
        .publish_with(
            "stable-updates",
            &Publish {
                date: Some(Timestamp::now() - hour * 48),
                valid_until: Some(Timestamp::now() - hour),
                ..Publish::default()
            },
        )
        .unwrap();
    let e = c.check(&up.sources()).unwrap_err();
    let Error::Expired { source_id, .. } = &e else {
        panic!("expected expired, got {e}");
    };
    assert_eq!(source_id.suite, "stable-updates");
    assert!(
        e.to_string().contains("InRelease expired: Valid-Until"),
        "{e}"
    );

    // Still valid for a day: fine, and recorded.
    up.main
        .publish_with(
            "stable-updates",
            &Publish {
                valid_until: Some(Timestamp::now() + hour * 24),
                ..Publish::default()
            },
        )
        .unwrap();
    let state = c.check(&up.sources()).unwrap();
    assert!(
        state.sources[1]
            .release
            .as_ref()
            .unwrap()
            .valid_until
            .is_some()
    );

    // Dated tomorrow: not valid yet.
    up.main
        .publish_with(
            "stable-updates",
            &Publish {
                date: Some(Timestamp::now() + hour * 24),
                ..Publish::default()
            },
        )
        .unwrap();
    let e = c.check(&up.sources()).unwrap_err();
    assert!(matches!(e, Error::NotYetValid { .. }), "{e}");
}

#[test]
fn unreachable_mirrors_are_errors_and_no_partial_state() {
    let mut up = Upstream::start();
    let c = client();
    let closed = closed_port_uri();
    let mut sources = up.sources();
    sources[2].uri = closed.clone();
    let e = c.check(&sources).unwrap_err();
    let Error::Unreachable { source_id, url, .. } = &e else {
        panic!("expected unreachable, got {e}");
    };
    assert_eq!(source_id.uri, closed);
    assert_eq!(source_id.suite, "stable-security");
    assert_eq!(url, &format!("{closed}/dists/stable-security/InRelease"));
    assert!(e.to_string().contains("mirror unreachable"), "{e}");

    // A suite the mirror does not carry: HTTP 404, naming it.
    let e = c.check(&[up.main.source("nosuchsuite")]).unwrap_err();
    assert!(
        matches!(&e, Error::HttpStatus { status: 404, source_id, .. } if source_id.suite == "nosuchsuite"),
        "{e}"
    );

    // The mirror goes away after a good check: the next check fails, the state it had stays.
    let good = c.check(&up.sources()).unwrap();
    up.main.go_offline();
    let e = c.check(&up.sources()).unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    // Candidates need the indexes: unreachable too.
    let e = c.candidates(&installed(), &good).unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
}

#[test]
fn pinned_sources_are_never_fetched() {
    let up = Upstream::start();
    let c = client();
    let mut pinned = up.main.source("stable");
    pinned.pinned = true;
    let mut gone = AptSource::new(closed_port_uri(), "stable");
    gone.pinned = true;
    let before = c.check(&[pinned.clone(), gone.clone()]).unwrap();
    assert!(
        before
            .sources
            .iter()
            .all(|s| s.pinned && s.release.is_none())
    );

    up.main
        .add("stable", &DebSpec::new("hello", "9.9-1"))
        .unwrap();
    up.main
        .publish_with(
            "stable",
            &Publish {
                date: later(1),
                ..Publish::default()
            },
        )
        .unwrap();
    let after = c.check(&[pinned, gone]).unwrap();
    let cmp = compare(&before, &after);
    assert!(cmp.is_unchanged());
    assert!(cmp.sources.iter().all(|s| s.change == SourceChange::Pinned));
    let verdict = freshness(&c, &before, &after, &installed()).unwrap();
    assert!(matches!(verdict, Freshness::UpToDate { .. }));
    assert!(c.candidates(&installed(), &after).unwrap().is_empty());
    assert_eq!(up.main.requests(), Vec::<String>::new(), "nothing fetched");

    // Snapshot URLs are pinned by default.
    assert!(
        AptSource::new(
            "https://snapshot.debian.org/archive/debian/20261123T000000Z",
            "bookworm"
        )
        .pinned
    );
}

#[test]
fn indexes_are_verified_against_the_signed_state() {
    let up = Upstream::start();
    let c = client();
    let state = c.check(&[up.main.source("stable")]).unwrap();
    let index = &state.sources[0].release.as_ref().unwrap().indexes[0];
    // Someone swaps the file behind the digest on the mirror.
    let by_hash = up
        .main
        .archive_dir()
        .join("dists/stable/main/binary-amd64/by-hash/SHA256")
        .join(&index.file_sha256);
    let mut data = std::fs::read(&by_hash).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&by_hash, data).unwrap();
    let e = c.candidates(&installed(), &state).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
}

#[test]
fn a_release_for_another_suite_is_refused() {
    let up = Upstream::start();
    let dists = up.main.archive_dir().join("dists");
    std::fs::create_dir_all(dists.join("evil")).unwrap();
    std::fs::copy(dists.join("stable/InRelease"), dists.join("evil/InRelease")).unwrap();
    let e = client().check(&[up.main.source("evil")]).unwrap_err();
    assert!(matches!(e, Error::SuiteMismatch { .. }), "{e}");
}

#[test]
fn file_uris_are_checked_too() {
    let up = Upstream::start();
    let mut s = up.main.source("stable");
    s.uri = up.main.file_uri();
    let c = client();
    let state = c.check(&[s]).unwrap();
    let mut older = installed();
    older[0].version = "0.9-1".into();
    let cands = c.candidates(&older, &state).unwrap();
    assert_eq!(cands.len(), 1);
    assert_eq!(
        (cands[0].name.as_str(), cands[0].candidate.as_str()),
        ("hello", "1.0-1")
    );
    assert!(up.main.requests().is_empty());
}

#[test]
fn changelog_of_a_package_without_its_own_doc_dir() {
    let up = Upstream::start();
    let mut dev = DebSpec::new("libfoo-dev", "2.0-1");
    dev.doc_link = Some("libfoo1".into());
    let deb = up.main.build_deb(&dev, up.main.scratch_dir()).unwrap();
    let e = newest_changelog_entry(&deb).unwrap_err();
    assert!(
        matches!(&e, Error::NoChangelog { hint: Some(h), .. } if h.contains("symlink to libfoo1")),
        "{e}"
    );
    let e = newest_changelog_entry(&up.main.scratch_dir().join("missing.deb")).unwrap_err();
    assert!(matches!(e, Error::Command { .. }), "{e}");
}

/// The fixture is a repository apt itself accepts (signature, by-hash, indexes), and apt's
/// upgrade plan for the same installed packages lists the same candidates.
#[test]
fn apt_agrees_with_the_candidates() {
    let up = Upstream::start();
    up.main
        .add("stable-updates", &DebSpec::new("hello", "1.0-2"))
        .unwrap();
    up.main.publish("stable-updates").unwrap();
    let mut fix = DebSpec::new("libfoo1", "2.0-1+deb12u1");
    fix.source = Some("foo".into());
    up.security.add("stable-security", &fix).unwrap();
    up.security.publish("stable-security").unwrap();

    let c = client();
    let state = c.check(&up.sources()).unwrap();
    let ours: Vec<(String, String)> = c
        .candidates(&installed(), &state)
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.candidate))
        .collect();

    // apt, with nothing from the host's configuration or state.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in [
        "etc/apt.conf.d",
        "etc/preferences.d",
        "lists/partial",
        "cache/archives/partial",
    ] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let sources: String = up.sources().iter().map(|s| s.one_line() + "\n").collect();
    std::fs::write(d.join("etc/sources.list"), sources).unwrap();
    let status: String = installed()
        .iter()
        .map(|p| {
            format!(
                "Package: {}\nStatus: install ok installed\nPriority: optional\nSection: misc\n\
                 Maintainer: t <t@webake.invalid>\nArchitecture: {}\nVersion: {}\nDescription: x\n\n",
                p.name, p.architecture, p.version
            )
        })
        .collect();
    std::fs::write(d.join("status"), status).unwrap();
    let conf = format!(
        "Dir::Etc \"{0}/etc\";\nDir::State::Lists \"{0}/lists\";\nDir::State::status \"{0}/status\";\n\
         Dir::Cache \"{0}/cache\";\nDir::Log \"{0}\";\nAPT::Architecture \"amd64\";\n\
         APT::Sandbox::User \"root\";\nDebug::NoLocking \"true\";\nAcquire::Languages \"none\";\n",
        d.display()
    );
    std::fs::write(d.join("apt.conf"), conf).unwrap();
    let apt = |args: &[&str]| {
        let out = std::process::Command::new("apt-get")
            .env("APT_CONFIG", d.join("apt.conf"))
            .args(args)
            .output()
            .expect("apt-get is required (the build host is Debian)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "apt-get {args:?}: {text}{err}");
        assert!(!err.contains("W: "), "apt-get {args:?} warned: {err}");
        text
    };
    apt(&["-q", "update"]);
    let plan = apt(&["-s", "dist-upgrade"]);
    let mut theirs: Vec<(String, String)> = plan
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next().unwrap().to_owned();
            let version = l
                .split_once(" (")
                .unwrap()
                .1
                .split_whitespace()
                .next()
                .unwrap();
            (name, version.to_owned())
        })
        .collect();
    theirs.sort();
    assert_eq!(ours, theirs, "apt's plan:\n{plan}");
    assert_eq!(ours.len(), 2);
}
