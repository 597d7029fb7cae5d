//! `webake publish aws`: publish a baked raw disk as an AMI through the EBS direct APIs (no
//! volume attach), copy it to other regions, share and tag it.
//!
//! Parses and resolves; the work is `webake_aws::publish`. The caller resolves the catalog
//! image into the plain inputs below (disk path, name, family, version, bake id, inputs
//! digest) and records the returned [`webake_aws::Publication`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use webake_aws::{
    Architecture, BootMode, ClientSettings, ImagePlatform, NameVars, Principal, Publication,
    PublishRequest, Reporter, RetryEvent, Session, SweepPlan, SweepReport, SweepScope,
};

use crate::exit::{INTERRUPTED, INVALID_INPUT, PUBLISH_FAILED, coded};
use crate::settings::Settings;

/// Default AMI name template; `{timestamp}` is also available but makes every run a new AMI.
pub const DEFAULT_NAME_TEMPLATE: &str = "{family}-{version}-{arch}";

#[derive(Debug, Clone, clap::Args)]
pub struct PublishAwsArgs {
    /// Baked raw disk image to upload
    #[arg(long, value_name = "PATH")]
    pub disk: PathBuf,

    /// Image name (the recipe's name; `{name}` in the template)
    #[arg(long)]
    pub name: String,

    /// Image family (`{family}`)
    #[arg(long)]
    pub family: String,

    /// Image version (`{version}`)
    #[arg(long)]
    pub version: String,

    /// Bake id, tagged as webake:bake-id on every AMI and snapshot
    #[arg(long)]
    pub bake_id: String,

    /// Digest of the bake inputs, tagged as webake:inputs-digest; an AMI with the same name and
    /// digest is reused
    #[arg(long)]
    pub inputs_digest: String,

    /// Region to upload and register in
    #[arg(long, env = "AWS_REGION")]
    pub region: String,

    /// Regions to copy the AMI to (repeat or comma-separate)
    #[arg(long = "copy-to", value_name = "REGION", value_delimiter = ',')]
    pub copy_to: Vec<String>,

    /// Share with an account id, organization ARN or OU ARN (repeat or comma-separate)
    #[arg(long = "share-with", value_name = "PRINCIPAL", value_delimiter = ',', value_parser = parse_principal)]
    pub share_with: Vec<Principal>,

    /// Extra tag on AMIs and snapshots (repeat: --tag team=platform)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub tags: Vec<(String, String)>,

    /// AMI name template: {name} {family} {version} {arch} {bake_id} {timestamp}
    #[arg(long, default_value = DEFAULT_NAME_TEMPLATE)]
    pub name_template: String,

    /// AMI description [default: "<family> <version> baked by webake"]
    #[arg(long)]
    pub description: Option<String>,

    /// CPU architecture of the image: x86_64 or arm64
    #[arg(long, default_value = "x86_64", value_parser = parse_arch)]
    pub arch: Architecture,

    /// Boot mode: uefi, uefi-preferred or legacy-bios
    #[arg(long, default_value = "uefi", value_parser = parse_boot_mode)]
    pub boot_mode: BootMode,

    /// Register without ENA support (ENA is on by default)
    #[arg(long)]
    pub no_ena: bool,

    /// Register with NitroTPM v2.0 (needs UEFI)
    #[arg(long)]
    pub tpm: bool,

    /// Deprecate the AMIs at this time (RFC 3339, e.g. 2027-06-01T00:00:00Z)
    #[arg(long, value_name = "TIME")]
    pub deprecate_at: Option<jiff::Timestamp>,

    /// KMS key (ARN) to encrypt the uploaded snapshot
    #[arg(long, value_name = "ARN")]
    pub kms_key: Option<String>,

    /// KMS key for a copy region (repeat: --copy-kms-key eu-west-1=arn:…)
    #[arg(long = "copy-kms-key", value_name = "REGION=ARN", value_parser = parse_pair)]
    pub copy_kms_keys: Vec<(String, String)>,

    /// Root volume size in GiB [default: the disk size rounded up]
    #[arg(long, value_name = "GIB")]
    pub volume_size: Option<i64>,

    /// Blocks uploaded at once
    #[arg(long, default_value_t = webake_aws::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,

    /// Endpoint for EC2 and EBS (a local test server); the SDK also honours AWS_ENDPOINT_URL
    #[arg(long, env = "WEBAKE_AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Named AWS profile [default: the standard credential chain]
    #[arg(long)]
    pub profile: Option<String>,

    /// Print what would be published and call nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print the publication as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn parse_principal(s: &str) -> Result<Principal, String> {
    s.parse().map_err(|e: webake_aws::Error| e.to_string())
}

