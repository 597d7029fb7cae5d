//! webake-spec: the recipe format (v1), its validation, its variables, and its JSON Schema.
//!
//! # Errors
//!
//! Every error names the file, line and column and the field path
//! (`provisioners[0].shell.inline`), and says what is expected. One run reports every error
//! of a recipe (at most [`MAX_ERRORS`], as [`SpecError::Many`]): a value that fails is set
//! aside and reading goes on. Unknown fields and values get the closest known one ("did you
//! mean"). Problems that do not stop a bake (an unknown but plausible suite) are warnings,
//! in [`LoadedRecipe::warnings`].
//!
//! [`parse_str`] only reads text. [`load`] and [`load_with`] also read the files the recipe
//! names: each must exist and, unless `allow_paths_outside_recipe_dir: true`, stay inside the
//! recipe's directory once symlinks are resolved.
//!
//! # Variables
//!
//! A recipe declares `variables:` (name → `type: string|number|bool`, `default`,
//! `description`, `validation: {regex, message}`, `secret`). Values come from, highest
//! precedence first:
//!
//! 1. `--var NAME=VALUE` ([`VarInputs::cli`]; the last one for a name wins),
//! 2. `--var-file FILE.yaml` ([`VarInputs::files`]; a later file wins over an earlier one),
//! 3. the environment, `WEBAKE_VAR_NAME` ([`VarInputs::env`]; the name exactly as declared),
//! 4. the declaration's `default`.
//!
//! A variable with no value, a value of the wrong type or failing its `validation`, a value
//! for an undeclared variable (command line, var file), and a `{var.NAME}` naming no declared
//! variable are located errors. `{var.NAME}` is replaced in `image.version`,
//! `image.description`, shell `inline` and `env` values, file `source`, Ansible `extra_vars`
//! values and `test.checks` `run`/`expect_stdout`; anywhere else it is an error. `{{ ... }}`
//! (Jinja) is left alone. [`LoadedRecipe::recipe`] holds the replaced values,
//! [`LoadedRecipe::source`] the text as read, and [`LoadedRecipe::digest_input`] both (what a
//! build hashes). Secret values never appear in [`LoadedRecipe::variables`]'s display, in
//! [`LoadedRecipe::masked_recipe`] or in the digest input.

mod de;
mod inputs;
mod locate;
mod model;
mod size;
pub mod suggest;
mod template;
mod validate;
mod vars;
mod yaml;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use model::*;

/// In `base.mmdebstrap.include`: the Debian name of the architecture being baked.
pub const DEBIAN_ARCH_PLACEHOLDER: &str = "{debian_arch}";
pub use size::ByteSize;
pub use template::VersionTemplate;
pub use validate::{KNOWN_SUITES, check_source_date};
pub use vars::{ENV_PREFIX, ResolvedVariable, VarInputs, VarOrigin, is_name, parse_var_arg};

use locate::{Seg, render_path};
use vars::{Finding, Place};
use yaml::{Pos, Tree};

/// The only recipe format version.
pub const FORMAT_VERSION: u32 = 1;
/// Recipes larger than this are refused before parsing.
pub const MAX_RECIPE_BYTES: usize = 1 << 20;
/// Deepest YAML nesting accepted.
pub const MAX_DEPTH: usize = 32;
/// At most this many errors are reported at once.
pub const MAX_ERRORS: usize = 20;
/// Errors collected before giving up on a recipe (the rest are counted as omitted).
const COLLECT_ERRORS: usize = 200;

/// A path written in a recipe, relative to the recipe's directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecipePath(pub(crate) String);

impl RecipePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lexically normalized; `None` if it climbs above its base directory.
    pub(crate) fn normalized(&self) -> Option<PathBuf> {
        let mut out = PathBuf::new();
        for c in Path::new(&self.0).components() {
            match c {
                Component::Normal(p) => out.push(p),
                Component::CurDir => {}
                Component::ParentDir => {
                    if !out.pop() {
                        return None;
                    }
                }
                Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        Some(out)
    }
}

impl fmt::Display for RecipePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RecipePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RecipePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("path must not be empty"));
        }
        if s.contains('\0') {
            return Err(serde::de::Error::custom("path must not contain NUL"));
        }
        Ok(RecipePath(s))
    }
}

