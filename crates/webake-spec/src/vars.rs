//! Recipe variables: declared in `variables:`, given from outside, used as `{var.NAME}`.
//!
//! Precedence, highest first: `--var NAME=VALUE` (the last one wins), `--var-file FILE` (a
//! later file wins over an earlier one), the environment (`WEBAKE_VAR_NAME`, the name exactly
//! as declared), the declaration's `default`. A variable without any value is an error.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::locate::{Seg, join, key, render_path};
use crate::model::{
    AnsibleLocalStep, AnsibleStep, Provisioner, Recipe, VarType, VarValidation, VariableSpec,
};
use crate::suggest::{did_you_mean, list, unknown};
use crate::template::VersionTemplate;
use crate::yaml::{Entry, Kind, Pos, Tree};

/// Environment variables named `WEBAKE_VAR_<name>` set variable `<name>`.
pub const ENV_PREFIX: &str = "WEBAKE_VAR_";

/// Values given to a recipe's variables from outside it.
#[derive(Debug, Clone, Default)]
pub struct VarInputs {
    /// `--var NAME=VALUE`, in command-line order.
    pub cli: Vec<(String, String)>,
    /// `--var-file FILE.yaml` (a mapping of names to values), in command-line order.
    pub files: Vec<PathBuf>,
    /// The process environment, or any part of it: only `WEBAKE_VAR_*` entries are read.
    pub env: Vec<(String, String)>,
}

/// Where a variable's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarOrigin {
    CommandLine,
    File(PathBuf),
    /// The environment variable's name.
    Environment(String),
    Default,
}

impl fmt::Display for VarOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CommandLine => f.write_str("--var"),
            Self::File(p) => write!(f, "--var-file {}", p.display()),
            Self::Environment(n) => write!(f, "${n}"),
            Self::Default => f.write_str("default"),
        }
    }
}

/// A variable with its value. `Debug` and [`Self::display_value`] never show a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedVariable {
    pub name: String,
    pub kind: VarType,
    pub secret: bool,
    pub origin: VarOrigin,
    value: String,
}

impl ResolvedVariable {
    /// The value itself (for a secret too: do not print it).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The value, or `(secret)`.
    pub fn display_value(&self) -> &str {
        if self.secret { "(secret)" } else { &self.value }
    }
}

impl fmt::Debug for ResolvedVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedVariable")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("secret", &self.secret)
            .field("origin", &self.origin)
            .field("value", &self.display_value())
            .finish()
    }
}

/// Split `NAME=VALUE` (for `--var`).
pub fn parse_var_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, v)) if is_name(n) => Ok((n.to_string(), v.to_string())),
        Some((n, _)) => Err(format!(
            "expected NAME=VALUE with NAME made of letters, digits and `_`, found the name {n:?}"
        )),
        None => Err(format!("expected NAME=VALUE, found {s:?}")),
    }
}

/// A variable name: a letter or `_`, then letters, digits or `_`.
pub fn is_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Where a problem with a variable is.
#[derive(Debug, Clone)]
pub(crate) enum Place {
    /// A field of the recipe (indices as deserialized).
    Recipe(Vec<Seg>),
    /// A place in the recipe (indices as written).
    RecipeAt(Pos, Vec<Seg>),
    /// A place in a var file.
    File(PathBuf, Pos, String),
    /// A command-line argument or an environment variable.
    Origin(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub place: Place,
    pub message: String,
}

fn at(path: Vec<Seg>, message: String) -> Finding {
    Finding {
        place: Place::Recipe(path),
        message,
    }
}

fn check_value(kind: VarType, v: &str) -> Result<(), String> {
    match kind {
        VarType::String => Ok(()),
        VarType::Number if is_number(v) => Ok(()),
        VarType::Number => Err(format!("expected a number such as 3 or 2.5, found {v:?}")),
        VarType::Bool if v == "true" || v == "false" => Ok(()),
        VarType::Bool => Err(format!("expected true or false, found {v:?}")),
    }
}

fn is_number(v: &str) -> bool {
    let t = v.strip_prefix('-').unwrap_or(v);
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => digits(a) && digits(b),
        None => digits(mantissa),
    };
    let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exp_ok && v.parse::<f64>().is_ok_and(f64::is_finite)
}

struct Rule {
    regex: regex::Regex,
    pattern: String,
    message: Option<String>,
}

