//! Selection rules: which image references a rollout replaces.
//!
//! Rules live in the cluster repository (`.webake/rollout.yaml` by default) or are passed by the
//! caller. Example:
//!
//! ```yaml
//! labels: [image-rollout]
//! rules:
//!   - kind: instance-group          # kops InstanceGroup spec.image
//!     family: debian-12-k8s         # only when rolling out this family (glob; default: any)
//!     cluster: prod.k8s.example.com # metadata.labels["kops.k8s.io/cluster"] (glob)
//!     roles: [Node, Master]         # spec.role (Master and ControlPlane are the same)
//!     names: ["nodes-*"]            # metadata.name (globs)
//!     labels: {team: platform}      # metadata.labels
//!   - kind: yaml-path
//!     files: "helm/*/values.yaml"
//!     path: image.ami               # keys, [n], [*], *; quote keys with dots: a."b.c"
//!     region: eu-west-1             # which AMI of a per-region reference
//!   - kind: regex
//!     files: "terraform/**/*.tfvars"
//!     pattern: 'bastion_ami\s*=\s*"(?P<ref>[^"]+)"'  # group `ref` (or 1) is replaced
//!     region: eu-west-1
//!     architecture: arm64           # which build of a per-architecture reference
//! architectures:                    # instance family or machine type -> architecture,
//!   m8gd: arm64                     # over the table of `crate::arch`
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The default location of the rollout config inside the cluster repository.
pub const DEFAULT_CONFIG_PATH: &str = ".webake/rollout.yaml";

/// The rollout config kept in the cluster repository.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RolloutConfig {
    /// Labels added to every pull request (in addition to the caller's).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Branch the rollout branch starts from and the pull request targets.
    #[serde(default)]
    pub base_branch: Option<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Instance family (`m8gd`) or full machine type (`m8gd.large`) -> architecture (`x86_64`,
    /// `arm64`), over the table of [`crate::arch`] (a machine type wins over its family): which
    /// build of a per-architecture image an InstanceGroup gets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub architectures: BTreeMap<String, String>,
}

impl RolloutConfig {
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let config: Self = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        for (machine, arch) in &config.architectures {
            if machine.is_empty() {
                return Err("architectures: an empty instance family".into());
            }
            crate::arch::check_architecture(arch)
                .map_err(|e| format!("architectures.{machine}: {e}"))?;
        }
        for (i, rule) in config.rules.iter().enumerate() {
            rule.validate().map_err(|e| format!("rules[{i}]: {e}"))?;
        }
        Ok(config)
    }
}

