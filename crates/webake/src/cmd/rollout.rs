//! `webake rollout`: propose an image in one cluster repository, or in each repository of a
//! targets file (branch, commit, push, pull request or merge request).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use webake_engine::rollout::ImageChoice;
use webake_engine::{Context, Error};
use webake_rollout::ImageReference;

use crate::args::{RolloutFlags, write_result_file};
use crate::cmd::CmdResult;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Catalog image to roll out: an id, `family:FAMILY` (its latest image) or `NAME:VERSION`
    #[arg(
        required_unless_present_any = ["to", "ami", "image_file"],
        conflicts_with_all = ["to", "ami", "image_file"]
    )]
    pub image: Option<String>,

    /// Read IMAGE from this file (as `webake run --no-rollout --image-id-file` writes it)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["to", "ami"])]
    pub image_file: Option<PathBuf>,

    /// Cluster repository: a local path or a URL git can clone and push to (or --targets)
    #[arg(
        long,
        value_name = "PATH|URL",
        default_value = "",
        hide_default_value = true
    )]
    pub repo: String,

    /// Rollout targets file: several cluster repositories (each with its forge, base branch,
    /// config and rules), one pull request each, and a summary table
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["repo", "github", "gitlab", "token_env"]
    )]
    pub targets: Option<PathBuf>,

    /// Roll out this reference instead of a catalog image (ami-…, owner/name, alias/name, ssm:…)
    #[arg(
        long,
        value_name = "REFERENCE",
        requires = "family",
        conflicts_with = "ami"
    )]
    pub to: Option<String>,

    /// Roll out per-region AMIs instead of a catalog image (repeat: --ami eu-west-1=ami-…)
    #[arg(long, value_name = "REGION=AMI", requires = "family", value_parser = parse_region_ami)]
    pub ami: Vec<(String, String)>,

    /// Image family (names the branch webake/FAMILY); required with --to and --ami
    #[arg(long)]
    pub family: Option<String>,

    /// Image version, for the title and commit message
    #[arg(long)]
    pub version: Option<String>,

    #[command(flatten)]
    pub options: RolloutFlags,

    /// Print the unified diff, then the pull request title and body, and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

impl RolloutArgs {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        if self.repo.is_empty() && self.targets.is_none() {
            return Err(Error::Invalid(
                "give the cluster repository (--repo) or a targets file (--targets)".into(),
            ));
        }
        let options = self.options.options()?;
        let image = webake_engine::rollout::resolve(ctx, &self.choice()?)?;
        let repo = if self.targets.is_some() {
            ""
        } else {
            &self.repo
        };
        let req = webake_engine::rollout::request(image, repo, &options, self.dry_run);
        if let Some(path) = &self.targets {
            let targets = webake_engine::rollout::load_targets(path)?;
            let outcomes = webake_engine::rollout::rollout_targets(ctx, &req, &targets)?;
            if let Some(file) = &self.options.pr_url_file {
                let text: String = outcomes
                    .iter()
                    .filter_map(|o| o.outcome.as_ref()?.pull_request.as_ref())
                    .map(|p| format!("{}\n", p.url))
                    .collect();
                write_result_file(file, text.as_bytes())?;
            }
            out.result(&outcomes, |outcomes| {
                let mut s = String::new();
                if self.dry_run {
                    for o in outcomes {
                        if let Some(outcome) = &o.outcome {
                            s.push_str(&format!("==> {}\n", o.repo));
                            s.push_str(&webake_engine::rollout::dry_run_text(outcome));
                            s.push('\n');
                        }
                    }
                }
                s.push_str(&webake_rollout::summary_table(outcomes));
                s
            })?;
            webake_engine::rollout::targets_result(&outcomes)?;
            return Ok(ExitCode::SUCCESS);
        }
        let outcome = webake_engine::rollout::rollout(ctx, &req)?;
        if let Some(path) = &self.options.pr_url_file {
            let url = outcome
                .pull_request
                .as_ref()
                .map(|pr| pr.url.as_str())
                .unwrap_or("");
            write_result_file(path, url.as_bytes())?;
        }
        out.result(&outcome, |o| {
            if self.dry_run {
                webake_engine::rollout::dry_run_text(o)
            } else {
                let mut s = webake_engine::rollout::summary_lines(o).join("\n");
                s.push('\n');
                s
            }
        })?;
        Ok(ExitCode::SUCCESS)
    }

    /// The image named on the command line: `--to`/`--ami` with `--family`, or a catalog image
    /// (IMAGE, or the id in `--image-file`).
    fn choice(&self) -> Result<ImageChoice, Error> {
        let reference = match (&self.to, self.ami.is_empty()) {
            (Some(r), _) => Some(ImageReference::Single(r.clone())),
            (None, false) => Some(ImageReference::PerRegion(
                self.ami.iter().cloned().collect::<BTreeMap<_, _>>(),
            )),
            (None, true) => None,
        };
        if let Some(reference) = reference {
            let family = self
                .family
                .clone()
                .ok_or_else(|| Error::Invalid("--family is required with --to and --ami".into()))?;
            return Ok(ImageChoice::Reference {
                reference,
                family,
                version: self.version.clone().unwrap_or_default(),
            });
        }
        let query = match (&self.image, &self.image_file) {
            (Some(image), _) => image.clone(),
            (None, Some(path)) => {
                let id = std::fs::read_to_string(path).map_err(|e| {
                    Error::Invalid(format!("reading the image id from {}: {e}", path.display()))
                })?;
                let id = id.trim().to_string();
                if id.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{} holds no image id",
                        path.display()
                    )));
                }
                id
            }
            (None, None) => {
                return Err(Error::Invalid(
                    "give an IMAGE from the catalog, or --to/--ami with --family".into(),
                ));
            }
        };
        Ok(ImageChoice::Catalog {
            query,
            version: self.version.clone(),
        })
    }
}

fn parse_region_ami(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((region, ami)) if !region.is_empty() && !ami.is_empty() => {
            Ok((region.to_string(), ami.to_string()))
        }
        _ => Err(format!("expected REGION=AMI, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_amis_parse() {
        assert_eq!(
            parse_region_ami("eu-west-1=ami-1").unwrap(),
            ("eu-west-1".into(), "ami-1".into())
        );
        assert!(parse_region_ami("eu-west-1").is_err());
    }
}