impl JsonSchema for RecipePath {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RecipePath".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "A path relative to the recipe's directory; it may not leave that directory unless allow_paths_outside_recipe_dir is set."
        })
    }
}

/// Where in which file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A recipe that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: cannot read recipe: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: recipe is {size} bytes; the limit is {MAX_RECIPE_BYTES}")]
    TooLarge { path: PathBuf, size: u64 },
    /// Syntax, type, unknown field or semantic error at a location (in the recipe or in a
    /// var file).
    #[error("{location}: {field}{message}", field = field_prefix(.field))]
    Invalid {
        location: SourceLocation,
        field: String,
        message: String,
    },
    /// A bad input from outside any file: a `--var` argument (`origin` = `--var NAME`) or an
    /// environment variable (`$WEBAKE_VAR_NAME`).
    #[error("{origin}: {message}")]
    Input { origin: String, message: String },
    /// Several errors (in the order of the inputs, then of the recipe text); `omitted` more
    /// were found but not kept.
    #[error("{}", many(.errors, *.omitted))]
    Many {
        errors: Vec<SpecError>,
        omitted: usize,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() || field == "." {
        String::new()
    } else {
        format!("{field}: ")
    }
}

fn many(errors: &[SpecError], omitted: usize) -> String {
    let mut s = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    if omitted > 0 {
        s.push_str(&format!(
            "\n... and {omitted} more error(s) not shown (at most {MAX_ERRORS} are reported at once)"
        ));
    }
    s
}

impl SpecError {
    /// The location of the (first) error, if it has one.
    pub fn location(&self) -> Option<&SourceLocation> {
        match self {
            Self::Invalid { location, .. } => Some(location),
            Self::Many { errors, .. } => errors.iter().find_map(Self::location),
            _ => None,
        }
    }

    /// The single errors (one, or those of [`SpecError::Many`]).
    pub fn errors(&self) -> Vec<&SpecError> {
        match self {
            Self::Many { errors, .. } => errors.iter().collect(),
            e => vec![e],
        }
    }
}

/// A problem that does not stop a recipe from being used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecWarning {
    pub location: Option<SourceLocation>,
    /// The field path, or the origin of an input (`$WEBAKE_VAR_X`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.location {
            write!(f, "{l}: ")?;
        }
        write!(f, "{}{}", field_prefix(&self.field), self.message)
    }
}

/// A parsed, validated recipe and where it came from.
#[derive(Clone)]
pub struct LoadedRecipe {
    /// The recipe file (as given).
    pub path: PathBuf,
    /// The directory relative paths are resolved against.
    pub dir: PathBuf,
    /// The exact bytes read. With variables, hash [`Self::digest_input`] instead: it also
    /// covers the values.
    pub source: String,
    /// The recipe, with `{var.NAME}` replaced by the values (secrets included: never print
    /// it; print [`Self::masked_recipe`]).
    pub recipe: Recipe,
    /// Every declared variable with its value and where the value came from, by name.
    pub variables: Vec<ResolvedVariable>,
    /// Problems that do not stop a bake (print them).
    pub warnings: Vec<SpecWarning>,
    masked: Recipe,
    secret_steps: BTreeSet<usize>,
}

