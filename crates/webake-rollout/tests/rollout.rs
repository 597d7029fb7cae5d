//! End-to-end rollouts against real git: a fixture cluster repository pushed to a bare remote in
//! a temp dir, and a fake GitHub on 127.0.0.1.

mod support;

use std::collections::BTreeMap;

use support::{FakeGitHub, FixtureRepo, assert_expected, git, tree_files};
use webake_rollout::{
    BranchStatus, ForgeError, GitHub, ImageReference, InstanceGroupRule, NoLookup, NoReporter,
    PullRequestAction, RepoLocation, RolloutError, RolloutOutcome, RolloutRequest, Rule, rollout,
    rollout_with_forge,
};

const FIXTURE: &str = "platform-kubernetes";
const PROD_IGS: &str = "clusters/prod.k8s.example.com/instancegroups.yaml";
const STAGING: &str = "clusters/staging.k8s.example.com/kops.yaml";
const BASTION_TF: &str = "terraform/bastion/variables.tf";

fn per_region(pairs: &[(&str, &str)]) -> ImageReference {
    ImageReference::PerRegion(
        pairs
            .iter()
            .map(|(r, a)| (r.to_string(), a.to_string()))
            .collect(),
    )
}

fn k8s_node_v2() -> ImageReference {
    per_region(&[
        ("eu-west-1", "ami-0123456789abcdef0"),
        ("us-east-1", "ami-0fedcba9876543210"),
    ])
}

fn k8s_node_v3() -> ImageReference {
    per_region(&[
        ("eu-west-1", "ami-0333333333333333e"),
        ("us-east-1", "ami-0444444444444444f"),
    ])
}

fn request(
    repo: &FixtureRepo,
    family: &str,
    version: &str,
    reference: ImageReference,
) -> RolloutRequest {
    let mut req = RolloutRequest::new(family, reference, RepoLocation::Path(repo.bare.clone()));
    req.version = version.to_string();
    req
}

/// Files that must not change are byte-identical; in changed files, each changed line differs
/// only by the reference (old value on the old line, new value on the new line).
fn assert_only_references_changed(repo: &FixtureRepo, rev: &str, changed: &[&str], refs: &[&str]) {
    let original = tree_files(&repo.fixture);
    assert_eq!(
        repo.ls_tree(rev),
        original.keys().cloned().collect::<Vec<_>>(),
        "same file list"
    );
    for (path, before) in &original {
        let after = repo.show(rev, path);
        if !changed.contains(&path.as_str()) {
            assert_eq!(&after, before, "{path} must not change");
            continue;
        }
        assert_ne!(&after, before, "{path} must change");
        let (before, after) = (
            String::from_utf8(before.clone()).unwrap(),
            String::from_utf8(after).unwrap(),
        );
        assert_eq!(
            before.split_inclusive('\n').count(),
            after.split_inclusive('\n').count(),
            "{path}: line count"
        );
        for (old, new) in before
            .split_inclusive('\n')
            .zip(after.split_inclusive('\n'))
        {
            if old == new {
                continue;
            }
            let strip = |line: &str| {
                refs.iter()
                    .fold(line.to_string(), |l, r| l.replace(r, "<REF>"))
            };
            assert_eq!(
                strip(old),
                strip(new),
                "{path}: only the reference may change:\n-{old}+{new}"
            );
            assert!(
                strip(new).contains("<REF>"),
                "{path}: the new line holds a new reference: {new}"
            );
        }
    }
}