impl Rule {
    /// The rule of a `validation:`; the error is the regex crate's reason.
    fn new(v: &VarValidation) -> Result<Self, String> {
        let built = |re: &str| regex::RegexBuilder::new(re).size_limit(1 << 20).build();
        // The user's pattern alone first, so that a syntax error quotes what they wrote.
        match built(&v.regex).and_then(|_| built(&format!("^(?:{})$", v.regex))) {
            Ok(regex) => Ok(Rule {
                regex,
                pattern: v.regex.clone(),
                message: v.message.clone(),
            }),
            Err(e) => {
                let e = e.to_string();
                let why = e.lines().last().unwrap_or_default().trim();
                Err(why.strip_prefix("error: ").unwrap_or(why).to_string())
            }
        }
    }

    fn check(&self, name: &str, v: &str) -> Result<(), String> {
        if self.regex.is_match(v) {
            return Ok(());
        }
        Err(match &self.message {
            Some(m) => format!(
                "{v:?} is not a valid value for `{name}`: {m} (expected a match of `{}`)",
                self.pattern
            ),
            None => format!(
                "{v:?} is not a valid value for `{name}`: expected a match of `{}`",
                self.pattern
            ),
        })
    }
}

/// The resolved variables, the problems found, and warnings.
pub(crate) struct Resolution {
    pub values: Vec<ResolvedVariable>,
    /// Every declared name, including declarations that failed to parse (their references are
    /// not "unknown").
    pub declared: BTreeSet<String>,
    pub findings: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

/// Resolve every declared variable from the inputs (see the module docs for the order).
pub(crate) fn resolve(
    decls: &BTreeMap<String, VariableSpec>,
    tree: &Tree,
    recipe_file: &Path,
    inputs: &VarInputs,
    read_file: &dyn Fn(&Path) -> Result<String, crate::SpecError>,
) -> Result<Resolution, crate::SpecError> {
    let mut r = Resolver::new(decls, recipe_file);
    for (name, d) in decls {
        r.declaration(name, d);
    }
    // Lowest precedence first: later values replace earlier ones.
    r.environment(&inputs.env);
    for f in &inputs.files {
        r.var_file(f, read_file)?;
    }
    for (k, v) in &inputs.cli {
        let place = Place::Origin(format!("--var {k}"));
        r.accept(k, v.clone(), VarOrigin::CommandLine, place);
    }
    Ok(r.finish(declared_names(decls, tree)))
}

/// Every declared name, including declarations that failed to parse (still in the tree).
fn declared_names(decls: &BTreeMap<String, VariableSpec>, tree: &Tree) -> BTreeSet<String> {
    let mut declared: BTreeSet<String> = decls.keys().cloned().collect();
    if let Some(n) = tree.get(&[key("variables")])
        && let Kind::Map(es) = &n.kind
    {
        declared.extend(es.iter().map(|e| e.key.clone()));
    }
    declared
}

/// `variables.NAME`, then `rest`.
fn var_path(name: &str, rest: &[&str]) -> Vec<Seg> {
    let mut p = vec![key("variables"), key(name)];
    p.extend(rest.iter().map(|k| key(k)));
    p
}

/// [`resolve`] under way: the validation rules, the value chosen so far for each variable, and
/// what was found wrong.
struct Resolver<'a> {
    decls: &'a BTreeMap<String, VariableSpec>,
    recipe_file: &'a Path,
    rules: BTreeMap<&'a str, Rule>,
    chosen: BTreeMap<&'a str, (String, VarOrigin)>,
    findings: Vec<Finding>,
    warnings: Vec<Finding>,
}

