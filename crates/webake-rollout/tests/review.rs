//! What a reviewer sees and what webake refuses: the real before/after of each changed
//! reference (looked up through the caller's lookup), the dry run's title and body, the
//! downgrade guard and the guard against references no node can boot. Real git, a bare remote.

mod support;

use std::cell::RefCell;

use support::{FixtureRepo, assert_expected, image_facts};
use webake_rollout::{
    BeforeAfter, BranchStatus, CurrentImage, ImageFacts, ImageReference, InstanceGroupRule,
    NoReporter, PackageChange, PackageChangeKind, PackageNote, RepoLocation, RolloutError,
    RolloutOutcome, RolloutRequest, Rule, local_reference, rollout,
};

const FIXTURE: &str = "platform-kubernetes";
const PROD_IGS: &str = "clusters/prod.k8s.example.com/instancegroups.yaml";
const STAGING: &str = "clusters/staging.k8s.example.com/kops.yaml";
/// What prod runs now: an AMI of the catalog's `k8s-node 2026.11.18`.
const PROD_AMI: &str = "ami-0a1b2c3d4e5f60718";
/// What staging runs now: an AMI the catalog does not know.
const STAGING_AMI: &str = "ami-0f0e0d0c0b0a09080";

const NOV_18: i64 = 1_794_974_400; // 2026-11-18 04:00 UTC
const DEC_02: i64 = 1_796_184_780; // 2026-12-02 04:13 UTC
const DEC_09: i64 = 1_796_789_100; // 2026-12-09 04:05 UTC

fn old_image() -> ImageFacts {
    image_facts(
        "img-20261118a",
        "2026.11.18",
        NOV_18,
        &[
            ("bash", "5.2.15-2+b7"),
            ("linux-image-6.1.0-26-cloud-amd64", "6.1.112-1"),
            ("openssl", "3.0.14-1~deb12u2"),
            ("python3-yaml", "6.0-3+b2"),
            ("tzdata", "2024a-0+deb12u1"),
        ],
        "6.1.0-26-cloud-amd64",
        845_000_000,
    )
}

fn new_image() -> ImageFacts {
    let mut facts = image_facts(
        "img-20261202b",
        "2026.12.02",
        DEC_02,
        &[
            ("bash", "5.2.15-2+b7"),
            ("containerd", "1.7.24~ds1-1"),
            ("linux-image-6.1.0-27-cloud-amd64", "6.1.115-1"),
            ("openssl", "3.0.15-1~deb12u1"),
            ("tzdata", "2024b-0+deb12u1"),
        ],
        "6.1.0-27-cloud-amd64",
        861_000_000,
    );
    facts.package_notes.insert(
        "openssl".into(),
        PackageNote {
            security: true,
            changelog: Some("  * Fix CVE-2024-5535: SSL_select_next_proto buffer overread".into()),
        },
    );
    facts
}

fn k8s_node_v2() -> ImageReference {
    ImageReference::PerRegion(
        [
            ("eu-west-1".to_string(), "ami-0123456789abcdef0".to_string()),
            ("us-east-1".into(), "ami-0fedcba9876543210".into()),
        ]
        .into(),
    )
}

fn request(repo: &FixtureRepo, image: ImageFacts) -> RolloutRequest {
    let mut req = RolloutRequest::new(
        "k8s-node",
        k8s_node_v2(),
        RepoLocation::Path(repo.bare.clone()),
    );
    req.version = image.version.clone();
    req.image = Some(image);
    req
}

/// The catalog as the lookup sees it: the prod AMI (in eu-west-1) is `old`; nothing else.
fn catalog_with(
    old: ImageFacts,
    calls: &RefCell<Vec<(String, Option<String>)>>,
) -> impl Fn(&str, Option<&str>) -> Result<Option<ImageFacts>, String> + '_ {
    move |reference, region| {
        calls
            .borrow_mut()
            .push((reference.to_string(), region.map(String::from)));
        Ok((reference == PROD_AMI).then(|| old.clone()))
    }
}

fn assert_nothing_pushed(repo: &FixtureRepo) {
    assert!(
        repo.webake_branches().is_empty(),
        "nothing may be pushed: {:?}",
        repo.webake_branches()
    );
}