#[test]
fn per_region_rollout_pushes_one_commit_with_only_image_lines_changed() {
    let repo = FixtureRepo::new(FIXTURE);
    let main = repo.main_sha();
    let outcome = rollout(
        &request(&repo, "k8s-node", "2026.11.25", k8s_node_v2()),
        &NoLookup,
        &NoReporter,
    )
    .unwrap();

    assert_eq!(outcome.branch, "webake/k8s-node");
    assert_eq!(outcome.base_branch, "main");
    assert_eq!(outcome.base_commit, main);
    assert_eq!(outcome.status, BranchStatus::Created);
    assert_eq!(
        outcome.changed_files,
        vec![PROD_IGS.to_string(), STAGING.to_string()]
    );
    assert!(
        outcome.pull_request.is_none(),
        "local mode opens no pull request"
    );
    let commit = outcome.commit.clone().unwrap();
    assert_eq!(repo.webake_branches(), vec!["refs/heads/webake/k8s-node"]);
    assert_eq!(
        git(&repo.bare, &["rev-parse", "webake/k8s-node"]).trim(),
        commit
    );

    // One commit on top of main, by webake, with a clear message.
    assert_eq!(
        git(&repo.bare, &["rev-list", "main..webake/k8s-node"])
            .lines()
            .count(),
        1
    );
    assert_eq!(
        git(&repo.bare, &["rev-parse", "webake/k8s-node^"]).trim(),
        main
    );
    let meta = git(
        &repo.bare,
        &[
            "log",
            "-1",
            "--format=%an <%ae>|%cn <%ce>|%s",
            "webake/k8s-node",
        ],
    );
    assert_eq!(
        meta.trim(),
        "webake <webake@localhost>|webake <webake@localhost>|Roll out k8s-node 2026.11.25"
    );
    let body = git(&repo.bare, &["log", "-1", "--format=%b", "webake/k8s-node"]);
    assert!(body.contains("Image family: k8s-node"), "{body}");
    assert!(
        body.contains(&format!(
            "- {PROD_IGS}:11 InstanceGroup master-eu-west-1a (cluster prod.k8s.example.com) spec.image: \
             ami-0a1b2c3d4e5f60718 -> ami-0123456789abcdef0"
        )),
        "{body}"
    );
    // Main itself is untouched.
    assert_eq!(repo.main_sha(), main);

    assert_only_references_changed(
        &repo,
        "webake/k8s-node",
        &[PROD_IGS, STAGING],
        &[
            "ami-0a1b2c3d4e5f60718",
            "ami-0f0e0d0c0b0a09080",
            "ami-0123456789abcdef0",
            "ami-0fedcba9876543210",
        ],
    );
    // The region decides the AMI: prod is eu-west-1 (subnets), staging us-east-1 (zones, subnets).
    let edits: BTreeMap<String, (String, Option<String>)> = outcome
        .edits
        .iter()
        .map(|e| {
            (
                format!("{}:{}", e.file, e.line),
                (e.new.clone(), e.region.clone()),
            )
        })
        .collect();
    let eu = (
        "ami-0123456789abcdef0".to_string(),
        Some("eu-west-1".to_string()),
    );
    let us = (
        "ami-0fedcba9876543210".to_string(),
        Some("us-east-1".to_string()),
    );
    assert_eq!(edits.len(), 5, "{edits:?}");
    assert_eq!(edits[&format!("{PROD_IGS}:11")], eu);
    assert_eq!(edits[&format!("{PROD_IGS}:27")], eu);
    assert_eq!(edits[&format!("{PROD_IGS}:45")], eu);
    assert_eq!(edits[&format!("{STAGING}:22")], us);
    assert_eq!(edits[&format!("{STAGING}:36")], us);

    // Snapshots of the diff and of the resulting files.
    assert_expected("k8s-node-per-region.diff", &outcome.diff);
    for path in [PROD_IGS, STAGING] {
        let text = String::from_utf8(repo.show("webake/k8s-node", path)).unwrap();
        assert_expected(&format!("k8s-node-per-region/{path}"), &text);
    }
}

#[test]
fn newer_image_supersedes_the_branch_and_a_rerun_changes_nothing() {
    let repo = FixtureRepo::new(FIXTURE);
    let main = repo.main_sha();
    let first = rollout(
        &request(&repo, "k8s-node", "2026.11.25", k8s_node_v2()),
        &NoLookup,
        &NoReporter,
    )
    .unwrap();
    assert_eq!(first.status, BranchStatus::Created);

    let second = rollout(
        &request(&repo, "k8s-node", "2026.12.02", k8s_node_v3()),
        &NoLookup,
        &NoReporter,
    )
    .unwrap();
    assert_eq!(second.status, BranchStatus::Updated);
    assert_ne!(second.commit, first.commit);
    assert_eq!(
        repo.webake_branches(),
        vec!["refs/heads/webake/k8s-node"],
        "no second branch"
    );
    // Rebuilt from main: one commit, the newer image, not stacked on the older rollout.
    assert_eq!(
        git(&repo.bare, &["rev-list", "main..webake/k8s-node"])
            .lines()
            .count(),
        1
    );
    assert_eq!(
        git(&repo.bare, &["rev-parse", "webake/k8s-node^"]).trim(),
        main
    );
    let prod = String::from_utf8(repo.show("webake/k8s-node", PROD_IGS)).unwrap();
    assert!(
        prod.contains("ami-0333333333333333e") && !prod.contains("ami-0123456789abcdef0"),
        "{prod}"
    );
    // The diff is against main, not against the older rollout.
    assert!(
        second
            .diff
            .contains("-  image: ami-0a1b2c3d4e5f60718\n+  image: ami-0333333333333333e\n"),
        "{}",
        second.diff
    );

    let third = rollout(
        &request(&repo, "k8s-node", "2026.12.02", k8s_node_v3()),
        &NoLookup,
        &NoReporter,
    )
    .unwrap();
    assert_eq!(third.status, BranchStatus::Unchanged);
    assert_eq!(
        third.commit, second.commit,
        "nothing pushed when the branch already holds the change"
    );
    assert_eq!(
        git(&repo.bare, &["rev-parse", "webake/k8s-node"]).trim(),
        second.commit.unwrap()
    );
}

