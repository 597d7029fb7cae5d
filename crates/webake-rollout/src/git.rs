//! The `git` CLI, run through one runner. Argument lists are built by pure functions (tested
//! below); the runner captures stderr into the error and redacts credentials in URLs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Author and committer of rollout commits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GitIdentity {
    pub name: String,
    pub email: String,
}

impl Default for GitIdentity {
    fn default() -> Self {
        Self {
            name: "webake".into(),
            email: "webake@localhost".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

impl GitError {
    pub fn stderr(&self) -> &str {
        match self {
            Self::Failed { stderr, .. } => stderr,
            Self::Spawn { .. } => "",
        }
    }
}

/// Hide `user:password@` in URLs (a token in a remote URL must not reach errors or logs).
pub fn redact_url(text: &str) -> String {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@").expect("static regex")
    });
    RE.replace_all(text, "${scheme}***@").into_owned()
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

// --- pure argument builders -------------------------------------------------------------------

pub(crate) fn clone_args(url: &str, dest: &Path, branch: Option<&str>) -> Vec<OsString> {
    let mut args = os(&["clone", "--quiet", "--no-tags", "--single-branch"]);
    if let Some(branch) = branch {
        args.extend(os(&["--branch", branch]));
    }
    args.push("--".into());
    args.push(url.into());
    args.push(dest.into());
    args
}

pub(crate) fn current_branch_args() -> Vec<OsString> {
    os(&["symbolic-ref", "--quiet", "--short", "HEAD"])
}

pub(crate) fn rev_parse_args(rev: &str) -> Vec<OsString> {
    os(&["rev-parse", "--verify", "--quiet", rev])
}

pub(crate) fn is_bare_args() -> Vec<OsString> {
    os(&["rev-parse", "--is-bare-repository"])
}

pub(crate) fn status_args() -> Vec<OsString> {
    os(&["status", "--porcelain", "--untracked-files=normal"])
}

pub(crate) fn ls_remote_branch_args(branch: &str) -> Vec<OsString> {
    os(&[
        "ls-remote",
        "--heads",
        "origin",
        &format!("refs/heads/{branch}"),
    ])
}

pub(crate) fn fetch_branch_args(branch: &str) -> Vec<OsString> {
    os(&[
        "fetch",
        "--quiet",
        "--no-tags",
        "origin",
        &format!("+refs/heads/{branch}:refs/webake/previous"),
    ])
}

pub(crate) fn fetch_base_args(base: &str) -> Vec<OsString> {
    os(&[
        "fetch",
        "--quiet",
        "--no-tags",
        "origin",
        &format!("+refs/heads/{base}:refs/remotes/origin/{base}"),
    ])
}

/// Check out the base commit (the rollout branch is created from it).
pub(crate) fn checkout_detached_args(commit: &str) -> Vec<OsString> {
    os(&["checkout", "--quiet", "--detach", commit])
}

/// A fresh branch at the base commit (a newer image supersedes the older commit, not stacks on it).
pub(crate) fn checkout_new_branch_args(branch: &str) -> Vec<OsString> {
    os(&["checkout", "--quiet", "-B", branch])
}

pub(crate) fn add_args(paths: &[String]) -> Vec<OsString> {
    let mut args = os(&["add", "--"]);
    args.extend(paths.iter().map(OsString::from));
    args
}

/// Commit with a fixed identity and no signing or hooks from the user's config.
pub(crate) fn commit_args(message: &str) -> Vec<OsString> {
    os(&[
        "-c",
        "commit.gpgsign=false",
        "commit",
        "--quiet",
        "--no-verify",
        "--message",
        message,
    ])
}

/// Environment for the commit: author and committer.
pub(crate) fn identity_env(author: &GitIdentity, committer: &GitIdentity) -> Vec<(String, String)> {
    vec![
        ("GIT_AUTHOR_NAME".into(), author.name.clone()),
        ("GIT_AUTHOR_EMAIL".into(), author.email.clone()),
        ("GIT_COMMITTER_NAME".into(), committer.name.clone()),
        ("GIT_COMMITTER_EMAIL".into(), committer.email.clone()),
    ]
}

/// Push HEAD to `branch`, forcing only over the commit we saw (`expected`, or "no branch").
pub(crate) fn push_args(branch: &str, expected: Option<&str>) -> Vec<OsString> {
    let lease = format!(
        "--force-with-lease=refs/heads/{branch}:{}",
        expected.unwrap_or("")
    );
    os(&[
        "push",
        "--quiet",
        "--porcelain",
        &lease,
        "origin",
        &format!("HEAD:refs/heads/{branch}"),
    ])
}

/// Parse `ls-remote` output: the commit of the one ref, if any.
pub(crate) fn parse_ls_remote(stdout: &str, branch: &str) -> Option<String> {
    let want = format!("refs/heads/{branch}");
    stdout.lines().find_map(|line| {
        let (sha, name) = line.split_once('\t')?;
        (name.trim() == want).then(|| sha.trim().to_string())
    })
}

/// A branch name component for an image family (`webake/<family>`): git's ref rules, conservatively.
pub(crate) fn branch_for_family(family: &str) -> Result<String, String> {
    let ok = !family.is_empty()
        && family
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !family.starts_with(['.', '-'])
        && !family.ends_with(['.'])
        && !family.contains("..")
        && !family.ends_with(".lock");
    if ok {
        Ok(format!("webake/{family}"))
    } else {
        Err(format!(
            "image family {family:?} cannot name a branch (letters, digits, '-', '_', '.' only)"
        ))
    }
}

// --- runner -----------------------------------------------------------------------------------

/// Runs git in one directory with a fixed environment.
#[derive(Debug, Clone)]
pub(crate) struct Git {
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Git {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            env: vec![
                // Never wait for a password on a terminal; fail instead.
                ("GIT_TERMINAL_PROMPT".into(), "0".into()),
                ("GIT_ASKPASS".into(), "true".into()),
                ("LC_ALL".into(), "C".into()),
            ],
        }
    }

    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env.extend(env);
        self
    }

