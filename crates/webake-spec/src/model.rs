//! The recipe model, format version 1. Every struct rejects unknown fields.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::RecipePath;
use crate::size::ByteSize;
use crate::template::VersionTemplate;

/// A recipe: one image, declared.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Recipe format version. Only `1` exists.
    pub version: u32,
    /// Values set from outside the recipe (`--var NAME=VALUE`, `--var-file FILE`,
    /// `WEBAKE_VAR_NAME`), used as `{var.NAME}` in the image version and description, shell
    /// `inline` commands and `env` values, file `source`, Ansible `extra_vars` values and test
    /// checks.
    #[serde(default)]
    pub variables: BTreeMap<String, VariableSpec>,
    /// What the image is called and how its versions are named.
    pub image: ImageSpec,
    /// Where the root filesystem comes from.
    pub base: Base,
    /// CPU architectures to bake: one image per architecture from this one recipe, all of the
    /// same family and version. Those the build host cannot run natively are bootstrapped and
    /// provisioned under qemu-user (docs/bake.md#other-architectures). In
    /// `base.mmdebstrap.include`, `{debian_arch}` becomes the Debian name of each (`amd64`,
    /// `arm64`), e.g. `linux-image-cloud-{debian_arch}`. Default: the base's `architecture`,
    /// else the build host's.
    #[serde(default)]
    pub architectures: Vec<Architecture>,
    /// The disk the root filesystem is assembled into.
    #[serde(default)]
    pub disk: DiskSpec,
    /// Steps run against the root filesystem, in order.
    #[serde(default)]
    pub provisioners: Vec<Provisioner>,
    /// Artifact formats to write.
    #[serde(default = "default_outputs")]
    pub outputs: Vec<OutputFormat>,
    /// Boot-time identity agent installed into the image.
    #[serde(default)]
    pub agent: Option<AgentSpec>,
    /// Boot test run after assembly (`webake test`, `webake bake --test`).
    #[serde(default)]
    pub test: Option<TestSpec>,
    /// Hygiene lint: rules this image is allowed to break.
    #[serde(default)]
    pub lint: LintSpec,
    /// Paths in this recipe may point outside the recipe's directory (off by default).
    #[serde(default)]
    pub allow_paths_outside_recipe_dir: bool,
    /// The network of the bootstrap and of every step. By default they reach the internet and
    /// the networks around the build host, never the host itself (loopback, its own addresses)
    /// nor link-local addresses (instance metadata).
    #[serde(default)]
    pub network: NetworkSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Outbound networking for the bootstrap and the steps (`false`: loopback only).
    #[serde(default = "yes")]
    pub outbound: bool,
    /// Addresses the default policy blocks that this recipe may reach: `127.0.0.1:PORT` (a TCP
    /// port on the build host's loopback, e.g. a local mirror; reached as the same address
    /// inside), or an IPv4 address or `ADDR/PREFIX` network (a host address, link-local).
    #[serde(default)]
    pub allow: Vec<String>,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            outbound: true,
            allow: Vec::new(),
        }
    }
}

/// A variable a recipe can be given from outside.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VariableSpec {
    /// `string`, `number` or `bool`.
    #[serde(rename = "type")]
    pub kind: VarType,
    /// The value when none is given; without a default the variable is required.
    #[serde(default)]
    pub default: Option<VarDefault>,
    /// What the variable is for (shown by `webake validate`).
    #[serde(default)]
    pub description: Option<String>,
    /// A pattern every value must match.
    #[serde(default)]
    pub validation: Option<VarValidation>,
    /// Never shown in plans, logs, provenance or the catalog (`(secret)` instead). A secret
    /// may only be used in shell `inline`/`env`, `extra_vars` and test checks.
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    String,
    Number,
    Bool,
}

impl VarType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Bool => "bool",
        }
    }
}

/// A default value as written (`"eu-west-1"`, `3`, `true`); checked against the type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct VarDefault(pub String);

