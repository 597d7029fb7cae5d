//! Publish a raw disk as an AMI: upload, register, copy, share, tag; idempotent by name and
//! inputs digest; everything this run created is rolled back on failure.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, Image,
    ImdsSupportValues, LaunchPermission, LaunchPermissionModifications, OperationType,
    ResourceType, SnapshotAttributeName, Tag, TagSpecification, TpmSupportValues, VolumeType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::client::{RegionClients, Session};
use crate::ebs::{UploadOptions, upload_snapshot};
use crate::error::{Error, Result, aws, is_not_found};
use crate::reporter::Reporter;
use crate::wait;

/// Tag carrying the bake id on every resource webake creates; `sweep` deletes by it.
pub const TAG_BAKE_ID: &str = "webake:bake-id";
/// Tag carrying the digest of the bake inputs; an AMI is reused only if it matches.
pub const TAG_INPUTS_DIGEST: &str = "webake:inputs-digest";
/// Root device of every AMI webake registers.
pub const ROOT_DEVICE: &str = "/dev/xvda";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    X86_64,
    Arm64,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }
    fn to_sdk(self) -> ArchitectureValues {
        match self {
            Architecture::X86_64 => ArchitectureValues::X8664,
            Architecture::Arm64 => ArchitectureValues::Arm64,
        }
    }
}

impl FromStr for Architecture {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "x86_64" | "amd64" => Ok(Self::X86_64),
            "arm64" | "aarch64" => Ok(Self::Arm64),
            _ => Err(Error::Invalid(format!(
                "unknown architecture {s:?} (x86_64 or arm64)"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    Uefi,
    UefiPreferred,
    LegacyBios,
}

impl BootMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BootMode::Uefi => "uefi",
            BootMode::UefiPreferred => "uefi-preferred",
            BootMode::LegacyBios => "legacy-bios",
        }
    }
    fn to_sdk(self) -> BootModeValues {
        match self {
            BootMode::Uefi => BootModeValues::Uefi,
            BootMode::UefiPreferred => BootModeValues::UefiPreferred,
            BootMode::LegacyBios => BootModeValues::LegacyBios,
        }
    }
}

impl FromStr for BootMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "uefi" => Ok(Self::Uefi),
            "uefi-preferred" => Ok(Self::UefiPreferred),
            "legacy-bios" => Ok(Self::LegacyBios),
            _ => Err(Error::Invalid(format!(
                "unknown boot mode {s:?} (uefi, uefi-preferred, legacy-bios)"
            ))),
        }
    }
}

/// Who an AMI is shared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// A 12-digit account id: launch permission on the AMI and create-volume permission on
    /// its snapshot.
    Account(String),
    /// `arn:aws:organizations::<mgmt>:organization/o-…`: launch permission only (snapshots
    /// cannot be shared with an organisation; launching does not need it).
    Organization(String),
    /// `arn:aws:organizations::<mgmt>:ou/o-…/ou-…`: launch permission only.
    OrganizationalUnit(String),
}

impl FromStr for Principal {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Self::Account(s.to_string()));
        }
        if let Some(rest) = s.strip_prefix("arn:") {
            // arn:<partition>:organizations::<account>:<resource>
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            if parts.len() == 5 && parts[1] == "organizations" {
                if parts[4].starts_with("organization/o-") {
                    return Ok(Self::Organization(s.to_string()));
                }
                if parts[4].starts_with("ou/o-") {
                    return Ok(Self::OrganizationalUnit(s.to_string()));
                }
            }
        }
        Err(Error::Invalid(format!(
            "cannot share with {s:?}: expected a 12-digit account id, an organization ARN or an OU ARN"
        )))
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Account(s)
            | Principal::Organization(s)
            | Principal::OrganizationalUnit(s) => f.write_str(s),
        }
    }
}

