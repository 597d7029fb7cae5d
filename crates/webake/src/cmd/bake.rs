//! `webake bake RECIPE...`: bake images into the local catalog. Several recipes are baked at
//! once, up to `--jobs` at a time, each with its own bake (record, log, scratch) and its
//! progress lines marked with its image name; a base or layer two of them share is built once
//! (the second waits for the first, see `webake_build::workspace::EntryLock`). One failing
//! does not stop the others.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use webake_engine::Context;
use webake_engine::bake::BakeOutcome;
use webake_spec::LoadedRecipe;

use crate::args::{BakeFlags, VarArgs};
use crate::cmd::CmdResult;
use crate::output::Output;

#[derive(Debug, Args)]
pub struct BakeArgs {
    /// The recipe file(s) (YAML); several are baked at once, sharing what they have in common
    #[arg(value_name = "RECIPE", required = true)]
    pub recipes: Vec<PathBuf>,
    /// With several recipes: how many bake at a time [default: the number of CPUs]
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Print the plan (steps, cache keys, why each would run) and do nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print, per step, whether the cache hits and which input changed (also in --dry-run)
    #[arg(long)]
    pub explain: bool,
    #[command(flatten)]
    pub flags: BakeFlags,
    /// Boot-test the image before recording it (a gate: a failing image is not recorded)
    #[arg(long)]
    pub test: bool,
    /// Write (append to) a Packer-compatible manifest.json (for teams migrating from Packer)
    #[arg(long, value_name = "PATH", alias = "manifest")]
    pub packer_manifest: Option<PathBuf>,
}

impl BakeArgs {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        // Every recipe is loaded (and its warnings shown) once, before anything is baked.
        let loaded: Vec<LoadedRecipe> = self
            .recipes
            .iter()
            .map(|p| self.vars.load(p, ctx.reporter))
            .collect::<Result<_, _>>()?;
        // A recipe of several architectures is one bake per architecture.
        let mut recipes: Vec<LoadedRecipe> =
            loaded.iter().flat_map(LoadedRecipe::variants).collect();
        if recipes.len() > 1 {
            return crate::cmd::bake_many::run(&self, ctx, out, recipes);
        }
        let recipe = recipes.remove(0);
        let plan = webake_engine::plan::plan(Some(ctx), &recipe)?;
        if self.dry_run || self.explain {
            let report = webake_engine::plan::report(ctx, &recipe, &plan);
            if self.dry_run {
                out.result(&report, ToString::to_string)?;
                return Ok(ExitCode::SUCCESS);
            }
            // --explain: the plan on stderr, the bake's result on stdout.
            if !out.quiet {
                eprint!("{report}");
            }
        }
        let outcome =
            webake_engine::bake::bake(ctx, &recipe, &plan, &self.flags.options(self.test))?;
        if let Some(p) = &self.packer_manifest {
            webake_engine::manifest::append_packer_manifest(
                p,
                &outcome.image,
                Duration::from_secs_f64(outcome.seconds),
            )?;
        }
        out.result(&outcome, outcome_text)?;
        Ok(ExitCode::SUCCESS)
    }
}

pub(crate) fn outcome_text(o: &BakeOutcome) -> String {
    let img = &o.image;
    let mut s = format!(
        "image {}  {} {}  (family {})\n",
        img.id, img.name, img.version, img.family
    );
    if o.up_to_date {
        let _ = writeln!(
            s,
            "  bake     {}  (up to date: nothing was baked)",
            o.bake_id
        );
    } else {
        let _ = writeln!(
            s,
            "  bake     {}  {:.1}s  log {}",
            o.bake_id,
            o.seconds,
            o.log.display()
        );
    }
    if let Some(k) = &img.kernel {
        let _ = writeln!(s, "  kernel   {k}");
    }
    if let Some(t) = &img.test_result {
        let _ = writeln!(s, "  boot test {t}");
    }
    for a in &img.artifacts {
        let _ = writeln!(
            s,
            "  {:<8} {}\n           sha256 {}  ({} bytes)",
            a.format,
            a.path.display(),
            a.sha256,
            a.size
        );
    }
    s
}