fn package_change(
    name: &str,
    kind: PackageChangeKind,
    old: Option<&str>,
    new: Option<&str>,
) -> PackageChange {
    PackageChange {
        name: name.into(),
        architecture: "amd64".into(),
        kind,
        old_version: old.map(String::from),
        new_version: new.map(String::from),
        security: false,
        changelog: None,
    }
}

/// The package changes from `old_image()` to `new_image()`, sorted by name.
fn old_to_new_package_changes() -> Vec<PackageChange> {
    let change = package_change;
    let mut openssl = change(
        "openssl",
        PackageChangeKind::Upgraded,
        Some("3.0.14-1~deb12u2"),
        Some("3.0.15-1~deb12u1"),
    );
    openssl.security = true;
    openssl.changelog = Some("  * Fix CVE-2024-5535: SSL_select_next_proto buffer overread".into());
    vec![
        change(
            "containerd",
            PackageChangeKind::Added,
            None,
            Some("1.7.24~ds1-1"),
        ),
        change(
            "linux-image-6.1.0-26-cloud-amd64",
            PackageChangeKind::Removed,
            Some("6.1.112-1"),
            None,
        ),
        change(
            "linux-image-6.1.0-27-cloud-amd64",
            PackageChangeKind::Added,
            None,
            Some("6.1.115-1"),
        ),
        openssl,
        change(
            "python3-yaml",
            PackageChangeKind::Removed,
            Some("6.0-3+b2"),
            None,
        ),
        change(
            "tzdata",
            PackageChangeKind::Upgraded,
            Some("2024a-0+deb12u1"),
            Some("2024b-0+deb12u1"),
        ),
    ]
}

/// Prod runs the catalog's old image: kernel, size, boot test and packages are compared.
fn assert_prod_compared_with_the_catalog_image(prod: &BeforeAfter) {
    assert_eq!(
        prod.locations,
        [
            format!("{PROD_IGS}:11"),
            format!("{PROD_IGS}:27"),
            format!("{PROD_IGS}:45")
        ]
    );
    let CurrentImage::Known(current) = &prod.current else {
        panic!("{:?}", prod.current)
    };
    assert_eq!(current.id, "img-20261118a");
    let kernel = prod.kernel.as_ref().unwrap();
    assert_eq!(
        (kernel.old.as_str(), kernel.new.as_str()),
        ("6.1.0-26-cloud-amd64", "6.1.0-27-cloud-amd64")
    );
    let size = prod.size.as_ref().unwrap();
    assert_eq!((size.old, size.new), (845_000_000, 861_000_000));
    assert_eq!(prod.boot_test.old.as_deref(), Some("passed"));
    assert_eq!(
        prod.packages.as_deref().unwrap(),
        old_to_new_package_changes()
    );
}

/// Staging runs an AMI the catalog does not know: said so, nothing invented.
fn assert_staging_is_said_unknown(staging: &BeforeAfter) {
    assert_eq!(
        staging.locations,
        [format!("{STAGING}:22"), format!("{STAGING}:36")]
    );
    let CurrentImage::Unknown(info) = &staging.current else {
        panic!("{:?}", staging.current)
    };
    assert_eq!(info.form, "ami-id");
    assert!(staging.packages.is_none() && staging.kernel.is_none());
}

/// The dry run has the title and body the pull request would get, and `--json` prints both.
fn assert_title_body_and_json(outcome: &RolloutOutcome) {
    assert_eq!(outcome.title, "Roll out k8s-node 2026.12.02");
    assert!(outcome.body.contains(
        "Runs now: an image unknown to the webake catalog (known from the reference: AMI id \
         `ami-0f0e0d0c0b0a09080`). Nothing to compare packages against."
    ));
    assert!(
        outcome
            .body
            .contains("| `openssl` (amd64) | 3.0.14-1~deb12u2 | 3.0.15-1~deb12u1 | **security** |"),
        "{}",
        outcome.body
    );
    assert!(
        outcome
            .body
            .ends_with("<!-- webake-rollout family=k8s-node image=img-20261202b -->\n")
    );
    assert_expected("k8s-node-before-after.md", &outcome.body);

    // `webake rollout --json` prints the outcome: the before/after is in it.
    let json = serde_json::to_value(outcome).unwrap();
    assert_eq!(json["before_after"][0]["current"]["known"], "catalog");
    assert_eq!(json["before_after"][0]["current"]["id"], "img-20261118a");
    assert_eq!(json["before_after"][1]["current"]["known"], "unknown");
    assert_eq!(json["before_after"][1]["current"]["form"], "ami-id");
    assert_eq!(json["before_after"][0]["packages"][3]["security"], true);
    assert_eq!(json["title"], "Roll out k8s-node 2026.12.02");
}