fn parse_arch(s: &str) -> Result<Architecture, String> {
    s.parse().map_err(|e: webake_aws::Error| e.to_string())
}

fn parse_boot_mode(s: &str) -> Result<BootMode, String> {
    s.parse().map_err(|e: webake_aws::Error| e.to_string())
}

impl PublishAwsArgs {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let req = self.request()?;
        if self.dry_run {
            print_plan(&req);
            return Ok(ExitCode::SUCCESS);
        }
        let publication = self.publish(&req, settings)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&publication)?);
        } else {
            print_publication(&publication);
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The library request these arguments describe (pure: no AWS call).
    pub fn request(&self) -> anyhow::Result<PublishRequest> {
        let vars = NameVars {
            name: self.name.clone(),
            family: self.family.clone(),
            version: self.version.clone(),
            arch: self.arch.as_str().to_string(),
            bake_id: self.bake_id.clone(),
            timestamp: jiff::Timestamp::now()
                .strftime("%Y%m%dT%H%M%SZ")
                .to_string(),
        };
        let name = webake_aws::render_name(&self.name_template, &vars)
            .map_err(|e| coded(INVALID_INPUT, e))?;
        if self.tpm && self.boot_mode == BootMode::LegacyBios {
            return Err(coded(
                INVALID_INPUT,
                anyhow::anyhow!("--tpm needs --boot-mode uefi or uefi-preferred"),
            ));
        }
        Ok(PublishRequest {
            disk: self.disk.clone(),
            region: self.region.clone(),
            copy_to: self.copy_to.clone(),
            share_with: self.share_with.clone(),
            tags: self.tags.clone(),
            name,
            description: self
                .description
                .clone()
                .unwrap_or_else(|| format!("{} {} baked by webake", self.family, self.version)),
            platform: ImagePlatform {
                architecture: self.arch,
                boot_mode: self.boot_mode,
                ena_support: !self.no_ena,
                imds_v2_only: true,
                tpm_support: self.tpm,
            },
            deprecate_at: self.deprecate_at,
            kms_key_arn: self.kms_key.clone(),
            copy_kms_keys: self
                .copy_kms_keys
                .iter()
                .cloned()
                .collect::<BTreeMap<_, _>>(),
            volume_size_gib: self.volume_size,
            bake_id: self.bake_id.clone(),
            inputs_digest: self.inputs_digest.clone(),
            concurrency: self.concurrency,
        })
    }

    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            endpoint_url: self.endpoint_url.clone(),
            profile: self.profile.clone(),
            ..ClientSettings::default()
        }
    }

    /// Publish and return what to record in the catalog. The first Ctrl-C / SIGTERM stops the
    /// publish and rolls back what it created (exit code 130).
    pub fn publish(
        &self,
        req: &PublishRequest,
        settings: &Settings,
    ) -> anyhow::Result<Publication> {
        webake_sys::cancel::install_signal_handlers();
        let cancel = webake_sys::CancelToken::new();
        let reporter = StderrReporter::new(settings.quiet);
        let client = self.client_settings();
        let result = runtime()?.block_on(async {
            let session = Session::new(&req.region, &client).await;
            webake_aws::publish_until(&session, req, &reporter, cancelled(cancel)).await
        });
        result.map_err(|e| {
            let code = if e.is_cancelled() {
                INTERRUPTED
            } else {
                PUBLISH_FAILED
            };
            coded(
                code,
                anyhow::Error::new(e).context(format!("publishing {} to AWS", req.name)),
            )
        })
    }
}

// Not called yet: `publish::aws_args` (outside this change) is to add `platform_args(img)` to
// the argument list it builds and refuse PLATFORM_FLAGS from the user.
#[allow(dead_code)]
/// The options of a catalog image's platform (architecture, boot mode, ENA), for the
/// `publish-aws` argument list built from the image; the user may not give them.
pub const PLATFORM_FLAGS: &[&str] = &["--arch", "--boot-mode", "--no-ena"];

/// [`PLATFORM_FLAGS`] with the values of `img` (see [`platform_of`]).
#[allow(dead_code)]
pub fn platform_args(img: &webake_catalog::Image) -> anyhow::Result<Vec<String>> {
    let p = platform_of(img)?;
    let mut args = vec![
        "--arch".to_string(),
        p.architecture.as_str().to_string(),
        "--boot-mode".to_string(),
        p.boot_mode.as_str().to_string(),
    ];
    if !p.ena_support {
        args.push("--no-ena".into());
    }
    Ok(args)
}