#[test]
fn dry_run_returns_the_diff_and_touches_nothing() {
    let repo = FixtureRepo::new(FIXTURE);
    let refs_before = git(&repo.bare, &["for-each-ref"]);
    let mut req = request(&repo, "k8s-node", "2026.11.25", k8s_node_v2());
    req.dry_run = true;
    let outcome = rollout(&req, &NoLookup, &NoReporter).unwrap();
    assert_eq!(outcome.status, BranchStatus::DryRun);
    assert_eq!(outcome.commit, None);
    assert_expected("k8s-node-per-region.diff", &outcome.diff);
    assert_eq!(git(&repo.bare, &["for-each-ref"]), refs_before);
    assert!(repo.webake_branches().is_empty());
}

#[test]
fn bastion_family_rolls_the_bastion_group_and_the_terraform_variable() {
    let repo = FixtureRepo::new(FIXTURE);
    let reference = per_region(&[
        ("eu-west-1", "ami-0b0b0b0b0b0b0b0b0"),
        ("us-east-1", "ami-0c0c0c0c0c0c0c0c0"),
    ]);
    let outcome = rollout(
        &request(&repo, "bastion", "2026.11.25", reference),
        &NoLookup,
        &NoReporter,
    )
    .unwrap();
    assert_eq!(outcome.branch, "webake/bastion");
    assert_eq!(
        outcome.changed_files,
        vec![PROD_IGS.to_string(), BASTION_TF.to_string()]
    );
    assert_only_references_changed(
        &repo,
        "webake/bastion",
        &[PROD_IGS, BASTION_TF],
        &[
            "099720109477/ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240927",
            "ami-00112233445566778",
            "ami-0b0b0b0b0b0b0b0b0",
        ],
    );
    assert_expected("bastion.diff", &outcome.diff);
    // The other AMI variable of the .tf file is no reference of ours.
    let tf = String::from_utf8(repo.show("webake/bastion", BASTION_TF)).unwrap();
    assert!(tf.contains("default = \"ami-0deadbeef00000000\""), "{tf}");
}

#[test]
fn explicit_reference_and_command_line_rules_keep_the_quoting() {
    let repo = FixtureRepo::new(FIXTURE);
    let mut req = request(
        &repo,
        "k8s-node-canary",
        "",
        ImageReference::Single("ssm:/webake/images/k8s-node/latest".into()),
    );
    req.rules = vec![Rule::InstanceGroup(InstanceGroupRule {
        cluster: Some("staging.*".into()),
        roles: vec!["Node".into()],
        ..Default::default()
    })];
    let outcome = rollout(&req, &NoLookup, &NoReporter).unwrap();
    assert_eq!(outcome.changed_files, vec![STAGING.to_string()]);
    assert_eq!(outcome.edits.len(), 1);
    assert_expected("canary-ssm.diff", &outcome.diff);
    let staging = String::from_utf8(repo.show("webake/k8s-node-canary", STAGING)).unwrap();
    assert!(
        staging.contains("  image:    \"ssm:/webake/images/k8s-node/latest\"\n"),
        "{staging}"
    );
}

// --- errors: clear, and nothing pushed ---------------------------------------------------------

fn assert_nothing_pushed(repo: &FixtureRepo) {
    assert!(
        repo.webake_branches().is_empty(),
        "nothing may be pushed: {:?}",
        repo.webake_branches()
    );
}

