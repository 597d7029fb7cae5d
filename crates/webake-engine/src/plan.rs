//! The plan of a bake, before anything runs: the base, every step with its cache key and why
//! it would run, the inputs digest. `bake --dry-run/--explain` print it; the bake executes it.

use std::path::Path;

use std::fmt::Write as _;

use serde::Serialize;
use webake_build::bake::{BasePlan, Plan};
use webake_build::bootstrap::HostSources;
use webake_spec::LoadedRecipe;

use crate::source_date::SourceDate;
use crate::{Context, Result, ResultExt};

/// A plan, and what the upstream check said of its base (Debian bases planned with a context)
/// and of the apt sources its steps added (when the family's newest image recorded some).
#[derive(Debug, Clone)]
pub struct Planned {
    pub plan: Plan,
    pub upstream: Option<crate::upstream::UpstreamReport>,
    pub step_sources: Option<crate::step_sources::StepSourcesReport>,
    /// The bake's source date and where it came from (`plan.source_date` is its value).
    pub source_date: SourceDate,
}

impl std::ops::Deref for Planned {
    type Target = Plan;
    fn deref(&self) -> &Plan {
        &self.plan
    }
}

/// Plan a recipe. A `base: {ami: ...}` is resolved to its root snapshot on AWS (nothing is
/// downloaded); a Debian base's sources are checked upstream to pick the base generation
/// ([`crate::upstream`]); `ctx == None` plans offline (for `validate`).
pub fn plan(ctx: Option<&Context<'_>>, recipe: &LoadedRecipe) -> Result<Planned> {
    let archs = recipe.architectures();
    if archs.len() > 1 {
        let names: Vec<String> = archs.iter().flatten().map(|a| a.to_string()).collect();
        return Err(crate::Error::Invalid(format!(
            "{} bakes {} architectures ({}): `webake bake` bakes each; name one with --arch",
            recipe.path.display(),
            archs.len(),
            names.join(", ")
        )));
    }
    let (base, upstream, source_date) = plan_base(ctx, recipe)?;
    let step_sources = match ctx {
        Some(ctx) => crate::step_sources::check(ctx, recipe)?,
        None => None,
    };
    let generation = step_sources
        .as_ref()
        .map(|s| s.generation.as_str())
        .filter(|g| !g.is_empty());
    let plan = webake_build::bake::plan_with_base_and(recipe, base, generation, source_date.epoch)
        .with_context(|| format!("planning {}", recipe.path.display()))?;
    Ok(Planned {
        plan,
        upstream,
        step_sources,
        source_date,
    })
}

/// The base, what upstream said of it, and the source date.
fn plan_base(
    ctx: Option<&Context<'_>>,
    recipe: &LoadedRecipe,
) -> Result<(
    BasePlan,
    Option<crate::upstream::UpstreamReport>,
    SourceDate,
)> {
    let prepared = |base: BasePlan| -> Result<_> {
        let sd = match ctx {
            Some(ctx) => crate::source_date::for_prepared(ctx, recipe, base.key())?,
            None => offline_date(recipe),
        };
        Ok((base, None, sd))
    };
    match &recipe.recipe.base {
        webake_spec::Base::Ami(a) => prepared(crate::base::plan_ami(ctx, a)?),
        webake_spec::Base::Image(q) => prepared(crate::base::plan_image(ctx, q)?),
        webake_spec::Base::Mmdebstrap(m) => {
            let host = HostSources::read(Path::new("/etc/apt"));
            let mirror = ctx.and_then(|c| c.settings.mirror.clone());
            let bs = webake_build::bootstrap::BootstrapPlan::new(m, &recipe.dir, mirror, &host)
                .with_context(|| format!("planning {}", recipe.path.display()))?;
            match ctx {
                Some(ctx) => {
                    let (bs, report, sd) = crate::upstream::choose_base(ctx, recipe, bs)?;
                    Ok((BasePlan::Mmdebstrap(Box::new(bs)), Some(report), sd))
                }
                None => {
                    let sd = offline_date(recipe);
                    let bs = bs.with_source_date(sd.epoch);
                    Ok((BasePlan::Mmdebstrap(Box::new(bs)), None, sd))
                }
            }
        }
    }
}

/// An offline plan (`validate`) does not look at caches or upstream.
fn offline_date(recipe: &LoadedRecipe) -> SourceDate {
    crate::source_date::explicit(None, recipe)
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            SourceDate::new(
                webake_build::bake::FALLBACK_SOURCE_DATE,
                "not decided (offline plan)",
            )
        })
}

