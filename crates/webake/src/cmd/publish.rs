//! `webake publish IMAGE [--to local|aws] [AWS options]`: publish a catalog image and record
//! where it went; `webake publish-aws --disk …`: the same upload for a disk outside the catalog.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use webake_aws::{Architecture, BootMode, ImagePlatform};
use webake_engine::publish::{AmiSource, Preview, Published, Target};
use webake_engine::{Context, Error};

use crate::args::AwsTargetArgs;
use crate::cmd::CmdResult;
use crate::output::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum To {
    /// Record the local artifacts as published (the default)
    Local,
    /// Upload through the EBS direct APIs and register an AMI
    Aws,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Image id, unique prefix, or `family:NAME`
    pub image: String,
    /// Where to publish
    #[arg(long, value_enum, default_value_t = To::Local)]
    pub to: To,
    #[command(flatten)]
    pub aws: AwsTargetArgs,
    /// With --to aws: print what would be published and call nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Append the publication to a Packer-compatible manifest.json (artifact_id
    /// `region:ami-…,…` as Packer's Amazon builders write it)
    #[arg(long, value_name = "PATH")]
    pub manifest: Option<PathBuf>,
}

impl PublishArgs {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        let target = match self.to {
            To::Local if self.aws.any_given() || self.dry_run => {
                return Err(Error::Invalid(
                    "AWS options (and --dry-run) need --to aws".into(),
                ));
            }
            To::Local => Target::Local,
            To::Aws => Target::Aws(Box::new(self.aws.target()?)),
        };
        let img = crate::cmd::images::find(ctx, &self.image)?;
        if let (Target::Aws(t), true) = (&target, self.dry_run) {
            let req = webake_engine::publish::request(&img, t)?;
            out.result(&Preview::of(&req), ToString::to_string)?;
            return Ok(ExitCode::SUCCESS);
        }
        let started = std::time::Instant::now();
        let published = webake_engine::publish::publish(ctx, &img, &target)?;
        if let Some(path) = &self.manifest {
            let img = ctx.catalog()?.find_image(img.id.as_str())?;
            webake_engine::manifest::append_packer_manifest(path, &img, started.elapsed())?;
        }
        out.result(&published, |p| published_text(&img, p))?;
        Ok(ExitCode::SUCCESS)
    }
}

fn published_text(img: &webake_catalog::Image, p: &Published) -> String {
    let Some(aws) = &p.aws else {
        let paths: Vec<String> = img
            .artifacts
            .iter()
            .map(|a| a.path.display().to_string())
            .collect();
        return format!("published {} locally: {}\n", img.id, paths.join(", "));
    };
    let mut s = format!("published {} as {}\n", img.id, aws.name);
    s.push_str(&regions_text(aws));
    s
}

fn regions_text(p: &webake_aws::Publication) -> String {
    let mut s = String::new();
    for (region, r) in &p.regions {
        let _ = writeln!(
            s,
            "  {region:<16} {}  {}{}",
            r.ami_id,
            r.snapshot_id,
            if r.reused {
                "  (already published)"
            } else {
                ""
            }
        );
    }
    s
}