#[test]
fn no_reference_found_is_an_error() {
    let repo = FixtureRepo::new(FIXTURE);
    let mut req = request(&repo, "k8s-node", "1", k8s_node_v2());
    req.rules = vec![Rule::InstanceGroup(InstanceGroupRule {
        cluster: Some("dev.k8s.example.com".into()),
        ..Default::default()
    })];
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(
        matches!(err, RolloutError::NoReferenceFound { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("cluster=dev.k8s.example.com"),
        "{err}"
    );
    assert_nothing_pushed(&repo);

    // A family no rule of the repository config applies to finds nothing either.
    let err = rollout(
        &request(&repo, "windows", "1", k8s_node_v2()),
        &NoLookup,
        &NoReporter,
    )
    .unwrap_err();
    assert!(
        matches!(err, RolloutError::NoReferenceFound { .. }),
        "{err:?}"
    );
    assert_nothing_pushed(&repo);
}

#[test]
fn a_reference_selected_by_two_rules_is_ambiguous() {
    let repo = FixtureRepo::new(FIXTURE);
    let mut req = request(&repo, "k8s-node", "1", k8s_node_v2());
    req.rules = vec![
        Rule::InstanceGroup(InstanceGroupRule {
            roles: vec!["Node".into()],
            ..Default::default()
        }),
        Rule::InstanceGroup(InstanceGroupRule {
            names: vec!["nodes-eu-*".into()],
            ..Default::default()
        }),
    ];
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    let RolloutError::Ambiguous {
        file,
        line,
        first,
        second,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (file.as_str(), *line, *first, *second),
        (PROD_IGS, 27, 0, 1)
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("{PROD_IGS}:27")) && text.contains("nodes-eu-west-1a"),
        "{text}"
    );
    assert_nothing_pushed(&repo);
}

#[test]
fn a_region_without_an_ami_is_an_error() {
    let repo = FixtureRepo::new(FIXTURE);
    let req = request(
        &repo,
        "k8s-node",
        "1",
        per_region(&[("eu-west-1", "ami-0123456789abcdef0")]),
    );
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    let RolloutError::RegionNotPublished {
        file, line, region, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (file.as_str(), *line, region.as_str()),
        (STAGING, 22, "us-east-1")
    );
    assert_nothing_pushed(&repo);
}

#[test]
fn an_up_to_date_repository_pushes_nothing() {
    let repo = FixtureRepo::new(FIXTURE);
    let mut req = request(
        &repo,
        "k8s-node",
        "1",
        ImageReference::Single("ami-0a1b2c3d4e5f60718".into()),
    );
    req.rules = vec![Rule::InstanceGroup(InstanceGroupRule {
        cluster: Some("prod.k8s.example.com".into()),
        roles: vec!["Node".into(), "Master".into()],
        ..Default::default()
    })];
    let outcome = rollout(&req, &NoLookup, &NoReporter).unwrap();
    assert_eq!(outcome.status, BranchStatus::UpToDate);
    assert_eq!(outcome.edits.len(), 3);
    assert!(outcome.diff.is_empty() && outcome.changed_files.is_empty());
    assert_nothing_pushed(&repo);
}

#[test]
fn dirty_missing_and_unreachable_repositories_are_errors() {
    let repo = FixtureRepo::new(FIXTURE);
    // A working tree with an uncommitted change.
    std::fs::write(repo.work.join(PROD_IGS), "# edited\n").unwrap();
    let mut req = request(&repo, "k8s-node", "1", k8s_node_v2());
    req.repo = RepoLocation::Path(repo.work.clone());
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(matches!(err, RolloutError::RepoDirty { .. }), "{err:?}");
    assert!(err.to_string().contains(PROD_IGS), "{err}");
    git(&repo.work, &["checkout", "--quiet", "--", "."]);
    std::fs::write(repo.work.join("notes.txt"), "untracked\n").unwrap();
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(
        matches!(err, RolloutError::RepoDirty { .. }) && err.to_string().contains("notes.txt"),
        "{err}"
    );

    req.repo = RepoLocation::Path(repo.tmp.path().join("nope"));
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(matches!(err, RolloutError::RepoNotFound { .. }), "{err:?}");

    let url = format!("file://{}", repo.tmp.path().join("missing.git").display());
    req.repo = RepoLocation::Url(url);
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(
        matches!(err, RolloutError::RepoUnreachable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing.git"), "{err}");

    req.repo = RepoLocation::Path(repo.bare.clone());
    req.base_branch = Some("release".into());
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(
        matches!(err, RolloutError::BaseBranchMissing { .. }),
        "{err:?}"
    );
    assert_nothing_pushed(&repo);
}

#[test]
fn a_clean_working_tree_rolls_out_to_itself() {
    let repo = FixtureRepo::new(FIXTURE);
    let mut req = request(&repo, "k8s-node", "1", k8s_node_v2());
    req.repo = RepoLocation::Path(repo.work.clone());
    let outcome = rollout(&req, &NoLookup, &NoReporter).unwrap();
    assert_eq!(outcome.status, BranchStatus::Created);
    let branch = git(&repo.work, &["rev-parse", "refs/heads/webake/k8s-node"]);
    assert_eq!(Some(branch.trim().to_string()), outcome.commit);
    // The checked-out branch and the files of the working tree are untouched.
    assert_eq!(git(&repo.work, &["status", "--porcelain"]), "");
    assert_eq!(
        git(&repo.work, &["symbolic-ref", "--short", "HEAD"]).trim(),
        "main"
    );
}

#[test]
fn invalid_requests_are_rejected_before_cloning() {
    let repo = FixtureRepo::new(FIXTURE);
    let err = rollout(
        &request(&repo, "bad family", "1", k8s_node_v2()),
        &NoLookup,
        &NoReporter,
    )
    .unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
    let err = rollout(
        &request(
            &repo,
            "k8s-node",
            "1",
            ImageReference::Single("latest".into()),
        ),
        &NoLookup,
        &NoReporter,
    )
    .unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("latest"),
        "{err}"
    );
    let mut req = request(&repo, "k8s-node", "1", k8s_node_v2());
    req.config_path = ".webake/missing.yaml".into();
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(matches!(err, RolloutError::NoRules { .. }), "{err:?}");
    assert_nothing_pushed(&repo);
}

// --- GitHub pull requests -----------------------------------------------------------------------

const TOKEN: &str = "ghp_test_token_0123456789abcdefABCDEF";

fn github(fake: &FakeGitHub, token: &str) -> GitHub {
    GitHub::with_token(
        &fake.base,
        "acme",
        "platform-kubernetes",
        "WEBAKE_FORGE_TOKEN",
        token.to_string(),
    )
}

fn github_request(repo: &FixtureRepo, version: &str, reference: ImageReference) -> RolloutRequest {
    let mut req = request(repo, "k8s-node", version, reference);
    req.image_name = "k8s-node".into();
    req.pr_body_markdown = format!(
        "## k8s-node {version}\n\n| package | from | to |\n|---|---|---|\n| linux-image | 6.1.0-26 | 6.1.0-27 |\n"
    );
    req.labels = vec!["automated".into()];
    req
}

fn assert_github_headers(r: &support::Recorded) {
    assert_eq!(
        r.headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        r.headers.get("accept").map(String::as_str),
        Some("application/vnd.github+json")
    );
    assert_eq!(
        r.headers.get("x-github-api-version").map(String::as_str),
        Some("2022-11-28")
    );
}

/// The (method, target) of each recorded request.
fn calls_of(reqs: &[support::Recorded]) -> Vec<(String, String)> {
    reqs.iter()
        .map(|r| (r.method.clone(), r.target.clone()))
        .collect()
}

fn rollout_on_github(
    repo: &FixtureRepo,
    forge: &GitHub,
    version: &str,
    reference: ImageReference,
) -> RolloutOutcome {
    rollout_with_forge(
        &github_request(repo, version, reference),
        Some(forge),
        &NoLookup,
        &NoReporter,
    )
    .unwrap()
}

/// The first rollout finds no pull request (open or closed), creates one and labels it.
fn assert_first_rollout_created_the_pull_request(fake: &FakeGitHub, first: &RolloutOutcome) {
    let pr = first.pull_request.clone().unwrap();
    assert_eq!((pr.number, pr.action), (1, PullRequestAction::Created));
    assert_eq!(
        pr.url,
        "https://github.example/acme/platform-kubernetes/pull/1"
    );

    let reqs = fake.requests();
    let calls = calls_of(&reqs);
    assert_eq!(
        calls,
        [
            (
                "GET",
                "/repos/acme/platform-kubernetes/pulls?head=acme%3Awebake%2Fk8s-node&state=open"
            ),
            (
                "GET",
                "/repos/acme/platform-kubernetes/pulls?head=acme%3Awebake%2Fk8s-node&state=closed&sort=updated&direction=desc&per_page=100"
            ),
            ("POST", "/repos/acme/platform-kubernetes/pulls"),
            ("POST", "/repos/acme/platform-kubernetes/issues/1/labels"),
        ]
        .map(|(m, p)| (m.to_string(), p.to_string()))
    );
    reqs.iter().for_each(assert_github_headers);
    let create = reqs[2].json();
    assert_eq!(create["title"], "Roll out k8s-node 2026.11.25");
    assert_eq!(create["head"], "webake/k8s-node");
    assert_eq!(create["base"], "main");
    let body = create["body"].as_str().unwrap();
    assert!(
        body.starts_with("## k8s-node 2026.11.25\n\n| package | from | to |"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "| `{PROD_IGS}:27` | InstanceGroup nodes-eu-west-1a (cluster prod.k8s.example.com) spec.image | \
             `ami-0a1b2c3d4e5f60718` | `ami-0123456789abcdef0` |"
        )),
        "{body}"
    );
    assert_eq!(
        reqs[3].json(),
        serde_json::json!({"labels": ["image-rollout", "automated"]})
    );
}

/// A newer image: the same pull request is updated, no second one is created.
fn assert_second_rollout_updated_it_in_place(
    repo: &FixtureRepo,
    fake: &FakeGitHub,
    second: &RolloutOutcome,
) {
    let pr = second.pull_request.clone().unwrap();
    assert_eq!((pr.number, pr.action), (1, PullRequestAction::Updated));
    assert_eq!(second.status, BranchStatus::Updated);
    let reqs = fake.requests();
    let later = calls_of(&reqs[4..]);
    assert_eq!(
        later,
        [
            (
                "GET",
                "/repos/acme/platform-kubernetes/pulls?head=acme%3Awebake%2Fk8s-node&state=open"
            ),
            ("PATCH", "/repos/acme/platform-kubernetes/pulls/1"),
            ("POST", "/repos/acme/platform-kubernetes/issues/1/labels"),
        ]
        .map(|(m, p)| (m.to_string(), p.to_string()))
    );
    reqs.iter().for_each(assert_github_headers);
    let patch = reqs[5].json();
    assert_eq!(patch["title"], "Roll out k8s-node 2026.12.02");
    assert_eq!(patch["base"], "main");
    assert!(
        patch["body"]
            .as_str()
            .unwrap()
            .contains("`ami-0333333333333333e`")
    );
    let pulls = fake.pulls();
    assert_eq!(pulls.len(), 1, "no duplicate pull request");
    assert_eq!(pulls[0].title, "Roll out k8s-node 2026.12.02");
    assert_eq!(pulls[0].labels, ["image-rollout", "automated"]);
    assert_eq!(repo.webake_branches(), vec!["refs/heads/webake/k8s-node"]);
}

#[test]
fn github_pull_request_is_created_then_updated_in_place() {
    let repo = FixtureRepo::new(FIXTURE);
    let fake = FakeGitHub::start("acme", "platform-kubernetes", TOKEN);
    let forge = github(&fake, TOKEN);

    let first = rollout_on_github(&repo, &forge, "2026.11.25", k8s_node_v2());
    assert_first_rollout_created_the_pull_request(&fake, &first);

    // A newer image: the same pull request is updated, no second one is created.
    let second = rollout_on_github(&repo, &forge, "2026.12.02", k8s_node_v3());
    assert_second_rollout_updated_it_in_place(&repo, &fake, &second);

    // The same image again: nothing pushed, the pull request is refreshed, still one.
    let third = rollout_on_github(&repo, &forge, "2026.12.02", k8s_node_v3());
    assert_eq!(third.status, BranchStatus::Unchanged);
    assert_eq!(third.commit, second.commit);
    let pr = third.pull_request.unwrap();
    assert_eq!((pr.number, pr.action), (1, PullRequestAction::Updated));
    let methods: Vec<String> = fake.requests()[7..]
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods, ["GET", "PATCH", "POST"]);
    assert_eq!(fake.pulls().len(), 1);
}

