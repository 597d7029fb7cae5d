//! The publish stage: record a catalog image as published locally, or upload it through the
//! EBS direct APIs, register, copy, share and tag an AMI (webake-aws), and record each region's
//! AMI in the catalog.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use webake_aws::{
    Architecture, BootMode, ClientSettings, ImagePlatform, NameVars, Principal, PublishRequest,
    Session,
};
use webake_catalog::{ArtifactFormat, Image, Publication};

use crate::events::AwsBridge;
use crate::{Context, Error, Result, ResultExt};

/// Default AMI name template; `{timestamp}` is also available but makes every run a new AMI.
pub const DEFAULT_NAME_TEMPLATE: &str = "{family}-{version}-{arch}";

/// Where and how to publish on AWS. What the image is (disk, name, version, architecture,
/// boot mode) comes from the catalog image, never from here.
#[derive(Debug, Clone)]
pub struct AwsTarget {
    pub region: String,
    pub copy_to: Vec<String>,
    pub share_with: Vec<Principal>,
    pub tags: Vec<(String, String)>,
    pub name_template: String,
    pub description: Option<String>,
    /// Register with NitroTPM v2.0 (needs UEFI).
    pub tpm: bool,
    pub deprecate_at: Option<jiff::Timestamp>,
    pub kms_key: Option<String>,
    pub copy_kms_keys: BTreeMap<String, String>,
    pub volume_size_gib: Option<i64>,
    pub concurrency: usize,
    pub client: ClientSettings,
}

impl AwsTarget {
    /// Every region the AMI ends up in.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.region.as_str()).chain(self.copy_to.iter().map(String::as_str))
    }
}

/// Where to publish.
#[derive(Debug, Clone)]
pub enum Target {
    /// Record the local artifacts as published.
    Local,
    Aws(Box<AwsTarget>),
}

/// What a publish did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    pub publications: Vec<Publication>,
    /// The AWS result (regions, AMIs, snapshots, reuse), for AWS targets.
    pub aws: Option<webake_aws::Publication>,
}

/// Publish `img` to `target` and record it.
pub fn publish(ctx: &Context<'_>, img: &Image, target: &Target) -> Result<Published> {
    match target {
        Target::Local => publish_local(ctx, img),
        Target::Aws(t) => {
            let req = request(img, t)?;
            let p = upload(ctx, &req, &t.client)
                .with_context(|| format!("publishing {} to AWS", req.name))?;
            let now = jiff::Timestamp::now().as_second();
            let mut publications = Vec::new();
            for (region, r) in &p.regions {
                let publication = Publication::Aws {
                    region: region.clone(),
                    ami_id: r.ami_id.clone(),
                    snapshot_id: Some(r.snapshot_id.clone()),
                    name: p.name.clone(),
                    created_at: now,
                    run_id: Some(p.run_id.to_string()),
                };
                // A publication the catalog cannot record is a failed publish (exit 4).
                ctx.catalog()?
                    .add_publication(&img.id, &publication)
                    .map_err(|e| Error::Stage {
                        stage: crate::Stage::Publish,
                        source: Box::new(Error::from(e).context(format!(
                            "recording AMI {} of {region} in the catalog",
                            r.ami_id
                        ))),
                    })?;
                publications.push(publication);
            }
            Ok(Published {
                publications,
                aws: Some(p),
            })
        }
    }
}

/// Record the local artifacts of `img` as published (idempotent).
pub fn publish_local(ctx: &Context<'_>, img: &Image) -> Result<Published> {
    let a = img
        .artifacts
        .first()
        .ok_or_else(|| Error::Invalid(format!("image {} has no artifacts", img.id)))?;
    let p = Publication::Local {
        name: a.path.display().to_string(),
        created_at: jiff::Timestamp::now().as_second(),
    };
    ctx.catalog()?.add_publication(&img.id, &p)?;
    Ok(Published {
        publications: vec![p],
        aws: None,
    })
}

