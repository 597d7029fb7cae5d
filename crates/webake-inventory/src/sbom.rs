//! SBOMs of an inventory: SPDX 2.3 JSON and CycloneDX 1.5 JSON.
//!
//! Output is deterministic: it depends only on the inventory and [`SbomOptions`] (the
//! creation time is an argument, JSON object keys are sorted, packages are sorted).

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::dpkg::Package;
use crate::inventory::{Inventory, OsRelease};

const TOOL: &str = concat!("webake-", env!("CARGO_PKG_VERSION"));

/// Default base of the SPDX `documentNamespace`; the image id is appended.
pub const DEFAULT_NAMESPACE_BASE: &str = "https://webake.dev/spdx/images";

/// What an SBOM says about the image besides its inventory.
#[derive(Debug, Clone)]
pub struct SbomOptions {
    /// Catalog id of the image; makes the SPDX namespace and CycloneDX serial number unique.
    pub image_id: String,
    /// Human name of the image (its family, e.g. `web-base`).
    pub image_name: String,
    /// Creation time written into the document.
    pub created: SystemTime,
    /// Base URI of the SPDX `documentNamespace` (default [`DEFAULT_NAMESPACE_BASE`]).
    pub namespace_base: Option<String>,
    /// The image's CPU architecture (`x86_64`, `arm64`): the SPDX image package's comment,
    /// the CycloneDX property `webake:architecture`.
    pub architecture: Option<String>,
}

/// SPDX 2.3 JSON document of the image's packages.
pub fn spdx_json(inv: &Inventory, opts: &SbomOptions) -> String {
    let base = opts
        .namespace_base
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE_BASE)
        .trim_end_matches('/');
    let mut ids = BTreeSet::new();
    let mut packages = vec![json!({
        "SPDXID": "SPDXRef-image",
        "name": opts.image_name,
        "versionInfo": opts.image_id,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "description": inv.os.pretty_name.clone().unwrap_or_else(|| "unknown operating system".into()),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "supplier": "NOASSERTION",
    })];
    if let Some(a) = &opts.architecture {
        packages[0]["comment"] = json!(format!("architecture: {a}"));
    }
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-image",
    })];
    for p in &inv.packages {
        let id = unique_spdx_id(&mut ids, &format!("deb-{}-{}", p.name, p.architecture));
        packages.push(json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "primaryPackagePurpose": "LIBRARY",
            "sourceInfo": format!("built from Debian source package {} {}", p.source, p.source_version),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "supplier": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(p, &inv.os),
            }],
        }));
        relationships.push(json!({
            "spdxElementId": "SPDXRef-image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{} {}", opts.image_name, opts.image_id),
        "documentNamespace": format!("{base}/{}", pct(&opts.image_id, false)),
        "creationInfo": {
            "created": rfc3339(opts.created),
            "creators": [format!("Tool: {TOOL}")],
            "comment": provenance_comment(inv),
        },
        "packages": packages,
        "relationships": relationships,
    });
    to_pretty(&doc)
}

/// CycloneDX 1.5 JSON BOM of the image's packages.
pub fn cyclonedx_json(inv: &Inventory, opts: &SbomOptions) -> String {
    let mut refs = BTreeSet::new();
    let mut components = Vec::new();
    for p in &inv.packages {
        let purl = purl(p, &inv.os);
        if !refs.insert(purl.clone()) {
            continue;
        }
        components.push(json!({
            "type": "library",
            "bom-ref": purl,
            "name": p.name,
            "version": p.version,
            "purl": purl,
            "properties": [
                {"name": "webake:deb:architecture", "value": p.architecture},
                {"name": "webake:deb:source", "value": p.source},
                {"name": "webake:deb:source_version", "value": p.source_version},
            ],
        }));
    }
    let mut properties =
        vec![json!({"name": "webake:recipe_digest", "value": inv.provenance.recipe_digest})];
    if let Some(base) = &inv.provenance.base_digest {
        properties.push(json!({"name": "webake:base_digest", "value": base}));
    }
    for (name, digest) in &inv.provenance.inputs {
        properties.push(json!({"name": format!("webake:input:{name}"), "value": digest}));
    }
    for k in &inv.kernels {
        properties.push(json!({"name": "webake:kernel", "value": k.version}));
    }
    if let Some(a) = &opts.architecture {
        properties.push(json!({"name": "webake:architecture", "value": a}));
    }
    let mut os = json!({
        "type": "operating-system",
        "bom-ref": "image",
        "name": opts.image_name,
        "version": opts.image_id,
    });
    if let Some(pretty) = &inv.os.pretty_name {
        os["description"] = json!(pretty);
    }
    let doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial_number(&opts.image_id),
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(opts.created),
            "tools": {"components": [{"type": "application", "name": "webake", "version": env!("CARGO_PKG_VERSION")}]},
            "component": os,
            "properties": properties,
        },
        "components": components,
        "dependencies": [{"ref": "image", "dependsOn": refs.into_iter().collect::<Vec<_>>()}],
    });
    to_pretty(&doc)
}

