//! Recipe variables: declared in `variables:`, given from outside, used as `{var.NAME}`.
//!
//! Precedence, highest first: `--var NAME=VALUE` (the last one wins), `--var-file FILE` (a
//! later file wins over an earlier one), the environment (`WEBAKE_VAR_NAME`, the name exactly
//! as declared), the declaration's `default`. A variable without any value is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::locate::{Seg, key, render_path};
use crate::model::{Provisioner, Recipe, VarType, VariableSpec};
use crate::suggest::{did_you_mean, list, unknown};
use crate::template::VersionTemplate;
use crate::yaml::{Kind, Pos, Tree};

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
    let mut findings = Vec::new();
    let mut warnings = Vec::new();
    let mut declared: BTreeSet<String> = decls.keys().cloned().collect();
    if let Some(n) = tree.get(&[key("variables")])
        && let Kind::Map(es) = &n.kind
    {
        declared.extend(es.iter().map(|e| e.key.clone()));
    }
    let vpath = |n: &str, rest: &[&str]| {
        let mut p = vec![key("variables"), key(n)];
        p.extend(rest.iter().map(|k| key(k)));
        p
    };
    let mut rules: BTreeMap<&str, Rule> = BTreeMap::new();
    let mut chosen: BTreeMap<&str, (String, VarOrigin)> = BTreeMap::new();
    for (name, d) in decls {
        if !is_name(name) {
            findings.push(at(
                vpath(name, &[]),
                format!(
                    "expected a variable name made of letters, digits and `_` (starting with a letter or `_`), found {name:?}"
                ),
            ));
            continue;
        }
        if let Some(v) = &d.validation {
            let built = |re: &str| regex::RegexBuilder::new(re).size_limit(1 << 20).build();
            // The user's pattern alone first, so that a syntax error quotes what they wrote.
            match built(&v.regex).and_then(|_| built(&format!("^(?:{})$", v.regex))) {
                Ok(regex) => {
                    rules.insert(
                        name,
                        Rule {
                            regex,
                            pattern: v.regex.clone(),
                            message: v.message.clone(),
                        },
                    );
                }
                Err(e) => {
                    let e = e.to_string();
                    let why = e.lines().last().unwrap_or_default().trim();
                    let why = why.strip_prefix("error: ").unwrap_or(why);
                    findings.push(at(
                        vpath(name, &["validation", "regex"]),
                        format!("expected a regular expression, found `{}`: {why}", v.regex),
                    ));
                }
            }
        }
        if let Some(def) = &d.default {
            let checked = check_value(d.kind, &def.0)
                .map_err(|m| format!("the default of {} variable `{name}`: {m}", d.kind.as_str()))
                .and_then(|()| {
                    rules
                        .get(name.as_str())
                        .map_or(Ok(()), |r| r.check(name, &def.0))
                });
            match checked {
                Ok(()) => {
                    chosen.insert(name, (def.0.clone(), VarOrigin::Default));
                }
                Err(m) => findings.push(at(vpath(name, &["default"]), m)),
            }
        }
    }
    let names: Vec<&str> = decls.keys().map(String::as_str).collect();
    let unknown = |name: &str| {
        if names.is_empty() {
            format!(
                "no variable `{name}` is declared: {} has no `variables:` block",
                recipe_file.display()
            )
        } else {
            format!(
                "no variable `{name}` is declared in {}{} (declared: {})",
                recipe_file.display(),
                did_you_mean(name, names.iter().copied()),
                list(names.iter().copied())
            )
        }
    };
    let mut accept = |name: &str,
                      value: String,
                      origin: VarOrigin,
                      place: Place,
                      findings: &mut Vec<Finding>| {
        let Some((decl_name, d)) = decls.get_key_value(name) else {
            findings.push(Finding {
                place,
                message: unknown(name),
            });
            return;
        };
        let checked = check_value(d.kind, &value)
            .map_err(|m| format!("{} variable `{name}`: {m}", d.kind.as_str()))
            .and_then(|()| rules.get(name).map_or(Ok(()), |r| r.check(name, &value)));
        match checked {
            Ok(()) => {
                chosen.insert(decl_name.as_str(), (value, origin));
            }
            Err(message) => findings.push(Finding { place, message }),
        }
    };
    // Lowest precedence first: later values replace earlier ones.
    for (k, v) in &inputs.env {
        let Some(name) = k.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if decls.contains_key(name) {
            accept(
                name,
                v.clone(),
                VarOrigin::Environment(k.clone()),
                Place::Origin(format!("${k}")),
                &mut findings,
            );
        } else {
            warnings.push(Finding {
                place: Place::Origin(format!("${k}")),
                message: format!("{} (ignored)", unknown(name)),
            });
        }
    }
    for f in &inputs.files {
        let text = read_file(f)?;
        let vt = crate::parse_tree(&text, f)?;
        let root = &vt.root;
        let entries = match &root.kind {
            Kind::Map(es) => es.as_slice(),
            _ if root.is_null() => &[],
            _ => {
                findings.push(Finding {
                    place: Place::File(f.clone(), root.pos, String::new()),
                    message: "expected a mapping of variable names to values".into(),
                });
                &[]
            }
        };
        for p in &vt.problems {
            findings.push(Finding {
                place: Place::File(f.clone(), p.pos, render_path(&p.path)),
                message: p.message.clone(),
            });
        }
        for e in entries {
            let value = match &e.value.kind {
                Kind::Scalar { text, .. } if !e.value.is_null() => text.clone(),
                _ => {
                    let kind = decls.get(&e.key).map_or("string", |d| d.kind.as_str());
                    findings.push(Finding {
                        place: Place::File(f.clone(), e.value.pos, e.key.clone()),
                        message: format!(
                            "expected a {kind} value, found {}",
                            match &e.value.kind {
                                Kind::Seq(_) => "a list",
                                Kind::Map(_) => "a mapping",
                                Kind::Scalar { .. } => "nothing (an empty value)",
                            }
                        ),
                    });
                    continue;
                }
            };
            accept(
                &e.key,
                value,
                VarOrigin::File(f.clone()),
                Place::File(f.clone(), e.key_pos, e.key.clone()),
                &mut findings,
            );
        }
    }
    for (k, v) in &inputs.cli {
        accept(
            k,
            v.clone(),
            VarOrigin::CommandLine,
            Place::Origin(format!("--var {k}")),
            &mut findings,
        );
    }
    let mut values = Vec::new();
    for (name, d) in decls {
        match chosen.remove(name.as_str()) {
            Some((value, origin)) => values.push(ResolvedVariable {
                name: name.clone(),
                kind: d.kind,
                secret: d.secret,
                origin,
                value,
            }),
            None if d.default.is_some() || !is_name(name) => {} // reported above
            None => findings.push(at(
                vpath(name, &[]),
                format!(
                    "variable `{name}` has no value: expected --var {name}=VALUE, a --var-file that sets it, ${ENV_PREFIX}{name}, or a `default`"
                ),
            )),
        }
    }
    Ok(Resolution {
        values,
        declared,
        findings,
        warnings,
    })
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
    let mut out = Applied::default();
    let values: BTreeMap<&str, &ResolvedVariable> =
        res.values.iter().map(|v| (v.name.as_str(), v)).collect();
    let names: Vec<&str> = res.declared.iter().map(String::as_str).collect();
    // Secrets end up in names, paths or the catalog through these fields.
    let public = |path: &[Seg]| {
        matches!(path, [Seg::Key(a), Seg::Key(b)] if a == "image" && (b == "version" || b == "description"))
            || matches!(path, [Seg::Key(a), _, Seg::Key(b), Seg::Key(c)] if a == "provisioners" && b == "file" && c == "source")
    };
    let one = |path: Vec<Seg>, text: &mut String, out: &mut Applied, version: bool| {
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
            match values.get(r.name) {
                Some(v) => {
                    if v.secret && public(&path) {
                        out.findings.push(at(
                            path.clone(),
                            format!(
                                "secret variable `{}` cannot be used in {}: its value would be recorded in image names, paths or the catalog; expected it only in shell inline/env, extra_vars or test checks",
                                r.name,
                                render_path(&path)
                            ),
                        ));
                        ok = false;
                        continue;
                    }
                    if version
                        && !v.value.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+')
                        })
                    {
                        out.findings.push(at(
                            path.clone(),
                            format!(
                                "variable `{}` is {:?}, which cannot be part of a version: expected letters, digits, '.', '-', '_' or '+'",
                                r.name,
                                v.display_value()
                            ),
                        ));
                        ok = false;
                        continue;
                    }
                    if v.secret {
                        if let [Seg::Key(p), Seg::Index(i), ..] = path.as_slice()
                            && p == "provisioners"
                        {
                            out.secret_steps.insert(*i);
                        }
                        if mask {
                            new.push_str(&format!("(secret {})", r.name));
                            continue;
                        }
                    }
                    new.push_str(&v.value);
                }
                None if res.declared.contains(r.name) => {
                    // No value (reported with the declaration): keep the reference.
                    out.unresolved.push(path.clone());
                    ok = false;
                }
                None => {
                    out.findings.push(at(
                        path.clone(),
                        if names.is_empty() {
                            format!(
                                "unknown variable `{}`: expected a variable declared in a `variables:` block (there is none)",
                                r.name
                            )
                        } else {
                            unknown("variable", r.name, names.iter().copied())
                        },
                    ));
                    ok = false;
                }
            }
        }
        if ok {
            new.push_str(&text[last..]);
            *text = new;
        } else {
            out.unresolved.push(path);
        }
    };

    if let Some(v) = r.image.version.as_mut()
        && v.variables().next().is_some()
    {
        let path = vec![key("image"), key("version")];
        let mut text = v.as_str().to_string();
        let before = out.findings.len() + out.unresolved.len();
        one(path.clone(), &mut text, &mut out, true);
        if out.findings.len() + out.unresolved.len() == before {
            match VersionTemplate::parse(&text) {
                Ok(t) => *v = t,
                Err(m) => out.findings.push(at(path, m)),
            }
        }
    }
    let mut fields: Vec<(Vec<Seg>, &mut String)> = Vec::new();
    if let Some(d) = r.image.description.as_mut() {
        fields.push((vec![key("image"), key("description")], d));
    }
    for (i, p) in r.provisioners.iter_mut().enumerate() {
        let base = |k: &str| vec![key("provisioners"), Seg::Index(i), key(k)];
        match p {
            Provisioner::Shell(s) => {
                for (j, l) in s.inline.iter_mut().enumerate() {
                    let mut path = base("shell");
                    path.extend([key("inline"), Seg::Index(j)]);
                    fields.push((path, l));
                }
                for (k, v) in s.env.iter_mut() {
                    let mut path = base("shell");
                    path.extend([key("env"), key(k)]);
                    fields.push((path, v));
                }
            }
            Provisioner::File(f) => {
                let mut path = base("file");
                path.push(key("source"));
                fields.push((path, &mut f.source.0));
            }
            Provisioner::AnsibleLocal(a) => {
                for (k, v) in a.extra_vars.iter_mut() {
                    let mut path = base("ansible-local");
                    path.extend([key("extra_vars"), key(k)]);
                    fields.push((path, v));
                }
            }
            Provisioner::Ansible(a) => {
                for (k, v) in a.extra_vars.iter_mut() {
                    let mut path = base("ansible");
                    path.extend([key("extra_vars"), key(k)]);
                    fields.push((path, v));
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
    for (path, text) in fields {
        one(path, text, &mut out, false);
    }
    if mask {
        out.findings.clear();
        for (name, d) in r.variables.iter_mut() {
            if d.secret && d.default.is_some() {
                d.default = Some(crate::model::VarDefault(format!("(secret {name})")));
            }
        }
    }
    out
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