#[test]
fn github_auth_failure_is_clear_hides_the_token_and_pushes_nothing() {
    let repo = FixtureRepo::new(FIXTURE);
    let fake = FakeGitHub::start("acme", "platform-kubernetes", "the-right-token");
    let forge = github(&fake, TOKEN);
    let err = rollout_with_forge(
        &github_request(&repo, "1", k8s_node_v2()),
        Some(&forge),
        &NoLookup,
        &NoReporter,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            RolloutError::Forge(ForgeError::Auth { status: 401, .. })
        ),
        "{err:?}"
    );
    let mut chain = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    assert!(
        !chain.contains(TOKEN) && !chain.contains("ghp_"),
        "token leaked: {chain}"
    );
    assert!(err.to_string().contains("WEBAKE_FORGE_TOKEN"), "{err}");
    assert!(err.to_string().contains("401"), "{err}");
    // The token was sent (to the fake only), and nothing was pushed or created.
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(
        fake.requests()[0]
            .headers
            .get("authorization")
            .map(String::as_str),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(fake.pulls().is_empty());
    assert_nothing_pushed(&repo);
}

#[test]
fn github_config_without_a_token_fails_before_cloning() {
    let repo = FixtureRepo::new(FIXTURE);
    let mut req = github_request(&repo, "1", k8s_node_v2());
    req.forge = webake_rollout::ForgeConfig::GitHub {
        api_base: "http://127.0.0.1:9".into(),
        owner: "acme".into(),
        repo: "platform-kubernetes".into(),
        token_env: "WEBAKE_ROLLOUT_TEST_UNSET_TOKEN".into(),
    };
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(
        matches!(err, RolloutError::Forge(ForgeError::TokenMissing { .. })),
        "{err:?}"
    );
    assert_nothing_pushed(&repo);
}