/// Everything one publish needs. Plain data: the CLI fills it from flags and the catalog.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The baked raw disk.
    pub disk: PathBuf,
    /// Home region: upload and register here.
    pub region: String,
    /// Regions to copy the AMI to (the home region is ignored if listed).
    pub copy_to: Vec<String>,
    pub share_with: Vec<Principal>,
    /// Extra tags for the AMIs and snapshots (the webake tags are added).
    pub tags: Vec<(String, String)>,
    /// The AMI name (render a template with [`render_name`]).
    pub name: String,
    pub description: String,
    pub architecture: Architecture,
    pub boot_mode: BootMode,
    pub ena_support: bool,
    /// Register with NitroTPM v2.0 (needs UEFI).
    pub tpm_support: bool,
    /// When the AMIs become deprecated (EnableImageDeprecation, in every region).
    pub deprecate_at: Option<jiff::Timestamp>,
    /// KMS key for the uploaded snapshot (home region).
    pub kms_key_arn: Option<String>,
    /// KMS key per copy region (KMS keys are regional).
    pub copy_kms_keys: BTreeMap<String, String>,
    /// Root volume size; `None` is the disk size rounded up to GiB.
    pub volume_size_gib: Option<i64>,
    pub bake_id: String,
    pub inputs_digest: String,
    /// Blocks uploaded at once.
    pub concurrency: usize,
}

/// One region's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionImage {
    pub ami_id: String,
    pub snapshot_id: String,
    /// True if an AMI with this name and inputs digest already existed and was reused.
    pub reused: bool,
}

/// What the lead records in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub name: String,
    pub description: String,
    pub home_region: String,
    pub architecture: Architecture,
    pub boot_mode: BootMode,
    pub bake_id: String,
    pub inputs_digest: String,
    /// region -> AMI and root snapshot.
    pub regions: BTreeMap<String, RegionImage>,
    pub shared_with: Vec<Principal>,
    /// RFC 3339.
    #[serde(with = "opt_timestamp")]
    pub deprecate_at: Option<jiff::Timestamp>,
}

/// `Option<jiff::Timestamp>` as an RFC 3339 string (our jiff has no serde feature).
mod opt_timestamp {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<jiff::Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&t.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<jiff::Timestamp>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Values a name template may use.
#[derive(Debug, Clone, Default)]
pub struct NameVars {
    pub name: String,
    pub family: String,
    pub version: String,
    pub arch: String,
    pub bake_id: String,
    /// e.g. `20261125T132200Z`
    pub timestamp: String,
}

/// Render `{family}-{version}-{arch}`-style templates. Unknown placeholders are errors, and
/// the result must be a valid AMI name (3–128 characters of `A-Za-z0-9()[]./-'@_`).
pub fn render_name(template: &str, vars: &NameVars) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| Error::Invalid(format!("name template {template:?}: unclosed '{{'")))?;
        let key = &after[..close];
        let value = match key {
            "name" => &vars.name,
            "family" => &vars.family,
            "version" => &vars.version,
            "arch" => &vars.arch,
            "bake_id" => &vars.bake_id,
            "timestamp" => &vars.timestamp,
            _ => {
                return Err(Error::Invalid(format!(
                    "name template {template:?}: unknown placeholder {{{key}}} \
                     (name, family, version, arch, bake_id, timestamp)"
                )));
            }
        };
        out.push_str(value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    validate_ami_name(&out)?;
    Ok(out)
}

pub fn validate_ami_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c);
    if !(3..=128).contains(&name.len()) || !name.chars().all(ok_char) {
        return Err(Error::Invalid(format!(
            "AMI name {name:?} must be 3-128 characters of letters, digits and ()[] ./-'@_"
        )));
    }
    Ok(())
}

/// Something this run created, recorded the moment its id is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Snapshot { region: String, id: String },
    Image { region: String, id: String },
}

impl fmt::Display for Created {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Created::Snapshot { region, id } | Created::Image { region, id } => {
                write!(f, "{id} ({region})")
            }
        }
    }
}

/// The record of created resources. `rollback()` deletes them; `commit()` keeps them. If
/// neither ran (the publish future was dropped, e.g. cancelled), `Drop` logs the ids: they
/// carry the bake id tag, so `webake clean --aws` sweeps them.
#[derive(Debug, Default)]
#[must_use]
pub struct Ledger {
    items: Mutex<Vec<Created>>,
    settled: std::sync::atomic::AtomicBool,
}

