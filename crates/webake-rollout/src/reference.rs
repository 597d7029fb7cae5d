//! Image references as kops accepts them in `spec.image`, per-region AMI maps, and
//! per-architecture builds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What to write in place of the current image reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageReference {
    /// One reference for every match: `ami-…`, `owner/name`, `alias/name` or `ssm:/parameter`.
    Single(String),
    /// One AMI id per region (`eu-west-1 -> ami-…`); each match gets the AMI of its region.
    PerRegion(BTreeMap<String, String>),
    /// One reference per CPU architecture (`x86_64`, `arm64`; see [`crate::arch`]), each a
    /// `Single` or a `PerRegion` one: each match gets the build of its architecture (an
    /// InstanceGroup's from its machine types, another rule's from its `architecture:`).
    PerArchitecture(BTreeMap<String, ImageReference>),
}

/// The kops form of a single reference (kops resolves each differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    /// `ami-0123456789abcdef0`: an AMI id, valid in one region only.
    AmiId,
    /// `ssm:/aws/service/...`: an SSM parameter that holds an AMI id.
    Ssm,
    /// `owner/name` (account id) or `alias/name` (`ubuntu/…`, `kope.io/…`): an image name.
    Named,
}

impl ReferenceKind {
    /// Classify a reference, rejecting what kops would not accept.
    pub fn of(reference: &str) -> Result<Self, String> {
        if reference.is_empty() {
            return Err("the image reference is empty".into());
        }
        if reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("image reference {reference:?} contains whitespace"));
        }
        if let Some(id) = reference.strip_prefix("ami-") {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "{reference:?} is not an AMI id (ami- then hex digits)"
                ));
            }
            return Ok(Self::AmiId);
        }
        if let Some(param) = reference.strip_prefix("ssm:") {
            if param.is_empty() {
                return Err(format!("{reference:?} names no SSM parameter"));
            }
            return Ok(Self::Ssm);
        }
        match reference.split_once('/') {
            Some((owner, name)) if !owner.is_empty() && !name.is_empty() => Ok(Self::Named),
            _ => Err(format!(
                "{reference:?} is not a kops image reference (ami-…, owner/name, alias/name or ssm:…)"
            )),
        }
    }
}