/// How a catalog image boots, from its record: the architecture is the bootstrap's
/// (`provenance.base.architecture`), else that of its kernel package in the inventory. Boot
/// mode: webake assembles GPT disks with an ESP and GRUB for UEFI only, so `uefi`. ENA: the
/// Debian kernels webake bakes include the ENA driver. IMDS: v2 only (the webake agent uses
/// IMDSv2). The catalog records neither the recipe's `disk.boot` nor the kernel's modules,
/// so the last three are properties of every webake image rather than read from the record.
pub fn platform_of(img: &webake_catalog::Image) -> anyhow::Result<ImagePlatform> {
    let from_base = img
        .provenance
        .pointer("/base/architecture")
        .and_then(|v| v.as_str());
    let from_kernel = img
        .inventory
        .as_ref()
        .and_then(|inv| inv.get("packages"))
        .and_then(|p| p.as_array())
        .and_then(|pkgs| {
            pkgs.iter().find_map(|p| {
                let name = p.get("name")?.as_str()?;
                let arch = p.get("architecture")?.as_str()?;
                (name.starts_with("linux-image-") && arch != "all").then_some(arch)
            })
        });
    let arch = from_base.or(from_kernel).ok_or_else(|| {
        coded(
            INVALID_INPUT,
            anyhow::anyhow!(
                "catalog image {} records no architecture (neither provenance.base.architecture nor a linux-image package in its inventory)",
                img.id
            ),
        )
    })?;
    let architecture: Architecture = arch.parse().map_err(|e: webake_aws::Error| {
        coded(
            INVALID_INPUT,
            anyhow::anyhow!("catalog image {}: {e}", img.id),
        )
    })?;
    Ok(ImagePlatform {
        architecture,
        boot_mode: BootMode::Uefi,
        ena_support: true,
        imds_v2_only: true,
        tpm_support: false,
    })
}

/// For `webake clean --aws`: what the sweep would delete in `regions` (nothing is deleted).
pub fn plan_sweep_aws(
    regions: &[String],
    scope: &SweepScope,
    client: &ClientSettings,
) -> anyhow::Result<SweepPlan> {
    let Some(first) = regions.first() else {
        return Ok(SweepPlan::default());
    };
    runtime()?
        .block_on(async {
            let session = Session::new(first, client).await;
            webake_aws::plan_sweep(&session, regions, scope).await
        })
        .context("listing webake's AMIs and snapshots")
}

