//! Which image references a cluster repository holds, on every branch that can reach a cluster:
//! the default branch, the base branch its rollout config names, and every `webake/*` branch
//! (an open rollout pull request; a branch whose pull request was closed counts too, which
//! errs on the side of keeping). `webake gc` keeps every image found here.
//!
//! Every text file is searched, not only what the rollout rules select: an instance group the
//! rules leave alone, pinned to an old image, still boots from it. Found are: every AMI id
//! (`ami-…`), every local webake name (`webake/NAME:VERSION`), every account-owned image name
//! (`123456789012/NAME`), and the `spec.image` of every kops InstanceGroup whatever its form.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::sync::LazyLock;

use serde::Serialize;

use crate::git::{self, Git};
use crate::plan::{RepoFile, instance_group_images};
use crate::{RepoLocation, Reporter, RolloutError, Step};

/// One image reference, where it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FoundReference {
    pub branch: String,
    pub commit: String,
    /// Path relative to the repository root, `/`-separated.
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// `InstanceGroup NAME (cluster C) spec.image`, or `text` for a reference found by its form.
    pub what: String,
    pub reference: String,
}

/// The references of one repository.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryReferences {
    /// The repository as messages name it (credentials hidden).
    pub location: String,
    /// Each branch read, with its commit.
    pub branches: Vec<(String, String)>,
    pub references: Vec<FoundReference>,
}

/// Clone `repo` (into a temporary directory, removed on return) and list the image references
/// on its default branch, `base_branch` (a rollout target's), the base branch of the rollout
/// config at `config_path` (when it names one), and every `webake/*` branch.
pub fn find_references(
    repo: &RepoLocation,
    config_path: &str,
    base_branch: Option<&str>,
    reporter: &dyn Reporter,
) -> Result<RepositoryReferences, RolloutError> {
    let location = repo.display();
    let url = match repo {
        RepoLocation::Url(u) => u.clone(),
        RepoLocation::Path(p) => std::fs::canonicalize(p)
            .map_err(|_| RolloutError::RepoNotFound { path: p.clone() })?
            .to_string_lossy()
            .into_owned(),
    };
    reporter.step(Step::Cloning {
        location: &location,
    });
    let tmp = tempfile::Builder::new()
        .prefix("webake-references-")
        .tempdir()
        .map_err(|e| RolloutError::io("create temp dir", std::env::temp_dir(), e))?;
    let work = tmp.path().join("repo");
    Git::new(tmp.path())
        .run(&full_clone_args(&url, &work))
        .map_err(|e| RolloutError::RepoUnreachable {
            location: location.clone(),
            stderr: e.stderr().to_string(),
        })?;
    let git = Git::new(&work);
    let branches = branches_to_read(&git, &work, config_path, base_branch)?;
    let mut out = RepositoryReferences {
        location,
        branches: Vec::new(),
        references: Vec::new(),
    };
    for branch in branches {
        let rev = format!("refs/remotes/origin/{branch}^{{commit}}");
        let Some(commit) = git.run_optional(&git::rev_parse_args(&rev))? else {
            continue;
        };
        git.run(&checkout_args(&commit))?;
        let files = crate::read_repo_files(&work)?;
        for (file, line, what, reference) in references_in(&files)? {
            out.references.push(FoundReference {
                branch: branch.clone(),
                commit: commit.clone(),
                file,
                line,
                what,
                reference,
            });
        }
        out.branches.push((branch, commit));
    }
    Ok(out)
}

/// The default branch, the given and the config's base branch, then the `webake/*` branches,
/// each once.
fn branches_to_read(
    git: &Git,
    work: &std::path::Path,
    config_path: &str,
    base_branch: Option<&str>,
) -> Result<Vec<String>, RolloutError> {
    let default = git.run(&git::current_branch_args())?.trim().to_string();
    let mut out = vec![default];
    out.extend(base_branch.map(str::to_string));
    if let Some(base) = crate::read_config(work, config_path)?.base_branch {
        out.push(base);
    }
    let listed = git.run(&webake_branches_args())?;
    out.extend(
        listed
            .lines()
            .filter_map(|l| l.trim().strip_prefix("refs/remotes/origin/"))
            .map(str::to_string),
    );
    let mut seen = BTreeSet::new();
    out.retain(|b| !b.is_empty() && seen.insert(b.clone()));
    Ok(out)
}

/// Every branch of the remote, as `refs/remotes/origin/*` (no `--single-branch`); the default
/// branch checked out (its rollout config names the base branch).
fn full_clone_args(url: &str, dest: &std::path::Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["clone", "--quiet", "--no-tags", "--"]
        .map(OsString::from)
        .to_vec();
    args.push(url.into());
    args.push(dest.into());
    args
}

fn webake_branches_args() -> Vec<OsString> {
    [
        "for-each-ref",
        "--format=%(refname)",
        "refs/remotes/origin/webake/",
    ]
    .map(OsString::from)
    .to_vec()
}

fn checkout_args(commit: &str) -> Vec<OsString> {
    ["checkout", "--quiet", "--force", "--detach", commit]
        .map(OsString::from)
        .to_vec()
}