    fn display(args: &[OsString]) -> String {
        let joined: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        redact_url(&format!("git {}", joined.join(" ")))
    }

    /// Run `git ARGS` in the directory (the workspace's process runner); stdout on success,
    /// stderr in the error otherwise.
    pub fn run(&self, args: &[OsString]) -> Result<String, GitError> {
        let command = Self::display(args);
        tracing::debug!(dir = %self.dir.display(), %command, "running git");
        let mut cmd = webake_sys::process::Cmd::new("git")
            .args(args)
            .cwd(&self.dir)
            .display_as(command.clone());
        for (k, v) in &self.env {
            cmd = cmd.env(k, v);
        }
        webake_sys::process::capture(&cmd).map_err(|e| match e {
            webake_sys::ProcessError::Spawn { source, .. } => GitError::Spawn { command, source },
            webake_sys::ProcessError::Failed { code, tail, .. } => GitError::Failed {
                command,
                status: match code {
                    Some(code) => format!("exit status {code}"),
                    None => "killed by a signal".into(),
                },
                stderr: redact_url(tail.join("\n").trim()),
            },
            other => GitError::Spawn {
                command,
                source: std::io::Error::other(other.to_string()),
            },
        })
    }

    /// Like `run`, but a failure with no output on stderr means "no" (`rev-parse --verify --quiet`).
    pub fn run_optional(&self, args: &[OsString]) -> Result<Option<String>, GitError> {
        match self.run(args) {
            Ok(out) => Ok(Some(out.trim().to_string())),
            Err(GitError::Failed { stderr, .. }) if stderr.is_empty() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn clone_args_separate_options_from_url() {
        assert_eq!(
            s(clone_args("-oops", Path::new("/tmp/x"), Some("main"))),
            [
                "clone",
                "--quiet",
                "--no-tags",
                "--single-branch",
                "--branch",
                "main",
                "--",
                "-oops",
                "/tmp/x"
            ]
        );
        assert_eq!(
            s(clone_args("https://h/r.git", Path::new("/d"), None)),
            [
                "clone",
                "--quiet",
                "--no-tags",
                "--single-branch",
                "--",
                "https://h/r.git",
                "/d"
            ]
        );
    }

    #[test]
    fn push_uses_a_lease() {
        assert_eq!(
            s(push_args("webake/debian-12", None)),
            [
                "push",
                "--quiet",
                "--porcelain",
                "--force-with-lease=refs/heads/webake/debian-12:",
                "origin",
                "HEAD:refs/heads/webake/debian-12"
            ]
        );
        assert_eq!(
            s(push_args("webake/x", Some("abc123")))[3],
            "--force-with-lease=refs/heads/webake/x:abc123"
        );
    }

    #[test]
    fn commit_add_fetch_args() {
        assert_eq!(
            s(commit_args("msg")),
            [
                "-c",
                "commit.gpgsign=false",
                "commit",
                "--quiet",
                "--no-verify",
                "--message",
                "msg"
            ]
        );
        assert_eq!(
            s(add_args(&["a b.yaml".into(), "-x".into()])),
            ["add", "--", "a b.yaml", "-x"]
        );
        assert_eq!(
            s(fetch_branch_args("webake/f")),
            [
                "fetch",
                "--quiet",
                "--no-tags",
                "origin",
                "+refs/heads/webake/f:refs/webake/previous"
            ]
        );
        assert_eq!(
            s(ls_remote_branch_args("webake/f")),
            ["ls-remote", "--heads", "origin", "refs/heads/webake/f"]
        );
        assert_eq!(
            s(fetch_base_args("release")),
            [
                "fetch",
                "--quiet",
                "--no-tags",
                "origin",
                "+refs/heads/release:refs/remotes/origin/release"
            ]
        );
        assert_eq!(
            s(checkout_detached_args("abc")),
            ["checkout", "--quiet", "--detach", "abc"]
        );
        assert_eq!(
            s(checkout_new_branch_args("webake/f")),
            ["checkout", "--quiet", "-B", "webake/f"]
        );
        let env = identity_env(
            &GitIdentity::default(),
            &GitIdentity {
                name: "c".into(),
                email: "c@x".into(),
            },
        );
        assert!(env.contains(&("GIT_AUTHOR_EMAIL".into(), "webake@localhost".into())));
        assert!(env.contains(&("GIT_COMMITTER_NAME".into(), "c".into())));
    }

    #[test]
    fn ls_remote_parsing() {
        let out = "1111\trefs/heads/webake/a-b\n2222\trefs/heads/webake/a\n";
        assert_eq!(parse_ls_remote(out, "webake/a").as_deref(), Some("2222"));
        assert_eq!(parse_ls_remote(out, "webake/c"), None);
        assert_eq!(parse_ls_remote("", "webake/a"), None);
    }

    #[test]
    fn family_branches() {
        assert_eq!(
            branch_for_family("debian-12_k8s.v1").unwrap(),
            "webake/debian-12_k8s.v1"
        );
        for bad in [
            "", "a b", "a..b", "-a", ".a", "a.lock", "a/b", "a~1", "a:b", "a.", "é",
        ] {
            assert!(branch_for_family(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("fatal: https://x-access-token:ghp_secret@github.com/o/r.git not found"),
            "fatal: https://***@github.com/o/r.git not found"
        );
        assert_eq!(
            redact_url("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
    }
}