impl fmt::Debug for LoadedRecipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedRecipe")
            .field("path", &self.path)
            .field("dir", &self.dir)
            .field("recipe", &self.masked)
            .field("variables", &self.variables)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl LoadedRecipe {
    /// Resolve a recipe path against the recipe directory.
    pub fn resolve(&self, p: &RecipePath) -> PathBuf {
        self.dir.join(&p.0)
    }

    /// The architectures this recipe bakes (see [`Recipe::architectures`]); `None` for a
    /// single base architecture webake has no AWS name for (say `armhf`).
    pub fn architectures(&self) -> Vec<Option<Architecture>> {
        if !self.recipe.architectures.is_empty() {
            return self.recipe.architectures.iter().map(|a| Some(*a)).collect();
        }
        match &self.recipe.base {
            Base::Mmdebstrap(m) => vec![Architecture::parse(m.arch())],
            _ => vec![Some(Architecture::host())],
        }
    }

    /// One recipe per architecture, each baking exactly one: `architectures` holds it, an
    /// mmdebstrap base names it, and `{debian_arch}` in the base's `include` is replaced.
    pub fn variants(&self) -> Vec<LoadedRecipe> {
        self.architectures()
            .into_iter()
            .map(|a| {
                let mut v = self.clone();
                for r in [&mut v.recipe, &mut v.masked] {
                    if let Some(a) = a {
                        r.architectures = vec![a];
                    }
                    if let Base::Mmdebstrap(m) = &mut r.base {
                        let debian = a.map_or_else(|| m.arch().to_string(), |a| a.debian().into());
                        for p in &mut m.include {
                            *p = p.replace(DEBIAN_ARCH_PLACEHOLDER, &debian);
                        }
                        m.architecture = Some(debian);
                    }
                }
                v
            })
            .collect()
    }

    /// The one architecture of a variant (or a single-architecture recipe).
    pub fn architecture(&self) -> Option<Architecture> {
        self.architectures().into_iter().next().flatten()
    }

    pub fn family(&self) -> &str {
        self.recipe
            .image
            .family
            .as_deref()
            .unwrap_or(&self.recipe.image.name)
    }

    /// What a build hashes as "the recipe": the text as read and, when the recipe declares
    /// variables, their resolved values (a secret as `(secret)`, so its value never reaches a
    /// digest; a step using one is not cacheable, see [`Self::step_uses_secret`]). Without
    /// variables it is exactly [`Self::source`], so existing digests do not change.
    pub fn digest_input(&self) -> Vec<u8> {
        let mut v = self.source.as_bytes().to_vec();
        if !self.variables.is_empty() {
            v.extend_from_slice(b"\n# webake resolved variables v1\n");
            for var in &self.variables {
                let shown = if var.secret {
                    "(secret)".to_string()
                } else {
                    serde_json::to_string(var.value()).expect("a string serializes")
                };
                v.extend_from_slice(format!("{}={shown}\n", var.name).as_bytes());
            }
        }
        v
    }

    /// The recipe with secret variables shown as `(secret NAME)`: for plans, logs, provenance
    /// and step cache keys.
    pub fn masked_recipe(&self) -> &Recipe {
        &self.masked
    }

    /// The values of secret variables (to redact from every output).
    pub fn secret_values(&self) -> Vec<&str> {
        self.variables
            .iter()
            .filter(|v| v.secret && !v.value().is_empty())
            .map(ResolvedVariable::value)
            .collect()
    }

    /// Whether step `index` (of `recipe.provisioners`) uses a secret variable: like a step with
    /// `secret_env`, it must not be cached.
    pub fn step_uses_secret(&self, index: usize) -> bool {
        self.secret_steps.contains(&index)
    }
}

/// Inputs of a load beyond the recipe file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub vars: VarInputs,
    /// The operator's allowlist of host environment variables a recipe may request as
    /// secrets (`shell.secret_env`): exact names, or prefixes ending in `*` (`AWS_*`). A request
    /// outside it is a validation error. `None`: no check (library callers that decided
    /// otherwise); the CLI always passes a list (`WEBAKE_SECRET_ENV`, empty by default).
    pub secret_env_allow: Option<Vec<String>>,
}

/// Does `name` match one of the allowlist's entries (`NAME` or `PREFIX*`)?
pub fn secret_env_allowed(allow: &[String], name: &str) -> bool {
    allow.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => a == name,
    })
}

/// Read, parse and validate a recipe file (no variable values but the defaults).
pub fn load(path: &Path) -> Result<LoadedRecipe, SpecError> {
    load_with(path, &LoadOptions::default())
}

/// Read, parse and validate a recipe file with variable values from outside.
pub fn load_with(path: &Path, options: &LoadOptions) -> Result<LoadedRecipe, SpecError> {
    let source = read_limited(path)?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    let a = analyze(&source, path, options, Some(&dir))?;
    Ok(LoadedRecipe {
        path: path.into(),
        dir,
        source,
        recipe: a.recipe,
        variables: a.variables,
        warnings: a.warnings,
        masked: a.masked,
        secret_steps: a.secret_steps,
    })
}

/// Parse and validate recipe text; `file` is only used in error messages. Variables get their
/// defaults; the files the recipe names are not looked at (see [`load`]).
pub fn parse_str(source: &str, file: &Path) -> Result<Recipe, SpecError> {
    analyze(source, file, &LoadOptions::default(), None).map(|a| a.recipe)
}