impl<'a> Resolver<'a> {
    fn new(decls: &'a BTreeMap<String, VariableSpec>, recipe_file: &'a Path) -> Self {
        Self {
            decls,
            recipe_file,
            rules: BTreeMap::new(),
            chosen: BTreeMap::new(),
            findings: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Check a declaration: its name, its validation regex (kept as a rule), and its default
    /// (the value unless a later input gives one).
    fn declaration(&mut self, name: &'a str, d: &VariableSpec) {
        if !is_name(name) {
            self.findings.push(at(
                var_path(name, &[]),
                format!(
                    "expected a variable name made of letters, digits and `_` (starting with a letter or `_`), found {name:?}"
                ),
            ));
            return;
        }
        if let Some(v) = &d.validation {
            match Rule::new(v) {
                Ok(rule) => {
                    self.rules.insert(name, rule);
                }
                Err(why) => self.findings.push(at(
                    var_path(name, &["validation", "regex"]),
                    format!("expected a regular expression, found `{}`: {why}", v.regex),
                )),
            }
        }
        if let Some(def) = &d.default {
            match self.check(name, d, &def.0, "the default of ") {
                Ok(()) => {
                    self.chosen
                        .insert(name, (def.0.clone(), VarOrigin::Default));
                }
                Err(m) => self.findings.push(at(var_path(name, &["default"]), m)),
            }
        }
    }

    /// Check a value against the variable's type and rule; `prefix` starts the message that
    /// names the variable.
    fn check(&self, name: &str, d: &VariableSpec, value: &str, prefix: &str) -> Result<(), String> {
        check_value(d.kind, value)
            .map_err(|m| format!("{prefix}{} variable `{name}`: {m}", d.kind.as_str()))
            .and_then(|()| {
                self.rules
                    .get(name)
                    .map_or(Ok(()), |r| r.check(name, value))
            })
    }

    /// The message for a value given to a variable the recipe does not declare.
    fn undeclared(&self, name: &str) -> String {
        let names = self.decls.keys().map(String::as_str);
        if self.decls.is_empty() {
            format!(
                "no variable `{name}` is declared: {} has no `variables:` block",
                self.recipe_file.display()
            )
        } else {
            format!(
                "no variable `{name}` is declared in {}{} (declared: {})",
                self.recipe_file.display(),
                did_you_mean(name, names.clone()),
                list(names)
            )
        }
    }

    /// A value given from outside: it replaces an earlier one if it is valid.
    fn accept(&mut self, name: &str, value: String, origin: VarOrigin, place: Place) {
        let Some((decl_name, d)) = self.decls.get_key_value(name) else {
            let message = self.undeclared(name);
            self.findings.push(Finding { place, message });
            return;
        };
        match self.check(name, d, &value, "") {
            Ok(()) => {
                self.chosen.insert(decl_name.as_str(), (value, origin));
            }
            Err(message) => self.findings.push(Finding { place, message }),
        }
    }

    /// `WEBAKE_VAR_NAME` entries; one for an undeclared variable is a warning only.
    fn environment(&mut self, env: &[(String, String)]) {
        for (k, v) in env {
            let Some(name) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let place = Place::Origin(format!("${k}"));
            if self.decls.contains_key(name) {
                self.accept(name, v.clone(), VarOrigin::Environment(k.clone()), place);
            } else {
                let message = format!("{} (ignored)", self.undeclared(name));
                self.warnings.push(Finding { place, message });
            }
        }
    }

    /// A `--var-file`: a mapping of names to scalar values.
    fn var_file(
        &mut self,
        f: &Path,
        read_file: &dyn Fn(&Path) -> Result<String, crate::SpecError>,
    ) -> Result<(), crate::SpecError> {
        let text = read_file(f)?;
        let vt = crate::parse_tree(&text, f)?;
        let root = &vt.root;
        let entries = match &root.kind {
            Kind::Map(es) => es.as_slice(),
            _ if root.is_null() => &[],
            _ => {
                self.findings.push(Finding {
                    place: Place::File(f.to_path_buf(), root.pos, String::new()),
                    message: "expected a mapping of variable names to values".into(),
                });
                &[]
            }
        };
        for p in &vt.problems {
            self.findings.push(Finding {
                place: Place::File(f.to_path_buf(), p.pos, render_path(&p.path)),
                message: p.message.clone(),
            });
        }
        for e in entries {
            match self.file_value(e) {
                Ok(value) => self.accept(
                    &e.key,
                    value,
                    VarOrigin::File(f.to_path_buf()),
                    Place::File(f.to_path_buf(), e.key_pos, e.key.clone()),
                ),
                Err(message) => self.findings.push(Finding {
                    place: Place::File(f.to_path_buf(), e.value.pos, e.key.clone()),
                    message,
                }),
            }
        }
        Ok(())
    }

    /// The value of a var file entry: a scalar, not a list, a mapping or nothing.
    fn file_value(&self, e: &Entry) -> Result<String, String> {
        let found = match &e.value.kind {
            Kind::Scalar { text, .. } if !e.value.is_null() => return Ok(text.clone()),
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Scalar { .. } => "nothing (an empty value)",
        };
        let kind = self.decls.get(&e.key).map_or("string", |d| d.kind.as_str());
        Err(format!("expected a {kind} value, found {found}"))
    }

    /// Every declared variable with its value; one without a value is a finding.
    fn finish(mut self, declared: BTreeSet<String>) -> Resolution {
        let mut values = Vec::new();
        for (name, d) in self.decls {
            match self.chosen.remove(name.as_str()) {
                Some((value, origin)) => values.push(ResolvedVariable {
                    name: name.clone(),
                    kind: d.kind,
                    secret: d.secret,
                    origin,
                    value,
                }),
                None if d.default.is_some() || !is_name(name) => {} // reported above
                None => self.findings.push(at(
                    var_path(name, &[]),
                    format!(
                        "variable `{name}` has no value: expected --var {name}=VALUE, a --var-file that sets it, ${ENV_PREFIX}{name}, or a `default`"
                    ),
                )),
            }
        }
        Resolution {
            values,
            declared,
            findings: self.findings,
            warnings: self.warnings,
        }
    }
}

/// A `{var.NAME}` in a text: the byte range and the name.
struct Ref<'a> {
    start: usize,
    end: usize,
    name: &'a str,
}

/// Every `{var.NAME}` in `s`. Jinja's `{{ ... }}` is left alone.
fn refs(s: &str) -> Result<Vec<Ref<'_>>, String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = s[from..].find("{var.").map(|i| i + from) {
        from = i + 1;
        if s[..i].ends_with('{') {
            continue;
        }
        let rest = &s[i + 5..];
        let close = rest.find('}');
        let name = close.map(|c| &rest[..c]);
        match name {
            Some(n) if is_name(n) => {
                let end = i + 5 + n.len() + 1;
                out.push(Ref {
                    start: i,
                    end,
                    name: n,
                });
                from = end;
            }
            _ => {
                let shown: String = s[i..].chars().take(30).collect();
                return Err(format!(
                    "expected a variable reference `{{var.NAME}}` (NAME made of letters, digits and `_`), found `{shown}`"
                ));
            }
        }
    }
    Ok(out)
}

