//! `webake shell`: an interactive shell in the step sandbox, on a recipe's tree after one of
//! its steps, or on a catalog image's root filesystem. Nothing it changes is kept.

use webake_build::bake::BakeLog;
use webake_build::workspace::BakeLease;
use webake_spec::LoadedRecipe;

use crate::events::BuildBridge;
use crate::{Context, Error, Result};

/// What to open a shell on.
pub enum ShellTarget<'a> {
    /// The recipe's tree after its first `steps` steps (cached or run as a bake would).
    Recipe {
        recipe: &'a LoadedRecipe,
        steps: usize,
    },
    /// A catalog image (id, `family:NAME`, ...): its root filesystem, extracted once into the
    /// bootstrap cache as a derived recipe's base would be.
    Image(&'a str),
}

/// Which step `after` names in `recipe`: a 1-based number, a step's name, or `base` (0).
/// `None`: every step.
pub fn steps_for(recipe: &LoadedRecipe, after: Option<&str>) -> Result<usize> {
    let provisioners = &recipe.recipe.provisioners;
    let Some(after) = after else {
        return Ok(provisioners.len());
    };
    if after == "base" || after == "0" {
        return Ok(0);
    }
    if let Ok(n) = after.parse::<usize>() {
        if (1..=provisioners.len()).contains(&n) {
            return Ok(n);
        }
        return Err(Error::Invalid(format!(
            "--after {n}: {} has steps 1 to {} (or `base`)",
            recipe.path.display(),
            provisioners.len()
        )));
    }
    let names: Vec<String> = provisioners
        .iter()
        .enumerate()
        .map(|(i, p)| webake_build::provision::step_label(i, p))
        .collect();
    let found = provisioners
        .iter()
        .position(|p| p.name() == Some(after))
        .or_else(|| names.iter().position(|l| l == after));
    found.map(|i| i + 1).ok_or_else(|| {
        Error::Invalid(format!(
            "--after {after:?}: no step of {} has that name; its steps: {}",
            recipe.path.display(),
            names.join(", ")
        ))
    })
}

/// Open the shell; returns its exit code.
pub fn shell(ctx: &Context<'_>, target: ShellTarget<'_>) -> Result<i32> {
    match target {
        ShellTarget::Recipe { recipe, steps } => on_recipe(ctx, recipe, steps, None),
        ShellTarget::Image(query) => {
            // The image is the base of a recipe with no steps.
            let img = if ctx.catalog_exists() {
                ctx.catalog()?
                    .find_image(query)
                    .map_err(|e| Error::Invalid(e.to_string()))?
            } else {
                return Err(Error::Invalid(format!(
                    "{query}: there is no catalog at {} (bake an image first)",
                    ctx.settings.catalog.display()
                )));
            };
            let dir = tempfile::Builder::new()
                .prefix("webake-shell.")
                .tempdir()
                .map_err(|e| Error::io(std::env::temp_dir(), e))?;
            let path = dir.path().join("shell.yaml");
            let text = format!(
                "version: 1\nimage:\n  name: shell\nbase:\n  image: {}\n",
                serde_json::to_string(img.id.as_str()).unwrap_or_default()
            );
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            let recipe = webake_spec::load(&path)?;
            let what = format!("image {} ({} {})", img.id, img.name, img.version);
            on_recipe(ctx, &recipe, 0, Some(&what))
        }
    }
}

fn on_recipe(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    steps: usize,
    what: Option<&str>,
) -> Result<i32> {
    let planned = crate::plan::plan(Some(ctx), recipe)?;
    let session = format!("shell-{}", crate::bake::new_bake_id());
    let ws = &ctx.workspace;
    ws.ensure()?;
    let log = BakeLog::create(&ws.bake_log_dir(&session).join("shell.log"))?;
    let _lease = BakeLease::acquire(&ws.cache_dir, &session, &session)?;
    crate::base::ensure(ctx, recipe, &planned, &session, false, &log)?;
    let host_env = |k: &str| std::env::var(k).ok();
    let bridge = BuildBridge(ctx.reporter);
    let req = webake_build::BakeRequest {
        recipe,
        plan: &planned.plan,
        bake_id: session.clone(),
        image_id: session.clone(),
        version: "shell".into(),
        workspace: ws,
        helper_exe: ctx.settings.helper_exe.clone(),
        cancel: ctx.cancel.clone(),
        reporter: &bridge,
        log: &log,
        keep_on_error: false,
        refresh_base: false,
        no_cache: false,
        host_env: &host_env,
        network: webake_build::provision::sandbox_network(recipe),
        secrets: webake_build::provision::recipe_secrets(recipe, &host_env),
        shell_on_error: false,
    };
    let code = webake_build::shell(&req, steps, what)?;
    let _ = std::fs::remove_dir_all(ws.bake_log_dir(&session));
    Ok(code)
}
