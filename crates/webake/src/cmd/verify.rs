//! `webake verify IMAGE`: rebake an image from its recorded inputs and compare the raw disks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use webake_engine::Context;
use webake_engine::verify::{VerifyOptions, VerifyReport};

use crate::args::VarArgs;
use crate::cmd::CmdResult;
use crate::output::Output;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 the rebake is identical, 6 it differs (or the inputs cannot be had \
again: the recipe changed, upstream moved), 2 invalid input. See docs/reproducible.md."
)]
pub struct VerifyArgs {
    /// Image id / `family:NAME` / `NAME:VERSION`
    pub image: String,
    /// The disk to compare instead of the image's raw artifact (e.g. an AMI's root snapshot
    /// downloaded with `coldsnap download`)
    #[arg(long, value_name = "FILE")]
    pub artifact: Option<PathBuf>,
    /// The recipe to rebake (default: the path the image records)
    #[arg(long, value_name = "FILE")]
    pub recipe: Option<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Rebake with the bootstrap and layer cache instead of empty caches (checks the assembly,
    /// not the steps)
    #[arg(long)]
    pub reuse_cache: bool,
    /// Keep the scratch workspace (the rebake and, on a difference, both extracted trees)
    #[arg(long)]
    pub keep: bool,
}

impl VerifyArgs {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        let (img, recorded) = webake_engine::verify::image_and_recipe(ctx, &self.image)?;
        let path = self.recipe.clone().unwrap_or(recorded);
        let loaded = self.vars.load(&path, ctx.reporter)?;
        // A recipe of several architectures: the variant of the image's.
        let variants = loaded.variants();
        let several = variants.len() > 1;
        let recipe = match variants
            .into_iter()
            .find(|v| v.architecture().is_some_and(|a| a.as_str() == img.arch))
        {
            Some(v) if several => v,
            _ => loaded,
        };
        let opts = VerifyOptions {
            artifact: self.artifact.clone(),
            reuse_cache: self.reuse_cache,
            keep: self.keep,
        };
        let report = webake_engine::verify::verify(ctx, &img, &recipe, &opts)?;
        out.result(&report, text)?;
        Ok(if report.identical {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(webake_engine::ErrorKind::NotReproduced.exit_code())
        })
    }
}

fn text(r: &VerifyReport) -> String {
    let how = if r.from_empty_caches {
        "from empty caches"
    } else {
        "with the layer cache"
    };
    if r.identical {
        let mut s = format!(
            "verified: image {} rebaked {how} in {:.1}s is identical to {}\n  raw sha256 {}\n",
            r.image,
            r.seconds,
            r.reference.display(),
            r.rebaked_sha256
        );
        if r.reference_sha256 != r.recorded_sha256 {
            s.push_str(&format!(
                "  (the catalog recorded {} for the image's own raw)\n",
                r.recorded_sha256
            ));
        }
        return s;
    }
    let mut s = format!(
        "NOT REPRODUCED: image {} rebaked {how} differs from {}\n  reference sha256 {}\n  rebake    sha256 {}\n  recorded  sha256 {}\n",
        r.image,
        r.reference.display(),
        r.reference_sha256,
        r.rebaked_sha256,
        r.recorded_sha256
    );
    if let Some(f) = &r.first_difference {
        s.push_str(&format!("  first difference at {f}\n"));
    }
    if r.differences.is_empty() {
        s.push_str("  the root trees are identical: the difference is in the disk's metadata\n");
    } else {
        s.push_str(&format!("  {} path(s) differ:\n", r.differences.len()));
        for d in r.differences.iter().take(50) {
            s.push_str(&format!("    {}  ({})\n", d.path, d.what));
        }
        if r.differences.len() > 50 {
            s.push_str(&format!(
                "    ... {} more (--json lists all)\n",
                r.differences.len() - 50
            ));
        }
    }
    if let Some(d) = &r.diffoscope {
        s.push_str("  diffoscope:\n");
        for l in d.lines() {
            s.push_str(&format!("    {l}\n"));
        }
    }
    if let Some(k) = &r.scratch {
        s.push_str(&format!("  scratch kept: {}\n", k.display()));
    }
    s
}