/// Package URL of a Debian package:
/// `pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64&distro=debian-12`.
/// The namespace is os-release `ID` (default `debian`); `distro` is `ID-VERSION_ID`
/// (or `ID-VERSION_CODENAME` for releases without a version, such as testing).
pub fn purl(p: &Package, os: &OsRelease) -> String {
    let id = os.id.as_deref().unwrap_or("debian");
    let mut s = format!(
        "pkg:deb/{}/{}@{}?arch={}",
        pct(id, false),
        pct(&p.name, false),
        pct(&p.version, true),
        pct(&p.architecture, false)
    );
    if let Some(v) = os.version_id.as_ref().or(os.version_codename.as_ref()) {
        s.push_str(&format!("&distro={}", pct(&format!("{id}-{v}"), false)));
    }
    s
}

/// Percent-encode everything but RFC 3986 unreserved characters (and `:` in versions,
/// as the purl spec and packageurl-python do).
fn pct(s: &str, keep_colon: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_colon && b == b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// SPDX ids allow letters, digits, `.` and `-`; others become `-`, collisions get a suffix.
fn unique_spdx_id(taken: &mut BTreeSet<String>, raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut id = format!("SPDXRef-{clean}");
    let mut n = 2;
    while !taken.insert(id.clone()) {
        id = format!("SPDXRef-{clean}-{n}");
        n += 1;
    }
    id
}

/// A UUID derived from the image id: SHA-256 of it, shaped as an RFC 9562 version 8
/// (custom) UUID. Stable for an image, distinct across images.
fn serial_number(image_id: &str) -> String {
    let d = Sha256::digest(format!("webake-cyclonedx:{image_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn provenance_comment(inv: &Inventory) -> String {
    let p = &inv.provenance;
    let mut s = format!("recipe {}", p.recipe_digest);
    if let Some(b) = &p.base_digest {
        s.push_str(&format!("; base {b}"));
    }
    for (name, d) in &p.inputs {
        s.push_str(&format!("; input {name} {d}"));
    }
    s
}

/// `YYYY-MM-DDThh:mm:ssZ` (UTC, whole seconds; times before 1970 clamp to the epoch).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn to_pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("a serde_json::Value always serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn purl_encoding() {
        let p = Package {
            name: "libstdc++6".into(),
            version: "1:12.2.0-14+deb12u1".into(),
            architecture: "amd64".into(),
            source: "gcc-12".into(),
            source_version: "12.2.0-14+deb12u1".into(),
            installed_size_kib: None,
        };
        let os = OsRelease {
            id: Some("debian".into()),
            version_id: Some("12".into()),
            ..Default::default()
        };
        assert_eq!(
            purl(&p, &os),
            "pkg:deb/debian/libstdc%2B%2B6@1:12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12"
        );
    }

    #[test]
    fn serial_is_a_uuid() {
        let s = serial_number("img-1");
        assert_eq!(s.len(), "urn:uuid:".len() + 36);
        assert_ne!(s, serial_number("img-2"));
        assert_eq!(&s[23..24], "8");
    }
}
