//! webake-spec: the recipe format (v1), its validation, and its JSON Schema.
//!
//! Parsing never touches the system beyond reading the recipe file itself. Every error names
//! the file, line and column and the field path (`provisioners[0].shell.inline`).

mod locate;
mod model;
mod size;
mod template;

use std::fmt;
use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use model::*;
pub use size::ByteSize;
pub use template::VersionTemplate;

/// The only recipe format version.
pub const FORMAT_VERSION: u32 = 1;
/// Recipes larger than this are refused before parsing.
pub const MAX_RECIPE_BYTES: usize = 1 << 20;
/// Deepest YAML nesting accepted.
pub const MAX_DEPTH: usize = 32;

/// A path written in a recipe, relative to the recipe's directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecipePath(String);

impl RecipePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lexically normalized; `None` if it climbs above its base directory.
    fn normalized(&self) -> Option<PathBuf> {
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
    /// Syntax, type, unknown field or semantic error at a location.
    #[error("{location}: {field}{message}", field = field_prefix(.field))]
    Invalid {
        location: SourceLocation,
        field: String,
        message: String,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() || field == "." {
        String::new()
    } else {
        format!("{field}: ")
    }
}

impl SpecError {
    pub fn location(&self) -> Option<&SourceLocation> {
        match self {
            Self::Invalid { location, .. } => Some(location),
            _ => None,
        }
    }
}

/// A parsed, validated recipe and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    /// The recipe file (as given).
    pub path: PathBuf,
    /// The directory relative paths are resolved against.
    pub dir: PathBuf,
    /// The exact bytes read (hashed into the bake's provenance).
    pub source: String,
    pub recipe: Recipe,
}

impl LoadedRecipe {
    /// Resolve a recipe path against the recipe directory.
    pub fn resolve(&self, p: &RecipePath) -> PathBuf {
        self.dir.join(&p.0)
    }

    pub fn family(&self) -> &str {
        self.recipe
            .image
            .family
            .as_deref()
            .unwrap_or(&self.recipe.image.name)
    }
}

/// Read, parse and validate a recipe file.
pub fn load(path: &Path) -> Result<LoadedRecipe, SpecError> {
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
    let source = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.into(),
        source,
    })?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    let recipe = parse_str(&source, path)?;
    Ok(LoadedRecipe {
        path: path.into(),
        dir,
        source,
        recipe,
    })
}

/// Parse and validate recipe text; `file` is only used in error messages.
pub fn parse_str(source: &str, file: &Path) -> Result<Recipe, SpecError> {
    if source.len() > MAX_RECIPE_BYTES {
        return Err(SpecError::TooLarge {
            path: file.into(),
            size: source.len() as u64,
        });
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = 20_000;
    budget.max_aliases = 100;
    budget.max_anchors = 100;
    let options = serde_saphyr::options! {
        budget: Some(budget),
        with_snippet: false,
        strict_booleans: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    let mut field = String::new();
    let parsed: Result<Recipe, serde_saphyr::Error> =
        serde_saphyr::with_deserializer_from_str_with_options(source, options, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                field = e.path().to_string();
                e.into_inner()
            })
        });
    let recipe = match parsed {
        Ok(r) => r,
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let message = strip_location(&e.to_string());
            return Err(SpecError::Invalid {
                location: SourceLocation {
                    file: file.into(),
                    line,
                    column,
                },
                field,
                message,
            });
        }
    };
    validate(&recipe).map_err(|(path, message)| {
        let (line, column) = locate::locate(source, &path).unwrap_or((1, 1));
        SpecError::Invalid {
            location: SourceLocation {
                file: file.into(),
                line,
                column,
            },
            field: locate::render_path(&path),
            message,
        }
    })?;
    Ok(recipe)
}

/// serde-saphyr appends " at line X column Y"; we print the location in front instead.
fn strip_location(msg: &str) -> String {
    let msg = msg.trim();
    if let Some(i) = msg.rfind(" at line ")
        && msg[i..].contains("column")
    {
        return msg[..i].to_string();
    }
    msg.to_string()
}

use locate::Seg;

