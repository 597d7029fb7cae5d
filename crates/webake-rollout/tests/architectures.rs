//! Per-architecture rollouts against real git: an x86_64 and an arm64 (Graviton) build of one
//! image, each InstanceGroup getting the build of its machine types (the repository's config
//! overrides the table for a newer family), Karpenter's node class the build its rule names.

mod support;

use support::{FixtureRepo, assert_expected, git, tree_files};
use webake_rollout::{
    BranchStatus, ImageReference, NoLookup, NoReporter, RepoLocation, RolloutError, RolloutRequest,
    rollout,
};

const FIXTURE: &str = "graviton-clusters";
const IGS: &str = "clusters/prod.k8s.example.com/instancegroups.yaml";
const KARPENTER: &str = "helm/karpenter/values.yaml";

const X86_EU: &str = "ami-0aaaaaaaaaaaaaaa1";
const ARM_EU: &str = "ami-0bbbbbbbbbbbbbbb1";

fn per_region(eu: &str, us: &str) -> ImageReference {
    ImageReference::PerRegion(
        [
            ("eu-west-1".to_string(), eu.to_string()),
            ("us-east-1".to_string(), us.to_string()),
        ]
        .into(),
    )
}

fn builds(archs: &[&str]) -> ImageReference {
    let all = [
        ("x86_64", per_region(X86_EU, "ami-0aaaaaaaaaaaaaaa2")),
        ("arm64", per_region(ARM_EU, "ami-0bbbbbbbbbbbbbbb2")),
    ];
    ImageReference::PerArchitecture(
        all.into_iter()
            .filter(|(arch, _)| archs.contains(arch))
            .map(|(arch, r)| (arch.to_string(), r))
            .collect(),
    )
}

fn request(repo: &FixtureRepo, reference: ImageReference) -> RolloutRequest {
    let mut req = RolloutRequest::new("k8s-node", reference, RepoLocation::Path(repo.bare.clone()));
    req.version = "2026.12.02".into();
    req
}

#[test]
fn each_group_gets_the_build_of_its_architecture_and_the_body_says_which() {
    let repo = FixtureRepo::new(FIXTURE);
    let outcome = rollout(
        &request(&repo, builds(&["x86_64", "arm64"])),
        &NoLookup,
        &NoReporter,
    )
    .unwrap();
    assert_eq!(outcome.status, BranchStatus::Created);
    assert_eq!(outcome.changed_files, [IGS, KARPENTER]);
    let got: Vec<String> = outcome
        .edits
        .iter()
        .map(|e| {
            let arch = e.architecture.as_deref().unwrap_or("-");
            format!("{}:{} {arch} {}", e.file, e.line, e.new)
        })
        .collect();
    assert_eq!(
        got,
        [
            // control-plane-eu-west-1a on m5.large, nodes-amd64 on c5.2xlarge
            format!("{IGS}:9 x86_64 {X86_EU}"),
            format!("{IGS}:28 x86_64 {X86_EU}"),
            // nodes-graviton: m6g.large and mixed instances m6g.large, m7g.large
            format!("{IGS}:47 arm64 {ARM_EU}"),
            // nodes-storage on m8gd.2xlarge: arm64 by the repository's `architectures:`
            format!("{IGS}:75 arm64 {ARM_EU}"),
            // the Karpenter node class by its rule's `architecture: arm64`
            format!("{KARPENTER}:6 arm64 {ARM_EU}"),
        ]
    );

    // Every byte but the image values is as it was (the bastion is not selected).
    let original = tree_files(&repo.fixture);
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
    let igs = text(&original[IGS])
        .replacen(
            "image: ami-0123456789abcdef0\n",
            &format!("image: {X86_EU}\n"),
            1,
        )
        .replacen(
            "ami-0123456789abcdef0 # k8s-node",
            &format!("{X86_EU} # k8s-node"),
            1,
        )
        .replacen("\"ami-0fedcba9876543210\"", &format!("\"{ARM_EU}\""), 1)
        .replacen(
            "image: ami-0fedcba9876543210\n",
            &format!("image: {ARM_EU}\n"),
            1,
        );
    assert_eq!(text(&repo.show("webake/k8s-node", IGS)), igs);
    assert_eq!(
        text(&repo.show("webake/k8s-node", KARPENTER)),
        text(&original[KARPENTER]).replacen("ami-0fedcba9876543210", ARM_EU, 1)
    );
    for path in original.keys().filter(|p| *p != IGS && *p != KARPENTER) {
        assert_eq!(repo.show("webake/k8s-node", path), original[path], "{path}");
    }

    // The pull request body and the commit say which build each reference got.
    assert_expected("graviton-body.md", &outcome.body);
    assert_expected("graviton.diff", &outcome.diff);
    let message = git(&repo.bare, &["log", "-1", "--format=%B", "webake/k8s-node"]);
    assert!(
        message.contains(&format!(
            "- {IGS}:47 InstanceGroup nodes-graviton (cluster prod.k8s.example.com) spec.image: \
             ami-0fedcba9876543210 -> {ARM_EU} (arm64)\n"
        )),
        "{message}"
    );
    assert!(
        message.contains("Reference: arm64: eu-west-1=ami-0bbbbbbbbbbbbbbb1, us-east-1="),
        "{message}"
    );
}

#[test]
fn a_group_whose_architecture_has_no_build_is_refused_and_nothing_is_pushed() {
    let repo = FixtureRepo::new(FIXTURE);
    let mut req = request(&repo, builds(&["x86_64"]));
    req.dry_run = true;
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(
        matches!(err, RolloutError::ArchitectureNotPublished { line: 47, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{IGS}:47: InstanceGroup nodes-graviton (cluster prod.k8s.example.com) on m6g.large, \
             m7g.large needs an arm64 build of the image, which the rollout does not have (it \
             has x86_64)"
        )
    );
    assert!(!err.is_invalid_input());
    assert!(repo.webake_branches().is_empty());
}
