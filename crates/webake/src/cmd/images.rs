//! `webake images list|show|diff|bakes`

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use webake_catalog::{ArtifactFormat, Image, Publication};
use webake_engine::{Context, Error};
use webake_inventory::human_bytes;

use crate::cmd::CmdResult;
use crate::output::Output;

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
    /// Only images of this family
    #[arg(long)]
    pub family: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Image id (or unique prefix), `family:NAME` for the latest of a family, or `NAME:VERSION`
    pub image: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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
    /// Output format (`--json` is `--format json`)
    #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
    pub format: DiffFormat,
}

#[derive(Debug, Args)]
pub struct BakesArgs {
    /// How many bakes to list (newest first)
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// A catalog query the user typed that matches nothing is invalid input.
pub fn find(ctx: &Context<'_>, query: &str) -> Result<Image, Error> {
    if !ctx.catalog_exists() {
        return Err(Error::Invalid(format!(
            "no image {query}: there is no catalog at {} yet (bake an image first)",
            ctx.settings.catalog.display()
        )));
    }
    ctx.catalog()?.find_image(query).map_err(|e| match e {
        webake_catalog::CatalogError::NotFound(_)
        | webake_catalog::CatalogError::Ambiguous { .. } => Error::Invalid(e.to_string()),
        e => e.into(),
    })
}

impl ImagesCommand {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        match self {
            Self::List(a) => {
                let imgs = if ctx.catalog_exists() {
                    ctx.catalog()?.list_images(a.family.as_deref())?
                } else {
                    vec![]
                };
                if imgs.is_empty() && !out.json {
                    match &a.family {
                        Some(f) => eprintln!(
                            "no image of family {f} in {}",
                            ctx.settings.catalog.display()
                        ),
                        None => eprintln!(
                            "no images in {} (bake one with `webake bake RECIPE`)",
                            ctx.settings.catalog.display()
                        ),
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                let summaries: Vec<Summary<'_>> = imgs.iter().map(Summary::of).collect();
                out.result(&summaries, |_| list_text(&imgs))?;
            }
            Self::Show(a) => {
                let img = find(ctx, &a.image)?;
                out.result(&img, show_text)?;
            }
            Self::Diff(a) => {
                let old = find(ctx, &a.a)?;
                let new = find(ctx, &a.b)?;
                let format = if out.json { DiffFormat::Json } else { a.format };
                fn inv(i: &Image) -> Result<&webake_catalog::Inventory, Error> {
                    i.inventory
                        .as_ref()
                        .ok_or_else(|| Error::Invalid(format!("image {} has no inventory", i.id)))
                }
                let d = webake_inventory::diff(inv(&old)?, inv(&new)?);
                let label = |i: &Image| {
                    let arch = if i.arch.is_empty() { "-" } else { &i.arch };
                    format!("{} {} {arch} ({})", i.name, i.version, i.id)
                };
                let text = match format {
                    DiffFormat::Text => {
                        let mut t = format!("{} -> {}\n", label(&old), label(&new));
                        if old.arch != new.arch {
                            t.push_str(&format!(
                                "note: the images are of different architectures ({} and {}): their packages differ by architecture\n",
                                old.arch, new.arch
                            ));
                        }
                        t + &d.to_text()
                    }
                    DiffFormat::Json => d.to_json(),
                    DiffFormat::Markdown => d.to_markdown(&label(&old), &label(&new)),
                };
                println!("{text}");
                if format != DiffFormat::Json {
                    print!("{}", updates_text(&new));
                }
            }
            Self::Bakes(a) => {
                let bakes = if ctx.catalog_exists() {
                    ctx.catalog()?.list_bakes(a.limit)?
                } else {
                    vec![]
                };
                out.result(&bakes, |bakes| {
                    let mut s = String::new();
                    for b in bakes {
                        let _ = writeln!(
                            s,
                            "{:<32} {:<10} {:<20} {:<17} {}",
                            b.id,
                            b.status.as_str(),
                            b.family,
                            b.image_id.as_deref().unwrap_or("-"),
                            b.log_path
                        );
                        if let Some(e) = &b.error {
                            let _ = writeln!(s, "    {}", e.lines().next().unwrap_or_default());
                        }
                    }
                    s
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `images list --json`: an image without its inventory and provenance.
#[derive(serde::Serialize)]
struct Summary<'a> {
    id: &'a str,
    name: &'a str,
    family: &'a str,
    version: &'a str,
    arch: &'a str,
    created_at: i64,
    kernel: Option<&'a str>,
    test_result: Option<webake_catalog::TestResult>,
    artifacts: &'a [webake_catalog::Artifact],
    publications: &'a [Publication],
    inputs_digest: &'a str,
}

impl<'a> Summary<'a> {
    fn of(i: &'a Image) -> Self {
        Self {
            id: &i.id,
            name: &i.name,
            family: &i.family,
            version: &i.version,
            arch: &i.arch,
            created_at: i.created_at,
            kernel: i.kernel.as_deref(),
            test_result: i.test_result,
            artifacts: &i.artifacts,
            publications: &i.publications,
            inputs_digest: &i.inputs_digest,
        }
    }
}

/// The upstream updates the newer image's bake brought, security first, with their
/// changelog entries and security tracker pages.
fn updates_text(img: &Image) -> String {
    let Some(u) = img
        .provenance
        .upstream
        .as_ref()
        .filter(|u| !u.updates.is_empty())
    else {
        return String::new();
    };
    let mut s = format!("\nupstream updates in {} ({}):\n", img.id, u.summary);
    for r in &u.updates {
        let mark = if r.security { " [security]" } else { "" };
        let _ = writeln!(s, "  {} {} -> {} ({}){mark}", r.name, r.old, r.new, r.suite);
        if let Some(t) = &r.tracker {
            let _ = writeln!(s, "    {t}");
        }
        for line in r.changelog.iter().flat_map(|c| c.lines()).take(6) {
            let _ = writeln!(s, "    {line}");
        }
    }
    s
}

fn list_text(imgs: &[Image]) -> String {
    let mut s = format!(
        "{:<17} {:<24} {:<20} {:<7} {:<18} {:>10}  TEST\n",
        "ID", "FAMILY", "VERSION", "ARCH", "CREATED", "SIZE"
    );
    for i in imgs {
        let size = i
            .artifact(ArtifactFormat::Qcow2)
            .or(i.artifacts.first())
            .map(|a| a.size)
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "{:<17} {:<24} {:<20} {:<7} {:<18} {:>10}  {}",
            i.id,
            i.family,
            i.version,
            if i.arch.is_empty() { "-" } else { &i.arch },
            created(i.created_at),
            human_bytes(size),
            i.test_result.map(|t| t.as_str()).unwrap_or("-")
        );
    }
    s
}

fn created(ts: i64) -> String {
    jiff::Timestamp::from_second(ts)
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn show_text(i: &Image) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "image      {}", i.id);
    let _ = writeln!(s, "name       {} {}", i.name, i.version);
    let _ = writeln!(s, "family     {}", i.family);
    if !i.arch.is_empty() {
        let _ = writeln!(s, "arch       {}", i.arch);
    }
    let _ = writeln!(s, "created    {} UTC", created(i.created_at));
    let _ = writeln!(s, "bake       {}", i.bake_id);
    if let Some(k) = &i.kernel {
        let _ = writeln!(s, "kernel     {k}");
    }
    let _ = writeln!(s, "tree size  {}", human_bytes(i.tree_size));
    let _ = writeln!(
        s,
        "boot test  {}",
        i.test_result.map(|t| t.as_str()).unwrap_or("not run")
    );
    let _ = writeln!(s, "inputs     {}", i.inputs_digest);
    let _ = writeln!(
        s,
        "recipe     {} (sha256 {})",
        Some(i.provenance.recipe.as_str())
            .filter(|r| !r.is_empty())
            .unwrap_or("?"),
        i.recipe_digest
    );
    if let Some(inv) = &i.inventory {
        let _ = writeln!(
            s,
            "contents   {}, {} packages",
            inv.os.pretty_name.as_deref().unwrap_or("?"),
            inv.packages.len()
        );
    }
    let _ = writeln!(s, "artifacts");
    for a in &i.artifacts {
        let _ = writeln!(
            s,
            "  {:<6} {}\n         sha256 {}  {}",
            a.format,
            a.path.display(),
            a.sha256,
            human_bytes(a.size)
        );
    }
    if i.publications.is_empty() {
        let _ = writeln!(s, "published  nowhere yet");
        return s;
    }
    let _ = writeln!(s, "published");
    for p in &i.publications {
        let _ = match p {
            Publication::Local { name, .. } => {
                writeln!(s, "  local  -              - -  ({name})")
            }
            Publication::Aws {
                region,
                ami_id,
                snapshot_id,
                name,
                ..
            } => writeln!(
                s,
                "  {:<6} {region:<14} {ami_id} {}  ({name})",
                "aws",
                snapshot_id.as_deref().unwrap_or("-")
            ),
        };
    }
    s
}
