//! Hostname templates: parse once (at config time), render from instance facts, sanitise to a
//! valid RFC 1123 host label.

use std::fmt;

/// The template used when neither the config file nor `--template` sets one.
pub const DEFAULT_TEMPLATE: &str = "{role}-{env}-{region_compact}-{instance_id_short}";

/// Longest label RFC 1123 (and RFC 1035) allows; also fits Linux's 64-byte `HOST_NAME_MAX`.
pub const MAX_LABEL_LEN: usize = 63;

/// A value a template can refer to as `{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Role,
    Env,
    Region,
    RegionCompact,
    InstanceId,
    InstanceIdShort,
}

impl Placeholder {
    pub const ALL: [Placeholder; 6] = [
        Placeholder::Role,
        Placeholder::Env,
        Placeholder::Region,
        Placeholder::RegionCompact,
        Placeholder::InstanceId,
        Placeholder::InstanceIdShort,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Role => "role",
            Placeholder::Env => "env",
            Placeholder::Region => "region",
            Placeholder::RegionCompact => "region_compact",
            Placeholder::InstanceId => "instance_id",
            Placeholder::InstanceIdShort => "instance_id_short",
        }
    }

    fn from_name(name: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The instance id is what makes a hostname unique: it is never shortened.
    fn is_identity(self) -> bool {
        matches!(self, Placeholder::InstanceId | Placeholder::InstanceIdShort)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Value(Placeholder),
}

/// A parsed hostname template such as `{role}-{env}-{region_compact}-{instance_id_short}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Why a template was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    Empty,
    UnknownPlaceholder { name: String, column: usize },
    EmptyPlaceholder { column: usize },
    Unclosed { column: usize },
    UnexpectedClose { column: usize },
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = Placeholder::ALL
            .iter()
            .map(|p| format!("{{{}}}", p.name()))
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            TemplateError::Empty => write!(f, "template is empty"),
            TemplateError::UnknownPlaceholder { name, column } => write!(
                f,
                "unknown placeholder {{{name}}} at column {column}; known placeholders: {known}"
            ),
            TemplateError::EmptyPlaceholder { column } => {
                write!(
                    f,
                    "empty placeholder {{}} at column {column}; known placeholders: {known}"
                )
            }
            TemplateError::Unclosed { column } => {
                write!(f, "'{{' at column {column} is never closed")
            }
            TemplateError::UnexpectedClose { column } => {
                write!(f, "'}}' at column {column} has no matching '{{'")
            }
        }
    }
}

impl std::error::Error for TemplateError {}

impl Template {
    /// Parses `{name}` placeholders; every other character is literal text (sanitised later).
    /// Columns in errors are 1-based character positions.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        if source.trim().is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().enumerate();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TemplateError::Unclosed { column: i + 1 });
                    }
                    if name.trim().is_empty() {
                        return Err(TemplateError::EmptyPlaceholder { column: i + 1 });
                    }
                    let placeholder = Placeholder::from_name(&name).ok_or_else(|| {
                        TemplateError::UnknownPlaceholder {
                            name: name.clone(),
                            column: i + 1,
                        }
                    })?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Value(placeholder));
                }
                '}' => return Err(TemplateError::UnexpectedClose { column: i + 1 }),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn uses(&self, placeholder: Placeholder) -> bool {
        self.parts.contains(&Part::Value(placeholder))
    }

    /// Renders and sanitises. Empty values (no role, no Environment tag) vanish together with
    /// the separator next to them, because runs of '-' collapse into one.
    ///
    /// When the result is longer than 63 characters, the longest non-identity value is shortened
    /// one character at a time (so role, env and region all survive as long as possible); the
    /// instance id is never cut. If that is not enough (long literal text), the name is cut at
    /// 63 characters.
    pub fn render(&self, facts: &Facts) -> Result<String, RenderError> {
        let mut pieces: Vec<(String, Option<Placeholder>)> = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => (sanitize_chars(text), None),
                Part::Value(p) => (sanitize_chars(&facts.value(*p)), Some(*p)),
            })
            .collect();
        let mut name = join_sanitized(&pieces);
        while name.len() > MAX_LABEL_LEN {
            let longest = pieces
                .iter_mut()
                .filter(|(text, p)| matches!(p, Some(p) if !p.is_identity()) && !text.is_empty())
                .max_by_key(|(text, _)| text.len());
            match longest {
                Some((text, _)) => {
                    text.pop();
                }
                None => {
                    name.truncate(MAX_LABEL_LEN);
                    name = collapse_and_trim(&name);
                    break;
                }
            }
            name = join_sanitized(&pieces);
        }
        if name.is_empty() {
            return Err(RenderError::Empty {
                template: self.source.clone(),
            });
        }
        Ok(name)
    }
}

