//! Image version templates: `{date}`, `{time}`, `{timestamp}`, `{var.NAME}` and literal text.
//!
//! `{var.NAME}` is replaced by the variable's value when the recipe is loaded; a template that
//! still holds one renders it literally.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionTemplate {
    raw: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Date,
    Time,
    Timestamp,
    Var(String),
}

pub const PLACEHOLDERS: &[&str] = &["date", "time", "timestamp"];

impl VersionTemplate {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in version template {raw:?}"))?
                + open;
            let name = &rest[open + 1..close];
            parts.push(match name {
                "date" => Part::Date,
                "time" => Part::Time,
                "timestamp" => Part::Timestamp,
                v if v.strip_prefix("var.").is_some_and(crate::vars::is_name) => {
                    Part::Var(v["var.".len()..].to_string())
                }
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} in version template {raw:?}{}; expected {}, {{var.NAME}} or literal text",
                        crate::suggest::did_you_mean(other, PLACEHOLDERS.iter().copied()),
                        PLACEHOLDERS
                            .iter()
                            .map(|p| format!("{{{p}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        let t = Self {
            raw: raw.to_string(),
            parts,
        };
        // A rendered version must be usable in file names and AMI names (variables are
        // checked when their value is known).
        let sample = t.render_with(jiff::Timestamp::UNIX_EPOCH, |_| "x".into());
        if sample.is_empty()
            || !sample
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        {
            return Err(format!(
                "version template {raw:?} must render to letters, digits, '.', '-', '_' or '+'"
            ));
        }
        Ok(t)
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The variables the template uses.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            _ => None,
        })
    }

    /// Render at the given instant (UTC).
    pub fn render(&self, at: jiff::Timestamp) -> String {
        self.render_with(at, |v| format!("{{var.{v}}}"))
    }

    fn render_with(&self, at: jiff::Timestamp, var: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Date => out.push_str(&at.strftime("%Y%m%d").to_string()),
                Part::Time => out.push_str(&at.strftime("%H%M%S").to_string()),
                Part::Timestamp => out.push_str(&at.as_second().to_string()),
                Part::Var(v) => out.push_str(&var(v)),
            }
        }
        out
    }
}

impl Default for VersionTemplate {
    fn default() -> Self {
        Self::parse("{date}.{time}").expect("default template is valid")
    }
}

impl fmt::Display for VersionTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for VersionTemplate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for VersionTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VersionTemplate::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for VersionTemplate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "VersionTemplate".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Version template; placeholders {date} (YYYYMMDD UTC), {time} (HHMMSS), {timestamp}."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let t = VersionTemplate::parse("v{date}-{time}").unwrap();
        let at: jiff::Timestamp = "2026-11-25T13:14:56Z".parse().unwrap();
        assert_eq!(t.render(at), "v20261125-131456");
        assert_eq!(
            VersionTemplate::parse("{timestamp}").unwrap().render(at),
            at.as_second().to_string()
        );
    }

    #[test]
    fn variables_are_placeholders_until_interpolated() {
        let t = VersionTemplate::parse("{var.release}-{date}").unwrap();
        assert_eq!(t.variables().collect::<Vec<_>>(), vec!["release"]);
        assert!(VersionTemplate::parse("{var.not-a-name}").is_err());
    }

    #[test]
    fn rejects_unknown_and_unclosed() {
        assert!(
            VersionTemplate::parse("{build}")
                .unwrap_err()
                .contains("unknown placeholder {build}")
        );
        assert!(
            VersionTemplate::parse("{date")
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            VersionTemplate::parse("{dat}")
                .unwrap_err()
                .contains("did you mean `date`?")
        );
        assert!(
            VersionTemplate::parse("a b")
                .unwrap_err()
                .contains("must render")
        );
    }
}