type Invalid = (Vec<Seg>, String);

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// Semantic checks that types alone cannot express. Returns the field path and the message.
fn validate(r: &Recipe) -> Result<(), Invalid> {
    if r.version != FORMAT_VERSION {
        return Err((
            vec![key("version")],
            format!(
                "unsupported recipe version {}; this webake reads version {FORMAT_VERSION}",
                r.version
            ),
        ));
    }
    check_name(&r.image.name).map_err(|m| (vec![key("image"), key("name")], m))?;
    if let Some(f) = &r.image.family {
        check_name(f).map_err(|m| (vec![key("image"), key("family")], m))?;
    }
    if let Base::Mmdebstrap(m) = &r.base {
        let at = |k: &str| vec![key("base"), key("mmdebstrap"), key(k)];
        if m.suite.trim().is_empty()
            || !m
                .suite
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err((at("suite"), format!("invalid suite {:?}", m.suite)));
        }
        if ![
            "extract",
            "custom",
            "essential",
            "apt",
            "required",
            "minbase",
            "buildd",
            "important",
            "debootstrap",
            "standard",
        ]
        .contains(&m.variant.as_str())
        {
            return Err((
                at("variant"),
                format!("unknown mmdebstrap variant {:?}", m.variant),
            ));
        }
        for (i, p) in m.include.iter().enumerate() {
            if p.is_empty()
                || p.starts_with('-')
                || p.contains(|c: char| c.is_whitespace() || c == ',')
            {
                return Err((
                    vec![
                        key("base"),
                        key("mmdebstrap"),
                        key("include"),
                        Seg::Index(i),
                    ],
                    format!("invalid package name {p:?}"),
                ));
            }
        }
        if let Some(mirror) = &m.mirror
            && !(mirror.starts_with("http://")
                || mirror.starts_with("https://")
                || mirror.starts_with("file://"))
        {
            return Err((
                at("mirror"),
                format!("mirror must be an http(s):// or file:// URL, got {mirror:?}"),
            ));
        }
    }
    if let Base::Ami(a) = &r.base
        && !a.id.starts_with("ami-")
    {
        return Err((
            vec![key("base"), key("ami"), key("id")],
            format!("{:?} is not an AMI id (ami-…)", a.id),
        ));
    }
    let d = &r.disk;
    if !d.boot.contains(&BootMode::Uefi) {
        return Err((
            vec![key("disk"), key("boot")],
            "UEFI boot is required (add `uefi`)".into(),
        ));
    }
    const MIN_ROOT: u64 = 256 << 20;
    if d.esp_size.0 < 32 << 20 || d.esp_size.0 > 1 << 30 {
        return Err((
            vec![key("disk"), key("esp_size")],
            format!(
                "EFI system partition must be between 32MiB and 1GiB, got {}",
                d.esp_size
            ),
        ));
    }
    if d.size.0 < d.esp_size.0 + MIN_ROOT + (4 << 20) {
        return Err((
            vec![key("disk"), key("size")],
            format!(
                "disk size {} is too small: it must hold the {} EFI partition and at least 256MiB of root filesystem",
                d.size, d.esp_size
            ),
        ));
    }
    if d.size.0 > 2 << 40 {
        return Err((
            vec![key("disk"), key("size")],
            format!("disk size {} is larger than 2TiB", d.size),
        ));
    }
    if !d.size.0.is_multiple_of(1 << 20) {
        return Err((
            vec![key("disk"), key("size")],
            format!("disk size {} must be a whole number of MiB", d.size),
        ));
    }
    for (i, a) in d.kernel_cmdline.iter().enumerate() {
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            return Err((
                vec![key("disk"), key("kernel_cmdline"), Seg::Index(i)],
                format!("kernel argument {a:?} must be one word without quotes"),
            ));
        }
    }
    if r.outputs.is_empty() {
        return Err((
            vec![key("outputs")],
            "at least one output format is required".into(),
        ));
    }
    for (i, a) in r.network.allow.iter().enumerate() {
        NetworkAllow::parse(a)
            .map_err(|m| (vec![key("network"), key("allow"), Seg::Index(i)], m))?;
    }
    let allow_out = r.allow_paths_outside_recipe_dir;
    for (i, p) in r.provisioners.iter().enumerate() {
        let base = vec![key("provisioners"), Seg::Index(i), key(p.kind())];
        let at = |k: &str| {
            let mut v = base.clone();
            v.push(key(k));
            v
        };
        let check_path = |k: &str, rp: &RecipePath| -> Result<(), Invalid> {
            if Path::new(rp.as_str()).is_absolute() && !allow_out {
                return Err((
                    at(k),
                    format!(
                        "path {rp:?} is absolute; recipe paths are relative to the recipe's directory (set allow_paths_outside_recipe_dir: true to allow)",
                        rp = rp.as_str()
                    ),
                ));
            }
            if rp.normalized().is_none() && !allow_out {
                return Err((
                    at(k),
                    format!(
                        "path {:?} leaves the recipe's directory (set allow_paths_outside_recipe_dir: true to allow)",
                        rp.as_str()
                    ),
                ));
            }
            Ok(())
        };
        match p {
            Provisioner::Shell(s) => {
                if s.inline.is_empty() == s.script.is_none() {
                    return Err((
                        base.clone(),
                        "a shell step needs exactly one of `inline` or `script`".into(),
                    ));
                }
                if let Some(sc) = &s.script {
                    check_path("script", sc)?;
                }
                for k in s.env.keys().chain(s.secret_env.iter()) {
                    if k.is_empty()
                        || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        || k.starts_with(|c: char| c.is_ascii_digit())
                    {
                        return Err((
                            at("env"),
                            format!("invalid environment variable name {k:?}"),
                        ));
                    }
                }
            }
            Provisioner::File(f) => {
                check_path("source", &f.source)?;
                if !f.destination.starts_with('/') {
                    return Err((
                        at("destination"),
                        format!(
                            "destination {:?} must be an absolute path inside the image",
                            f.destination
                        ),
                    ));
                }
                if f.destination.split('/').any(|c| c == "..") {
                    return Err((
                        at("destination"),
                        format!("destination {:?} must not contain '..'", f.destination),
                    ));
                }
                if let Some(m) = &f.mode
                    && u32::from_str_radix(m, 8)
                        .map(|v| v > 0o7777)
                        .unwrap_or(true)
                {
                    return Err((
                        at("mode"),
                        format!("mode {m:?} is not an octal mode like \"0644\""),
                    ));
                }
                if let Some(o) = &f.owner {
                    let ok = o.split(':').count() <= 2
                        && o.split(':').all(|p| {
                            !p.is_empty()
                                && p.chars()
                                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                        });
                    if !ok {
                        return Err((
                            at("owner"),
                            format!("owner {o:?} must be `user` or `user:group`"),
                        ));
                    }
                }
            }
            Provisioner::AnsibleLocal(a) => {
                for pb in a.playbook_file.as_slice() {
                    check_path("playbook_file", pb)?;
                }
                for (k, v) in [
                    ("playbook_dir", &a.playbook_dir),
                    ("group_vars", &a.group_vars),
                    ("host_vars", &a.host_vars),
                    ("galaxy_file", &a.galaxy_file),
                ] {
                    if let Some(v) = v {
                        check_path(k, v)?;
                    }
                }
                for p in a.role_paths.iter() {
                    check_path("role_paths", p)?;
                }
                for p in a.collection_paths.iter() {
                    check_path("collection_paths", p)?;
                }
            }
            Provisioner::Ansible(a) => {
                for pb in a.playbook_file.as_slice() {
                    check_path("playbook_file", pb)?;
                }
                for (k, v) in [("group_vars", &a.group_vars), ("host_vars", &a.host_vars)] {
                    if let Some(v) = v {
                        check_path(k, v)?;
                    }
                }
                for p in a.role_paths.iter().chain(a.collection_paths.iter()) {
                    check_path("role_paths", p)?;
                }
            }
        }
    }
    if let Some(t) = &r.test
        && (t.timeout_secs == 0 || t.timeout_secs > 3600)
    {
        return Err((
            vec![key("test"), key("timeout_secs")],
            "timeout must be between 1 and 3600 seconds".into(),
        ));
    }
    Ok(())
}

fn check_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 100 {
        return Err(format!("name {n:?} must be 1 to 100 characters"));
    }
    if !n
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
        || !n.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "name {n:?} may only contain lowercase letters, digits, '-', '.', '_' and must start with a letter or digit"
        ));
    }
    Ok(())
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
