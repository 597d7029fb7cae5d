//! Pull requests a reviewer closed stay closed (GitHub and GitLab), and GitLab merge requests
//! end to end: real git with a bare remote, and fakes of the GitHub REST v3 and GitLab REST v4
//! endpoints on 127.0.0.1 (no real forge can run here).

mod support;

use support::{FakeGitHub, FakeGitLab, FixtureRepo, calls, image_facts};
use webake_rollout::{
    BranchStatus, ForgeError, GitHub, GitLab, ImageFacts, ImageReference, NoLookup, NoReporter,
    PullRequestAction, RepoLocation, RolloutError, RolloutOutcome, RolloutRequest,
    rollout_with_forge,
};

const FIXTURE: &str = "platform-kubernetes";
const GH_TOKEN: &str = "ghp_test_token_0123456789abcdefABCDEF";
const GL_TOKEN: &str = "glpat-test-token-0123456789abcdef";
const PROJECT: &str = "infra/platform-kubernetes";

fn image(version: &str, created_at: i64, eu: &str, us: &str) -> (ImageFacts, ImageReference) {
    let facts = image_facts(
        &format!("img-{}", version.replace('.', "")),
        version,
        created_at,
        &[("bash", "5.2.15-2+b7")],
        "6.1.0-27-cloud-amd64",
        800_000_000,
    );
    let reference = ImageReference::PerRegion(
        [
            ("eu-west-1".to_string(), eu.to_string()),
            ("us-east-1".into(), us.into()),
        ]
        .into(),
    );
    (facts, reference)
}

fn v2() -> (ImageFacts, ImageReference) {
    image(
        "2026.12.02",
        1_796_184_780,
        "ami-0123456789abcdef0",
        "ami-0fedcba9876543210",
    )
}

fn v3() -> (ImageFacts, ImageReference) {
    image(
        "2026.12.09",
        1_796_789_100,
        "ami-0333333333333333e",
        "ami-0444444444444444f",
    )
}

fn request(repo: &FixtureRepo, (facts, reference): (ImageFacts, ImageReference)) -> RolloutRequest {
    let mut req = RolloutRequest::new("k8s-node", reference, RepoLocation::Path(repo.bare.clone()));
    req.version = facts.version.clone();
    req.image = Some(facts);
    req.labels = vec!["automated".into()];
    req
}

fn run(req: &RolloutRequest, forge: &dyn webake_rollout::Forge) -> RolloutOutcome {
    rollout_with_forge(req, Some(forge), &NoLookup, &NoReporter).unwrap()
}

fn branch_sha(repo: &FixtureRepo) -> String {
    support::git(&repo.bare, &["rev-parse", "refs/heads/webake/k8s-node"])
        .trim()
        .to_string()
}

const GH_OPEN: &str =
    "/repos/acme/platform-kubernetes/pulls?head=acme%3Awebake%2Fk8s-node&state=open";
const GH_CLOSED: &str = "/repos/acme/platform-kubernetes/pulls?head=acme%3Awebake%2Fk8s-node&state=closed&sort=updated&direction=desc&per_page=100";

#[test]
fn github_a_closed_pull_request_stays_closed_for_its_image() {
    let repo = FixtureRepo::new(FIXTURE);
    let fake = FakeGitHub::start("acme", "platform-kubernetes", GH_TOKEN);
    let forge = GitHub::with_token(
        &fake.base,
        "acme",
        "platform-kubernetes",
        "WEBAKE_FORGE_TOKEN",
        GH_TOKEN.into(),
    );

    let first = run(&request(&repo, v2()), &forge);
    let pr = first.pull_request.unwrap();
    assert_eq!((pr.number, pr.action), (1, PullRequestAction::Created));
    assert!(
        fake.pulls()[0]
            .body
            .contains("<!-- webake-rollout family=k8s-node image=img-20261202 -->")
    );
    let pushed = branch_sha(&repo);

    // A reviewer closes it. The next run of the same image proposes nothing and pushes nothing.
    fake.close(1);
    let n = fake.requests().len();
    let again = run(&request(&repo, v2()), &forge);
    assert_eq!(again.status, BranchStatus::Declined);
    let pr = again.pull_request.unwrap();
    assert_eq!((pr.number, pr.action), (1, PullRequestAction::LeftClosed));
    assert_eq!(
        pr.url,
        "https://github.example/acme/platform-kubernetes/pull/1"
    );
    assert_eq!(
        fake.server.calls(n),
        calls(&[("GET", GH_OPEN), ("GET", GH_CLOSED)])
    );
    assert_eq!(fake.pulls().len(), 1);
    assert_eq!(fake.pulls()[0].state, "closed", "not reopened");
    assert_eq!(branch_sha(&repo), pushed, "nothing pushed");

    // --reopen proposes it again, in a new pull request.
    let mut forced = request(&repo, v2());
    forced.reopen = true;
    let n = fake.requests().len();
    let reopened = run(&forced, &forge);
    let pr = reopened.pull_request.unwrap();
    assert_eq!((pr.number, pr.action), (2, PullRequestAction::Created));
    assert_eq!(
        fake.server.calls(n),
        calls(&[
            ("GET", GH_OPEN),
            ("POST", "/repos/acme/platform-kubernetes/pulls"),
            ("POST", "/repos/acme/platform-kubernetes/issues/2/labels"),
        ])
    );
    fake.close(2);

    // A newer image is a new decision: a new pull request.
    let newer = run(&request(&repo, v3()), &forge);
    assert_eq!(newer.status, BranchStatus::Updated);
    let pr = newer.pull_request.unwrap();
    assert_eq!((pr.number, pr.action), (3, PullRequestAction::Created));
    let pulls = fake.pulls();
    assert_eq!(
        pulls
            .iter()
            .map(|p| (p.number, p.state.as_str()))
            .collect::<Vec<_>>(),
        [(1, "closed"), (2, "closed"), (3, "open")]
    );
    assert!(pulls[2].body.contains("image=img-20261209"));
}