/// `publish-aws`: a raw disk outside the catalog, described by flags.
#[derive(Debug, Args)]
pub struct PublishAwsArgs {
    /// Baked raw disk image to upload
    #[arg(long, value_name = "PATH")]
    pub disk: PathBuf,
    /// Image name (the recipe's name; `{name}` in the template)
    #[arg(long)]
    pub name: String,
    /// Image family (`{family}`)
    #[arg(long)]
    pub family: String,
    /// Image version (`{version}`)
    #[arg(long)]
    pub version: String,
    /// Bake id, tagged as webake:bake-id on every AMI and snapshot
    #[arg(long)]
    pub bake_id: String,
    /// Digest of the bake inputs, tagged as webake:inputs-digest; an AMI with the same name and
    /// digest is reused
    #[arg(long)]
    pub inputs_digest: String,
    /// CPU architecture of the image: x86_64 or arm64
    #[arg(long, default_value = "x86_64", value_parser = parse_arch)]
    pub arch: Architecture,
    /// Boot mode: uefi, uefi-preferred or legacy-bios
    #[arg(long, default_value = "uefi", value_parser = parse_boot_mode)]
    pub boot_mode: BootMode,
    /// Register without ENA support (ENA is on by default)
    #[arg(long)]
    pub no_ena: bool,
    #[command(flatten)]
    pub aws: AwsTargetArgs,
    /// Print what would be published and call nothing
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_arch(s: &str) -> Result<Architecture, String> {
    s.parse().map_err(|e: webake_aws::Error| e.to_string())
}

fn parse_boot_mode(s: &str) -> Result<BootMode, String> {
    s.parse().map_err(|e: webake_aws::Error| e.to_string())
}

impl PublishAwsArgs {
    fn source(&self) -> AmiSource {
        AmiSource {
            disk: self.disk.clone(),
            name: self.name.clone(),
            family: self.family.clone(),
            version: self.version.clone(),
            bake_id: self.bake_id.clone(),
            inputs_digest: self.inputs_digest.clone(),
            platform: ImagePlatform {
                architecture: self.arch,
                boot_mode: self.boot_mode,
                ena_support: !self.no_ena,
                imds_v2_only: true,
                tpm_support: false,
            },
        }
    }

    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        let target = self.aws.target()?;
        let req = webake_engine::publish::request_for(&self.source(), &target)?;
        if self.dry_run {
            out.result(&Preview::of(&req), ToString::to_string)?;
            return Ok(ExitCode::SUCCESS);
        }
        let p = webake_engine::publish::upload(ctx, &req, &target.client)?;
        out.result(&p, |p| {
            format!("AMI {:?} (run {})\n{}", p.name, p.run_id, regions_text(p))
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PublishAwsArgs,
    }

    fn parse(extra: &[&str]) -> PublishAwsArgs {
        let mut argv = vec![
            "publish-aws",
            "--disk",
            "d.raw",
            "--name",
            "web",
            "--family",
            "web",
            "--version",
            "1.2.3",
            "--bake-id",
            "b1",
            "--inputs-digest",
            "sha256:x",
            "--region",
            "us-east-1",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    fn request(a: &PublishAwsArgs) -> Result<webake_aws::PublishRequest, Error> {
        webake_engine::publish::request_for(&a.source(), &a.aws.target()?)
    }

    #[test]
    fn builds_the_request() {
        let args = parse(&[
            "--copy-to",
            "eu-west-1,eu-central-1",
            "--share-with",
            "111122223333",
            "--tag",
            "team=platform",
            "--boot-mode",
            "uefi-preferred",
            "--tpm",
            "--arch",
            "arm64",
        ]);
        let req = request(&args).unwrap();
        assert_eq!(req.name, "web-1.2.3-arm64");
        assert_eq!(req.copy_to, ["eu-west-1", "eu-central-1"]);
        assert_eq!(
            req.share_with,
            [webake_aws::Principal::Account("111122223333".into())]
        );
        assert_eq!(req.tags, [("team".to_string(), "platform".to_string())]);
        assert_eq!(req.platform.boot_mode, BootMode::UefiPreferred);
        assert_eq!(req.platform.architecture, Architecture::Arm64);
        assert!(req.platform.ena_support && req.platform.tpm_support);
    }

    #[test]
    fn rejects_bad_input() {
        let args = parse(&["--boot-mode", "legacy-bios", "--tpm"]);
        assert_eq!(
            request(&args).unwrap_err().kind(),
            webake_engine::ErrorKind::Invalid
        );
        let args = parse(&["--name-template", "{nope}"]);
        assert!(request(&args).is_err());
        assert!(Cli::try_parse_from(["x", "--share-with", "bob"]).is_err());
    }
}
