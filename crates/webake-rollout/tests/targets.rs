//! Several cluster repositories in one run: one pull request (GitHub) or merge request
//! (GitLab) each, a failure in one repository does not stop the others, and a summary table.
//! Real git (bare remotes in temp dirs) and the local forge fakes.

mod support;

use std::path::Path;

use support::{FakeGitHub, FakeGitLab, FixtureRepo, image_facts};
use webake_rollout::{
    Forge, ForgeConfig, ForgeError, GitHub, GitLab, ImageReference, NoLookup, NoReporter,
    PullRequestAction, RepoLocation, RolloutRequest, RolloutTargets, TargetOutcome, TargetStatus,
    rollout_targets_with, summary_table,
};

const GH_TOKEN: &str = "ghp_targets_test_token";
const GL_TOKEN: &str = "glpat-targets-test-token";

fn reference() -> ImageReference {
    ImageReference::PerRegion(
        [
            ("eu-west-1", "ami-0e1e1e1e1e1e1e1e1"),
            ("us-east-1", "ami-0a2a2a2a2a2a2a2a2"),
            ("eu-central-1", "ami-0e3e3e3e3e3e3e3e3"),
            ("ap-southeast-2", "ami-0a4a4a4a4a4a4a4a4"),
        ]
        .map(|(r, a)| (r.to_string(), a.to_string()))
        .into(),
    )
}

fn run_request() -> RolloutRequest {
    let mut req = RolloutRequest::new(
        "gpu-node",
        reference(),
        RepoLocation::Path("unused: each target names its repository".into()),
    );
    req.version = "2026.12.02".into();
    req.image = Some(image_facts(
        "img-gpu-20261202",
        "2026.12.02",
        1_796_184_780,
        &[],
        "6.1.0-27-cloud-amd64",
        1,
    ));
    req.labels = vec!["automated".into()];
    req
}

/// Three targets: platform-kubernetes on GitHub (rules given here), acme-clusters on GitLab (its
/// own config's rules) and a repository that does not exist.
fn targets_yaml(
    platform: &FixtureRepo,
    acme: &FixtureRepo,
    missing: &Path,
    github: &FakeGitHub,
    gitlab: &FakeGitLab,
) -> String {
    format!(
        r#"
repositories:
  # The platform repository's own config has no rule for gpu-node: the rules are given here.
  - repo: {platform}
    github: acme/platform-kubernetes
    github-api: {github_api}
    token-env: PLATFORM_TOKEN
    labels: [gpu]
    rules:
      - kind: instance-group
        roles: [Node]
  - repo: {acme}
    gitlab: acme/clusters
    gitlab-api: {gitlab_api}
    token-env: ACME_GITLAB_TOKEN
  - repo: {missing}
"#,
        platform = platform.bare.display(),
        acme = acme.bare.display(),
        missing = missing.display(),
        github_api = github.base,
        gitlab_api = gitlab.base,
    )
}

/// The forges a run would build from the environment, with the tokens of the fakes instead.
fn forge_with_fake_tokens(config: &ForgeConfig) -> Result<Option<Box<dyn Forge>>, ForgeError> {
    Ok(match config {
        ForgeConfig::None => None,
        ForgeConfig::GitHub {
            api_base,
            owner,
            repo,
            token_env,
        } => {
            assert_eq!(token_env, "PLATFORM_TOKEN");
            Some(Box::new(GitHub::with_token(
                api_base,
                owner,
                repo,
                token_env,
                GH_TOKEN.into(),
            )))
        }
        ForgeConfig::GitLab {
            api_base,
            project,
            token_env,
        } => {
            assert_eq!(token_env, "ACME_GITLAB_TOKEN");
            Some(Box::new(GitLab::with_token(
                api_base,
                project,
                token_env,
                GL_TOKEN.into(),
            )))
        }
    })
}

fn roll_out_to(targets: &RolloutTargets) -> Vec<TargetOutcome> {
    rollout_targets_with(
        &run_request(),
        targets,
        &forge_with_fake_tokens,
        &NoLookup,
        &NoReporter,
    )
}

/// platform-kubernetes: the nodes of both clusters, one GitHub pull request.
fn assert_platform_got_one_pull_request(
    outcome: &TargetOutcome,
    platform: &FixtureRepo,
    github: &FakeGitHub,
) {
    let p = outcome.outcome.as_ref().unwrap();
    assert_eq!(p.edits.iter().filter(|e| e.changes()).count(), 3);
    let pr = p.pull_request.as_ref().unwrap();
    assert_eq!((pr.number, pr.action), (1, PullRequestAction::Created));
    assert_eq!(platform.webake_branches(), ["refs/heads/webake/gpu-node"]);
    let pulls = github.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].labels, ["image-rollout", "automated", "gpu"]);
    assert_eq!(outcome.forge, "github acme/platform-kubernetes");
}