#[test]
fn a_merged_pull_request_does_not_count_as_declined() {
    let repo = FixtureRepo::new(FIXTURE);
    let fake = FakeGitHub::start("acme", "platform-kubernetes", GH_TOKEN);
    let forge = GitHub::with_token(
        &fake.base,
        "acme",
        "platform-kubernetes",
        "T",
        GH_TOKEN.into(),
    );
    run(&request(&repo, v2()), &forge);
    {
        // Merged on the forge, but main was reset since (a revert): the image is proposed again.
        let mut st = fake.server.state.lock().unwrap();
        st.pulls[0].state = "closed".into();
        st.pulls[0].merged = true;
    }
    let again = run(&request(&repo, v2()), &forge);
    assert_eq!(
        again.pull_request.unwrap().action,
        PullRequestAction::Created
    );
}

// --- GitLab -------------------------------------------------------------------------------

const GL_PREFIX: &str = "/api/v4/projects/infra%2Fplatform-kubernetes/merge_requests";

fn gitlab(fake: &FakeGitLab, token: &str) -> GitLab {
    GitLab::with_token(&fake.base, PROJECT, "GITLAB_TOKEN", token.to_string())
}

fn gl_open() -> String {
    format!("{GL_PREFIX}?source_branch=webake%2Fk8s-node&state=opened")
}

fn gl_closed() -> String {
    format!(
        "{GL_PREFIX}?source_branch=webake%2Fk8s-node&state=closed&order_by=updated_at&sort=desc&per_page=100"
    )
}

#[test]
fn gitlab_merge_request_is_created_labelled_updated_and_left_closed() {
    let repo = FixtureRepo::new(FIXTURE);
    let fake = FakeGitLab::start(PROJECT, GL_TOKEN);
    let forge = gitlab(&fake, GL_TOKEN);

    let first = run(&request(&repo, v2()), &forge);
    assert_eq!(first.status, BranchStatus::Created);
    let mr = first.pull_request.clone().unwrap();
    assert_eq!((mr.number, mr.action), (1, PullRequestAction::Created));
    assert_eq!(
        mr.url,
        "https://gitlab.example/infra/platform-kubernetes/-/merge_requests/1"
    );
    let reqs = fake.server.requests();
    assert_eq!(
        fake.server.calls(0),
        calls(&[
            ("GET", &gl_open()),
            ("GET", &gl_closed()),
            ("POST", GL_PREFIX),
            ("PUT", &format!("{GL_PREFIX}/1")),
        ])
    );
    for r in &reqs {
        assert_eq!(
            r.headers.get("private-token").map(String::as_str),
            Some(GL_TOKEN)
        );
        assert!(
            !r.headers.contains_key("authorization"),
            "the token goes in one header only"
        );
    }
    let create = reqs[2].json();
    assert_eq!(create["source_branch"], "webake/k8s-node");
    assert_eq!(create["target_branch"], "main");
    assert_eq!(create["title"], "Roll out k8s-node 2026.12.02");
    assert_eq!(create["description"], first.body.as_str());
    assert_eq!(
        reqs[3].json(),
        serde_json::json!({"add_labels": "image-rollout,automated"})
    );
    let mrs = fake.merge_requests();
    assert_eq!(mrs.len(), 1);
    assert_eq!(mrs[0].labels, ["image-rollout", "automated"]);

    // A newer image updates the open merge request in place.
    let n = reqs.len();
    let second = run(&request(&repo, v3()), &forge);
    assert_eq!(second.status, BranchStatus::Updated);
    let mr = second.pull_request.unwrap();
    assert_eq!((mr.number, mr.action), (1, PullRequestAction::Updated));
    assert_eq!(
        fake.server.calls(n),
        calls(&[
            ("GET", &gl_open()),
            ("PUT", &format!("{GL_PREFIX}/1")),
            ("PUT", &format!("{GL_PREFIX}/1")),
        ])
    );
    let update = fake.server.requests()[n + 1].json();
    assert_eq!(update["title"], "Roll out k8s-node 2026.12.09");
    assert_eq!(update["target_branch"], "main");
    assert!(
        update["description"]
            .as_str()
            .unwrap()
            .contains("`ami-0333333333333333e`")
    );
    assert_eq!(fake.merge_requests().len(), 1, "no second merge request");
    assert_eq!(
        fake.merge_requests()[0].title,
        "Roll out k8s-node 2026.12.09"
    );

    // Closed by a reviewer: the same image is not proposed again.
    fake.close(1);
    let sha = branch_sha(&repo);
    let n = fake.server.requests().len();
    let third = run(&request(&repo, v3()), &forge);
    assert_eq!(third.status, BranchStatus::Declined);
    assert_eq!(
        third.pull_request.unwrap().action,
        PullRequestAction::LeftClosed
    );
    assert_eq!(
        fake.server.calls(n),
        calls(&[("GET", &gl_open()), ("GET", &gl_closed())])
    );
    assert_eq!(branch_sha(&repo), sha, "nothing pushed");
    assert_eq!(fake.merge_requests()[0].state, "closed");

    // --reopen: a new merge request for it.
    let mut forced = request(&repo, v3());
    forced.reopen = true;
    let fourth = run(&forced, &forge);
    let mr = fourth.pull_request.unwrap();
    assert_eq!((mr.number, mr.action), (2, PullRequestAction::Created));
    assert_eq!(fake.merge_requests()[1].state, "opened");
}

