//! Options shared by several commands, and their conversion into the engine's option structs
//! (once; the engine never sees clap types).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use webake_aws::Principal;
use webake_engine::bake::BakeOptions;
use webake_engine::publish::{AwsTarget, DEFAULT_NAME_TEMPLATE};
use webake_engine::rollout::RolloutOptions;
use webake_engine::{Error, Reporter};
use webake_rollout::{ForgeConfig, GitIdentity, InstanceGroupRule, Rule};

/// Values for a recipe's `variables:`. Precedence: --var, then --var-file (a later file wins),
/// then the environment (WEBAKE_VAR_NAME), then the recipe's default.
#[derive(Debug, Clone, Default, Args)]
pub struct VarArgs {
    /// Set a recipe variable (repeatable; the last one for a name wins)
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = webake_spec::parse_var_arg)]
    pub vars: Vec<(String, String)>,
    /// Read recipe variables from a YAML file of `NAME: VALUE` (repeatable; a later file wins)
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
    /// Only this one of the recipe's `architectures` (x86_64, arm64)
    #[arg(long, value_name = "ARCH", value_parser = parse_arch)]
    pub arch: Option<webake_spec::Architecture>,
}

fn parse_arch(s: &str) -> Result<webake_spec::Architecture, String> {
    webake_spec::Architecture::parse(s)
        .ok_or_else(|| format!("expected x86_64 or arm64, found {s:?}"))
}

/// The operator's allowlist of host variables recipes may read as secrets.
pub const SECRET_ENV: &str = "WEBAKE_SECRET_ENV";

impl VarArgs {
    /// The recipe load options: these flags, the process's `WEBAKE_VAR_*` variables, and the
    /// operator's allowlist of secret environment variables (`WEBAKE_SECRET_ENV`, comma
    /// separated names or `PREFIX*`; empty: recipes may read no host variable as a secret).
    pub fn load_options(&self) -> webake_spec::LoadOptions {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with(webake_spec::ENV_PREFIX))
            .collect();
        webake_spec::LoadOptions {
            vars: webake_spec::VarInputs {
                cli: self.vars.clone(),
                files: self.var_files.clone(),
                env,
            },
            secret_env_allow: Some(
                std::env::var(SECRET_ENV)
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
        }
    }

    /// Load a recipe with these variables; its warnings go to the reporter.
    pub fn load(
        &self,
        path: &Path,
        reporter: &dyn Reporter,
    ) -> Result<webake_spec::LoadedRecipe, Error> {
        let r = webake_spec::load_with(path, &self.load_options())?;
        for w in &r.warnings {
            reporter.warning(&w.to_string());
        }
        // One architecture (or --arch): its variant (the base names it, `{debian_arch}` is
        // replaced). Several: as loaded; `bake` makes one bake of each, others refuse it.
        let mut v = r.variants();
        if let Some(a) = self.arch {
            let Some(i) = v.iter().position(|x| x.architecture() == Some(a)) else {
                let have: Vec<String> = r
                    .architectures()
                    .iter()
                    .flatten()
                    .map(|a| a.to_string())
                    .collect();
                return Err(Error::Invalid(format!(
                    "{}: --arch {a}: the recipe bakes {}",
                    path.display(),
                    have.join(", ")
                )));
            };
            return Ok(v.swap_remove(i));
        }
        Ok(if v.len() == 1 { v.remove(0) } else { r })
    }
}

/// How to bake (shared by `bake` and `run`).
#[derive(Debug, Clone, Default, Args)]
pub struct BakeFlags {
    /// Bake even if the catalog already has an image baked from exactly these inputs
    #[arg(long)]
    pub force: bool,
    /// Ignore cached step layers (implies --force)
    #[arg(long)]
    pub no_cache: bool,
    /// Bootstrap the base again even if it is cached (implies --force)
    #[arg(long)]
    pub refresh_base: bool,
    /// Keep the scratch directory of a failed bake for debugging (as --on-error abort)
    #[arg(long)]
    pub keep_on_error: bool,
    /// When a step fails: clean up; abort and keep the scratch directory; or open an
    /// interactive shell in the failed step's tree, then clean up
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = OnError::Cleanup)]
    pub on_error: OnError,
    /// The image's date, Unix seconds: no timestamp in it is later [default: the recipe's
    /// image.source_date_epoch, else the base's (see docs/reproducible.md)]
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<i64>,
}