/// acme-clusters: its own config's rules, one GitLab merge request.
fn assert_acme_got_one_merge_request(
    outcome: &TargetOutcome,
    acme: &FixtureRepo,
    gitlab: &FakeGitLab,
) {
    let a = outcome.outcome.as_ref().unwrap();
    assert_eq!(
        a.changed_files,
        [
            "helm/karpenter/values.yaml",
            "kops/clusters.yaml",
            "terraform/envs/prod.tfvars"
        ]
    );
    let mr = a.pull_request.as_ref().unwrap();
    assert_eq!((mr.number, mr.action), (1, PullRequestAction::Created));
    let mrs = gitlab.merge_requests();
    assert_eq!(mrs.len(), 1);
    assert_eq!(mrs[0].title, "Roll out gpu-node 2026.12.02");
    assert_eq!(
        mrs[0].labels,
        ["os-image", "needs-cluster-roll", "automated"]
    );
    assert_eq!(acme.webake_branches(), ["refs/heads/webake/gpu-node"]);
}

/// One row per repository: its pull request, how many references changed, and its status.
fn assert_summary_table(
    outcomes: &[TargetOutcome],
    platform: &FixtureRepo,
    acme: &FixtureRepo,
    missing: &Path,
) {
    let table = summary_table(outcomes);
    let p_repo = platform.bare.display().to_string();
    let a_repo = acme.bare.display().to_string();
    let m_repo = missing.display().to_string();
    let w = [p_repo.len(), a_repo.len(), m_repo.len(), "REPOSITORY".len()]
        .into_iter()
        .max()
        .unwrap();
    let pr1 = "https://github.example/acme/platform-kubernetes/pull/1";
    let mr1 = "https://gitlab.example/acme/clusters/-/merge_requests/1";
    let pw = mr1.len().max(pr1.len());
    let row = |repo: &str, url: &str, refs: &str, status: &str| {
        format!("{repo:<w$}  {url:<pw$}  {refs:<10}  {status}\n")
    };
    let expected = [
        row("REPOSITORY", "PULL REQUEST", "REFERENCES", "STATUS"),
        row(&p_repo, pr1, "3", "created"),
        row(&a_repo, mr1, "4", "created"),
        row(
            &m_repo,
            "-",
            "-",
            &format!("failed: repository {m_repo} does not exist or is not a git repository"),
        ),
    ]
    .concat();
    assert_eq!(table, expected, "\n{table}");
}

#[test]
fn one_run_proposes_in_two_cluster_repositories_and_sums_up() {
    let platform = FixtureRepo::new("platform-kubernetes");
    let acme = FixtureRepo::new("acme-clusters");
    let github = FakeGitHub::start("acme", "platform-kubernetes", GH_TOKEN);
    let gitlab = FakeGitLab::start("acme/clusters", GL_TOKEN);
    let missing = platform.tmp.path().join("no-such-repo.git");
    let text = targets_yaml(&platform, &acme, &missing, &github, &gitlab);
    let targets = RolloutTargets::from_yaml(&text, "rollout-targets.yaml").unwrap();

    let outcomes = roll_out_to(&targets);
    assert_eq!(outcomes.len(), 3);
    let statuses: Vec<TargetStatus> = outcomes.iter().map(|o| o.status).collect();
    assert_eq!(
        statuses,
        [
            TargetStatus::Created,
            TargetStatus::Created,
            TargetStatus::Failed
        ]
    );
    assert_platform_got_one_pull_request(&outcomes[0], &platform, &github);
    assert_acme_got_one_merge_request(&outcomes[1], &acme, &gitlab);

    // The missing repository failed on its own; the others went through.
    assert!(outcomes[2].failure.is_some());
    assert!(
        outcomes[2]
            .error
            .as_deref()
            .unwrap()
            .contains("no-such-repo.git"),
        "{:?}",
        outcomes[2].error
    );
    assert_summary_table(&outcomes, &platform, &acme, &missing);

    // Again: nothing new anywhere, the same pull requests.
    let again = roll_out_to(&targets);
    assert_eq!(
        again.iter().map(|o| o.status).collect::<Vec<_>>(),
        [
            TargetStatus::Unchanged,
            TargetStatus::Unchanged,
            TargetStatus::Failed
        ]
    );
    assert_eq!(github.pulls().len(), 1);
    assert_eq!(gitlab.merge_requests().len(), 1);
}

#[test]
fn a_dry_run_over_targets_builds_no_forge_and_pushes_nothing() {
    let platform = FixtureRepo::new("platform-kubernetes");
    let text = format!(
        "repositories:\n  - repo: {}\n    github: acme/platform-kubernetes\n    rules:\n      - kind: instance-group\n        roles: [Node]\n",
        platform.bare.display()
    );
    let targets = RolloutTargets::from_yaml(&text, "t.yaml").unwrap();
    let mut run = run_request();
    run.dry_run = true;
    let no_forge = |_: &ForgeConfig| -> Result<Option<Box<dyn Forge>>, ForgeError> {
        panic!("a dry run builds no forge")
    };
    let outcomes = rollout_targets_with(&run, &targets, &no_forge, &NoLookup, &NoReporter);
    assert_eq!(outcomes[0].status, TargetStatus::DryRun);
    let o = outcomes[0].outcome.as_ref().unwrap();
    assert!(
        o.diff.contains("+  image: ami-0e1e1e1e1e1e1e1e1"),
        "{}",
        o.diff
    );
    assert_eq!(o.title, "Roll out gpu-node 2026.12.02");
    assert!(platform.webake_branches().is_empty());
}