/// What an instance tells us about itself; empty strings mean "not known".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub role: String,
    pub env: String,
    pub region: String,
    pub instance_id: String,
}

impl Facts {
    pub fn value(&self, placeholder: Placeholder) -> String {
        match placeholder {
            Placeholder::Role => self.role.clone(),
            Placeholder::Env => self.env.clone(),
            Placeholder::Region => self.region.clone(),
            Placeholder::RegionCompact => compact_region(&self.region),
            Placeholder::InstanceId => self.instance_id.clone(),
            Placeholder::InstanceIdShort => short_instance_id(&self.instance_id).to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    Empty { template: String },
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Empty { template } => write!(
                f,
                "hostname template {template:?} rendered to an empty name (every value it uses is empty)"
            ),
        }
    }
}

impl std::error::Error for RenderError {}

/// `eu-west-1` -> `euwest1`, `us-gov-west-1` -> `usgovwest1`.
pub fn compact_region(region: &str) -> String {
    region
        .chars()
        .filter(|c| *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// `i-07a38e448ad62b4da` -> `07a38e448ad62b4da`.
pub fn short_instance_id(instance_id: &str) -> &str {
    instance_id.strip_prefix("i-").unwrap_or(instance_id)
}

/// Makes any string a valid RFC 1123 host label: ASCII lowercase, every character outside
/// `[a-z0-9-]` becomes '-', runs of '-' collapse, no leading or trailing '-', at most 63
/// characters. May return an empty string.
pub fn sanitize(name: &str) -> String {
    let mut out = collapse_and_trim(&sanitize_chars(name));
    if out.len() > MAX_LABEL_LEN {
        out.truncate(MAX_LABEL_LEN);
        out = collapse_and_trim(&out);
    }
    out
}

fn sanitize_chars(text: &str) -> String {
    text.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect()
}

fn join_sanitized(pieces: &[(String, Option<Placeholder>)]) -> String {
    let joined: String = pieces.iter().map(|(text, _)| text.as_str()).collect();
    collapse_and_trim(&joined)
}

fn collapse_and_trim(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// True when `name` is a single valid RFC 1123 label (what [`sanitize`] produces).
pub fn is_valid_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LABEL_LEN
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(role: &str, env: &str, region: &str, id: &str) -> Facts {
        Facts {
            role: role.into(),
            env: env.into(),
            region: region.into(),
            instance_id: id.into(),
        }
    }

    #[test]
    fn region_compaction_table() {
        for (region, want) in [
            ("eu-west-1", "euwest1"),
            ("us-gov-west-1", "usgovwest1"),
            ("us-east-1", "useast1"),
            ("ap-southeast-4", "apsoutheast4"),
            ("cn-northwest-1", "cnnorthwest1"),
            ("il-central-1", "ilcentral1"),
            ("EU-West-1", "euwest1"),
            ("", ""),
        ] {
            assert_eq!(compact_region(region), want, "region {region:?}");
        }
    }

    #[test]
    fn short_instance_id_table() {
        for (id, want) in [
            ("i-07a38e448ad62b4da", "07a38e448ad62b4da"),
            ("i-1234abcd", "1234abcd"),
            ("mi-0123", "mi-0123"),
            ("", ""),
        ] {
            assert_eq!(short_instance_id(id), want, "id {id:?}");
        }
    }

    #[test]
    fn sanitize_table() {
        let long = "a".repeat(70);
        for (input, want) in [
            ("kubernetes-prod", "kubernetes-prod"),
            ("Kubernetes-PROD", "kubernetes-prod"),
            ("web_server", "web-server"),
            ("web__server", "web-server"),
            ("-leading-and-trailing-", "leading-and-trailing"),
            ("a.b.c", "a-b-c"),
            ("spaces in name", "spaces-in-name"),
            ("ünïcode", "n-code"),
            ("---", ""),
            ("", ""),
            (long.as_str(), &long[..63]),
            // the cut lands on a '-': it is trimmed, never left trailing
            (&format!("{}-b", "a".repeat(62)), &"a".repeat(62)),
        ] {
            let got = sanitize(input);
            assert_eq!(got, want, "input {input:?}");
            assert!(
                got.is_empty() || is_valid_label(&got),
                "{got:?} is not a label"
            );
        }
    }

    #[test]
    fn renders_the_documented_example() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let name = t
            .render(&facts(
                "kubernetes",
                "prod",
                "eu-west-1",
                "i-07a38e448ad62b4da",
            ))
            .unwrap();
        assert_eq!(name, "kubernetes-prod-euwest1-07a38e448ad62b4da");
    }

    #[test]
    fn render_table() {
        let id = "i-07a38e448ad62b4da";
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        for (f, want) in [
            // no Environment tag: the env segment and its separator disappear
            (
                facts("kubernetes", "", "eu-west-1", id),
                "kubernetes-euwest1-07a38e448ad62b4da",
            ),
            // no role anywhere
            (
                facts("", "prod", "eu-west-1", id),
                "prod-euwest1-07a38e448ad62b4da",
            ),
            // tag values are free text
            (
                facts("Web_Server", "Pre Prod", "us-gov-west-1", id),
                "web-server-pre-prod-usgovwest1-07a38e448ad62b4da",
            ),
        ] {
            assert_eq!(t.render(&f).unwrap(), want, "facts {f:?}");
        }
    }

    #[test]
    fn long_names_shorten_the_longest_value_and_keep_the_instance_id() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let role = "a-very-long-role-name-that-someone-thought-was-descriptive";
        let name = t
            .render(&facts(
                role,
                "production",
                "ap-southeast-4",
                "i-07a38e448ad62b4da",
            ))
            .unwrap();
        assert!(is_valid_label(&name), "{name}");
        assert_eq!(name.len(), 63);
        assert!(
            name.ends_with("-production-apsoutheast4-07a38e448ad62b4da"),
            "{name}"
        );
        assert!(name.starts_with("a-very-long-role"), "{name}");

        // two long values are shortened evenly
        let name = t
            .render(&facts(
                &"r".repeat(40),
                &"e".repeat(40),
                "eu-west-1",
                "i-07a38e448ad62b4da",
            ))
            .unwrap();
        assert_eq!(name.len(), 63, "{name}");
        assert_eq!(
            name,
            format!(
                "{}-{}-euwest1-07a38e448ad62b4da",
                "r".repeat(18),
                "e".repeat(18)
            )
        );

        // a long literal cannot be shortened by values: hard cut, still a valid label
        let t = Template::parse(&format!("{}-{{instance_id_short}}", "x".repeat(60))).unwrap();
        let name = t.render(&facts("", "", "", "i-07a38e448ad62b4da")).unwrap();
        assert!(is_valid_label(&name), "{name}");
    }

    #[test]
    fn empty_render_is_an_error() {
        let t = Template::parse("{role}-{env}").unwrap();
        let err = t.render(&facts("", "", "eu-west-1", "i-1")).unwrap_err();
        assert!(err.to_string().contains("empty name"), "{err}");
    }

    #[test]
    fn template_error_table() {
        for (source, want) in [
            ("", TemplateError::Empty),
            ("   ", TemplateError::Empty),
            (
                "{role}-{environment}",
                TemplateError::UnknownPlaceholder {
                    name: "environment".into(),
                    column: 8,
                },
            ),
            (
                "{Role}",
                TemplateError::UnknownPlaceholder {
                    name: "Role".into(),
                    column: 1,
                },
            ),
            (
                "{ role }",
                TemplateError::UnknownPlaceholder {
                    name: " role ".into(),
                    column: 1,
                },
            ),
            ("x-{}", TemplateError::EmptyPlaceholder { column: 3 }),
            ("{role", TemplateError::Unclosed { column: 1 }),
            ("role}", TemplateError::UnexpectedClose { column: 5 }),
        ] {
            assert_eq!(Template::parse(source), Err(want), "template {source:?}");
        }
        let message = Template::parse("{environment}").unwrap_err().to_string();
        assert!(
            message.contains("unknown placeholder {environment}"),
            "{message}"
        );
        assert!(
            message.contains("{env}"),
            "lists the known names: {message}"
        );
    }

    #[test]
    fn parses_every_placeholder() {
        let all = Placeholder::ALL
            .iter()
            .map(|p| format!("{{{}}}", p.name()))
            .collect::<Vec<_>>()
            .join("-");
        let t = Template::parse(&all).unwrap();
        for p in Placeholder::ALL {
            assert!(t.uses(p), "{p:?}");
        }
        let name = t
            .render(&facts("web", "prod", "eu-west-1", "i-0abc"))
            .unwrap();
        assert_eq!(name, "web-prod-eu-west-1-euwest1-i-0abc-0abc");
    }
}