fn read_limited(path: &Path) -> Result<String, SpecError> {
    let meta = std::fs::metadata(path).map_err(|source| SpecError::Read {
        path: path.into(),
        source,
    })?;
    if meta.len() > MAX_RECIPE_BYTES as u64 {
        return Err(SpecError::TooLarge {
            path: path.into(),
            size: meta.len(),
        });
    }
    std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.into(),
        source,
    })
}

/// Read YAML text into a tree; a syntax error is a located error in `file`.
pub(crate) fn parse_tree(source: &str, file: &Path) -> Result<Tree, SpecError> {
    if source.len() > MAX_RECIPE_BYTES {
        return Err(SpecError::TooLarge {
            path: file.into(),
            size: source.len() as u64,
        });
    }
    let limits = yaml::Limits {
        max_depth: MAX_DEPTH,
        max_nodes: 20_000,
        max_aliases: 100,
        max_anchors: 100,
    };
    yaml::parse(source, &limits).map_err(|p| SpecError::Invalid {
        location: SourceLocation {
            file: file.into(),
            line: p.pos.line,
            column: p.pos.col,
        },
        field: render_path(&p.path),
        message: p.message,
    })
}

struct Analysis {
    recipe: Recipe,
    masked: Recipe,
    variables: Vec<ResolvedVariable>,
    warnings: Vec<SpecWarning>,
    secret_steps: BTreeSet<usize>,
}

/// The errors of one recipe, each converted to a located [`SpecError`] once.
struct Errors<'a> {
    file: &'a Path,
    tree: &'a Tree,
    dropped: &'a std::collections::HashSet<yaml::NodeId>,
    /// (order, error): inputs first, then recipe errors by position.
    list: Vec<((u8, u64, u64, usize), SpecError)>,
    /// Paths (as written) that already have an error: later checks of the same value are
    /// consequences, not news.
    taken: Vec<Vec<Seg>>,
}

impl<'a> Errors<'a> {
    fn locate(&self, typed: &[Seg]) -> (Pos, Vec<Seg>) {
        self.tree.locate(typed, &|id| self.dropped.contains(&id))
    }

    fn loc(&self, file: &Path, pos: Pos) -> SourceLocation {
        SourceLocation {
            file: file.into(),
            line: pos.line,
            column: pos.col,
        }
    }

    /// An error at a place as written; `take`: later errors at overlapping paths are dropped.
    fn at(&mut self, pos: Pos, path: Vec<Seg>, message: String) {
        let n = self.list.len();
        let e = SpecError::Invalid {
            location: self.loc(self.file, pos),
            field: render_path(&path),
            message,
        };
        self.taken.push(path);
        self.list.push(((1, pos.line, pos.col, n), e));
    }

    fn overlaps_taken(&self, path: &[Seg]) -> bool {
        self.taken.iter().any(|t| locate::overlaps(t, path))
    }

    /// An error at a field of the deserialized recipe, unless that value already has one.
    fn typed(&mut self, path: &[Seg], message: String) {
        let (pos, written) = self.locate(path);
        if !self.overlaps_taken(&written) {
            self.at(pos, written, message);
        }
    }

    fn finding(&mut self, f: Finding) {
        let n = self.list.len();
        match f.place {
            Place::Recipe(path) => self.typed(&path, f.message),
            Place::RecipeAt(pos, path) => {
                if !self.overlaps_taken(&path) {
                    self.at(pos, path, f.message);
                }
            }
            Place::File(file, pos, field) => {
                let e = SpecError::Invalid {
                    location: self.loc(&file, pos),
                    field,
                    message: f.message,
                };
                self.list.push(((0, 0, 0, n), e));
            }
            Place::Origin(origin) => {
                self.list.push((
                    (0, 0, 0, n),
                    SpecError::Input {
                        origin,
                        message: f.message,
                    },
                ));
            }
        }
    }

    fn warning(&self, f: Finding) -> SpecWarning {
        match f.place {
            Place::Recipe(path) => {
                let (pos, written) = self.locate(&path);
                SpecWarning {
                    location: Some(self.loc(self.file, pos)),
                    field: render_path(&written),
                    message: f.message,
                }
            }
            Place::RecipeAt(pos, path) => SpecWarning {
                location: Some(self.loc(self.file, pos)),
                field: render_path(&path),
                message: f.message,
            },
            Place::File(file, pos, field) => SpecWarning {
                location: Some(self.loc(&file, pos)),
                field,
                message: f.message,
            },
            Place::Origin(origin) => SpecWarning {
                location: None,
                field: origin,
                message: f.message,
            },
        }
    }

