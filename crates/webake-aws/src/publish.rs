//! Publish a raw disk as an AMI: upload, register, copy, share, tag; idempotent by name and
//! inputs digest; everything this run created is rolled back on failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, Image,
    ImageState, ImdsSupportValues, LaunchPermission, LaunchPermissionModifications, OperationType,
    ResourceType, SnapshotAttributeName, Tag, TagSpecification, TpmSupportValues, VolumeType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::client::{RegionClients, Session};
use crate::ebs::{UploadOptions, upload_snapshot_until};
use crate::error::{Error, Result};
use crate::ledger::{Ledger, Resource, ResourceKind, TAG_RUN};
use crate::reporter::Reporter;
use crate::retry::{Also, Caller, Pool, Stop};
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

/// How the image boots and what the instance gets: properties of the baked image, taken
/// from its catalog record (not from flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlatform {
    pub architecture: Architecture,
    pub boot_mode: BootMode,
    /// The image's kernel has the ENA driver (register with `EnaSupport`).
    pub ena_support: bool,
    /// Instances require IMDSv2 (`ImdsSupport v2.0`).
    pub imds_v2_only: bool,
    /// Register with NitroTPM v2.0 (needs UEFI).
    pub tpm_support: bool,
}

impl Default for ImagePlatform {
    fn default() -> Self {
        Self {
            architecture: Architecture::X86_64,
            boot_mode: BootMode::Uefi,
            ena_support: true,
            imds_v2_only: true,
            tpm_support: false,
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
    pub platform: ImagePlatform,
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

impl PublishRequest {
    /// The copy regions, without the home region and duplicates.
    fn targets(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.copy_to.iter().filter(|r| **r != self.region).collect();
        set.into_iter().cloned().collect()
    }
}

/// One region's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionImage {
    pub ami_id: String,
    pub snapshot_id: String,
    /// True if an AMI with this name and inputs digest already existed and was reused.
    pub reused: bool,
}

/// What the caller records in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub name: String,
    pub description: String,
    pub home_region: String,
    pub architecture: Architecture,
    pub boot_mode: BootMode,
    pub bake_id: String,
    pub inputs_digest: String,
    /// This run's nonce: the `webake:run` tag on what it created, and the salt of its
    /// client tokens (a re-run gets a new one, so it never gets an old run's resources back).
    pub run_id: String,
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
    let stop = Stop::new();
    let out = clients
        .caller(&crate::reporter::NoReporter, &stop)
        .call("DescribeImages", ami_id, Also::default(), || {
            clients.ec2.describe_images().image_ids(ami_id).send()
        })
        .await?;
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
/// if another build holds the name. A deregistered AMI (still listed for a while after a
/// rollback) does not count.
async fn find_existing(
    clients: &RegionClients,
    caller: Caller<'_>,
    name: &str,
    digest: &str,
) -> Result<Option<Image>> {
    let region = &clients.region;
    let Some(image) = find_by_name(clients, caller, name).await? else {
        return Ok(None);
    };
    let ami_id = image.image_id().unwrap_or_default().to_string();
    let found = tag_value(&image, TAG_INPUTS_DIGEST);
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
    Ok(Some(image))
}

async fn find_by_name(
    clients: &RegionClients,
    caller: Caller<'_>,
    name: &str,
) -> Result<Option<Image>> {
    let out = caller
        .call(
            "DescribeImages",
            &format!("name {name}"),
            Also::default(),
            || {
                clients
                    .ec2
                    .describe_images()
                    .owners("self")
                    .filters(Filter::builder().name("name").values(name).build())
                    .send()
            },
        )
        .await?;
    Ok(out
        .images()
        .iter()
        .find(|i| i.name() == Some(name) && i.state() != Some(&ImageState::Deregistered))
        .cloned())
}

fn tag_value(image: &Image, key: &str) -> Option<String> {
    image
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_string)
}

/// After `InvalidAMIName.Duplicate`: is the AMI holding `name` the one an earlier attempt of
/// this very call created (its answer lost)? It carries this run's tag from its creation.
/// Looked up for the grace period, since a just-created AMI may not be listed yet.
async fn adopt_lost_image(
    clients: &RegionClients,
    caller: Caller<'_>,
    name: &str,
    run_id: &str,
) -> Result<Option<String>> {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        if let Some(image) = find_by_name(clients, caller, name).await? {
            if tag_value(&image, TAG_RUN).as_deref() == Some(run_id) {
                return Ok(image.image_id().map(str::to_string));
            }
            return Ok(None);
        }
        if start.elapsed() >= clients.timing.retry.not_yet_visible_grace
            || attempt >= clients.timing.retry.attempts
        {
            return Ok(None);
        }
        caller
            .stop
            .sleep(clients.timing.retry.delay(attempt))
            .await?;
    }
}