/// What a failed step leaves behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Remove the scratch directory (the default)
    #[default]
    Cleanup,
    /// Stop and keep the scratch directory (--keep-on-error)
    Abort,
    /// Open a shell in the failed step's tree (its changes included), then clean up
    Shell,
}

impl BakeFlags {
    pub fn options(&self, test: bool) -> BakeOptions {
        BakeOptions {
            force: self.force,
            no_cache: self.no_cache,
            refresh_base: self.refresh_base,
            keep_on_error: self.keep_on_error || self.on_error == OnError::Abort,
            test,
            shell_on_error: self.on_error == OnError::Shell,
            version: None,
        }
    }
}

/// Where and how to publish on AWS (`publish --to aws`, `publish-aws`, and after `--` of
/// `run`). What the image is comes from the catalog.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "AWS options")]
pub struct AwsTargetArgs {
    /// Region to upload and register in
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Regions to copy the AMI to (repeat or comma-separate)
    #[arg(long = "copy-to", value_name = "REGION", value_delimiter = ',')]
    pub copy_to: Vec<String>,
    /// Share with an account id, organization ARN or OU ARN (repeat or comma-separate)
    #[arg(long = "share-with", value_name = "PRINCIPAL", value_delimiter = ',', value_parser = parse_principal)]
    pub share_with: Vec<Principal>,
    /// Extra tag on AMIs and snapshots (repeat: --tag team=platform)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub tags: Vec<(String, String)>,
    /// AMI name template: {name} {family} {version} {arch} {bake_id} {timestamp}
    #[arg(long, default_value = DEFAULT_NAME_TEMPLATE)]
    pub name_template: String,
    /// AMI description [default: "<family> <version> baked by webake"]
    #[arg(long)]
    pub description: Option<String>,
    /// Register with NitroTPM v2.0 (needs UEFI)
    #[arg(long)]
    pub tpm: bool,
    /// Deprecate the AMIs at this time (RFC 3339, e.g. 2027-06-01T00:00:00Z)
    #[arg(long, value_name = "TIME")]
    pub deprecate_at: Option<jiff::Timestamp>,
    /// KMS key (ARN) to encrypt the uploaded snapshot
    #[arg(long, value_name = "ARN")]
    pub kms_key: Option<String>,
    /// KMS key for a copy region (repeat: --copy-kms-key eu-west-1=arn:…)
    #[arg(long = "copy-kms-key", value_name = "REGION=ARN", value_parser = parse_pair)]
    pub copy_kms_keys: Vec<(String, String)>,
    /// Root volume size in GiB [default: the disk size rounded up]
    #[arg(long, value_name = "GIB")]
    pub volume_size: Option<i64>,
    /// Blocks uploaded at once
    #[arg(long, default_value_t = webake_aws::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Endpoint for EC2 and EBS (a local test server); the SDK also honours AWS_ENDPOINT_URL
    #[arg(long, env = "WEBAKE_AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Named AWS profile [default: the standard credential chain]
    #[arg(long)]
    pub profile: Option<String>,
}

/// `run`'s AWS options, parsed from what follows `--`.
#[derive(Debug, clap::Parser)]
#[command(name = "webake run ... --", no_binary_name = true)]
pub struct TrailingAws {
    #[command(flatten)]
    pub target: AwsTargetArgs,
}

impl AwsTargetArgs {
    /// Any option that only means something for AWS given (the region may come from the
    /// environment, so it does not count).
    pub fn any_given(&self) -> bool {
        !self.copy_to.is_empty()
            || !self.share_with.is_empty()
            || !self.tags.is_empty()
            || self.name_template != DEFAULT_NAME_TEMPLATE
            || self.description.is_some()
            || self.tpm
            || self.deprecate_at.is_some()
            || self.kms_key.is_some()
            || !self.copy_kms_keys.is_empty()
            || self.volume_size.is_some()
    }