impl Ledger {
    pub fn record(&self, c: Created) {
        tracing::debug!(created = %c, "recorded for rollback");
        self.lock().push(c);
    }

    pub fn items(&self) -> Vec<Created> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Created>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep everything (the publish succeeded).
    pub fn commit(&self) {
        self.settled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Delete everything recorded, AMIs first (a snapshot in use by an AMI cannot be
    /// deleted), in every region. Returns what could not be deleted.
    pub async fn rollback(&self, session: &Session) -> Vec<String> {
        self.settled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let items = self.items();
        let mut snapshots: Vec<(String, String)> = Vec::new();
        let mut leftovers = Vec::new();
        for c in items.iter().rev() {
            if let Created::Image { region, id } = c {
                let clients = session.region(region);
                match deregister_with_snapshots(&clients, id).await {
                    Ok(snaps) => snapshots.extend(snaps.into_iter().map(|s| (region.clone(), s))),
                    Err(e) => {
                        tracing::error!(%region, ami_id = %id, "rollback: {e}");
                        leftovers.push(c.to_string());
                    }
                }
            }
        }
        for c in items.iter().rev() {
            if let Created::Snapshot { region, id } = c {
                snapshots.push((region.clone(), id.clone()));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (region, id) in snapshots {
            if !seen.insert((region.clone(), id.clone())) {
                continue;
            }
            let clients = session.region(&region);
            if let Err(e) = delete_snapshot(&clients, &id).await {
                tracing::error!(%region, snapshot_id = %id, "rollback: {e}");
                leftovers.push(format!("{id} ({region})"));
            }
        }
        leftovers
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if !self.settled.load(std::sync::atomic::Ordering::SeqCst) {
            let items = self.items();
            if !items.is_empty() {
                let list: Vec<String> = items.iter().map(ToString::to_string).collect();
                tracing::error!(
                    "publish interrupted; these resources were not rolled back (sweep with `webake clean --aws`): {}",
                    list.join(", ")
                );
            }
        }
    }
}

/// Deregister `ami_id` and return the snapshots of its block device mappings (to delete).
/// An AMI that is already gone is not an error.
pub(crate) async fn deregister_with_snapshots(
    clients: &RegionClients,
    ami_id: &str,
) -> Result<Vec<String>> {
    let region = &clients.region;
    let snaps = match clients.ec2.describe_images().image_ids(ami_id).send().await {
        Ok(out) => out
            .images()
            .first()
            .map(image_snapshots)
            .unwrap_or_default(),
        Err(e) => {
            let err = aws("DescribeImages", region, ami_id)(e);
            if is_not_found(err.aws_code()) {
                return Ok(Vec::new());
            }
            return Err(err);
        }
    };
    if let Err(e) = clients.ec2.deregister_image().image_id(ami_id).send().await {
        let err = aws("DeregisterImage", region, ami_id)(e);
        if !is_not_found(err.aws_code()) {
            return Err(err);
        }
    }
    tracing::info!(%region, %ami_id, "deregistered AMI");
    Ok(snaps)
}

pub(crate) async fn delete_snapshot(clients: &RegionClients, snapshot_id: &str) -> Result<()> {
    let region = &clients.region;
    if let Err(e) = clients
        .ec2
        .delete_snapshot()
        .snapshot_id(snapshot_id)
        .send()
        .await
    {
        let err = aws("DeleteSnapshot", region, snapshot_id)(e);
        if !is_not_found(err.aws_code()) {
            return Err(err);
        }
    }
    tracing::info!(%region, %snapshot_id, "deleted snapshot");
    Ok(())
}

fn image_snapshots(image: &Image) -> Vec<String> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect()
}

/// The snapshot behind the root device of `image`.
fn root_snapshot_of(image: &Image) -> Option<String> {
    let root = image.root_device_name();
    image
        .block_device_mappings()
        .iter()
        .find(|m| root.is_none() || m.device_name() == root)
        .and_then(|m| m.ebs())
        .and_then(|e| e.snapshot_id())
        .map(str::to_string)
}

/// The root snapshot of an existing AMI, for a bake that starts from `base: { ami: … }`
/// (download it with [`crate::download_snapshot_to_file`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSnapshot {
    pub ami_id: String,
    pub snapshot_id: String,
    pub volume_size_gib: Option<i32>,
    pub architecture: Option<String>,
    pub boot_mode: Option<String>,
}

pub async fn find_root_snapshot(clients: &RegionClients, ami_id: &str) -> Result<RootSnapshot> {
    let region = &clients.region;
    let out = clients
        .ec2
        .describe_images()
        .image_ids(ami_id)
        .send()
        .await
        .map_err(aws("DescribeImages", region, ami_id))?;
    let image = out.images().first().ok_or_else(|| Error::Missing {
        what: "image",
        context: format!("{ami_id} in {region}"),
    })?;
    let root = image.root_device_name();
    let mapping = image
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == root)
        .or_else(|| image.block_device_mappings().first());
    let ebs = mapping.and_then(|m| m.ebs());
    let snapshot_id = ebs
        .and_then(|e| e.snapshot_id())
        .ok_or_else(|| Error::Missing {
            what: "root EBS snapshot",
            context: format!("{ami_id} in {region} (root device {root:?})"),
        })?;
    Ok(RootSnapshot {
        ami_id: ami_id.to_string(),
        snapshot_id: snapshot_id.to_string(),
        volume_size_gib: ebs.and_then(|e| e.volume_size()),
        architecture: image.architecture().map(|a| a.as_str().to_string()),
        boot_mode: image.boot_mode().map(|b| b.as_str().to_string()),
    })
}

/// Look up our AMI named `name` (owner self). Reuse it if its inputs digest matches, refuse
/// if another build holds the name.
async fn find_existing(clients: &RegionClients, name: &str, digest: &str) -> Result<Option<Image>> {
    let region = &clients.region;
    let out = clients
        .ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(aws("DescribeImages", region, format!("name {name}")))?;
    let Some(image) = out.images().iter().find(|i| i.name() == Some(name)) else {
        return Ok(None);
    };
    let ami_id = image.image_id().unwrap_or_default().to_string();
    let found = image
        .tags()
        .iter()
        .find(|t| t.key() == Some(TAG_INPUTS_DIGEST))
        .and_then(|t| t.value())
        .map(str::to_string);
    if found.as_deref() != Some(digest) {
        return Err(Error::NameConflict {
            region: region.clone(),
            name: name.to_string(),
            ami_id,
            expected: digest.to_string(),
            found,
        });
    }
    tracing::info!(%region, %ami_id, %name, "reusing existing AMI with the same inputs digest");
    Ok(Some(image.clone()))
}

fn all_tags(req: &PublishRequest) -> Vec<(String, String)> {
    let mut tags: Vec<(String, String)> = req
        .tags
        .iter()
        .filter(|(k, _)| k != TAG_BAKE_ID && k != TAG_INPUTS_DIGEST)
        .cloned()
        .collect();
    tags.push((TAG_BAKE_ID.to_string(), req.bake_id.clone()));
    tags.push((TAG_INPUTS_DIGEST.to_string(), req.inputs_digest.clone()));
    tags
}

fn image_tag_spec(tags: &[(String, String)]) -> TagSpecification {
    let mut spec = TagSpecification::builder().resource_type(ResourceType::Image);
    for (k, v) in tags {
        spec = spec.tags(Tag::builder().key(k).value(v).build());
    }
    spec.build()
}

async fn create_tags(
    clients: &RegionClients,
    ids: &[&str],
    tags: &[(String, String)],
) -> Result<()> {
    let mut call = clients.ec2.create_tags();
    for id in ids {
        call = call.resources(*id);
    }
    for (k, v) in tags {
        call = call.tags(Tag::builder().key(k).value(v).build());
    }
    call.send()
        .await
        .map_err(aws("CreateTags", &clients.region, ids.join(" ")))?;
    Ok(())
}

/// An idempotency token (≤ 64 ASCII chars) for one call of one bake in one region.
fn client_token(req: &PublishRequest, what: &str, region: &str) -> String {
    let h = Sha256::digest(format!(
        "{}\0{}\0{}\0{}\0{}",
        req.bake_id, req.name, req.inputs_digest, what, region
    ));
    hex::encode(&h[..24])
}

fn validate(req: &PublishRequest) -> Result<()> {
    validate_ami_name(&req.name)?;
    if req.bake_id.is_empty() || req.inputs_digest.is_empty() {
        return Err(Error::Invalid(
            "bake id and inputs digest are required".into(),
        ));
    }
    if req.region.is_empty() {
        return Err(Error::Invalid(
            "no region given (flag, AWS_REGION or profile)".into(),
        ));
    }
    if req.tpm_support && req.boot_mode == BootMode::LegacyBios {
        return Err(Error::Invalid(
            "NitroTPM needs UEFI: use boot mode uefi or uefi-preferred".into(),
        ));
    }
    for (k, _) in &req.tags {
        if k.starts_with("aws:") {
            return Err(Error::Invalid(format!(
                "tag key {k:?}: the aws: prefix is reserved"
            )));
        }
    }
    Ok(())
}

/// Publish `req.disk` as an AMI in `req.region`, copy it to `req.copy_to`, share and tag it.
/// On error, everything this run created is rolled back in every region.
pub async fn publish(
    session: &Session,
    req: &PublishRequest,
    reporter: &dyn Reporter,
) -> Result<Publication> {
    publish_until(session, req, reporter, std::future::pending()).await
}

/// [`publish`], stopped when `cancelled` resolves (first Ctrl-C / SIGTERM): the work in
/// flight is dropped, then everything created so far is rolled back like on any other error
/// (the source error is [`Error::Cancelled`]).
pub async fn publish_until(
    session: &Session,
    req: &PublishRequest,
    reporter: &dyn Reporter,
    cancelled: impl std::future::Future<Output = ()>,
) -> Result<Publication> {
    validate(req)?;
    let ledger = Arc::new(Ledger::default());
    let outcome = tokio::select! {
        r = publish_inner(session, req, reporter, &ledger) => r,
        () = cancelled => Err(Error::Cancelled),
    };
    match outcome {
        Ok(p) => {
            ledger.commit();
            Ok(p)
        }
        Err(e) if ledger.items().is_empty() => {
            ledger.commit(); // nothing to undo
            Err(e)
        }
        Err(e) => {
            tracing::warn!(
                "publish failed, rolling back {} resource(s): {e}",
                ledger.items().len()
            );
            reporter.step(&req.region, "rolling back");
            let leftovers = ledger.rollback(session).await;
            Err(Error::RolledBack {
                source: Box::new(e),
                leftovers,
            })
        }
    }
}

async fn publish_inner(
    session: &Session,
    req: &PublishRequest,
    reporter: &dyn Reporter,
    ledger: &Arc<Ledger>,
) -> Result<Publication> {
    let timing = session.timing().clone();
    let home = session.region(&req.region);
    let tags = all_tags(req);
    let mut regions = BTreeMap::new();

    reporter.step(&req.region, "looking up an existing AMI by name");
    let home_image = match find_existing(&home, &req.name, &req.inputs_digest).await? {
        Some(image) => reuse(&home, &image, &timing).await?,
        None => {
            reporter.step(&req.region, "uploading the disk into an EBS snapshot");
            let opts = UploadOptions {
                description: format!("{} (webake bake {})", req.name, req.bake_id),
                tags: tags.clone(),
                kms_key_arn: req.kms_key_arn.clone(),
                volume_size_gib: req.volume_size_gib,
                concurrency: req.concurrency,
                client_token: Some(client_token(req, "snapshot", &req.region)),
                ..UploadOptions::default()
            };
            let region = req.region.clone();
            let recorder = {
                let ledger = ledger.clone();
                move |id: &str| {
                    ledger.record(Created::Snapshot {
                        region: region.clone(),
                        id: id.to_string(),
                    })
                }
            };
            let summary = upload_snapshot(&home, &req.disk, &opts, reporter, &recorder).await?;
            let snapshot_id = summary.snapshot_id;
            reporter.step(&req.region, "waiting for the snapshot to complete");
            wait::snapshot_completed(
                &home,
                &snapshot_id,
                timing.poll_interval,
                timing.snapshot_timeout,
            )
            .await?;

            reporter.step(&req.region, "registering the AMI");
            let ami_id = register(&home, req, &snapshot_id, summary.volume_size_gib).await?;
            ledger.record(Created::Image {
                region: req.region.clone(),
                id: ami_id.clone(),
            });
            wait::image_available(&home, &ami_id, timing.poll_interval, timing.image_timeout)
                .await?;
            create_tags(&home, &[&ami_id, &snapshot_id], &tags).await?;
            RegionImage {
                ami_id,
                snapshot_id,
                reused: false,
            }
        }
    };
    let source_ami = home_image.ami_id.clone();
    regions.insert(req.region.clone(), home_image);

    // Copies run in parallel: CopyImage is the slowest step and regions are independent.
    let mut copies: JoinSet<Result<(String, RegionImage)>> = JoinSet::new();
    let targets: std::collections::BTreeSet<&String> =
        req.copy_to.iter().filter(|r| **r != req.region).collect();
    for target in targets {
        reporter.step(target, "copying the AMI");
        let clients = session.region(target);
        let req = req.clone();
        let ledger = ledger.clone();
        let tags = tags.clone();
        let timing = timing.clone();
        let source_ami = source_ami.clone();
        copies.spawn(async move {
            let image =
                copy_to_region(&clients, &req, &source_ami, &ledger, &tags, &timing).await?;
            Ok((clients.region.clone(), image))
        });
    }
    while let Some(r) = copies.join_next().await {
        let (region, image) = r.map_err(|e| Error::Task(e.to_string()))??;
        reporter.step(&region, "copy available");
        regions.insert(region, image);
    }

    for (region, image) in &regions {
        let clients = session.region(region);
        if !req.share_with.is_empty() {
            reporter.step(region, "sharing");
            share(&clients, &image.ami_id, &image.snapshot_id, &req.share_with).await?;
        }
        if let Some(at) = req.deprecate_at {
            deprecate(&clients, &image.ami_id, at).await?;
        }
    }

    Ok(Publication {
        name: req.name.clone(),
        description: req.description.clone(),
        home_region: req.region.clone(),
        architecture: req.architecture,
        boot_mode: req.boot_mode,
        bake_id: req.bake_id.clone(),
        inputs_digest: req.inputs_digest.clone(),
        regions,
        shared_with: req.share_with.clone(),
        deprecate_at: req.deprecate_at,
    })
}

/// Reuse an existing AMI; if an earlier run left it `pending` (interrupted copy), wait for it.
async fn reuse(
    clients: &RegionClients,
    image: &Image,
    timing: &crate::client::Timing,
) -> Result<RegionImage> {
    let ami_id = image.image_id().unwrap_or_default().to_string();
    let image = match image.state() {
        Some(aws_sdk_ec2::types::ImageState::Available) => image.clone(),
        _ => {
            wait::image_available(clients, &ami_id, timing.poll_interval, timing.image_timeout)
                .await?
        }
    };
    Ok(RegionImage {
        ami_id,
        snapshot_id: root_snapshot_of(&image).unwrap_or_default(),
        reused: true,
    })
}

async fn register(
    clients: &RegionClients,
    req: &PublishRequest,
    snapshot_id: &str,
    size_gib: i64,
) -> Result<String> {
    let ebs = EbsBlockDevice::builder()
        .snapshot_id(snapshot_id)
        .volume_type(VolumeType::Gp3)
        .volume_size(size_gib as i32)
        .delete_on_termination(true)
        .build();
    let mapping = BlockDeviceMapping::builder()
        .device_name(ROOT_DEVICE)
        .ebs(ebs)
        .build();
    let mut call = clients
        .ec2
        .register_image()
        .name(&req.name)
        .description(&req.description)
        .architecture(req.architecture.to_sdk())
        .virtualization_type("hvm")
        .root_device_name(ROOT_DEVICE)
        .block_device_mappings(mapping)
        .boot_mode(req.boot_mode.to_sdk())
        .ena_support(req.ena_support)
        .sriov_net_support("simple")
        .imds_support(ImdsSupportValues::V20);
    if req.tpm_support {
        call = call.tpm_support(TpmSupportValues::V20);
    }
    // Tags at creation (see copy_to_region); CreateTags afterwards covers the snapshot too.
    call = call.tag_specifications(image_tag_spec(&all_tags(req)));
    let out = call
        .send()
        .await
        .map_err(aws("RegisterImage", &clients.region, req.name.clone()))?;
    let ami_id = out.image_id().ok_or_else(|| Error::Missing {
        what: "image id",
        context: format!("RegisterImage {}", req.name),
    })?;
    tracing::info!(region = %clients.region, %ami_id, name = %req.name, "registered AMI");
    Ok(ami_id.to_string())
}

async fn copy_to_region(
    clients: &RegionClients,
    req: &PublishRequest,
    source_ami: &str,
    ledger: &Ledger,
    tags: &[(String, String)],
    timing: &crate::client::Timing,
) -> Result<RegionImage> {
    let region = &clients.region;
    if let Some(image) = find_existing(clients, &req.name, &req.inputs_digest).await? {
        return reuse(clients, &image, timing).await;
    }
    let mut call = clients
        .ec2
        .copy_image()
        .source_image_id(source_ami)
        .source_region(&req.region)
        .name(&req.name)
        .description(&req.description)
        .client_token(client_token(req, "copy", region))
        // Tagged atomically with its creation, so a copy whose answer we never saw (cancel,
        // crash) still carries the bake id for `sweep`.
        .tag_specifications(image_tag_spec(tags));
    if let Some(key) = req.copy_kms_keys.get(region) {
        call = call.encrypted(true).kms_key_id(key);
    }
    let out = call.send().await.map_err(aws(
        "CopyImage",
        region,
        format!("{source_ami} from {}", req.region),
    ))?;
    let ami_id = out
        .image_id()
        .ok_or_else(|| Error::Missing {
            what: "image id",
            context: format!("CopyImage to {region}"),
        })?
        .to_string();
    ledger.record(Created::Image {
        region: region.clone(),
        id: ami_id.clone(),
    });
    tracing::info!(%region, %ami_id, "copying AMI");
    let image =
        wait::image_available(clients, &ami_id, timing.poll_interval, timing.image_timeout).await?;
    let snapshot_id = root_snapshot_of(&image).ok_or_else(|| Error::Missing {
        what: "root snapshot",
        context: format!("{ami_id} in {region}"),
    })?;
    ledger.record(Created::Snapshot {
        region: region.clone(),
        id: snapshot_id.clone(),
    });
    create_tags(clients, &[&ami_id, &snapshot_id], tags).await?;
    Ok(RegionImage {
        ami_id,
        snapshot_id,
        reused: false,
    })
}

async fn share(
    clients: &RegionClients,
    ami_id: &str,
    snapshot_id: &str,
    with: &[Principal],
) -> Result<()> {
    let region = &clients.region;
    let mut mods = LaunchPermissionModifications::builder();
    let mut accounts = Vec::new();
    for p in with {
        let perm = match p {
            Principal::Account(a) => {
                accounts.push(a.clone());
                LaunchPermission::builder().user_id(a)
            }
            Principal::Organization(arn) => LaunchPermission::builder().organization_arn(arn),
            Principal::OrganizationalUnit(arn) => {
                LaunchPermission::builder().organizational_unit_arn(arn)
            }
        };
        mods = mods.add(perm.build());
    }
    clients
        .ec2
        .modify_image_attribute()
        .image_id(ami_id)
        .launch_permission(mods.build())
        .send()
        .await
        .map_err(aws("ModifyImageAttribute", region, ami_id))?;
    if !accounts.is_empty() && !snapshot_id.is_empty() {
        clients
            .ec2
            .modify_snapshot_attribute()
            .snapshot_id(snapshot_id)
            .attribute(SnapshotAttributeName::CreateVolumePermission)
            .operation_type(OperationType::Add)
            .set_user_ids(Some(accounts))
            .send()
            .await
            .map_err(aws("ModifySnapshotAttribute", region, snapshot_id))?;
    }
    Ok(())
}

async fn deprecate(clients: &RegionClients, ami_id: &str, at: jiff::Timestamp) -> Result<()> {
    let when = aws_sdk_ec2::primitives::DateTime::from_secs(at.as_second());
    clients
        .ec2
        .enable_image_deprecation()
        .image_id(ami_id)
        .deprecate_at(when)
        .send()
        .await
        .map_err(aws("EnableImageDeprecation", &clients.region, ami_id))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse() {
        assert_eq!(
            "123456789012".parse::<Principal>().unwrap(),
            Principal::Account("123456789012".into())
        );
        let org = "arn:aws:organizations::123456789012:organization/o-abc123";
        assert_eq!(
            org.parse::<Principal>().unwrap(),
            Principal::Organization(org.into())
        );
        let ou = "arn:aws:organizations::123456789012:ou/o-abc123/ou-ab12-cd34";
        assert_eq!(
            ou.parse::<Principal>().unwrap(),
            Principal::OrganizationalUnit(ou.into())
        );
        assert!("12345".parse::<Principal>().is_err());
        assert!(
            "arn:aws:iam::123456789012:user/x"
                .parse::<Principal>()
                .is_err()
        );
    }

    #[test]
    fn name_templates_render_and_validate() {
        let vars = NameVars {
            family: "web".into(),
            version: "1.2.3".into(),
            arch: "x86_64".into(),
            ..NameVars::default()
        };
        assert_eq!(
            render_name("{family}-{version}-{arch}", &vars).unwrap(),
            "web-1.2.3-x86_64"
        );
        assert!(
            render_name("{family}-{nope}", &vars)
                .unwrap_err()
                .to_string()
                .contains("{nope}")
        );
        assert!(render_name("{family", &vars).is_err());
        assert!(render_name("a", &vars).is_err(), "too short");
        assert!(
            render_name("web:{version}", &vars).is_err(),
            "':' is not allowed"
        );
    }

    #[test]
    fn webake_tags_cannot_be_overridden() {
        let req = PublishRequest {
            disk: PathBuf::from("d"),
            region: "us-east-1".into(),
            copy_to: vec![],
            share_with: vec![],
            tags: vec![
                (TAG_BAKE_ID.into(), "spoof".into()),
                ("team".into(), "web".into()),
            ],
            name: "web-1".into(),
            description: String::new(),
            architecture: Architecture::X86_64,
            boot_mode: BootMode::Uefi,
            ena_support: true,
            tpm_support: false,
            deprecate_at: None,
            kms_key_arn: None,
            copy_kms_keys: BTreeMap::new(),
            volume_size_gib: None,
            bake_id: "b1".into(),
            inputs_digest: "d1".into(),
            concurrency: 4,
        };
        let tags = all_tags(&req);
        assert_eq!(
            tags,
            vec![
                ("team".to_string(), "web".to_string()),
                (TAG_BAKE_ID.to_string(), "b1".to_string()),
                (TAG_INPUTS_DIGEST.to_string(), "d1".to_string())
            ]
        );
        assert_eq!(client_token(&req, "copy", "eu-west-1").len(), 48);
        let mut legacy_tpm = req.clone();
        legacy_tpm.boot_mode = BootMode::LegacyBios;
        legacy_tpm.tpm_support = true;
        assert!(validate(&legacy_tpm).is_err());
    }
}