/// One way to find image references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Rule {
    /// `spec.image` of kops `kind: InstanceGroup` documents.
    InstanceGroup(InstanceGroupRule),
    /// A scalar at a YAML path in files matching a glob.
    YamlPath(YamlPathRule),
    /// A regex over non-YAML files (Terraform variables, ...).
    Regex(RegexRule),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InstanceGroupRule {
    /// Image families this rule applies to (glob); none: every family.
    #[serde(default)]
    pub family: Option<String>,
    /// Files to look in (glob, relative to the repository root); default `**/*.{yaml,yml}`.
    #[serde(default)]
    pub files: Option<String>,
    /// Cluster name (glob) from `metadata.labels["kops.k8s.io/cluster"]`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// InstanceGroup names (globs); any may match.
    #[serde(default)]
    pub names: Vec<String>,
    /// InstanceGroup roles (`Node`, `Master`/`ControlPlane`, `Bastion`, `APIServer`); any may match.
    #[serde(default)]
    pub roles: Vec<String>,
    /// `metadata.labels` that must all be present with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Every InstanceGroup (required when no other selector is given, so nothing is rolled by
    /// accident).
    #[serde(default)]
    pub all: bool,
    /// Region of the matched groups, overriding what is derived from zones and subnets.
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct YamlPathRule {
    #[serde(default)]
    pub family: Option<String>,
    /// Files to look in (glob, relative to the repository root).
    pub files: String,
    /// Path of the scalar in each document (`image.ami`, `images[*].id`, `a."b.c"`).
    pub path: String,
    #[serde(default)]
    pub region: Option<String>,
    /// Which build of a per-architecture reference (`x86_64`, `arm64`); needed when it has
    /// several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegexRule {
    #[serde(default)]
    pub family: Option<String>,
    /// Files to look in (glob, relative to the repository root).
    pub files: String,
    /// A regex whose group `ref` (else group 1, else the whole match) is the reference.
    pub pattern: String,
    #[serde(default)]
    pub region: Option<String>,
    /// Which build of a per-architecture reference (`x86_64`, `arm64`); needed when it has
    /// several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

impl Rule {
    pub fn family(&self) -> Option<&str> {
        match self {
            Rule::InstanceGroup(r) => r.family.as_deref(),
            Rule::YamlPath(r) => r.family.as_deref(),
            Rule::Regex(r) => r.family.as_deref(),
        }
    }

    /// Whether this rule applies when rolling out `family`.
    pub fn applies_to_family(&self, family: &str) -> Result<bool, String> {
        match self.family() {
            None => Ok(true),
            Some(pattern) => Ok(glob(pattern)?.is_match(family)),
        }
    }

    /// Check globs, paths, regexes and selectors without touching any file.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(f) = self.family() {
            glob(f)?;
        }
        match self {
            Rule::InstanceGroup(r) => {
                if let Some(files) = &r.files {
                    glob(files)?;
                }
                if let Some(c) = &r.cluster {
                    glob(c)?;
                }
                for n in &r.names {
                    glob(n)?;
                }
                for role in &r.roles {
                    if canonical_role(role).is_none() {
                        return Err(format!(
                            "unknown InstanceGroup role {role:?} (Node, Master, ControlPlane, Bastion, APIServer)"
                        ));
                    }
                }
                let selects = r.cluster.is_some()
                    || !r.names.is_empty()
                    || !r.roles.is_empty()
                    || !r.labels.is_empty();
                if !selects && !r.all {
                    return Err(
                        "an instance-group rule needs a selector (cluster, names, roles, labels) \
                                or `all: true`"
                            .into(),
                    );
                }
                check_region(r.region.as_deref())
            }
            Rule::YamlPath(r) => {
                glob(&r.files)?;
                crate::yaml::parse_path(&r.path)?;
                check_region(r.region.as_deref())?;
                check_architecture(r.architecture.as_deref())
            }
            Rule::Regex(r) => {
                glob(&r.files)?;
                compile_regex(&r.pattern)?;
                check_region(r.region.as_deref())?;
                check_architecture(r.architecture.as_deref())
            }
        }
    }

    /// A short description for errors and summaries (`instance-group roles=[Node]`).
    pub fn describe(&self) -> String {
        match self {
            Rule::InstanceGroup(r) => {
                let mut parts = vec!["instance-group".to_string()];
                if let Some(c) = &r.cluster {
                    parts.push(format!("cluster={c}"));
                }
                if !r.names.is_empty() {
                    parts.push(format!("names=[{}]", r.names.join(",")));
                }
                if !r.roles.is_empty() {
                    parts.push(format!("roles=[{}]", r.roles.join(",")));
                }
                for (k, v) in &r.labels {
                    parts.push(format!("label {k}={v}"));
                }
                if r.all {
                    parts.push("all".into());
                }
                parts.join(" ")
            }
            Rule::YamlPath(r) => format!(
                "yaml-path {} in {}{}",
                r.path,
                r.files,
                describe_architecture(r.architecture.as_deref())
            ),
            Rule::Regex(r) => format!(
                "regex {:?} in {}{}",
                r.pattern,
                r.files,
                describe_architecture(r.architecture.as_deref())
            ),
        }
    }
}

fn check_region(region: Option<&str>) -> Result<(), String> {
    match region {
        Some(r) if crate::reference::region_of_zone(r).as_deref() != Some(r) => {
            Err(format!("{r:?} is not an AWS region name"))
        }
        _ => Ok(()),
    }
}

fn describe_architecture(architecture: Option<&str>) -> String {
    architecture
        .map(|a| format!(" architecture={a}"))
        .unwrap_or_default()
}

fn check_architecture(architecture: Option<&str>) -> Result<(), String> {
    architecture.map_or(Ok(()), crate::arch::check_architecture)
}

/// The canonical kops role (`Master` and `ControlPlane` are one role), case-insensitive.
pub(crate) fn canonical_role(role: &str) -> Option<&'static str> {
    match role.to_ascii_lowercase().as_str() {
        "master" | "controlplane" | "control-plane" => Some("ControlPlane"),
        "node" => Some("Node"),
        "bastion" => Some("Bastion"),
        "apiserver" => Some("APIServer"),
        _ => None,
    }
}

pub(crate) fn glob(pattern: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("bad glob {pattern:?}: {e}"))
}