#[test]
fn gitlab_auth_failure_names_the_variable_hides_the_token_and_pushes_nothing() {
    let repo = FixtureRepo::new(FIXTURE);
    let fake = FakeGitLab::start(PROJECT, "the-right-token");
    let forge = gitlab(&fake, GL_TOKEN);
    let err = rollout_with_forge(&request(&repo, v2()), Some(&forge), &NoLookup, &NoReporter)
        .unwrap_err();
    assert!(
        matches!(
            err,
            RolloutError::Forge(ForgeError::Auth {
                forge: "GitLab",
                status: 401,
                ..
            })
        ),
        "{err:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(!text.contains(GL_TOKEN), "token leaked: {text}");
    assert!(text.contains("GITLAB_TOKEN"), "{text}");
    assert_eq!(fake.server.calls(0), calls(&[("GET", &gl_open())]));
    assert!(repo.webake_branches().is_empty());
    assert!(fake.merge_requests().is_empty());
}

#[test]
fn gitlab_refusal_is_reported_with_its_message() {
    let repo = FixtureRepo::new(FIXTURE);
    let fake = FakeGitLab::start(PROJECT, GL_TOKEN);
    let forge = gitlab(&fake, GL_TOKEN);
    // Someone opened a merge request from webake's branch by hand between our look and create:
    // GitLab answers 409, and the error says so.
    let forge = RacingGitLab {
        inner: forge,
        fake: &fake,
    };
    let err = rollout_with_forge(&request(&repo, v2()), Some(&forge), &NoLookup, &NoReporter)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "GitLab POST /projects/infra%2Fplatform-kubernetes/merge_requests failed with HTTP 409"
        ) && text.contains("Another open merge request already exists for this source branch: !1"),
        "{text}"
    );
}

/// Opens a merge request in the fake right before webake creates its own.
struct RacingGitLab<'a> {
    inner: GitLab,
    fake: &'a FakeGitLab,
}

impl webake_rollout::Forge for RacingGitLab<'_> {
    fn find_open_pull_request(
        &self,
        head: &str,
    ) -> Result<Option<webake_rollout::PullRequest>, ForgeError> {
        self.inner.find_open_pull_request(head)
    }
    fn find_closed_pull_requests(
        &self,
        head: &str,
    ) -> Result<Vec<webake_rollout::ClosedPullRequest>, ForgeError> {
        self.inner.find_closed_pull_requests(head)
    }
    fn create_pull_request(
        &self,
        spec: &webake_rollout::PullRequestSpec,
    ) -> Result<webake_rollout::PullRequest, ForgeError> {
        self.fake
            .server
            .state
            .lock()
            .unwrap()
            .merge_requests
            .push(support::FakeMergeRequest {
                iid: 1,
                source_branch: spec.head_branch.clone(),
                target_branch: "main".into(),
                title: "by hand".into(),
                description: String::new(),
                state: "opened".into(),
                labels: Vec::new(),
            });
        self.inner.create_pull_request(spec)
    }
    fn update_pull_request(
        &self,
        number: u64,
        spec: &webake_rollout::PullRequestSpec,
    ) -> Result<webake_rollout::PullRequest, ForgeError> {
        self.inner.update_pull_request(number, spec)
    }
    fn add_labels(&self, number: u64, labels: &[String]) -> Result<(), ForgeError> {
        self.inner.add_labels(number, labels)
    }
}