#[test]
fn dry_run_compares_what_each_reference_runs_now_and_prints_title_and_body() {
    let repo = FixtureRepo::new(FIXTURE);
    let calls = RefCell::new(Vec::new());
    let lookup = catalog_with(old_image(), &calls);
    let mut req = request(&repo, new_image());
    req.dry_run = true;
    let outcome = rollout(&req, &lookup, &NoReporter).unwrap();
    assert_eq!(outcome.status, BranchStatus::DryRun);
    assert_nothing_pushed(&repo);

    // Each distinct current reference is looked up once, with its region.
    assert_eq!(
        calls.borrow().clone(),
        [
            (PROD_AMI.to_string(), Some("eu-west-1".to_string())),
            (STAGING_AMI.to_string(), Some("us-east-1".to_string())),
        ]
    );
    let [prod, staging] = outcome.before_after.as_slice() else {
        panic!("{:#?}", outcome.before_after)
    };
    assert_prod_compared_with_the_catalog_image(prod);
    assert_staging_is_said_unknown(staging);
    assert_title_body_and_json(&outcome);
}

#[test]
fn an_unknown_named_image_shows_its_ami_name_and_date() {
    let repo = FixtureRepo::new(FIXTURE);
    let mut req = RolloutRequest::new(
        "bastion",
        ImageReference::PerRegion(
            [("eu-west-1".to_string(), "ami-0b0b0b0b0b0b0b0b0".to_string())].into(),
        ),
        RepoLocation::Path(repo.bare.clone()),
    );
    req.rules = vec![Rule::InstanceGroup(InstanceGroupRule {
        roles: vec!["Bastion".into()],
        region: Some("eu-west-1".into()),
        ..Default::default()
    })];
    req.dry_run = true;
    let outcome = rollout(&req, &webake_rollout::NoLookup, &NoReporter).unwrap();
    let [bastion] = outcome.before_after.as_slice() else {
        panic!("{:#?}", outcome.before_after)
    };
    let CurrentImage::Unknown(info) = &bastion.current else {
        panic!()
    };
    assert_eq!(info.owner.as_deref(), Some("099720109477"));
    assert_eq!(info.date.as_deref(), Some("2024-09-27"));
    assert!(
        outcome.body.contains(
            "(known from the reference: AMI name \
             `ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240927`, owner \
             `099720109477`, dated 2024-09-27)"
        ),
        "{}",
        outcome.body
    );
}

#[test]
fn a_downgrade_is_refused_unless_allowed() {
    let repo = FixtureRepo::new(FIXTURE);
    let calls = RefCell::new(Vec::new());
    // Prod runs 2026.12.09, newer than the image rolled out.
    let newer = image_facts(
        "img-20261209c",
        "2026.12.09",
        DEC_09,
        &[("bash", "5.2.15-2+b7")],
        "6.1.0-28-cloud-amd64",
        1,
    );
    let lookup = catalog_with(newer, &calls);
    let req = request(&repo, new_image());
    let err = rollout(&req, &lookup, &NoReporter).unwrap_err();
    let RolloutError::Downgrade {
        file,
        line,
        reference,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (file.as_str(), *line, reference.as_str()),
        (PROD_IGS, 11, PROD_AMI)
    );
    assert!(!err.is_invalid_input(), "a refused rollout, exit 5");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{PROD_IGS}:11: {PROD_AMI} is k8s-node 2026.12.09 (img-20261209c), newer than k8s-node 2026.12.02 (img-20261202b)")),
        "{text}"
    );
    assert!(text.contains("--allow-downgrade"), "{text}");
    assert_nothing_pushed(&repo);
    // A dry run refuses too: it shows the plan that would run.
    let mut dry = request(&repo, new_image());
    dry.dry_run = true;
    assert!(matches!(
        rollout(&dry, &lookup, &NoReporter),
        Err(RolloutError::Downgrade { .. })
    ));

    // On purpose: rolled out, and the body says what runs now.
    let mut req = request(&repo, new_image());
    req.allow_downgrade = true;
    let outcome = rollout(&req, &lookup, &NoReporter).unwrap();
    assert_eq!(outcome.status, BranchStatus::Created);
    assert!(
        outcome
            .body
            .contains("Runs now: k8s-node 2026.12.09 (`img-20261209c`)")
    );

    // Another family's newer image is no downgrade of this one.
    let repo = FixtureRepo::new(FIXTURE);
    let mut other = image_facts("img-x", "9", DEC_09, &[], "k", 1);
    other.family = "ubuntu-22.04".into();
    let calls = RefCell::new(Vec::new());
    let outcome = rollout(
        &request(&repo, new_image()),
        &catalog_with(other, &calls),
        &NoReporter,
    )
    .unwrap();
    assert_eq!(outcome.status, BranchStatus::Created);
}