pub(crate) fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    let re = regex::Regex::new(pattern).map_err(|e| format!("bad regex {pattern:?}: {e}"))?;
    Ok(re)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_all_rule_kinds() {
        let text = r#"
labels: [image-rollout]
base-branch: main
rules:
  - kind: instance-group
    family: "debian-*"
    cluster: prod.k8s.example.com
    roles: [Node, master]
    names: ["nodes-*"]
    labels: {team: platform}
  - kind: yaml-path
    files: "helm/*/values.yaml"
    path: image.ami
    region: eu-west-1
  - kind: regex
    files: "terraform/*.tfvars"
    pattern: 'ami\s*=\s*"(?P<ref>[^"]+)"'
"#;
        let config = RolloutConfig::from_yaml(text).unwrap();
        assert_eq!(config.labels, vec!["image-rollout"]);
        assert_eq!(config.base_branch.as_deref(), Some("main"));
        assert_eq!(config.rules.len(), 3);
        let Rule::InstanceGroup(ig) = &config.rules[0] else {
            panic!("{:?}", config.rules[0])
        };
        assert_eq!(ig.roles, vec!["Node", "master"]);
        assert_eq!(ig.labels.get("team").map(String::as_str), Some("platform"));
        assert!(config.rules[0].applies_to_family("debian-12").unwrap());
        assert!(!config.rules[0].applies_to_family("ubuntu-24").unwrap());
        assert!(config.rules[1].applies_to_family("anything").unwrap());
    }

    #[test]
    fn config_rejects_mistakes() {
        let unknown_field = "rules:\n  - kind: instance-group\n    role: [Node]\n";
        assert!(RolloutConfig::from_yaml(unknown_field).is_err());
        let unknown_kind = "rules:\n  - kind: helm\n    files: x\n";
        assert!(RolloutConfig::from_yaml(unknown_kind).is_err());
        let no_selector = "rules:\n  - kind: instance-group\n";
        let err = RolloutConfig::from_yaml(no_selector).unwrap_err();
        assert!(
            err.contains("rules[0]") && err.contains("all: true"),
            "{err}"
        );
        let bad_role = "rules:\n  - kind: instance-group\n    roles: [Worker]\n";
        assert!(
            RolloutConfig::from_yaml(bad_role)
                .unwrap_err()
                .contains("Worker")
        );
        let bad_regex = "rules:\n  - kind: regex\n    files: a\n    pattern: '('\n";
        assert!(
            RolloutConfig::from_yaml(bad_regex)
                .unwrap_err()
                .contains("bad regex")
        );
        let bad_region =
            "rules:\n  - kind: yaml-path\n    files: a\n    path: b\n    region: eu-west-1a\n";
        assert!(RolloutConfig::from_yaml(bad_region).is_err());
        let all = "rules:\n  - kind: instance-group\n    all: true\n";
        assert!(RolloutConfig::from_yaml(all).is_ok());
    }

    #[test]
    fn config_overrides_architectures_and_rules_pick_one() {
        let text = r#"
architectures:
  m8gd: arm64
  u7i-12tb.224xlarge: x86_64
rules:
  - kind: yaml-path
    files: "helm/karpenter/values*.yaml"
    path: nodeClass.amiSelectorTerms[*].id
    region: eu-central-1
    architecture: arm64
  - kind: regex
    files: "terraform/**/*.tfvars"
    pattern: 'bastion_ami\s*=\s*"(?P<ref>[^"]+)"'
    architecture: x86_64
"#;
        let config = RolloutConfig::from_yaml(text).unwrap();
        assert_eq!(
            config.architectures.get("m8gd").map(String::as_str),
            Some("arm64")
        );
        let Rule::YamlPath(y) = &config.rules[0] else {
            panic!("{:?}", config.rules[0])
        };
        assert_eq!(y.architecture.as_deref(), Some("arm64"));
        assert!(config.rules[0].describe().ends_with(" architecture=arm64"));
        for (bad, needle) in [
            ("architectures:\n  m8gd: aarch64\n", "architectures.m8gd"),
            (
                "rules:\n  - kind: regex\n    files: a\n    pattern: b\n    architecture: amd64\n",
                "rules[0]",
            ),
            // InstanceGroups take theirs from their machine types.
            (
                "rules:\n  - kind: instance-group\n    all: true\n    architecture: arm64\n",
                "architecture",
            ),
        ] {
            let err = RolloutConfig::from_yaml(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        // Unset, nothing new is serialized.
        let plain =
            RolloutConfig::from_yaml("rules:\n  - kind: regex\n    files: a\n    pattern: b\n")
                .unwrap();
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("architecture"), "{json}");
    }

    #[test]
    fn roles_are_canonical() {
        assert_eq!(canonical_role("Master"), Some("ControlPlane"));
        assert_eq!(canonical_role("ControlPlane"), Some("ControlPlane"));
        assert_eq!(canonical_role("node"), Some("Node"));
        assert_eq!(canonical_role("Bastion"), Some("Bastion"));
        assert_eq!(canonical_role("worker"), None);
    }
}