#[test]
fn label_selected_groups_yaml_path_and_tfvars_in_a_second_repository() {
    let repo = FixtureRepo::new("acme-clusters");
    let reference = per_region(&[
        ("eu-central-1", "ami-0e0e0e0e0e0e0e0e1"),
        ("ap-southeast-2", "ami-0a0a0a0a0a0a0a0a2"),
    ]);
    let outcome = rollout(
        &request(&repo, "gpu-node", "2025.11.25", reference),
        &NoLookup,
        &NoReporter,
    )
    .unwrap();
    let files = [
        "helm/karpenter/values.yaml",
        "kops/clusters.yaml",
        "terraform/envs/prod.tfvars",
    ];
    assert_eq!(outcome.changed_files, files.map(String::from));
    let what: Vec<(&str, usize, Option<&str>)> = outcome
        .edits
        .iter()
        .map(|e| (e.what.as_str(), e.line, e.region.as_deref()))
        .collect();
    assert_eq!(
        what,
        [
            ("nodeClass.amiSelectorTerms[0].id", 7, Some("eu-central-1")),
            (
                "InstanceGroup gpu-a10g (cluster eu.k8s.acme.io) spec.image",
                48,
                Some("eu-central-1")
            ),
            (
                "InstanceGroup gpu-pool (cluster ap.k8s.acme.io) spec.image",
                87,
                Some("ap-southeast-2")
            ),
            (
                "match of \"(?m)^gpu_ami\\\\s*=\\\\s*\\\"(?P<ref>[^\\\"]+)\\\"\"",
                3,
                Some("ap-southeast-2")
            ),
        ]
    );
    assert_only_references_changed(
        &repo,
        "webake/gpu-node",
        &files,
        &[
            "ssm:/acme/images/gpu-node/2025.10.01",
            "ami-0aaaaaaaaaaaaaaa1",
            "ami-0bbbbbbbbbbbbbbb2",
            "ami-0e0e0e0e0e0e0e0e1",
            "ami-0a0a0a0a0a0a0a0a2",
        ],
    );
    assert_expected("gpu-node.diff", &outcome.diff);
    let kops = String::from_utf8(repo.show("webake/gpu-node", "kops/clusters.yaml")).unwrap();
    assert_expected("gpu-node/kops/clusters.yaml", &kops);
    // The unlabelled pool of the same cluster keeps its image.
    assert!(kops.ends_with("  image: ssm:/acme/images/gpu-node/2025.10.01\n  machineType: m6i.large\n  maxSize: 6\n  minSize: 2\n  role: Node\n  subnets:\n  - private-a\n"));
}