    fn into_result(mut self) -> Result<(), SpecError> {
        self.list.sort_by_key(|(k, _)| *k);
        let mut seen = BTreeSet::new();
        let mut errors: Vec<SpecError> = self
            .list
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| seen.insert(e.to_string()))
            .collect();
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            n => {
                let omitted = n.saturating_sub(MAX_ERRORS);
                errors.truncate(MAX_ERRORS);
                Err(SpecError::Many { errors, omitted })
            }
        }
    }
}

fn analyze(
    source: &str,
    file: &Path,
    options: &LoadOptions,
    dir: Option<&Path>,
) -> Result<Analysis, SpecError> {
    let inputs = &options.vars;
    let tree = parse_tree(source, file)?;
    let out = de::from_tree::<Recipe>(&tree, COLLECT_ERRORS);
    let mut errs = Errors {
        file,
        tree: &tree,
        dropped: &out.dropped,
        list: Vec::new(),
        taken: Vec::new(),
    };
    for p in tree.problems.iter().chain(&out.problems) {
        errs.at(p.pos, p.path.clone(), p.message.clone());
    }
    let Some(mut recipe) = out.value else {
        errs.into_result()?;
        // Not reached: a recipe that cannot be read has errors.
        return Err(SpecError::Invalid {
            location: SourceLocation {
                file: file.into(),
                line: 1,
                column: 1,
            },
            field: String::new(),
            message: "expected a recipe".into(),
        });
    };

    let res = vars::resolve(&recipe.variables, &tree, file, inputs, &read_limited)?;
    for f in res.findings.iter().cloned().chain(vars::misplaced(&tree)) {
        errs.finding(f);
    }
    let mut masked = recipe.clone();
    let applied = vars::apply(&mut recipe, &res, false);
    vars::apply(&mut masked, &res, true);
    for f in applied.findings {
        errs.finding(f);
    }
    for p in &applied.unresolved {
        let (_, written) = errs.locate(p);
        errs.taken.push(written);
    }

    let raw = |path: &[Seg]| {
        let (_, written) = tree.locate(path, &|id| out.dropped.contains(&id));
        tree.get(&written)
            .and_then(|n| n.scalar())
            .map(str::to_string)
    };
    let report = validate::validate(&recipe, &raw);
    for (path, message) in report.errors {
        errs.typed(&path, message);
    }
    if let Some(allow) = &options.secret_env_allow {
        for (i, p) in recipe.provisioners.iter().enumerate() {
            let Provisioner::Shell(sh) = p else { continue };
            for (j, name) in sh.secret_env.iter().enumerate() {
                if !secret_env_allowed(allow, name) {
                    errs.typed(
                        &[
                            Seg::Key("provisioners".into()),
                            Seg::Index(i),
                            Seg::Key("shell".into()),
                            Seg::Key("secret_env".into()),
                            Seg::Index(j),
                        ],
                        format!(
                            "the build host's operator does not allow recipes to read {name} as a secret; \
                             allowed: {} (set WEBAKE_SECRET_ENV, e.g. WEBAKE_SECRET_ENV={name})",
                            if allow.is_empty() {
                                "nothing".to_string()
                            } else {
                                allow.join(", ")
                            }
                        ),
                    );
                }
            }
        }
    }
    if let Some(dir) = dir {
        for (path, message) in inputs::check(&recipe, dir) {
            errs.typed(&path, message);
        }
    }
    let warnings: Vec<SpecWarning> = res
        .warnings
        .into_iter()
        .chain(report.warnings.into_iter().map(|(path, message)| Finding {
            place: Place::Recipe(path),
            message,
        }))
        .map(|f| errs.warning(f))
        .collect();
    errs.into_result()?;
    Ok(Analysis {
        recipe,
        masked,
        variables: res.values,
        warnings,
        secret_steps: applied.secret_steps,
    })
}

/// The JSON Schema of the recipe format, generated from the types.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Recipe);
    let mut s = serde_json::to_string_pretty(&schema).expect("schema serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_arch;
#[cfg(test)]
mod tests_inputs;
#[cfg(test)]
mod tests_vars;
