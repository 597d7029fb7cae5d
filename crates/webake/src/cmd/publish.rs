//! `webake publish IMAGE --to local|aws [AWS options]`: publish a catalog image and record
//! where it went.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, ValueEnum};
use webake_catalog::{Catalog, Image, Publication};

use crate::cmd::publish_aws::PublishAwsArgs;
use crate::exit::{INVALID_INPUT, PUBLISH_FAILED, coded};
use crate::settings::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Record the local artifacts as published (the default)
    Local,
    /// Upload through the EBS direct APIs and register an AMI
    Aws,
}

#[derive(Debug, Args)]
#[command(
    after_help = "AWS options (after --to aws) are those of `webake publish-aws --help` except --disk, --name, --family, --version, --bake-id and --inputs-digest, which come from the catalog."
)]
pub struct PublishArgs {
    /// Image id, unique prefix, or `family:NAME`
    pub image: String,
    #[arg(long, value_enum, default_value_t = Target::Local)]
    pub to: Target,
    /// Options for the target (e.g. --region eu-west-1 --copy-to us-east-1)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "TARGET OPTIONS"
    )]
    pub target_args: Vec<String>,
}

#[derive(Debug, Parser)]
#[command(name = "webake publish --to aws", no_binary_name = false)]
struct AwsWrapper {
    #[command(flatten)]
    args: PublishAwsArgs,
}

impl PublishArgs {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let catalog = Catalog::open(&settings.catalog)?;
        let img = catalog.find_image(&self.image)?;
        match self.to {
            Target::Local => {
                if !self.target_args.is_empty() {
                    return Err(coded(
                        INVALID_INPUT,
                        anyhow::anyhow!("--to local takes no options, got {:?}", self.target_args),
                    ));
                }
                publish_local(&catalog, &img)?;
                println!(
                    "published {} locally: {}",
                    img.id,
                    img.artifacts
                        .iter()
                        .map(|a| a.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Target::Aws => {
                let args = aws_args(&img, &self.target_args)?;
                let req = args.request()?;
                if args.dry_run {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({"name": req.name, "region": req.region, "copy_to": req.copy_to, "disk": req.disk})
                        )?
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let p = publish_aws(&catalog, &img, &args, &req, settings)?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&p)?);
                } else {
                    println!("published {} as {}", img.id, p.name);
                    for (region, r) in &p.regions {
                        println!(
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
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Record the local artifacts of `img` as published (idempotent).
pub fn publish_local(catalog: &Catalog, img: &Image) -> anyhow::Result<()> {
    let a = img.artifacts.first().context("image has no artifacts")?;
    catalog.add_publication(
        &img.id,
        &Publication {
            target: "local".into(),
            region: "-".into(),
            ami_id: None,
            snapshot_id: None,
            name: a.path.clone(),
            created_at: jiff::Timestamp::now().as_second(),
        },
    )?;
    Ok(())
}

/// Publish `img` to AWS as `req` describes (an AMI with the same name and inputs digest is
/// reused) and record each region's AMI in the catalog. Errors carry exit code 4 (or 130).
pub fn publish_aws(
    catalog: &Catalog,
    img: &Image,
    args: &PublishAwsArgs,
    req: &webake_aws::PublishRequest,
    settings: &Settings,
) -> anyhow::Result<webake_aws::Publication> {
    let p = args.publish(req, settings)?;
    let now = jiff::Timestamp::now().as_second();
    for (region, r) in &p.regions {
        catalog
            .add_publication(
                &img.id,
                &Publication {
                    target: "aws".into(),
                    region: region.clone(),
                    ami_id: Some(r.ami_id.clone()),
                    snapshot_id: Some(r.snapshot_id.clone()),
                    name: p.name.clone(),
                    created_at: now,
                },
            )
            .map_err(|e| {
                coded(
                    PUBLISH_FAILED,
                    anyhow::Error::new(e).context(format!(
                        "recording AMI {} of {region} in the catalog",
                        r.ami_id
                    )),
                )
            })?;
    }
    Ok(p)
}

/// The publish-aws arguments for a catalog image plus the user's target options.
pub fn aws_args(img: &Image, extra: &[String]) -> anyhow::Result<PublishAwsArgs> {
    let raw = img
        .artifacts
        .iter()
        .find(|a| a.format == "raw")
        .context("AWS publishing needs the raw artifact; add `raw` to the recipe's outputs")?;
    let mut argv: Vec<String> = vec!["webake-publish".into()];
    for (k, v) in [
        ("--disk", raw.path.clone()),
        ("--name", img.name.clone()),
        ("--family", img.family.clone()),
        ("--version", img.version.clone()),
        ("--bake-id", img.bake_id.clone()),
        ("--inputs-digest", img.inputs_digest.clone()),
    ] {
        argv.push(k.into());
        argv.push(v);
    }
    for e in extra {
        if [
            "--disk",
            "--name",
            "--family",
            "--version",
            "--bake-id",
            "--inputs-digest",
        ]
        .iter()
        .any(|f| e == f || e.starts_with(&format!("{f}=")))
        {
            return Err(coded(
                INVALID_INPUT,
                anyhow::anyhow!("{e} comes from the catalog image and cannot be given"),
            ));
        }
        argv.push(e.clone());
    }
    let w = AwsWrapper::try_parse_from(argv)
        .map_err(|e| coded(INVALID_INPUT, anyhow::anyhow!("{e}")))?;
    Ok(w.args)
}

#[allow(dead_code)]
fn _path(p: &str) -> PathBuf {
    PathBuf::from(p)
}