    pub fn target(&self) -> Result<AwsTarget, Error> {
        let region = self
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Error::Invalid("publishing to AWS needs --region (or AWS_REGION)".into())
            })?;
        // The template is checked now, not after a long bake.
        let sample = webake_aws::NameVars {
            name: "name".into(),
            family: "family".into(),
            version: "1".into(),
            arch: "x86_64".into(),
            bake_id: "bake".into(),
            timestamp: "20260101T000000Z".into(),
        };
        webake_aws::render_name(&self.name_template, &sample)
            .map_err(|e| Error::Invalid(format!("--name-template: {e}")))?;
        Ok(AwsTarget {
            region,
            copy_to: self.copy_to.clone(),
            share_with: self.share_with.clone(),
            tags: self.tags.clone(),
            name_template: self.name_template.clone(),
            description: self.description.clone(),
            tpm: self.tpm,
            deprecate_at: self.deprecate_at,
            kms_key: self.kms_key.clone(),
            copy_kms_keys: self
                .copy_kms_keys
                .iter()
                .cloned()
                .collect::<BTreeMap<_, _>>(),
            volume_size_gib: self.volume_size,
            concurrency: self.concurrency,
            client: webake_aws::ClientSettings {
                endpoint_url: self.endpoint_url.clone().filter(|u| !u.is_empty()),
                profile: self.profile.clone(),
                ..webake_aws::ClientSettings::default()
            },
        })
    }
}

pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn parse_principal(s: &str) -> Result<Principal, String> {
    s.parse().map_err(|e: webake_aws::Error| e.to_string())
}

/// How to roll out, once the image is known (shared by `rollout` and `run`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Rollout options")]
pub struct RolloutFlags {
    /// Branch to start from and propose to [default: the config's, else the repository HEAD]
    #[arg(long, value_name = "BRANCH")]
    pub base: Option<String>,
    /// Rollout config inside the repository
    #[arg(long, value_name = "PATH", default_value = webake_rollout::DEFAULT_CONFIG_PATH)]
    pub config: String,
    /// Select InstanceGroups by role instead of the config's rules (repeat; Node, Master, Bastion, …)
    #[arg(long, value_name = "ROLE")]
    pub role: Vec<String>,
    /// Select InstanceGroups by name (glob; repeat)
    #[arg(long = "instance-group", value_name = "NAME")]
    pub instance_group: Vec<String>,
    /// Select every InstanceGroup
    #[arg(long, conflicts_with_all = ["role", "instance_group"])]
    pub all_instance_groups: bool,
    /// Only InstanceGroups of this cluster (glob on the kops.k8s.io/cluster label)
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Region of the selected InstanceGroups, when their zones and subnets do not tell it
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Open the pull request on GitHub (OWNER/REPO); without a forge: branch, commit and push only
    #[arg(long, value_name = "OWNER/REPO")]
    pub github: Option<String>,
    /// GitHub API base URL (GitHub Enterprise: https://HOST/api/v3)
    #[arg(long, value_name = "URL", env = "WEBAKE_GITHUB_API", default_value = webake_rollout::GITHUB_API)]
    pub github_api: String,
    /// Open a merge request on GitLab (GROUP/PROJECT, subgroups allowed)
    #[arg(long, value_name = "GROUP/PROJECT", conflicts_with = "github")]
    pub gitlab: Option<String>,
    /// GitLab API base URL (self-managed: https://HOST/api/v4)
    #[arg(long, value_name = "URL", env = "WEBAKE_GITLAB_API", default_value = webake_rollout::GITLAB_API)]
    pub gitlab_api: String,
    /// Environment variable holding the forge token [default: WEBAKE_FORGE_TOKEN if set, else GITHUB_TOKEN or GITLAB_TOKEN]
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Roll out even when a reference points at a newer image of the same family
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Propose the image again although a reviewer closed its pull request (a new one is opened)
    #[arg(long)]
    pub reopen: bool,
    /// Label for the pull request (repeat)
    #[arg(long, value_name = "LABEL")]
    pub label: Vec<String>,
    /// Pull request title [default: Roll out IMAGE VERSION]
    #[arg(long)]
    pub title: Option<String>,
    /// Markdown file put at the top of the pull request body (the before/after and the table of
    /// references follow)
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<PathBuf>,
    /// Commit author, "Name <email>"
    #[arg(long, value_name = "NAME <EMAIL>", default_value = "webake <webake@localhost>", value_parser = parse_identity)]
    pub author: GitIdentity,
    /// Commit committer, "Name <email>" [default: the author]
    #[arg(long, value_name = "NAME <EMAIL>", value_parser = parse_identity)]
    pub committer: Option<GitIdentity>,
    /// Write the pull request URL to this file (empty when no pull request was opened; with
    /// --targets, one URL per line)
    #[arg(long, value_name = "FILE")]
    pub pr_url_file: Option<PathBuf>,
}

