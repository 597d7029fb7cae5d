//! Image version templates: `{date}`, `{time}`, `{timestamp}` and literal text.

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
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} in version template {raw:?} (known: {})",
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
        // A rendered version must be usable in file names and AMI names.
        let sample = t.render(jiff::Timestamp::UNIX_EPOCH);
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

    /// Render at the given instant (UTC).
    pub fn render(&self, at: jiff::Timestamp) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Date => out.push_str(&at.strftime("%Y%m%d").to_string()),
                Part::Time => out.push_str(&at.strftime("%H%M%S").to_string()),
                Part::Timestamp => out.push_str(&at.as_second().to_string()),
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
            VersionTemplate::parse("a b")
                .unwrap_err()
                .contains("must render")
        );
    }
}