#[test]
fn one_ami_id_for_groups_in_several_regions_is_refused() {
    let repo = FixtureRepo::new(FIXTURE);
    let mut req = request(
        &repo,
        "k8s-node",
        "1",
        ImageReference::Single("ami-0123456789abcdef0".into()),
    );
    req.rules = vec![Rule::InstanceGroup(InstanceGroupRule {
        all: true,
        ..Default::default()
    })];
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(
        matches!(err, RolloutError::AmiInSeveralRegions { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("eu-west-1, us-east-1"), "{err}");
    assert_nothing_pushed(&repo);

    // A region-independent reference (SSM parameter, image name) may go everywhere.
    req.reference = ImageReference::Single("ssm:/webake/images/k8s-node/latest".into());
    let outcome = rollout(&req, &NoLookup, &NoReporter).unwrap();
    assert_eq!(outcome.edits.len(), 6);
    assert_eq!(outcome.status, BranchStatus::Created);
}

#[test]
fn base_branch_from_the_request_or_the_config() {
    let repo = FixtureRepo::new(FIXTURE);
    // `release` lags behind main: its nodes still run an older image.
    git(&repo.work, &["checkout", "--quiet", "-b", "release"]);
    let old = std::fs::read_to_string(repo.work.join(PROD_IGS)).unwrap();
    std::fs::write(
        repo.work.join(PROD_IGS),
        old.replace("ami-0a1b2c3d4e5f60718", "ami-0000000000000000a"),
    )
    .unwrap();
    git(
        &repo.work,
        &[
            "-c",
            "commit.gpgsign=false",
            "commit",
            "--quiet",
            "--all",
            "--message",
            "older image",
        ],
    );
    git(
        &repo.work,
        &["push", "--quiet", repo.bare.to_str().unwrap(), "release"],
    );
    let release = git(&repo.work, &["rev-parse", "HEAD"]).trim().to_string();

    let mut req = request(&repo, "k8s-node", "1", k8s_node_v2());
    req.base_branch = Some("release".into());
    let outcome = rollout(&req, &NoLookup, &NoReporter).unwrap();
    assert_eq!(
        (outcome.base_branch.as_str(), outcome.base_commit.as_str()),
        ("release", release.as_str())
    );
    assert_eq!(
        git(&repo.bare, &["rev-parse", "webake/k8s-node^"]).trim(),
        release
    );
    assert!(
        outcome
            .diff
            .contains("-  image: ami-0000000000000000a\n+  image: ami-0123456789abcdef0\n"),
        "{}",
        outcome.diff
    );

    // The config on the default branch names the base branch: it is fetched and used.
    git(&repo.work, &["checkout", "--quiet", "main"]);
    let config = std::fs::read_to_string(repo.work.join(".webake/rollout.yaml")).unwrap();
    std::fs::write(
        repo.work.join(".webake/rollout.yaml"),
        format!("base-branch: release\n{config}"),
    )
    .unwrap();
    git(
        &repo.work,
        &[
            "-c",
            "commit.gpgsign=false",
            "commit",
            "--quiet",
            "--all",
            "--message",
            "propose to release",
        ],
    );
    git(
        &repo.work,
        &["push", "--quiet", repo.bare.to_str().unwrap(), "main"],
    );
    let mut req = request(&repo, "k8s-node", "2", k8s_node_v3());
    req.dry_run = true;
    let outcome = rollout(&req, &NoLookup, &NoReporter).unwrap();
    assert_eq!(
        (outcome.base_branch.as_str(), outcome.base_commit.as_str()),
        ("release", release.as_str())
    );
    assert!(
        outcome
            .diff
            .contains("-  image: ami-0000000000000000a\n+  image: ami-0333333333333333e\n"),
        "{}",
        outcome.diff
    );
}

#[test]
fn credentials_in_a_repository_url_never_reach_the_error() {
    let repo = FixtureRepo::new(FIXTURE);
    let mut req = request(&repo, "k8s-node", "1", k8s_node_v2());
    // Port 1 on loopback: refused at once, and nothing leaves the machine.
    req.repo = RepoLocation::parse("https://x-access-token:ghs_sekrit123@127.0.0.1:1/acme/k8s.git");
    let err = rollout(&req, &NoLookup, &NoReporter).unwrap_err();
    assert!(
        matches!(err, RolloutError::RepoUnreachable { .. }),
        "{err:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(!text.contains("sekrit"), "{text}");
    assert!(
        text.contains("https://***@127.0.0.1:1/acme/k8s.git"),
        "{text}"
    );
}