impl ImageReference {
    /// Check every reference; per-region maps hold AMI ids for plausible region names.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Single(r) => ReferenceKind::of(r).map(|_| ()),
            Self::PerRegion(map) => {
                if map.is_empty() {
                    return Err("the per-region AMI map is empty".into());
                }
                for (region, ami) in map {
                    if region_of_zone(region).as_deref() != Some(region.as_str()) {
                        return Err(format!("{region:?} is not an AWS region name"));
                    }
                    if ReferenceKind::of(ami)? != ReferenceKind::AmiId {
                        return Err(format!(
                            "per-region reference {ami:?} for {region} is not an AMI id"
                        ));
                    }
                }
                Ok(())
            }
            Self::PerArchitecture(map) => {
                if map.is_empty() {
                    return Err("the per-architecture image map is empty".into());
                }
                for (arch, inner) in map {
                    crate::arch::check_architecture(arch)?;
                    if matches!(inner, Self::PerArchitecture(_)) {
                        return Err(format!(
                            "the {arch} reference is itself per architecture; give a single \
                             reference or one AMI per region"
                        ));
                    }
                    inner.validate().map_err(|e| format!("{arch}: {e}"))?;
                }
                Ok(())
            }
        }
    }

    /// The architectures of a per-architecture reference (sorted); empty for the others.
    pub fn architectures(&self) -> Vec<&str> {
        match self {
            Self::PerArchitecture(map) => map.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// The reference for a match of `architecture`: the build of that architecture of a
    /// per-architecture reference (`None` when it has none), the reference itself otherwise.
    pub fn for_architecture(&self, architecture: &str) -> Option<&ImageReference> {
        match self {
            Self::PerArchitecture(map) => map.get(architecture),
            _ => Some(self),
        }
    }

    /// The reference for a match in `region` (`None`: the region could not be determined).
    pub fn for_region(&self, region: Option<&str>) -> Result<&str, RegionLookup> {
        match self {
            Self::Single(r) => Ok(r),
            Self::PerRegion(map) => {
                match region {
                    Some(region) => map.get(region).map(String::as_str).ok_or_else(|| {
                        RegionLookup::NotPublished {
                            region: region.to_string(),
                            available: map.keys().cloned().collect(),
                        }
                    }),
                    // Never guess: an AMI id is only valid in its own region.
                    None => Err(RegionLookup::Unknown {
                        available: map.keys().cloned().collect(),
                    }),
                }
            }
            // One build: no choice to make. Several: the architecture is picked first.
            Self::PerArchitecture(map) => match map.values().next() {
                Some(inner) if map.len() == 1 => inner.for_region(region),
                _ => Err(RegionLookup::ArchitectureUnknown {
                    available: map.keys().cloned().collect(),
                }),
            },
        }
    }

    /// A one-line description for commit messages and summaries.
    pub fn describe(&self) -> String {
        match self {
            Self::Single(r) => r.clone(),
            Self::PerRegion(map) => map
                .iter()
                .map(|(region, ami)| format!("{region}={ami}"))
                .collect::<Vec<_>>()
                .join(", "),
            // `arm64: eu-west-1=ami-…, us-east-1=ami-…; x86_64: ami-…`
            Self::PerArchitecture(map) => map
                .iter()
                .map(|(arch, inner)| format!("{arch}: {}", inner.describe()))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// The prefix of webake's local image names (`webake/NAME:VERSION`): the reference of an image
/// published nowhere but the local catalog. Nothing in AWS resolves it.
pub const LOCAL_REFERENCE_PREFIX: &str = "webake/";

/// The local reference of a catalog image: `webake/NAME:VERSION`, in the `owner/name` form a
/// kops `spec.image` accepts (for local clusters, or repositories that name images by version).
pub fn local_reference(name: &str, version: &str) -> String {
    format!("{LOCAL_REFERENCE_PREFIX}{name}:{version}")
}

/// Whether `reference` is a local webake name (`webake/NAME:VERSION`).
pub fn is_local_reference(reference: &str) -> bool {
    reference
        .strip_prefix(LOCAL_REFERENCE_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(name, version)| !name.is_empty() && !version.is_empty())
}

/// Why a per-region reference has no AMI for a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionLookup {
    Unknown {
        available: Vec<String>,
    },
    NotPublished {
        region: String,
        available: Vec<String>,
    },
    /// A per-architecture reference with several builds: the architecture must be picked first.
    ArchitectureUnknown {
        available: Vec<String>,
    },
}

/// The region of an availability zone (`eu-west-1a` -> `eu-west-1`, local zones too:
/// `us-west-2-lax-1a` -> `us-west-2`); a region name maps to itself.
pub fn region_of_zone(zone: &str) -> Option<String> {
    use std::sync::LazyLock;
    static RE: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"^([a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[0-9]+)(?:[a-z]|-[a-z0-9-]+)?$")
            .expect("static regex")
    });
    RE.captures(zone).map(|c| c[1].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kops_reference_forms() {
        assert_eq!(
            ReferenceKind::of("ami-0abc123").unwrap(),
            ReferenceKind::AmiId
        );
        assert_eq!(
            ReferenceKind::of("ssm:/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id").unwrap(),
            ReferenceKind::Ssm
        );
        assert_eq!(
            ReferenceKind::of(
                "099720109477/ubuntu/images/hvm-ssd/ubuntu-focal-20.04-amd64-server-20201026"
            )
            .unwrap(),
            ReferenceKind::Named
        );
        assert_eq!(
            ReferenceKind::of("kope.io/k8s-1.18-debian-stretch").unwrap(),
            ReferenceKind::Named
        );
        assert!(ReferenceKind::of("").is_err());
        assert!(ReferenceKind::of("ami-xyz").is_err());
        assert!(ReferenceKind::of("ami-").is_err());
        assert!(ReferenceKind::of("ssm:").is_err());
        assert!(ReferenceKind::of("justaname").is_err());
        assert!(ReferenceKind::of("a/b c").is_err());
        assert!(ReferenceKind::of("/name").is_err());
    }

    #[test]
    fn zones_to_regions() {
        assert_eq!(region_of_zone("eu-west-1a").as_deref(), Some("eu-west-1"));
        assert_eq!(region_of_zone("eu-west-1").as_deref(), Some("eu-west-1"));
        assert_eq!(
            region_of_zone("us-gov-west-1b").as_deref(),
            Some("us-gov-west-1")
        );
        assert_eq!(
            region_of_zone("us-west-2-lax-1a").as_deref(),
            Some("us-west-2")
        );
        assert_eq!(
            region_of_zone("ap-southeast-2c").as_deref(),
            Some("ap-southeast-2")
        );
        assert_eq!(region_of_zone("utility-eu-west-1a"), None);
        assert_eq!(region_of_zone("private"), None);
    }

    #[test]
    fn per_region_lookup() {
        let r = ImageReference::PerRegion(
            [
                ("eu-west-1".to_string(), "ami-1".to_string()),
                ("us-east-1".into(), "ami-2".into()),
            ]
            .into(),
        );
        r.validate().unwrap();
        assert_eq!(r.for_region(Some("us-east-1")).unwrap(), "ami-2");
        assert!(matches!(
            r.for_region(Some("eu-central-1")),
            Err(RegionLookup::NotPublished { .. })
        ));
        assert!(matches!(
            r.for_region(None),
            Err(RegionLookup::Unknown { .. })
        ));
        let one =
            ImageReference::PerRegion([("eu-west-1".to_string(), "ami-1".to_string())].into());
        assert!(matches!(
            one.for_region(None),
            Err(RegionLookup::Unknown { .. })
        ));
        assert!(
            ImageReference::PerRegion([("eu".to_string(), "ami-1".to_string())].into())
                .validate()
                .is_err()
        );
        assert!(
            ImageReference::PerRegion([("eu-west-1".to_string(), "ssm:/x".to_string())].into())
                .validate()
                .is_err()
        );
        assert!(
            ImageReference::Single("ubuntu/x".into())
                .for_region(None)
                .is_ok()
        );
    }

    #[test]
    fn per_architecture_validates_describes_and_serializes() {
        let eu_us = ImageReference::PerRegion(
            [
                ("eu-west-1".to_string(), "ami-0b1".to_string()),
                ("us-east-1".into(), "ami-0b2".into()),
            ]
            .into(),
        );
        let r = ImageReference::PerArchitecture(
            [
                (
                    "x86_64".to_string(),
                    ImageReference::Single("ami-0a1".into()),
                ),
                ("arm64".to_string(), eu_us.clone()),
            ]
            .into(),
        );
        r.validate().unwrap();
        assert_eq!(
            r.describe(),
            "arm64: eu-west-1=ami-0b1, us-east-1=ami-0b2; x86_64: ami-0a1"
        );
        assert_eq!(r.architectures(), ["arm64", "x86_64"]);
        assert_eq!(r.for_architecture("arm64"), Some(&eu_us));
        assert_eq!(r.for_architecture("i386"), None);
        assert_eq!(eu_us.for_architecture("arm64"), Some(&eu_us));
        // Several builds: the region alone does not pick one.
        assert!(matches!(
            r.for_region(Some("eu-west-1")),
            Err(RegionLookup::ArchitectureUnknown { .. })
        ));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"per-architecture":{"arm64":{"per-region":{"eu-west-1":"ami-0b1","us-east-1":"ami-0b2"}},"x86_64":{"single":"ami-0a1"}}}"#
        );
        assert_eq!(serde_json::from_str::<ImageReference>(&json).unwrap(), r);
        // The other forms serialize as before.
        assert_eq!(
            serde_json::to_string(&ImageReference::Single("ami-0a1".into())).unwrap(),
            r#"{"single":"ami-0a1"}"#
        );

        let bad = |map: Vec<(&str, ImageReference)>| {
            ImageReference::PerArchitecture(
                map.into_iter().map(|(a, r)| (a.to_string(), r)).collect(),
            )
            .validate()
            .unwrap_err()
        };
        assert!(bad(vec![]).contains("empty"));
        assert!(bad(vec![("aarch64", eu_us.clone())]).contains("not an architecture"));
        assert!(bad(vec![("arm64", r.clone())]).contains("itself per architecture"));
        assert_eq!(
            bad(vec![("arm64", ImageReference::Single("latest".into()))]),
            "arm64: \"latest\" is not a kops image reference (ami-…, owner/name, alias/name or ssm:…)"
        );
    }
}
