//! CPU architectures of EC2 instance types: the one table that says which image build an
//! InstanceGroup boots.
//!
//! An image family can have an `x86_64` and an `arm64` (Graviton) build of the same version
//! ([`ImageReference::PerArchitecture`](crate::ImageReference::PerArchitecture)). Each kops
//! InstanceGroup gets the build of its architecture, taken from its `spec.machineType` (and
//! `spec.mixedInstancesPolicy.instances`). The instance family is the part of the machine type
//! before the first `.` (`m6g` of `m6g.large`), compared case-sensitively as AWS writes it. The
//! families in [`ARM64_FAMILIES`] are `arm64`; every other family is `x86_64`.
//!
//! A cluster repository can override the table in its rollout config (`architectures:`, by
//! instance family or full machine type; a full machine type wins over its family):
//!
//! ```yaml
//! architectures:
//!   m8gd: arm64         # a Graviton family newer than this table
//!   u7i-12tb.224xlarge: x86_64
//! ```

use std::collections::BTreeMap;

/// The AWS name of the 64-bit x86 architecture.
pub const X86_64: &str = "x86_64";
/// The AWS name of the 64-bit ARM architecture (Graviton).
pub const ARM64: &str = "arm64";
/// The architectures an image reference can be keyed by.
pub const ARCHITECTURES: [&str; 2] = [X86_64, ARM64];

/// The EC2 instance families whose instances are `arm64` (Graviton); every other family is
/// `x86_64`. Sorted.
pub const ARM64_FAMILIES: &[&str] = &[
    "a1", "c6g", "c6gd", "c6gn", "c7g", "c7gd", "c7gn", "c8g", "g5g", "hpc7g", "i4g", "im4gn",
    "is4gen", "m6g", "m6gd", "m7g", "m7gd", "m8g", "r6g", "r6gd", "r7g", "r7gd", "r8g", "t4g",
    "x2gd",
];

/// The instance family of a machine type: the part before the first `.` (`m6g.large` -> `m6g`).
pub fn instance_family(machine_type: &str) -> &str {
    machine_type
        .split_once('.')
        .map_or(machine_type, |(family, _)| family)
}

/// The architecture of an EC2 machine type from the table: `arm64` for the families in
/// [`ARM64_FAMILIES`], `x86_64` for every other (`m6g.large` -> `arm64`, `m5.large` -> `x86_64`).
pub fn architecture_of_machine_type(machine_type: &str) -> &'static str {
    if ARM64_FAMILIES
        .binary_search(&instance_family(machine_type))
        .is_ok()
    {
        ARM64
    } else {
        X86_64
    }
}

/// The architecture of a machine type with a config's overrides (full machine type first, then
/// its family), else the table.
pub fn resolve_architecture<'a>(
    machine_type: &str,
    overrides: &'a BTreeMap<String, String>,
) -> &'a str {
    overrides
        .get(machine_type)
        .or_else(|| overrides.get(instance_family(machine_type)))
        .map_or_else(
            || architecture_of_machine_type(machine_type),
            String::as_str,
        )
}

/// Check an architecture name (`x86_64` or `arm64`).
pub fn check_architecture(name: &str) -> Result<(), String> {
    if ARCHITECTURES.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an architecture ({})",
            ARCHITECTURES.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_families_map_to_architectures() {
        assert!(ARM64_FAMILIES.windows(2).all(|w| w[0] < w[1]), "sorted");
        for arm in [
            "m6g.large",
            "m7g.2xlarge",
            "c7gn.16xlarge",
            "t4g.nano",
            "a1.metal",
            "x2gd.xlarge",
            "im4gn.large",
            "is4gen.medium",
            "g5g.xlarge",
            "hpc7g.4xlarge",
        ] {
            assert_eq!(architecture_of_machine_type(arm), ARM64, "{arm}");
        }
        for x86 in [
            "m5.large",
            "c5.xlarge",
            "t3.micro",
            "m6i.large",
            "m7a.medium",
            "g5.xlarge",
            "i4i.large",
            "x2idn.16xlarge",
        ] {
            assert_eq!(architecture_of_machine_type(x86), X86_64, "{x86}");
        }
        // Case-sensitive, as AWS writes them; the family alone works too.
        assert_eq!(architecture_of_machine_type("M6G.large"), X86_64);
        assert_eq!(architecture_of_machine_type("m6g"), ARM64);
        assert_eq!(instance_family("m6g.metal.large"), "m6g");
    }

    #[test]
    fn overrides_win_full_type_first() {
        let overrides: BTreeMap<String, String> = [
            ("m8gd".to_string(), ARM64.to_string()),
            ("m6g.weird".to_string(), X86_64.to_string()),
        ]
        .into();
        assert_eq!(resolve_architecture("m8gd.large", &overrides), ARM64);
        assert_eq!(resolve_architecture("m6g.weird", &overrides), X86_64);
        assert_eq!(resolve_architecture("m6g.large", &overrides), ARM64);
        assert_eq!(resolve_architecture("m5.large", &overrides), X86_64);
        assert!(check_architecture("arm64").is_ok());
        assert!(
            check_architecture("aarch64")
                .unwrap_err()
                .contains("x86_64, arm64")
        );
    }
}