fn all_tags(req: &PublishRequest, run_id: &str) -> Vec<(String, String)> {
    let mut tags: Vec<(String, String)> = req
        .tags
        .iter()
        .filter(|(k, _)| !k.starts_with("webake:"))
        .cloned()
        .collect();
    tags.push((TAG_BAKE_ID.to_string(), req.bake_id.clone()));
    tags.push((TAG_INPUTS_DIGEST.to_string(), req.inputs_digest.clone()));
    tags.push((TAG_RUN.to_string(), run_id.to_string()));
    tags
}

fn tag_spec(kind: ResourceType, tags: &[(String, String)]) -> TagSpecification {
    let mut spec = TagSpecification::builder().resource_type(kind);
    for (k, v) in tags {
        spec = spec.tags(Tag::builder().key(k).value(v).build());
    }
    spec.build()
}

async fn create_tags(
    clients: &RegionClients,
    caller: Caller<'_>,
    ids: &[&str],
    tags: &[(String, String)],
) -> Result<()> {
    let tags: Vec<Tag> = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    let resources: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    caller
        .call("CreateTags", &ids.join(" "), Also::default(), || {
            clients
                .ec2
                .create_tags()
                .set_resources(Some(resources.clone()))
                .set_tags(Some(tags.clone()))
                .send()
        })
        .await?;
    Ok(())
}

/// An idempotency token (≤ 64 ASCII chars) for one call of one run in one region. The run
/// id makes it unique per attempt: AWS answers a repeated token with the original result,
/// even a resource deleted since, so a re-run after a rollback must not repeat tokens.
fn client_token(req: &PublishRequest, run_id: &str, what: &str, region: &str) -> String {
    let h = Sha256::digest(format!(
        "{}\0{}\0{}\0{}\0{}\0{}",
        req.bake_id, req.name, req.inputs_digest, run_id, what, region
    ));
    hex::encode(&h[..24])
}