#[test]
fn a_local_name_never_replaces_an_ami_id() {
    let repo = FixtureRepo::new(FIXTURE);
    // An image published nowhere: its reference is the local name.
    let mut req = RolloutRequest::new(
        "k8s-node",
        ImageReference::Single(local_reference("debian-minimal", "20261130.181739")),
        RepoLocation::Path(repo.bare.clone()),
    );
    req.rules = vec![Rule::InstanceGroup(InstanceGroupRule {
        cluster: Some("prod.*".into()),
        roles: vec!["Node".into()],
        ..Default::default()
    })];
    for dry_run in [true, false] {
        req.dry_run = dry_run;
        let err = rollout(&req, &webake_rollout::NoLookup, &NoReporter).unwrap_err();
        let RolloutError::Unresolvable {
            file,
            line,
            old,
            new,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(
            (file.as_str(), *line, old.as_str(), new.as_str()),
            (
                PROD_IGS,
                27,
                PROD_AMI,
                "webake/debian-minimal:20261130.181739"
            )
        );
        assert!(!err.is_invalid_input(), "a refused rollout, exit 5");
        assert!(
            err.to_string().starts_with(&format!(
                "{PROD_IGS}:27: InstanceGroup nodes-eu-west-1a (cluster prod.k8s.example.com) spec.image: \
                 refusing to replace the AMI id {PROD_AMI} with the local name"
            )),
            "{err}"
        );
    }
    assert_nothing_pushed(&repo);

    // An AMI of the image, but not in the reference's region: refused with file:line as well.
    let mut req = request(&repo, new_image());
    req.reference = ImageReference::PerRegion(
        [("eu-west-1".to_string(), "ami-0123456789abcdef0".to_string())].into(),
    );
    let err = rollout(&req, &webake_rollout::NoLookup, &NoReporter).unwrap_err();
    assert!(
        matches!(&err, RolloutError::RegionNotPublished { file, line: 22, region, .. } if file == STAGING && region == "us-east-1"),
        "{err:?}"
    );
    assert!(!err.is_invalid_input());
    assert_nothing_pushed(&repo);

    // A local name may replace another name (a local cluster that names images by version).
    let mut req = RolloutRequest::new(
        "bastion",
        ImageReference::Single(local_reference("bastion", "2026.12.02")),
        RepoLocation::Path(repo.bare.clone()),
    );
    req.rules = vec![Rule::InstanceGroup(InstanceGroupRule {
        roles: vec!["Bastion".into()],
        ..Default::default()
    })];
    let outcome = rollout(&req, &webake_rollout::NoLookup, &NoReporter).unwrap();
    assert_eq!(outcome.status, BranchStatus::Created);
}

#[test]
fn a_failing_lookup_names_the_reference_and_its_place() {
    let repo = FixtureRepo::new(FIXTURE);
    let lookup = |_: &str, _: Option<&str>| -> Result<Option<ImageFacts>, String> {
        Err("catalog /var/lib/webake/catalog.db: database is locked".into())
    };
    let err = rollout(&request(&repo, new_image()), &lookup, &NoReporter).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "{PROD_IGS}:11: cannot look up which image {PROD_AMI} is: catalog /var/lib/webake/catalog.db"
        )),
        "{err}"
    );
    assert_nothing_pushed(&repo);
}