/// Whether `{var.NAME}` is replaced in the field at `path`.
pub(crate) fn is_interpolated(path: &[Seg]) -> bool {
    let k: Vec<Option<&str>> = path
        .iter()
        .map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    matches!(
        k.as_slice(),
        [Some("image"), Some("version" | "description")]
            | [
                Some("provisioners"),
                None,
                Some("shell"),
                Some("inline"),
                None
            ]
            | [
                Some("provisioners"),
                None,
                Some("shell"),
                Some("env"),
                Some(_)
            ]
            | [Some("provisioners"), None, Some("file"), Some("source")]
            | [
                Some("provisioners"),
                None,
                Some("ansible-local" | "ansible"),
                Some("extra_vars"),
                Some(_)
            ]
            | [
                Some("test"),
                Some("checks"),
                None,
                Some("run" | "expect_stdout")
            ]
    )
}

/// Where variables may appear, for messages.
pub const INTERPOLATED_FIELDS: &str = "image.version, image.description, shell inline and env values, file source, extra_vars values, test.checks run and expect_stdout";

/// `{var.NAME}` written where it is not replaced.
pub(crate) fn misplaced(tree: &Tree) -> Vec<Finding> {
    let mut out = Vec::new();
    tree.root.walk(&mut Vec::new(), &mut |path, n| {
        let in_key = path
            .last()
            .is_some_and(|s| matches!(s, Seg::Key(k) if refs(k).is_ok_and(|r| !r.is_empty())));
        let in_value = matches!(&n.kind, Kind::Scalar { text, .. } if text.contains("{var.")
            && refs(text).is_ok_and(|r| !r.is_empty()));
        if in_key || (in_value && !is_interpolated(path)) {
            out.push((n.pos, path.to_vec()));
        }
    });
    out.into_iter()
        .map(|(pos, path)| Finding {
            place: Place::RecipeAt(pos, path),
            message: format!(
                "variables are not replaced in this field; expected `{{var.NAME}}` only in {INTERPOLATED_FIELDS}"
            ),
        })
        .collect()
}

/// What interpolation found.
#[derive(Default)]
pub(crate) struct Applied {
    pub findings: Vec<Finding>,
    /// Fields left with a reference to a variable that has no value (already reported).
    pub unresolved: Vec<Vec<Seg>>,
    /// Steps that use a secret variable.
    pub secret_steps: BTreeSet<usize>,
}