/// A fresh run id: 64 random bits from the kernel, hex.
fn new_run_id() -> String {
    use std::io::Read as _;
    let mut b = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if random.is_err() {
        // No /dev/urandom (unusual): time and pid are unique enough for a nonce.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let h = Sha256::digest(format!("{t}\0{}", std::process::id()));
        b.copy_from_slice(&h[..8]);
    }
    hex::encode(b)
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
    if req.platform.tpm_support && req.platform.boot_mode == BootMode::LegacyBios {
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

/// [`publish`], stopped when `cancelled` resolves (first Ctrl-C / SIGTERM). Calls in flight
/// are awaited (up to `Timing::cancel_grace`) so their answers are recorded, nothing new
/// starts, then everything created so far is rolled back like on any other error (the
/// source error is [`Error::Cancelled`]).
pub async fn publish_until(
    session: &Session,
    req: &PublishRequest,
    reporter: &dyn Reporter,
    cancelled: impl std::future::Future<Output = ()>,
) -> Result<Publication> {
    validate(req)?;
    let run_id = new_run_id();
    let mut regions = vec![req.region.clone()];
    regions.extend(req.targets());
    let ledger = Ledger::new(&run_id, &req.name, regions);
    let stop = Stop::new();
    let grace = session.timing().cancel_grace;
    tracing::info!(run = %run_id, name = %req.name, "publish run started");

    let mut work = Box::pin(publish_inner(session, req, reporter, &ledger, &stop));
    let cancelled = std::pin::pin!(cancelled);
    let outcome = tokio::select! {
        r = &mut work => r,
        () = cancelled => {
            stop.stop();
            reporter.step(&req.region, "cancelling: waiting for the calls in flight");
            match tokio::time::timeout(grace, &mut work).await {
                Ok(r) => r,
                Err(_) => Err(Error::Cancelled),
            }
        }
    };
    // Drop the work first: a create still unanswered marks itself uncertain.
    drop(work);
    match outcome {
        Ok(p) => {
            ledger.commit();
            Ok(p)
        }
        Err(e) if ledger.is_empty() => {
            ledger.commit(); // nothing to undo
            Err(e)
        }
        Err(e) => {
            tracing::warn!(run = %run_id, "publish failed, rolling back: {e}");
            reporter.step(&req.region, "rolling back");
            let (removed, leftovers) = ledger.rollback(session, reporter).await;
            Err(Error::RolledBack {
                source: Box::new(e),
                run_id,
                removed,
                leftovers,
            })
        }
    }
}

async fn publish_inner(
    session: &Session,
    req: &PublishRequest,
    reporter: &dyn Reporter,
    ledger: &Ledger,
    stop: &Stop,
) -> Result<Publication> {
    let run_id = ledger.run_id();
    let home = session.region(&req.region);
    let caller = home.caller(reporter, stop);
    let tags = all_tags(req, run_id);
    let mut regions = BTreeMap::new();

    reporter.step(&req.region, "looking up an existing AMI by name");
    let existing = find_existing(&home, caller, &req.name, &req.inputs_digest).await?;
    let home_image = match existing {
        Some(image) => reuse(&home, &image, reporter, stop).await?,
        None => upload_and_register(&home, req, &tags, reporter, ledger, stop).await?,
    };
    let source_ami = home_image.ami_id.clone();
    regions.insert(req.region.clone(), home_image);

    // Copies run together: CopyImage is the slowest step and regions are independent. When
    // one fails, the others stop at their next step, but a CopyImage already sent is always
    // awaited and its copy recorded, so the rollback removes it too.
    let copy_stop = stop.child();
    let mut copies = Pool::new();
    for target in req.targets() {
        let clients = session.region(&target);
        let tags = &tags;
        let source_ami = source_ami.as_str();
        let copy_stop = &copy_stop;
        copies.push(async move {
            reporter.step(&target, "copying the AMI");
            let r =
                copy_to_region(&clients, req, source_ami, ledger, tags, reporter, copy_stop).await;
            if r.is_err() {
                copy_stop.stop();
            }
            (target, r)
        });
    }
    let mut failure: Option<Error> = None;
    while let Some((region, r)) = copies.next().await {
        match r {
            Ok(image) => {
                reporter.step(&region, "copy available");
                regions.insert(region, image);
            }
            Err(e) => {
                let replace = match &failure {
                    None => true,
                    Some(Error::Cancelled) => !matches!(e, Error::Cancelled),
                    Some(_) => false,
                };
                if replace {
                    failure = Some(e);
                }
            }
        }
    }
    drop(copies);
    if let Some(e) = failure {
        return Err(if stop.is_stopped() {
            Error::Cancelled
        } else {
            e
        });
    }

    for (region, image) in &regions {
        stop.check()?;
        let clients = session.region(region);
        let caller = clients.caller(reporter, stop);
        if !req.share_with.is_empty() {
            reporter.step(region, "sharing");
            share(
                &clients,
                caller,
                &image.ami_id,
                &image.snapshot_id,
                &req.share_with,
            )
            .await?;
        }
        if let Some(at) = req.deprecate_at {
            deprecate(&clients, caller, &image.ami_id, at).await?;
        }
    }

    Ok(Publication {
        name: req.name.clone(),
        description: req.description.clone(),
        home_region: req.region.clone(),
        architecture: req.platform.architecture,
        boot_mode: req.platform.boot_mode,
        bake_id: req.bake_id.clone(),
        inputs_digest: req.inputs_digest.clone(),
        run_id: run_id.to_string(),
        regions,
        shared_with: req.share_with.clone(),
        deprecate_at: req.deprecate_at,
    })
}

/// Upload the disk into a snapshot and register it in the home region.
async fn upload_and_register(
    home: &RegionClients,
    req: &PublishRequest,
    tags: &[(String, String)],
    reporter: &dyn Reporter,
    ledger: &Ledger,
    stop: &Stop,
) -> Result<RegionImage> {
    let run_id = ledger.run_id();
    reporter.step(&req.region, "uploading the disk into an EBS snapshot");
    let opts = UploadOptions {
        description: format!("{} (webake bake {})", req.name, req.bake_id),
        tags: tags.to_vec(),
        kms_key_arn: req.kms_key_arn.clone(),
        volume_size_gib: req.volume_size_gib,
        concurrency: req.concurrency,
        client_token: Some(client_token(req, run_id, "snapshot", &req.region)),
    };
    let started_at = std::sync::Mutex::new(None);
    let upload = {
        let inflight = ledger.begin(&req.region, ResourceKind::Snapshot, "StartSnapshot".into());
        let inflight = std::sync::Mutex::new(Some(inflight));
        let recorder = |id: &str| {
            *started_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            if let Some(f) = inflight.lock().unwrap_or_else(|p| p.into_inner()).take() {
                f.created(id);
            }
        };
        let r = upload_snapshot_until(home, &req.disk, &opts, reporter, stop, &recorder).await;
        let pending = inflight.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (Err(e), Some(f)) = (&r, pending) {
            f.failed(e); // StartSnapshot itself failed
        }
        r
    };
    let summary = upload?;
    let snapshot_id = summary.snapshot_id;
    let created_at = started_at
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_else(Instant::now);
    reporter.step(&req.region, "waiting for the snapshot to complete");
    wait::snapshot_completed_until(home, &snapshot_id, created_at, reporter, stop).await?;

    stop.check()?;
    reporter.step(&req.region, "registering the AMI");
    let ami_id = register(
        home,
        req,
        &snapshot_id,
        summary.volume_size_gib,
        tags,
        reporter,
        ledger,
        stop,
    )
    .await?;
    let registered_at = Instant::now();
    wait::image_available_until(home, &ami_id, registered_at, reporter, stop).await?;
    // Tagged at creation already; CreateTags again covers endpoints that ignore tag
    // specifications.
    create_tags(
        home,
        home.caller(reporter, stop),
        &[&ami_id, &snapshot_id],
        tags,
    )
    .await?;
    Ok(RegionImage {
        ami_id,
        snapshot_id,
        reused: false,
    })
}

/// Reuse an existing AMI; if an earlier run left it `pending` (interrupted copy), wait for it.
async fn reuse(
    clients: &RegionClients,
    image: &Image,
    reporter: &dyn Reporter,
    stop: &Stop,
) -> Result<RegionImage> {
    let ami_id = image.image_id().unwrap_or_default().to_string();
    let image = match image.state() {
        Some(ImageState::Available) => image.clone(),
        _ => wait::image_available_until(clients, &ami_id, Instant::now(), reporter, stop).await?,
    };
    Ok(RegionImage {
        ami_id,
        snapshot_id: root_snapshot_of(&image).unwrap_or_default(),
        reused: true,
    })
}

#[allow(clippy::too_many_arguments)]
async fn register(
    clients: &RegionClients,
    req: &PublishRequest,
    snapshot_id: &str,
    size_gib: i64,
    tags: &[(String, String)],
    reporter: &dyn Reporter,
    ledger: &Ledger,
    stop: &Stop,
) -> Result<String> {
    let caller = clients.caller(reporter, stop);
    let p = &req.platform;
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
    let spec = tag_spec(ResourceType::Image, tags);
    let inflight = ledger.begin(
        &req.region,
        ResourceKind::Image,
        format!("RegisterImage {}", req.name),
    );
    // RegisterImage has no client token: if an attempt's answer is lost, the next attempt
    // gets InvalidAMIName.Duplicate, and the AMI holding the name carries this run's tag.
    let r = caller
        .call("RegisterImage", &req.name, Also::default(), || {
            let mut call = clients
                .ec2
                .register_image()
                .name(&req.name)
                .description(&req.description)
                .architecture(p.architecture.to_sdk())
                .virtualization_type("hvm")
                .root_device_name(ROOT_DEVICE)
                .block_device_mappings(mapping.clone())
                .boot_mode(p.boot_mode.to_sdk())
                .ena_support(p.ena_support)
                .sriov_net_support("simple")
                .tag_specifications(spec.clone());
            if p.imds_v2_only {
                call = call.imds_support(ImdsSupportValues::V20);
            }
            if p.tpm_support {
                call = call.tpm_support(TpmSupportValues::V20);
            }
            call.send()
        })
        .await;
    let ami_id = match r {
        Ok(out) => out
            .image_id()
            .map(str::to_string)
            .ok_or_else(|| Error::Missing {
                what: "image id",
                context: format!("RegisterImage {}", req.name),
            }),
        Err(e) if e.aws_code() == Some("InvalidAMIName.Duplicate") => {
            match adopt_lost_image(clients, caller, &req.name, ledger.run_id()).await {
                Ok(Some(id)) => {
                    tracing::warn!(region = %clients.region, ami_id = %id, "RegisterImage answer was lost; the AMI carries this run's tag: adopted");
                    Ok(id)
                }
                Ok(None) => Err(e),
                Err(lookup) => Err(lookup),
            }
        }
        Err(e) => Err(e),
    };
    match ami_id {
        Ok(id) => {
            inflight.created(&id);
            tracing::info!(region = %clients.region, ami_id = %id, name = %req.name, "registered AMI");
            Ok(id)
        }
        Err(e) => {
            inflight.failed(&e);
            Err(e)
        }
    }
}

async fn copy_to_region(
    clients: &RegionClients,
    req: &PublishRequest,
    source_ami: &str,
    ledger: &Ledger,
    tags: &[(String, String)],
    reporter: &dyn Reporter,
    stop: &Stop,
) -> Result<RegionImage> {
    let region = &clients.region;
    let caller = clients.caller(reporter, stop);
    if let Some(image) = find_existing(clients, caller, &req.name, &req.inputs_digest).await? {
        return reuse(clients, &image, reporter, stop).await;
    }
    stop.check()?;
    let token = client_token(req, ledger.run_id(), "copy", region);
    // Tagged atomically with its creation (AMI and its new snapshots), so a copy whose answer
    // we never saw still carries the run and bake ids for the rollback and `sweep`.
    let specs = vec![
        tag_spec(ResourceType::Image, tags),
        tag_spec(ResourceType::Snapshot, tags),
    ];
    let inflight = ledger.begin(
        region,
        ResourceKind::Image,
        format!("CopyImage {}", req.name),
    );
    let r = caller
        .call(
            "CopyImage",
            &format!("{source_ami} from {}", req.region),
            Also::default(),
            || {
                let mut call = clients
                    .ec2
                    .copy_image()
                    .source_image_id(source_ami)
                    .source_region(&req.region)
                    .name(&req.name)
                    .description(&req.description)
                    .client_token(&token)
                    .set_tag_specifications(Some(specs.clone()));
                if let Some(key) = req.copy_kms_keys.get(region) {
                    call = call.encrypted(true).kms_key_id(key);
                }
                call.send()
            },
        )
        .await;
    let ami_id = match r {
        Ok(out) => out
            .image_id()
            .map(str::to_string)
            .ok_or_else(|| Error::Missing {
                what: "image id",
                context: format!("CopyImage to {region}"),
            }),
        Err(e) if e.aws_code() == Some("InvalidAMIName.Duplicate") => {
            match adopt_lost_image(clients, caller, &req.name, ledger.run_id()).await {
                Ok(Some(id)) => Ok(id),
                Ok(None) => Err(e),
                Err(lookup) => Err(lookup),
            }
        }
        Err(e) => Err(e),
    };
    let ami_id = match ami_id {
        Ok(id) => {
            inflight.created(&id);
            id
        }
        Err(e) => {
            inflight.failed(&e);
            return Err(e);
        }
    };
    let copied_at = Instant::now();
    tracing::info!(%region, %ami_id, "copying AMI");
    let image = wait::image_available_until(clients, &ami_id, copied_at, reporter, stop).await?;
    let snapshot_id = root_snapshot_of(&image).ok_or_else(|| Error::Missing {
        what: "root snapshot",
        context: format!("{ami_id} in {region}"),
    })?;
    ledger.record(Resource::snapshot(region, &snapshot_id));
    create_tags(clients, caller, &[&ami_id, &snapshot_id], tags).await?;
    Ok(RegionImage {
        ami_id,
        snapshot_id,
        reused: false,
    })
}

async fn share(
    clients: &RegionClients,
    caller: Caller<'_>,
    ami_id: &str,
    snapshot_id: &str,
    with: &[Principal],
) -> Result<()> {
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
    let mods = mods.build();
    caller
        .call("ModifyImageAttribute", ami_id, Also::default(), || {
            clients
                .ec2
                .modify_image_attribute()
                .image_id(ami_id)
                .launch_permission(mods.clone())
                .send()
        })
        .await?;
    if !accounts.is_empty() && !snapshot_id.is_empty() {
        caller
            .call(
                "ModifySnapshotAttribute",
                snapshot_id,
                Also::default(),
                || {
                    clients
                        .ec2
                        .modify_snapshot_attribute()
                        .snapshot_id(snapshot_id)
                        .attribute(SnapshotAttributeName::CreateVolumePermission)
                        .operation_type(OperationType::Add)
                        .set_user_ids(Some(accounts.clone()))
                        .send()
                },
            )
            .await?;
    }
    Ok(())
}

pub(crate) async fn deprecate(
    clients: &RegionClients,
    caller: Caller<'_>,
    ami_id: &str,
    at: jiff::Timestamp,
) -> Result<()> {
    let when = aws_sdk_ec2::primitives::DateTime::from_secs(at.as_second());
    caller
        .call("EnableImageDeprecation", ami_id, Also::default(), || {
            clients
                .ec2
                .enable_image_deprecation()
                .image_id(ami_id)
                .deprecate_at(when)
                .send()
        })
        .await?;
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
            platform: ImagePlatform::default(),
            deprecate_at: None,
            kms_key_arn: None,
            copy_kms_keys: BTreeMap::new(),
            volume_size_gib: None,
            bake_id: "b1".into(),
            inputs_digest: "d1".into(),
            concurrency: 4,
        };
        let tags = all_tags(&req, "r1");
        assert_eq!(
            tags,
            vec![
                ("team".to_string(), "web".to_string()),
                (TAG_BAKE_ID.to_string(), "b1".to_string()),
                (TAG_INPUTS_DIGEST.to_string(), "d1".to_string()),
                (TAG_RUN.to_string(), "r1".to_string()),
            ]
        );
        let mut legacy_tpm = req.clone();
        legacy_tpm.platform.boot_mode = BootMode::LegacyBios;
        legacy_tpm.platform.tpm_support = true;
        assert!(validate(&legacy_tpm).is_err());
    }

    #[test]
    fn client_tokens_differ_per_run() {
        let req = PublishRequest {
            disk: PathBuf::from("d"),
            region: "us-east-1".into(),
            copy_to: vec!["eu-west-1".into(), "us-east-1".into(), "eu-west-1".into()],
            share_with: vec![],
            tags: vec![],
            name: "web-1".into(),
            description: String::new(),
            platform: ImagePlatform::default(),
            deprecate_at: None,
            kms_key_arn: None,
            copy_kms_keys: BTreeMap::new(),
            volume_size_gib: None,
            bake_id: "b1".into(),
            inputs_digest: "d1".into(),
            concurrency: 4,
        };
        let (a, b) = (new_run_id(), new_run_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        let t = client_token(&req, &a, "copy", "eu-west-1");
        assert_eq!(t.len(), 48, "at most 64 ASCII characters");
        assert_eq!(
            t,
            client_token(&req, &a, "copy", "eu-west-1"),
            "stable within a run"
        );
        assert_ne!(
            t,
            client_token(&req, &b, "copy", "eu-west-1"),
            "new per run"
        );
        assert_ne!(t, client_token(&req, &a, "copy", "eu-central-1"));
        assert_eq!(req.targets(), ["eu-west-1"]);
    }
}