impl RolloutFlags {
    /// The engine's options (checks what can be checked without an image: a bad `--github`,
    /// `--region` without a selector, an unreadable `--body-file`).
    pub fn options(&self) -> Result<RolloutOptions, Error> {
        let rules = self.command_line_rules();
        if self.region.is_some() && rules.is_empty() {
            return Err(Error::Invalid(
                "--region applies to --role, --instance-group, --cluster or --all-instance-groups"
                    .into(),
            ));
        }
        let body_markdown = match &self.body_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::Invalid(format!("--body-file {}: {e}", path.display())))?,
            ),
            None => None,
        };
        Ok(RolloutOptions {
            base: self.base.clone(),
            config: self.config.clone(),
            rules,
            forge: self.forge()?,
            allow_downgrade: self.allow_downgrade,
            reopen: self.reopen,
            labels: self.label.clone(),
            title: self.title.clone(),
            body_markdown,
            author: self.author.clone(),
            committer: self.committer.clone(),
        })
    }

    fn forge(&self) -> Result<ForgeConfig, Error> {
        if let Some(slug) = &self.github {
            let (owner, repo) = slug
                .split_once('/')
                .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
                .ok_or_else(|| Error::Invalid(format!("--github {slug:?}: expected OWNER/REPO")))?;
            return Ok(ForgeConfig::GitHub {
                api_base: self.github_api.clone(),
                owner: owner.to_string(),
                repo: repo.to_string(),
                token_env: self
                    .token_env
                    .clone()
                    .unwrap_or_else(|| webake_rollout::default_token_env(false)),
            });
        }
        if let Some(project) = &self.gitlab {
            let parts: Vec<&str> = project.split('/').collect();
            if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(Error::Invalid(format!(
                    "--gitlab {project:?}: expected GROUP/PROJECT"
                )));
            }
            return Ok(ForgeConfig::GitLab {
                api_base: self.gitlab_api.clone(),
                project: project.clone(),
                token_env: self
                    .token_env
                    .clone()
                    .unwrap_or_else(|| webake_rollout::default_token_env(true)),
            });
        }
        Ok(ForgeConfig::None)
    }

    /// One instance-group rule from the selection flags; none when no flag is given (the
    /// repository config's rules apply then).
    fn command_line_rules(&self) -> Vec<Rule> {
        let selects = self.all_instance_groups
            || !self.role.is_empty()
            || !self.instance_group.is_empty()
            || self.cluster.is_some();
        if !selects {
            return Vec::new();
        }
        vec![Rule::InstanceGroup(InstanceGroupRule {
            cluster: self.cluster.clone(),
            names: self.instance_group.clone(),
            roles: self.role.clone(),
            all: self.all_instance_groups,
            region: self.region.clone(),
            ..Default::default()
        })]
    }
}

fn parse_identity(s: &str) -> Result<GitIdentity, String> {
    let bad = || format!("expected \"Name <email>\", got {s:?}");
    let (name, rest) = s.split_once('<').ok_or_else(bad)?;
    let email = rest.strip_suffix('>').ok_or_else(bad)?;
    let (name, email) = (name.trim(), email.trim());
    if name.is_empty() || email.is_empty() {
        return Err(bad());
    }
    Ok(GitIdentity {
        name: name.to_string(),
        email: email.to_string(),
    })
}

/// Write a result file for pipelines (atomically; its directory created).
pub fn write_result_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    webake_sys::fsutil::atomic_write(path, bytes).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse() {
        assert_eq!(
            parse_identity("Platform Bot <bot@example.com>").unwrap(),
            GitIdentity {
                name: "Platform Bot".into(),
                email: "bot@example.com".into()
            }
        );
        assert!(parse_identity("bot@example.com").is_err());
        assert!(parse_identity("<bot@example.com>").is_err());
    }
}