impl<'de> Deserialize<'de> for VarDefault {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = VarDefault;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, a number or true/false")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<VarDefault, E> {
                Ok(VarDefault(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<VarDefault, E> {
                Ok(VarDefault(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<VarDefault, E> {
                Ok(VarDefault(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<VarDefault, E> {
                Ok(VarDefault(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<VarDefault, E> {
                Ok(VarDefault(v.to_string()))
            }
        }
        // Read as text (a recipe's `1.10` stays "1.10"); the type check comes later.
        d.deserialize_str(V)
    }
}

impl JsonSchema for VarDefault {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "VarDefault".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A default value: a string, a number or a boolean, matching the variable's type.",
            "type": ["string", "number", "boolean"]
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VarValidation {
    /// A regular expression the whole value must match (Rust `regex` syntax), e.g.
    /// `"(dev|staging|prod)"`.
    pub regex: String,
    /// Says what is expected when a value does not match.
    #[serde(default)]
    pub message: Option<String>,
}

/// One parsed entry of `network.allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkAllow {
    HostLoopbackPort(u16),
    Network(std::net::Ipv4Addr, u8),
}

impl NetworkAllow {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(port) = s.strip_prefix("127.0.0.1:") {
            return port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .map(Self::HostLoopbackPort)
                .ok_or_else(|| format!("{s:?}: expected 127.0.0.1:PORT with a port 1-65535"));
        }
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().ok().filter(|p| *p <= 32)),
            None => (s, Some(32)),
        };
        match (addr.parse::<std::net::Ipv4Addr>(), prefix) {
            (Ok(a), Some(p)) if !a.is_loopback() => Ok(Self::Network(a, p)),
            (Ok(_), Some(_)) => Err(format!(
                "{s:?}: the build host's loopback is reached by port only (127.0.0.1:PORT)"
            )),
            _ => Err(format!(
                "{s:?}: expected 127.0.0.1:PORT, an IPv4 address or ADDR/PREFIX"
            )),
        }
    }
}

fn default_outputs() -> Vec<OutputFormat> {
    vec![OutputFormat::Raw, OutputFormat::Qcow2]
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Image name, e.g. `debian-minimal`. Lowercase letters, digits, `-`, `.`, `_`.
    pub name: String,
    /// Image family (rollouts and "latest" lookups are per family). Defaults to the name.
    #[serde(default)]
    pub family: Option<String>,
    /// Version template. Placeholders: `{date}` (YYYYMMDD, UTC), `{time}` (HHMMSS),
    /// `{timestamp}` (unix seconds). Default `{date}.{time}`.
    #[serde(default)]
    pub version: Option<VersionTemplate>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Role of the image (the agent's `{role}` hostname segment), e.g. `kubernetes`.
    #[serde(default)]
    pub role: Option<String>,
    /// The image's date (`SOURCE_DATE_EPOCH`, Unix seconds): no timestamp in the image is
    /// later, mmdebstrap and every step see it, the version template renders it. Default: the
    /// base's (the newest InRelease `Date` of a checked Debian base, a snapshot mirror's date,
    /// the parent image's); `--source-date-epoch` overrides it. See docs/reproducible.md.
    #[serde(default)]
    pub source_date_epoch: Option<i64>,
}

/// Where the root filesystem comes from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Base {
    /// Bootstrap a Debian-family distribution with mmdebstrap.
    Mmdebstrap(MmdebstrapBase),
    /// Start from an existing image in the local catalog (by id, or `family:NAME` for its latest).
    Image(String),
    /// Start from an existing AMI, downloaded through the EBS direct APIs.
    Ami(AmiBase),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MmdebstrapBase {
    /// Suite or codename, e.g. `bookworm`, `noble`.
    pub suite: String,
    /// mmdebstrap variant.
    #[serde(default = "default_variant")]
    pub variant: String,
    /// Debian architecture (`amd64`, `arm64`, ...). Default: the recipe's `architectures`,
    /// else the build host's.
    #[serde(default)]
    pub architecture: Option<String>,
    /// Archive components.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Packages to install while bootstrapping (the kernel belongs here).
    #[serde(default)]
    pub include: Vec<String>,
    /// Mirror URL. When absent: `$WEBAKE_MIRROR`, else the host's apt sources, else mmdebstrap's default.
    #[serde(default)]
    pub mirror: Option<String>,
    /// Keyring files for a non-Debian archive (e.g. Ubuntu), passed to mmdebstrap `--keyring`;
    /// they replace the host's keyrings for every source of the base.
    #[serde(default)]
    pub keyrings: Vec<String>,
    /// Also install from `SUITE-updates` on the same mirror. Default: true for Debian suites
    /// that have it (not sid/unstable/experimental).
    #[serde(default)]
    pub updates: Option<bool>,
    /// Also install from `SUITE-security`. Default: true for Debian suites that have it.
    #[serde(default)]
    pub security: Option<bool>,
    /// Mirror of the security suite. Default: `http://deb.debian.org/debian-security`, or for a
    /// snapshot mirror the debian-security snapshot of the same time.
    #[serde(default)]
    pub security_mirror: Option<String>,
    /// The mirror never changes (a snapshot): the upstream check is not made. Snapshot URLs
    /// (snapshot.debian.org, snapshot.ubuntu.com) are pinned without it.
    #[serde(default)]
    pub pinned: bool,
}

fn default_variant() -> String {
    "apt".into()
}
impl MmdebstrapBase {
    /// The Debian architecture bootstrapped: the one set, else the build host's.
    pub fn arch(&self) -> &str {
        self.architecture
            .as_deref()
            .unwrap_or(Architecture::host().debian())
    }
}

/// A CPU architecture webake bakes images for, by its AWS name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Architecture {
    /// 64-bit x86 (Debian `amd64`).
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM, AWS Graviton (Debian `arm64`).
    #[serde(rename = "arm64")]
    Arm64,
}

impl Architecture {
    pub const ALL: [Architecture; 2] = [Architecture::X86_64, Architecture::Arm64];

    /// The AWS (and catalog) name: `x86_64`, `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
        }
    }
    /// The Debian name: `amd64`, `arm64`.
    pub fn debian(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }
    /// qemu's name: `x86_64`, `aarch64`.
    pub fn qemu(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "aarch64",
        }
    }
    /// From an AWS, Debian or qemu name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "x86_64" | "amd64" => Some(Self::X86_64),
            "arm64" | "aarch64" => Some(Self::Arm64),
            _ => None,
        }
    }
    /// The architecture webake runs on.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") {
            Self::Arm64
        } else {
            Self::X86_64
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
fn default_components() -> Vec<String> {
    vec!["main".into()]
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmiBase {
    /// AMI id, e.g. `ami-0123456789abcdef0`.
    pub id: String,
    /// Region the AMI lives in.
    pub region: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Total disk size, e.g. `2GiB`, `1500M`.
    #[serde(default = "default_disk_size")]
    pub size: ByteSize,
    /// Root filesystem type. Only `ext4`.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Firmwares the disk boots under: `[uefi]` (default), `[bios]`, or both (`[bios, uefi]`:
    /// a hybrid disk, which an AMI registers as `uefi-preferred`).
    #[serde(default = "default_boot")]
    pub boot: Vec<BootMode>,
    /// Extra kernel command line arguments (the serial console is always added).
    #[serde(default)]
    pub kernel_cmdline: Vec<String>,
    /// Size of the EFI system partition.
    #[serde(default = "default_esp_size")]
    pub esp_size: ByteSize,
}

impl Default for DiskSpec {
    fn default() -> Self {
        Self {
            size: default_disk_size(),
            filesystem: Filesystem::Ext4,
            boot: default_boot(),
            kernel_cmdline: Vec::new(),
            esp_size: default_esp_size(),
        }
    }
}

fn default_disk_size() -> ByteSize {
    ByteSize(2 << 30)
}
fn default_esp_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_boot() -> Vec<BootMode> {
    vec![BootMode::Uefi]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    #[default]
    Ext4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Uefi,
    Bios,
}

impl BootMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uefi => "uefi",
            Self::Bios => "bios",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Raw,
    Qcow2,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// One provisioning step. Written as a single-key map: `- shell: {...}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Provisioner {
    /// Run shell commands inside the chroot.
    Shell(ShellStep),
    /// Copy a file from the recipe directory into the image.
    File(FileStep),
    /// Run Ansible inside the chroot against itself (Packer's ansible-local).
    AnsibleLocal(AnsibleLocalStep),
    /// Run ansible-playbook on the build host against the chroot (the image needs no Ansible).
    Ansible(AnsibleStep),
}

impl Provisioner {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Shell(_) => "shell",
            Self::File(_) => "file",
            Self::AnsibleLocal(_) => "ansible-local",
            Self::Ansible(_) => "ansible",
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Shell(s) => s.name.as_deref(),
            Self::File(s) => s.name.as_deref(),
            Self::AnsibleLocal(s) => s.name.as_deref(),
            Self::Ansible(s) => s.name.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellStep {
    /// A label for progress output and logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Commands, run in order by `/bin/sh -e`.
    #[serde(default)]
    pub inline: Vec<String>,
    /// A script file (relative to the recipe) copied into the chroot and run.
    #[serde(default)]
    pub script: Option<RecipePath>,
    /// Environment variables for the step.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of host environment variables passed in as secrets: never logged, never stored.
    #[serde(default)]
    pub secret_env: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileStep {
    #[serde(default)]
    pub name: Option<String>,
    /// Source file or directory, relative to the recipe.
    pub source: RecipePath,
    /// Absolute destination inside the image.
    pub destination: String,
    /// Octal mode, e.g. `"0644"`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `user:group` (names resolved inside the image, or numeric).
    #[serde(default)]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnsibleLocalStep {
    #[serde(default)]
    pub name: Option<String>,
    /// One or several playbooks, relative to the recipe (run in order).
    pub playbook_file: OneOrMany<RecipePath>,
    /// A directory staged whole (playbooks, roles, group_vars next to them).
    #[serde(default)]
    pub playbook_dir: Option<RecipePath>,
    /// Role directories staged and put on `ANSIBLE_ROLES_PATH`.
    #[serde(default)]
    pub role_paths: Vec<RecipePath>,
    /// Collection directories staged and put on `ANSIBLE_COLLECTIONS_PATH`.
    #[serde(default)]
    pub collection_paths: Vec<RecipePath>,
    /// A `group_vars` directory.
    #[serde(default)]
    pub group_vars: Option<RecipePath>,
    /// A `host_vars` directory.
    #[serde(default)]
    pub host_vars: Option<RecipePath>,
    /// Groups the local host is put in.
    #[serde(default)]
    pub inventory_groups: Vec<String>,
    /// Extra arguments to ansible-playbook.
    #[serde(default)]
    pub extra_arguments: Vec<String>,
    /// A galaxy requirements file; only local `src:` paths are allowed (no network).
    #[serde(default)]
    pub galaxy_file: Option<RecipePath>,
    /// Extra variables.
    #[serde(default)]
    pub extra_vars: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnsibleStep {
    #[serde(default)]
    pub name: Option<String>,
    /// One or several playbooks, relative to the recipe.
    pub playbook_file: OneOrMany<RecipePath>,
    #[serde(default)]
    pub role_paths: Vec<RecipePath>,
    #[serde(default)]
    pub collection_paths: Vec<RecipePath>,
    #[serde(default)]
    pub group_vars: Option<RecipePath>,
    #[serde(default)]
    pub host_vars: Option<RecipePath>,
    #[serde(default)]
    pub inventory_groups: Vec<String>,
    #[serde(default)]
    pub extra_arguments: Vec<String>,
    #[serde(default)]
    pub extra_vars: BTreeMap<String, String>,
}

/// A single value or a list of values.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            Self::One(t) => std::slice::from_ref(t),
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Install the webake boot-time identity agent.
    #[serde(default = "yes")]
    pub install: bool,
    /// Hostname template; default `{role}-{env}-{region_compact}-{instance_id_short}`.
    #[serde(default)]
    pub hostname_template: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    /// Run the boot test as part of every bake (a gate: failing images are not recorded).
    #[serde(default)]
    pub gate: bool,
    /// Seconds to wait for the guest (multiplied for software emulation).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Commands run in the guest after boot; each must exit 0.
    #[serde(default)]
    pub checks: Vec<BootCheck>,
    /// Instance metadata served to the guest (via qemu user networking) during the test.
    #[serde(default)]
    pub imds: Option<ImdsFixture>,
    /// Guest memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Boot the checks' VM with the disk's kernel and initrd loaded directly by qemu (the
    /// command line of its GRUB entry), while a second VM boots the artifact through each
    /// firmware until that kernel starts with that command line: the same proof of the boot
    /// path, about 7 s sooner under software emulation. `false`: the checks' boot goes
    /// through the firmware and GRUB itself (checks that need the EFI runtime, e.g.
    /// efivars, or a `quiet` kernel, which webake detects).
    #[serde(default = "yes")]
    pub direct_kernel: bool,
}

fn default_timeout() -> u64 {
    120
}
fn default_memory() -> u32 {
    1024
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootCheck {
    pub name: String,
    /// Shell command run in the guest.
    pub run: String,
    /// If set, the command's trimmed stdout must equal this.
    #[serde(default)]
    pub expect_stdout: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImdsFixture {
    pub instance_id: String,
    pub region: String,
    /// Instance tags exposed through instance metadata (e.g. `Environment: prod`).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LintSpec {
    /// Lint rule ids this image may break (e.g. `ssh-host-keys`).
    #[serde(default)]
    pub allow: Vec<String>,
}