/// For `webake clean --aws`: delete what `plan` lists.
pub fn execute_sweep_aws(
    plan: &SweepPlan,
    client: &ClientSettings,
    quiet: bool,
) -> anyhow::Result<SweepReport> {
    let Some(first) = plan.items.first() else {
        return Ok(SweepReport::default());
    };
    let reporter = StderrReporter::new(quiet);
    Ok(runtime()?.block_on(async {
        let session = Session::new(&first.resource.region, client).await;
        webake_aws::execute_sweep(&session, plan, &reporter).await
    }))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves when the cancel token (set by the signal handlers) fires.
async fn cancelled(token: webake_sys::CancelToken) {
    while !token.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_plan(req: &PublishRequest) {
    println!("would publish {} as AMI {:?}", req.disk.display(), req.name);
    println!("  region:       {}", req.region);
    if !req.copy_to.is_empty() {
        println!("  copy to:      {}", req.copy_to.join(", "));
    }
    let shares: Vec<String> = req.share_with.iter().map(ToString::to_string).collect();
    if !shares.is_empty() {
        println!("  share with:   {}", shares.join(", "));
    }
    let p = &req.platform;
    println!(
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
    println!("  bake id:      {}", req.bake_id);
    println!("  inputs:       {}", req.inputs_digest);
    if let Some(at) = req.deprecate_at {
        println!("  deprecate at: {at}");
    }
}

fn print_publication(p: &Publication) {
    println!("AMI {:?} (run {})", p.name, p.run_id);
    for (region, image) in &p.regions {
        let note = if image.reused {
            " (existing, reused)"
        } else {
            ""
        };
        println!(
            "  {region:<16} {}  {}{note}",
            image.ami_id, image.snapshot_id
        );
    }
}

/// Plain stderr progress: steps, and block progress every 10 %. (The library only calls the
/// trait; a progress bar can replace this without touching it.)
struct StderrReporter {
    quiet: bool,
    progress: Mutex<BTreeMap<String, (u64, u64, u64)>>, // snapshot -> (done, total, last decile)
}

impl StderrReporter {
    fn new(quiet: bool) -> Self {
        Self {
            quiet,
            progress: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Reporter for StderrReporter {
    fn step(&self, region: &str, message: &str) {
        if !self.quiet {
            eprintln!("[{region}] {message}");
        }
    }
    fn transfer_started(&self, snapshot_id: &str, total_blocks: u64) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        p.insert(snapshot_id.to_string(), (0, total_blocks.max(1), 0));
    }
    fn retrying(&self, e: &RetryEvent<'_>) {
        if !self.quiet {
            eprintln!(
                "[{}] {} {}: {}, retry {}/{} in {:.1?}",
                e.region,
                e.op,
                e.what,
                e.reason,
                e.attempt,
                e.attempts.saturating_sub(1),
                e.delay
            );
        }
    }
    fn block_done(&self, snapshot_id: &str, _bytes: u64, _sent: bool) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((done, total, last)) = p.get_mut(snapshot_id) {
            *done += 1;
            let decile = *done * 10 / *total;
            if decile > *last {
                *last = decile;
                if !self.quiet {
                    eprintln!("  {snapshot_id}: {}% ({done}/{total} blocks)", decile * 10);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PublishAwsArgs,
    }

    fn parse(extra: &[&str]) -> PublishAwsArgs {
        let mut argv = vec![
            "publish-aws",
            "--disk",
            "d.raw",
            "--name",
            "web",
            "--family",
            "web",
            "--version",
            "1.2.3",
            "--bake-id",
            "b1",
            "--inputs-digest",
            "sha256:x",
            "--region",
            "us-east-1",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn builds_the_request() {
        let args = parse(&[
            "--copy-to",
            "eu-west-1,eu-central-1",
            "--share-with",
            "111122223333",
            "--tag",
            "team=platform",
            "--boot-mode",
            "uefi-preferred",
            "--tpm",
            "--arch",
            "arm64",
        ]);
        let req = args.request().unwrap();
        assert_eq!(req.name, "web-1.2.3-arm64");
        assert_eq!(req.copy_to, ["eu-west-1", "eu-central-1"]);
        assert_eq!(req.share_with, [Principal::Account("111122223333".into())]);
        assert_eq!(req.tags, [("team".to_string(), "platform".to_string())]);
        assert_eq!(req.platform.boot_mode, BootMode::UefiPreferred);
        assert_eq!(req.platform.architecture, Architecture::Arm64);
        assert!(req.platform.ena_support && req.platform.tpm_support);
    }

    fn image(
        provenance: serde_json::Value,
        inventory: Option<serde_json::Value>,
    ) -> webake_catalog::Image {
        webake_catalog::Image {
            id: "img-1".into(),
            bake_id: "bake-1".into(),
            name: "web".into(),
            family: "web".into(),
            version: "1".into(),
            created_at: 0,
            inputs_digest: "sha256:x".into(),
            recipe_digest: String::new(),
            kernel: None,
            tree_size: 0,
            inventory,
            provenance,
            test_result: None,
            artifacts: vec![],
            publications: vec![],
        }
    }

    #[test]
    fn platform_comes_from_the_catalog_image() {
        let arm = image(
            serde_json::json!({"base": {"suite": "bookworm", "architecture": "arm64"}}),
            None,
        );
        let p = platform_of(&arm).unwrap();
        assert_eq!(p.architecture, Architecture::Arm64);
        assert_eq!(p.boot_mode, BootMode::Uefi);
        assert!(p.ena_support && p.imds_v2_only);
        assert_eq!(
            platform_args(&arm).unwrap(),
            ["--arch", "arm64", "--boot-mode", "uefi"]
        );
        // A base prepared from an AMI has no bootstrap architecture: the kernel package's.
        let from_ami = image(
            serde_json::json!({"base": {"key": "k", "rootfs": "/r", "description": "ami"}}),
            Some(serde_json::json!({"packages": [
                {"name": "bash", "version": "5", "architecture": "amd64"},
                {"name": "linux-image-6.1.0-cloud-amd64", "version": "6.1", "architecture": "amd64"},
            ]})),
        );
        assert_eq!(
            platform_of(&from_ami).unwrap().architecture,
            Architecture::X86_64
        );
        let unknown = image(serde_json::Value::Null, None);
        let e = platform_of(&unknown).unwrap_err();
        assert!(
            format!("{e:#}").contains("records no architecture"),
            "{e:#}"
        );
    }

    #[test]
    fn rejects_bad_input() {
        let args = parse(&["--boot-mode", "legacy-bios", "--tpm"]);
        assert!(args.request().is_err());
        let args = parse(&["--name-template", "{nope}"]);
        assert!(args.request().is_err());
        assert!(Cli::try_parse_from(["x", "--share-with", "bob"]).is_err());
    }
}