/// Upload, register, copy, share and tag (webake-aws); the first Ctrl-C stops it and rolls
/// back what it created.
pub fn upload(
    ctx: &Context<'_>,
    req: &PublishRequest,
    client: &ClientSettings,
) -> Result<webake_aws::Publication> {
    let bridge = AwsBridge(ctx.reporter);
    let cancel = ctx.cancel.clone();
    crate::aws::block_on(ctx, async {
        let session = Session::new(&req.region, client).await;
        webake_aws::publish_until(&session, req, &bridge, async move {
            while !(cancel.is_cancelled() || webake_sys::cancel::signalled()) {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await
    })
}

/// What an AMI is made of, whatever says so: a catalog image ([`AmiSource::of`]) or the
/// flags of the low-level `publish-aws`.
#[derive(Debug, Clone)]
pub struct AmiSource {
    /// The raw disk to upload.
    pub disk: std::path::PathBuf,
    pub name: String,
    pub family: String,
    pub version: String,
    pub bake_id: String,
    pub inputs_digest: String,
    pub platform: ImagePlatform,
}

impl AmiSource {
    /// A catalog image: its raw artifact, names and platform.
    pub fn of(img: &Image) -> Result<Self> {
        let raw = img.artifact(ArtifactFormat::Raw).ok_or_else(|| {
            Error::Invalid(
                "AWS publishing needs the raw artifact; add `raw` to the recipe's outputs".into(),
            )
        })?;
        Ok(Self {
            disk: raw.path.clone(),
            name: img.name.clone(),
            family: img.family.clone(),
            version: img.version.clone(),
            bake_id: img.bake_id.to_string(),
            inputs_digest: img.inputs_digest.clone(),
            platform: platform_of(img)?,
        })
    }
}

/// The webake-aws request for a catalog image (pure: no AWS call).
pub fn request(img: &Image, t: &AwsTarget) -> Result<PublishRequest> {
    request_for(&AmiSource::of(img)?, t)
}

/// The webake-aws request for `src` published as `t` says (pure: no AWS call).
pub fn request_for(src: &AmiSource, t: &AwsTarget) -> Result<PublishRequest> {
    let mut platform = src.platform;
    platform.tpm_support = t.tpm;
    if t.tpm && platform.boot_mode == BootMode::LegacyBios {
        return Err(Error::Invalid(
            "--tpm needs a disk that boots with UEFI (uefi or uefi-preferred)".into(),
        ));
    }
    let vars = NameVars {
        name: src.name.clone(),
        family: src.family.clone(),
        version: src.version.clone(),
        arch: platform.architecture.as_str().to_string(),
        bake_id: src.bake_id.clone(),
        timestamp: jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string(),
    };
    let name = webake_aws::render_name(&t.name_template, &vars)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(PublishRequest {
        disk: src.disk.clone(),
        region: t.region.clone(),
        copy_to: t.copy_to.clone(),
        share_with: t.share_with.clone(),
        tags: t.tags.clone(),
        name,
        description: t
            .description
            .clone()
            .unwrap_or_else(|| format!("{} {} baked by webake", src.family, src.version)),
        platform,
        deprecate_at: t.deprecate_at,
        kms_key_arn: t.kms_key.clone(),
        copy_kms_keys: t.copy_kms_keys.clone(),
        volume_size_gib: t.volume_size_gib,
        bake_id: src.bake_id.clone(),
        inputs_digest: src.inputs_digest.clone(),
        concurrency: t.concurrency,
    })
}

/// How a catalog image boots, from its record: the architecture is the image's (`arch`),
/// else the bootstrap's (`provenance.base.architecture`), else that of its kernel package in
/// the inventory (older records). Boot
/// mode follows the disk: hybrid (BIOS and UEFI) `uefi-preferred`, BIOS only `legacy-bios`,
/// UEFI only `uefi`. ENA: the Debian kernels webake bakes include the
/// driver. IMDS: v2 only (the webake agent uses IMDSv2).
pub fn platform_of(img: &Image) -> Result<ImagePlatform> {
    let from_base = Some(img.arch.as_str()).filter(|a| !a.is_empty()).or(img
        .provenance
        .base
        .architecture
        .as_deref());
    let from_kernel = img.inventory.as_ref().and_then(|inv| {
        inv.packages
            .iter()
            .find(|p| p.name.starts_with("linux-image-") && p.architecture != "all")
            .map(|p| p.architecture.as_str())
    });
    let arch = from_base.or(from_kernel).ok_or_else(|| {
        Error::Invalid(format!(
            "catalog image {} records no architecture (neither its base nor a linux-image package in its inventory)",
            img.id
        ))
    })?;
    let architecture: Architecture = arch
        .parse()
        .map_err(|e: webake_aws::Error| Error::Invalid(format!("catalog image {}: {e}", img.id)))?;
    let firmwares = img.provenance.firmwares();
    let boot_mode = match (
        firmwares.iter().any(|f| f == "bios"),
        firmwares.iter().any(|f| f == "uefi"),
    ) {
        (true, true) => BootMode::UefiPreferred,
        (true, false) => BootMode::LegacyBios,
        _ => BootMode::Uefi,
    };
    Ok(ImagePlatform {
        architecture,
        boot_mode,
        ena_support: true,
        imds_v2_only: true,
        tpm_support: false,
    })
}

/// For `webake clean --aws`: what the sweep would delete in `regions` (nothing is deleted).
pub fn plan_sweep(
    ctx: &Context<'_>,
    regions: &[String],
    scope: &webake_aws::SweepScope,
    client: &ClientSettings,
) -> Result<webake_aws::SweepPlan> {
    let Some(first) = regions.first() else {
        return Ok(webake_aws::SweepPlan::default());
    };
    crate::aws::block_on(ctx, async {
        let session = Session::new(first, client).await;
        webake_aws::plan_sweep(&session, regions, scope).await
    })
    .context("listing webake's AMIs and snapshots")
}

/// For `webake clean --aws`: delete what `plan` lists.
pub fn execute_sweep(
    ctx: &Context<'_>,
    plan: &webake_aws::SweepPlan,
    client: &ClientSettings,
) -> Result<webake_aws::SweepReport> {
    let Some(first) = plan.items.first() else {
        return Ok(webake_aws::SweepReport::default());
    };
    let bridge = AwsBridge(ctx.reporter);
    crate::aws::block_on(ctx, async {
        let session = Session::new(&first.resource.region, client).await;
        Ok::<_, Error>(webake_aws::execute_sweep(&session, plan, &bridge).await)
    })
}

/// What a `--dry-run` would publish.
#[derive(Debug, serde::Serialize)]
pub struct Preview {
    name: String,
    disk: PathBuf,
    region: String,
    copy_to: Vec<String>,
    share_with: Vec<String>,
    platform: ImagePlatform,
    bake_id: String,
    inputs_digest: String,
    deprecate_at: Option<String>,
}

impl Preview {
    pub fn of(req: &PublishRequest) -> Self {
        Self {
            name: req.name.clone(),
            disk: req.disk.clone(),
            region: req.region.clone(),
            copy_to: req.copy_to.clone(),
            share_with: req.share_with.iter().map(ToString::to_string).collect(),
            platform: req.platform,
            bake_id: req.bake_id.clone(),
            inputs_digest: req.inputs_digest.clone(),
            deprecate_at: req.deprecate_at.map(|t| t.to_string()),
        }
    }
}

impl std::fmt::Display for Preview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = format!(
            "would publish {} as AMI {:?}\n",
            self.disk.display(),
            self.name
        );
        let _ = writeln!(s, "  region:       {}", self.region);
        if !self.copy_to.is_empty() {
            let _ = writeln!(s, "  copy to:      {}", self.copy_to.join(", "));
        }
        if !self.share_with.is_empty() {
            let _ = writeln!(s, "  share with:   {}", self.share_with.join(", "));
        }
        let p = &self.platform;
        let _ = writeln!(
            s,
            "  boot:         {} {}, ENA {}, TPM {}, IMDS {}",
            p.architecture.as_str(),
            p.boot_mode.as_str(),
            if p.ena_support { "on" } else { "off" },
            if p.tpm_support { "v2.0" } else { "off" },
            if p.imds_v2_only {
                "v2 only"
            } else {
                "v1 and v2"
            }
        );
        let _ = writeln!(s, "  bake id:      {}", self.bake_id);
        let _ = writeln!(s, "  inputs:       {}", self.inputs_digest);
        if let Some(at) = &self.deprecate_at {
            let _ = writeln!(s, "  deprecate at: {at}");
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arm64_catalog_image_registers_as_arm64_uefi() {
        let mut img: Image = serde_json::from_value(serde_json::json!({
            "id": "img-1", "bake_id": "b", "name": "n", "family": "f", "version": "1",
            "arch": "arm64", "created_at": 0, "inputs_digest": "", "recipe_digest": "",
            "kernel": null, "tree_size": 0, "inventory": null, "provenance": {},
            "test_result": null, "artifacts": [], "publications": []
        }))
        .unwrap();
        let p = platform_of(&img).unwrap();
        assert_eq!(p.architecture, Architecture::Arm64);
        assert_eq!(p.boot_mode, BootMode::Uefi);
        // Older records: the bootstrap's Debian name.
        img.arch.clear();
        img.provenance.base.architecture = Some("amd64".into());
        assert_eq!(
            platform_of(&img).unwrap().architecture,
            Architecture::X86_64
        );
    }
}
