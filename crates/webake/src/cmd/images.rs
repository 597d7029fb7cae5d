//! `webake images list|show|diff`

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use webake_catalog::{Catalog, Image};

use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List images (newest first)
    List(ListArgs),
    /// Show one image: artifacts, digests, provenance, publications
    Show(ShowArgs),
    /// Compare two images: packages, kernel, size, provenance
    Diff(DiffArgs),
    /// List recent bakes, including failed ones, with their logs
    Bakes(BakesArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this family
    #[arg(long)]
    pub family: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Image id (or unique prefix), `family:NAME` for the latest of a family, or `NAME:VERSION`
    pub image: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DiffFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older image
    pub a: String,
    /// The newer image
    pub b: String,
    #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
    pub format: DiffFormat,
}

#[derive(Debug, Args)]
pub struct BakesArgs {
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

impl ImagesCommand {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let catalog = Catalog::open(&settings.catalog)?;
        match self {
            Self::List(a) => {
                let imgs = catalog.list_images(a.family.as_deref())?;
                if a.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &imgs.iter().map(summary).collect::<Vec<_>>()
                        )?
                    );
                } else if imgs.is_empty() {
                    eprintln!(
                        "no images in {} (bake one with `webake bake RECIPE`)",
                        settings.catalog.display()
                    );
                } else {
                    println!(
                        "{:<17} {:<24} {:<20} {:<18} {:>10}  TEST",
                        "ID", "FAMILY", "VERSION", "CREATED", "SIZE"
                    );
                    for i in &imgs {
                        let size = i
                            .artifacts
                            .iter()
                            .find(|a| a.format == "qcow2")
                            .or(i.artifacts.first())
                            .map(|a| a.size)
                            .unwrap_or(0);
                        println!(
                            "{:<17} {:<24} {:<20} {:<18} {:>10}  {}",
                            i.id,
                            i.family,
                            i.version,
                            created(i.created_at),
                            human(size),
                            i.test_result.as_deref().unwrap_or("-")
                        );
                    }
                }
            }
            Self::Show(a) => {
                let img = catalog.find_image(&a.image)?;
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&img)?);
                } else {
                    print_image(&img);
                }
            }
            Self::Diff(a) => {
                let old = catalog.find_image(&a.a)?;
                let new = catalog.find_image(&a.b)?;
                println!("{}", render_diff(&old, &new, a.format)?);
            }
            Self::Bakes(a) => {
                let bakes = catalog.list_bakes(a.limit)?;
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&bakes)?);
                } else {
                    for b in bakes {
                        println!(
                            "{:<32} {:<10} {:<20} {:<17} {}",
                            b.id,
                            format!("{:?}", b.status).to_lowercase(),
                            b.family,
                            b.image_id.as_deref().unwrap_or("-"),
                            b.log_path
                        );
                        if let Some(e) = b.error {
                            println!("    {}", e.lines().next().unwrap_or_default());
                        }
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

pub fn render_diff(old: &Image, new: &Image, format: DiffFormat) -> anyhow::Result<String> {
    let inv = |i: &Image| -> anyhow::Result<webake_inventory::Inventory> {
        let v = i
            .inventory
            .clone()
            .with_context(|| format!("image {} has no inventory", i.id))?;
        serde_json::from_value(v).with_context(|| format!("image {}: unreadable inventory", i.id))
    };
    let d = webake_inventory::diff(&inv(old)?, &inv(new)?);
    Ok(match format {
        DiffFormat::Text => d.to_text(),
        DiffFormat::Json => d.to_json(),
        DiffFormat::Markdown => d.to_markdown(
            &format!("{} {} ({})", old.name, old.version, old.id),
            &format!("{} {} ({})", new.name, new.version, new.id),
        ),
    })
}

fn summary(i: &Image) -> serde_json::Value {
    serde_json::json!({
        "id": i.id, "name": i.name, "family": i.family, "version": i.version, "created_at": i.created_at,
        "kernel": i.kernel, "test_result": i.test_result, "artifacts": i.artifacts, "publications": i.publications,
        "inputs_digest": i.inputs_digest,
    })
}

fn created(ts: i64) -> String {
    jiff::Timestamp::from_second(ts)
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

pub fn human(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn print_image(i: &Image) {
    println!("image      {}", i.id);
    println!("name       {} {}", i.name, i.version);
    println!("family     {}", i.family);
    println!("created    {} UTC", created(i.created_at));
    println!("bake       {}", i.bake_id);
    if let Some(k) = &i.kernel {
        println!("kernel     {k}");
    }
    println!("tree size  {}", human(i.tree_size));
    println!(
        "boot test  {}",
        i.test_result.as_deref().unwrap_or("not run")
    );
    println!("inputs     {}", i.inputs_digest);
    println!(
        "recipe     {} (sha256 {})",
        i.provenance
            .get("recipe")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
        i.recipe_digest
    );
    if let Some(inv) = &i.inventory {
        let n = inv
            .get("packages")
            .and_then(|p| p.as_array())
            .map(|a| a.len())
            .unwrap_or(0);
        let os = inv
            .pointer("/os/pretty_name")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        println!("contents   {os}, {n} packages");
    }
    println!("artifacts");
    for a in &i.artifacts {
        println!(
            "  {:<6} {}\n         sha256 {}  {}",
            a.format,
            a.path,
            a.sha256,
            human(a.size)
        );
    }
    if i.publications.is_empty() {
        println!("published  nowhere yet");
    } else {
        println!("published");
        for p in &i.publications {
            println!(
                "  {:<6} {:<14} {} {}  ({})",
                p.target,
                p.region,
                p.ami_id.as_deref().unwrap_or("-"),
                p.snapshot_id.as_deref().unwrap_or("-"),
                p.name
            );
        }
    }
}

/// Append to (or create) a Packer-style manifest.json.
pub fn append_packer_manifest(
    path: &Path,
    img: &Image,
    build_time: Duration,
) -> anyhow::Result<()> {
    let amis: Vec<String> = img
        .publications
        .iter()
        .filter_map(|p| p.ami_id.as_ref().map(|a| format!("{}:{a}", p.region)))
        .collect();
    let artifact_id = if amis.is_empty() {
        img.artifacts
            .first()
            .map(|a| a.path.clone())
            .unwrap_or_default()
    } else {
        amis.join(",")
    };
    let build = webake_inventory::PackerBuild {
        name: img.family.clone(),
        builder_type: "webake".into(),
        build_time: jiff::Timestamp::now().as_second(),
        files: Some(
            img.artifacts
                .iter()
                .map(|a| webake_inventory::PackerFile {
                    name: a.path.clone(),
                    size: a.size,
                })
                .collect(),
        ),
        artifact_id,
        packer_run_uuid: img.bake_id.clone(),
        custom_data: Some(
            [
                ("image_id".to_string(), img.id.clone()),
                ("version".to_string(), img.version.clone()),
                (
                    "build_seconds".to_string(),
                    build_time.as_secs().to_string(),
                ),
            ]
            .into_iter()
            .collect(),
        ),
    };
    webake_inventory::PackerManifest::append_to(path, build)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