/// Replace `{var.NAME}` in the fields that allow it. With `mask`, secrets become
/// `(secret NAME)` (for display) and problems are not reported.
pub(crate) fn apply(r: &mut Recipe, res: &Resolution, mask: bool) -> Applied {
    let interpolator = Interpolator {
        values: res.values.iter().map(|v| (v.name.as_str(), v)).collect(),
        declared: &res.declared,
        mask,
    };
    let mut out = Applied::default();
    if let Some(v) = r.image.version.as_mut()
        && v.variables().next().is_some()
    {
        interpolator.version(v, &mut out);
    }
    for (path, text) in interpolated_fields(r) {
        interpolator.field(path, text, &mut out, false);
    }
    if mask {
        out.findings.clear();
        mask_secret_defaults(&mut r.variables);
    }
    out
}

/// The text fields where `{var.NAME}` is replaced, with their paths: those of
/// [`is_interpolated`] but `image.version` (a template of its own).
fn interpolated_fields(r: &mut Recipe) -> Vec<(Vec<Seg>, &mut String)> {
    let mut fields: Vec<(Vec<Seg>, &mut String)> = Vec::new();
    if let Some(d) = r.image.description.as_mut() {
        fields.push((vec![key("image"), key("description")], d));
    }
    for (i, p) in r.provisioners.iter_mut().enumerate() {
        let base = vec![key("provisioners"), Seg::Index(i), key(p.kind())];
        match p {
            Provisioner::Shell(s) => {
                for (j, l) in s.inline.iter_mut().enumerate() {
                    fields.push((join(&base, [key("inline"), Seg::Index(j)]), l));
                }
                for (k, v) in s.env.iter_mut() {
                    fields.push((join(&base, [key("env"), key(k)]), v));
                }
            }
            Provisioner::File(f) => fields.push((join(&base, [key("source")]), &mut f.source.0)),
            Provisioner::AnsibleLocal(AnsibleLocalStep { extra_vars, .. })
            | Provisioner::Ansible(AnsibleStep { extra_vars, .. }) => {
                for (k, v) in extra_vars.iter_mut() {
                    fields.push((join(&base, [key("extra_vars"), key(k)]), v));
                }
            }
        }
    }
    if let Some(t) = r.test.as_mut() {
        for (i, c) in t.checks.iter_mut().enumerate() {
            let path = |k: &str| vec![key("test"), key("checks"), Seg::Index(i), key(k)];
            fields.push((path("run"), &mut c.run));
            if let Some(e) = c.expect_stdout.as_mut() {
                fields.push((path("expect_stdout"), e));
            }
        }
    }
    fields
}

/// Shown instead of a secret variable's default.
fn mask_secret_defaults(variables: &mut BTreeMap<String, VariableSpec>) {
    for (name, d) in variables.iter_mut() {
        if d.secret && d.default.is_some() {
            d.default = Some(crate::model::VarDefault(format!("(secret {name})")));
        }
    }
}

/// Secrets end up in names, paths or the catalog through these fields.
fn is_public(path: &[Seg]) -> bool {
    matches!(path, [Seg::Key(a), Seg::Key(b)] if a == "image" && (b == "version" || b == "description"))
        || matches!(path, [Seg::Key(a), _, Seg::Key(b), Seg::Key(c)] if a == "provisioners" && b == "file" && c == "source")
}

/// Whether a value can be part of an image version.
fn fits_in_version(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
}

/// Replaces `{var.NAME}` with the resolved values.
struct Interpolator<'a> {
    values: BTreeMap<&'a str, &'a ResolvedVariable>,
    declared: &'a BTreeSet<String>,
    /// Secrets become `(secret NAME)`.
    mask: bool,
}

impl<'a> Interpolator<'a> {
    /// `image.version`: interpolated, then parsed again as a version template.
    fn version(&self, v: &mut VersionTemplate, out: &mut Applied) {
        let path = vec![key("image"), key("version")];
        let mut text = v.as_str().to_string();
        let before = out.findings.len() + out.unresolved.len();
        self.field(path.clone(), &mut text, out, true);
        if out.findings.len() + out.unresolved.len() == before {
            match VersionTemplate::parse(&text) {
                Ok(t) => *v = t,
                Err(m) => out.findings.push(at(path, m)),
            }
        }
    }