/// What a bake would do, step by step (for `--dry-run`, `--explain` and their JSON).
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub recipe: String,
    pub family: String,
    pub base: BaseReport,
    pub steps: Vec<StepReport>,
    pub disk: String,
    /// Firmwares the disk boots under (`bios`, `uefi`).
    pub boot: Vec<String>,
    pub outputs: Vec<String>,
    pub inputs_digest: String,
    /// The source date and where it came from.
    pub source_date: SourceDate,
    /// Variable values (secrets shown as `(secret)`).
    pub variables: Vec<(String, String)>,
    /// What the upstream check said of the base (Debian bases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<crate::upstream::UpstreamReport>,
    /// What it said of the apt sources the steps added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_sources: Option<crate::step_sources::StepSourcesReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaseReport {
    /// True for a bootstrap (mmdebstrap), false for a prepared base (an AMI's root).
    pub bootstrap: bool,
    /// `mmdebstrap SUITE VARIANT [include]  mirror: ...` or the prepared base's description.
    pub what: String,
    pub key: String,
    pub cached: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub label: String,
    pub key: String,
    pub cached: bool,
    /// Why it would run (which input changed), when it would.
    pub why: Option<String>,
    pub inputs: Vec<(String, String)>,
}

/// Compare the plan with the caches: what would run, and why.
pub fn report(ctx: &Context<'_>, recipe: &LoadedRecipe, planned: &Planned) -> PlanReport {
    let plan = &planned.plan;
    let ws = &ctx.workspace;
    let cached =
        webake_build::bootstrap::cached_rootfs(&ws.bootstrap_dir(), plan.base.key()).is_some();
    let what = match &plan.base {
        BasePlan::Mmdebstrap(b) => format!(
            "mmdebstrap {} {} [{}]  mirror: {} ({})",
            b.suite,
            b.variant,
            b.include.join(","),
            b.mirror.as_deref().unwrap_or("default"),
            b.mirror_source
        ),
        BasePlan::Prepared { description, .. } => description.clone(),
    };
    let steps = plan
        .steps
        .iter()
        .map(|s| {
            let hit = ws.layers_dir().join(&s.key).join("meta.json").is_file();
            let explain = ws
                .cache_dir
                .join("explain")
                .join(recipe.family())
                .join(format!("step-{}.json", s.index));
            StepReport {
                label: s.label.clone(),
                key: s.key.clone(),
                cached: hit,
                why: (!hit).then(|| webake_build::steps::explain_miss(&explain, s, false)),
                inputs: s
                    .inputs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }
        })
        .collect();
    PlanReport {
        recipe: recipe.path.display().to_string(),
        family: recipe.family().to_string(),
        base: BaseReport {
            bootstrap: matches!(plan.base, BasePlan::Mmdebstrap(_)),
            what,
            key: plan.base.key().to_string(),
            cached,
        },
        steps,
        disk: recipe.recipe.disk.size.to_string(),
        boot: recipe
            .recipe
            .disk
            .boot
            .iter()
            .map(|b| b.as_str().to_string())
            .collect(),
        outputs: recipe
            .recipe
            .outputs
            .iter()
            .map(|o| o.extension().to_string())
            .collect(),
        inputs_digest: plan.inputs_digest.clone(),
        source_date: planned.source_date.clone(),
        variables: recipe
            .variables
            .iter()
            .map(|v| (v.name.clone(), v.display_value().to_string()))
            .collect(),
        upstream: planned.upstream.clone(),
        step_sources: planned.step_sources.clone(),
    }
}

/// The plan, one line per stage and step.
impl std::fmt::Display for PlanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self;
        let mut s = format!("plan for {} (family {})\n", r.recipe, r.family);
        let short = |k: &str| k[..12.min(k.len())].to_string();
        let (kind, miss) = if r.base.bootstrap {
            ("bootstrap", "would run")
        } else {
            ("base     ", "would download")
        };
        let _ = writeln!(
            s,
            "  {kind}  {}  key {}  {}",
            r.base.what,
            short(&r.base.key),
            if r.base.cached { "cache hit" } else { miss }
        );
        for st in &r.steps {
            let why = match &st.why {
                None => "cache hit".to_string(),
                Some(w) => format!("would run: {w}"),
            };
            let _ = writeln!(
                s,
                "  step       {}  key {}  {why}",
                st.label,
                short(&st.key)
            );
            for (k, v) in &st.inputs {
                let _ = writeln!(s, "               input {k} = {}", &v[..16.min(v.len())]);
            }
        }
        let _ = writeln!(
            s,
            "  assemble   disk {} ext4, boot {}, outputs {}",
            r.disk,
            r.boot.join(" + "),
            r.outputs.join(", ")
        );
        for (k, v) in &r.variables {
            let _ = writeln!(s, "  var        {k} = {v}");
        }
        if let Some(u) = &r.upstream {
            let _ = writeln!(s, "  upstream   {}", u.summary);
        }
        if let Some(u) = &r.step_sources {
            let _ = writeln!(s, "  upstream   {}", u.summary);
        }
        let _ = writeln!(s, "  source date   {}", r.source_date);
        let _ = writeln!(s, "  inputs digest {}", r.inputs_digest);
        f.write_str(&s)
    }
}