static FORMS: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"\b(?:ami-[0-9a-fA-F]+|webake/[A-Za-z0-9][A-Za-z0-9._-]*:[A-Za-z0-9][A-Za-z0-9._+~-]*|[0-9]{12}/[A-Za-z0-9()\[\]./_@-]{3,128})",
    )
    .expect("static regex")
});

/// `(file, line, what, reference)` of every reference in `files`, sorted, each once.
fn references_in(files: &[RepoFile]) -> Result<Vec<(String, usize, String, String)>, RolloutError> {
    let mut out = BTreeSet::new();
    for f in files {
        for m in FORMS.find_iter(&f.text) {
            let line = f.text[..m.start()].matches('\n').count() + 1;
            let reference = m.as_str().trim_end_matches(['.', '/']).to_string();
            out.insert((f.path.clone(), line, "text".to_string(), reference));
        }
    }
    for (file, line, what, reference) in instance_group_images(files)? {
        out.retain(|(f, l, _, r)| !(f == &file && *l == line && r == &reference));
        out.insert((file, line, what, reference));
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> RepoFile {
        RepoFile {
            path: path.into(),
            text: text.into(),
        }
    }

    #[test]
    fn every_form_is_found_with_its_line() {
        let files = [
            file(
                "clusters/prod/ig.yaml",
                "apiVersion: kops.k8s.io/v1alpha2\nkind: InstanceGroup\nmetadata:\n  name: nodes\n  labels:\n    kops.k8s.io/cluster: prod\nspec:\n  role: Node\n  image: ami-0123456789abcdef0 # pinned\n---\napiVersion: kops.k8s.io/v1alpha2\nkind: InstanceGroup\nmetadata:\n  name: bastions\nspec:\n  role: Bastion\n  image: kope.io/k8s-1.18-debian-stretch\n",
            ),
            file(
                "terraform/main.tf",
                "ami = \"ami-0a1b2c3d\"\nname = \"123456789012/k8s-node-2026.11.18-x86_64\"\n# not: tami-0abc, ami-xyz\n",
            ),
            file("local.txt", "image: webake/k8s-node:2026.11.25.\n"),
        ];
        let found = references_in(&files).unwrap();
        let got: Vec<(&str, usize, &str, &str)> = found
            .iter()
            .map(|(f, l, w, r)| (f.as_str(), *l, w.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "clusters/prod/ig.yaml",
                    9,
                    "InstanceGroup nodes (cluster prod) spec.image",
                    "ami-0123456789abcdef0"
                ),
                (
                    "clusters/prod/ig.yaml",
                    17,
                    "InstanceGroup bastions spec.image",
                    "kope.io/k8s-1.18-debian-stretch"
                ),
                ("local.txt", 1, "text", "webake/k8s-node:2026.11.25"),
                ("terraform/main.tf", 1, "text", "ami-0a1b2c3d"),
                (
                    "terraform/main.tf",
                    2,
                    "text",
                    "123456789012/k8s-node-2026.11.18-x86_64"
                ),
            ]
        );
    }

    #[test]
    fn clone_lists_every_branch() {
        let args: Vec<String> = full_clone_args("-x", std::path::Path::new("/d"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(args, ["clone", "--quiet", "--no-tags", "--", "-x", "/d"]);
        assert!(!args.iter().any(|a| a == "--single-branch"));
    }
    fn git(dir: &std::path::Path, args: &[&str]) {
        let o = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=T", "-c", "user.email=t@example.com"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {o:?}");
    }

    #[test]
    fn reads_the_default_base_and_webake_branches_only() {
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "--quiet", "--initial-branch=main"]);
        let commit = |file: &str, text: &str, msg: &str| {
            let path = work.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            git(&work, &["add", "."]);
            git(&work, &["commit", "--quiet", "-m", msg]);
        };
        commit("ig.txt", "image: ami-0aaa\n", "main");
        commit(
            ".webake/rollout.yaml",
            "base-branch: production\nrules:\n  - kind: instance-group\n    all: true\n",
            "config",
        );
        git(&work, &["checkout", "--quiet", "-b", "production"]);
        commit("ig.txt", "image: ami-0bbb\n", "production");
        git(
            &work,
            &["checkout", "--quiet", "-b", "webake/k8s-node", "main"],
        );
        commit("ig.txt", "image: ami-0ccc\n", "rollout");
        git(&work, &["checkout", "--quiet", "-b", "feature", "main"]);
        commit("ig.txt", "image: ami-0ddd\n", "not read");
        git(&work, &["checkout", "--quiet", "main"]);
        let found = find_references(
            &RepoLocation::Path(work.clone()),
            crate::DEFAULT_CONFIG_PATH,
            None,
            &crate::NoReporter,
        )
        .unwrap();
        let branches: Vec<&str> = found.branches.iter().map(|(b, _)| b.as_str()).collect();
        assert_eq!(branches, ["main", "production", "webake/k8s-node"]);
        let refs: Vec<(&str, &str, usize)> = found
            .references
            .iter()
            .map(|r| (r.branch.as_str(), r.reference.as_str(), r.line))
            .collect();
        assert_eq!(
            refs,
            [
                ("main", "ami-0aaa", 1),
                ("production", "ami-0bbb", 1),
                ("webake/k8s-node", "ami-0ccc", 1)
            ]
        );
        assert!(
            found
                .references
                .iter()
                .all(|r| r.file == "ig.txt" && r.commit.len() == 40)
        );
    }
}