    /// Replace every reference in `text` (the field at `path`); when one cannot be replaced,
    /// `text` is left as it is and the field is unresolved.
    fn field(&self, path: Vec<Seg>, text: &mut String, out: &mut Applied, version: bool) {
        let found = match refs(text) {
            Ok(f) => f,
            Err(m) => {
                out.findings.push(at(path, m));
                return;
            }
        };
        if found.is_empty() {
            return;
        }
        let mut new = String::new();
        let mut last = 0;
        let mut ok = true;
        for r in &found {
            new.push_str(&text[last..r.start]);
            last = r.end;
            match self.replacement(r.name, &path, out, version) {
                Some(value) => new.push_str(&value),
                None => ok = false,
            }
        }
        if ok {
            new.push_str(&text[last..]);
            *text = new;
        } else {
            out.unresolved.push(path);
        }
    }

    /// What replaces `{var.NAME}` in the field at `path` (a `version` field); `None` when it
    /// cannot be replaced (a finding, unless the variable has no value: that was reported with
    /// its declaration). Records the steps that use a secret.
    fn replacement(
        &self,
        name: &str,
        path: &[Seg],
        out: &mut Applied,
        version: bool,
    ) -> Option<Cow<'a, str>> {
        let Some(&v) = self.values.get(name) else {
            if !self.declared.contains(name) {
                out.findings.push(at(path.to_vec(), self.unknown(name)));
            }
            return None;
        };
        if v.secret && is_public(path) {
            out.findings.push(at(
                path.to_vec(),
                format!(
                    "secret variable `{name}` cannot be used in {}: its value would be recorded in image names, paths or the catalog; expected it only in shell inline/env, extra_vars or test checks",
                    render_path(path)
                ),
            ));
            return None;
        }
        if version && !fits_in_version(&v.value) {
            out.findings.push(at(
                path.to_vec(),
                format!(
                    "variable `{name}` is {:?}, which cannot be part of a version: expected letters, digits, '.', '-', '_' or '+'",
                    v.display_value()
                ),
            ));
            return None;
        }
        if v.secret {
            if let [Seg::Key(p), Seg::Index(i), ..] = path
                && p == "provisioners"
            {
                out.secret_steps.insert(*i);
            }
            if self.mask {
                return Some(Cow::Owned(format!("(secret {name})")));
            }
        }
        Some(Cow::Borrowed(&v.value))
    }

    /// The message for a reference to a variable the recipe does not declare.
    fn unknown(&self, name: &str) -> String {
        if self.declared.is_empty() {
            format!(
                "unknown variable `{name}`: expected a variable declared in a `variables:` block (there is none)"
            )
        } else {
            unknown("variable", name, self.declared.iter().map(String::as_str))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_references_and_leaves_jinja_alone() {
        let r = refs("a {var.x} b {var.y_2}{var.x}").unwrap();
        assert_eq!(
            r.iter().map(|r| r.name).collect::<Vec<_>>(),
            vec!["x", "y_2", "x"]
        );
        assert!(refs("{{var.x}} {{ var.y }}").unwrap().is_empty());
        assert!(refs("echo {var.not-a-name}").is_err());
        assert!(refs("echo {var.x").is_err());
        assert!(refs("awk '{print $1}' ${HOME} {a,b}").unwrap().is_empty());
    }

    #[test]
    fn values_are_checked_by_type() {
        assert!(check_value(VarType::Number, "3").is_ok());
        assert!(check_value(VarType::Number, "-2.5e3").is_ok());
        assert!(check_value(VarType::Number, "three").is_err());
        assert!(check_value(VarType::Number, "1e999").is_err());
        assert!(check_value(VarType::Number, ".5").is_err());
        assert!(check_value(VarType::Bool, "true").is_ok());
        assert!(check_value(VarType::Bool, "yes").is_err());
        assert!(check_value(VarType::String, "").is_ok());
    }

    #[test]
    fn var_args_split_at_the_first_equals() {
        assert_eq!(
            parse_var_arg("a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
        assert!(parse_var_arg("novalue").is_err());
        assert!(parse_var_arg("bad-name=1").is_err());
    }

    #[test]
    fn interpolated_fields_are_the_documented_ones() {
        let p = |s: &[Seg]| is_interpolated(s);
        assert!(p(&[key("image"), key("version")]));
        assert!(p(&[
            key("provisioners"),
            Seg::Index(3),
            key("shell"),
            key("inline"),
            Seg::Index(0)
        ]));
        assert!(!p(&[key("image"), key("name")]));
        assert!(!p(&[
            key("provisioners"),
            Seg::Index(0),
            key("file"),
            key("destination")
        ]));
    }
}
